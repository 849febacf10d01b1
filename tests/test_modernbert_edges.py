"""Edge patching on ModernBERT (pre-LN: no LayerNorm is frozen, each receiver normalises its own changed sum):
exact single edges against their definition written as hooked full forwards of the model itself (the one
receiver input replaced: a head's q/k/v by `HeadReplacement`, an MLP's normalised input, the final sum), the
stack engine against the restarted one (vmap = loop), the anchors (no edge patched is the baseline, every edge
the run with every sender's output patched), EAP as the derivative of the hooked definition, EAP-IG's
completeness, and planted answers every method must find or must reject. The independent PyTorch reference is
`tests/test_modernbert_edges_torch.py`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL
from conftest import forward_jit as _forward
from edge_reference import planted_pairs
from test_archs_patching import random_pairs
from test_modernbert import TINY, _state, build

from jaxmech.analysis.edges import edge_circuits
from jaxmech.hf.convert import modernbert_from_hf_state_dict as from_hf_state_dict
from jaxmech.interventions import HeadReplacement, PatchSpec, one_hot
from jaxmech.models.modernbert import ModernBertConfig
from jaxmech.patching import batch_pairs
from jaxmech.patching.caches import run_cached
from jaxmech.patching.edge_attribution import estimate_edges, midpoints
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import edge_data, edge_forward, edges_patched_scores, exact_edge_scores

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
SITES = frozenset({"resid_pre", "z", "mlp_out", "resid_mid", "resid_post"})
PICKS = ["input->a0.h1<q>", "a0.h2->a1.h0<k>", "m0->a3.h4<v>", "a1.h3->m1", "input->m0", "a2.h1->logits",
         "m3->logits", "a0.h0->m2", "m1->a2.h2<q>", "a3.h2->m3"]
"""One edge of every kind, receivers at layer 0 (no attention LayerNorm), in sliding-window layers (1, 2) and in a
global one (3), and a head -> MLP edge inside one layer."""


@pytest.fixture(scope="module")
def mb():
    """(model, batch whose first changed token is not patchable, edge data, baseline captures, perturbed
    captures, graph)."""
    hf = build(TINY, bias=True, pooling="cls", seed=11, init=0.2)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    pairs = random_pairs(2, model.cfg.d_vocab, "bert", seed=1, d_len=(7, 12))
    batch = batch_pairs(pairs, pad_id=model.cfg.pad_token_id, buckets=(24,), max_length=model.cfg.max_length)
    assert (batch.baseline[2] == 0).any(), "padding"
    hole = np.argmax(batch.baseline[0] != batch.perturbed[0], axis=1)  # the first changed token of each pair
    assert (hole > 0).all() and batch.patchable[np.arange(2), hole].all()
    position_map = np.array(batch.position_map)
    position_map[np.arange(2), hole] = -1  # unaligned: not patchable, the baseline's token stays there
    batch = dataclasses.replace(batch, position_map=position_map, identity=np.zeros(2, bool))
    _, base = run_cached(model, *map(jnp.asarray, batch.baseline), capture=SITES)
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=SITES)
    return model, batch, edge_data(model, batch), base, src, EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)


def _inputs(batch, p):
    return [jnp.asarray(a[p]) for a in batch.baseline]


def sender_change(model, batch, base, src, p, sender: str):
    """``o' - o`` of ``sender`` in pair ``p`` at its patchable positions, from the two runs' captures."""
    if sender == "input":
        d = src["resid_pre"][p, 0] - base["resid_pre"][p, 0]
    elif sender.startswith("m"):
        d = src["mlp_out"][p, int(sender[1:])] - base["mlp_out"][p, int(sender[1:])]
    else:
        layer, h = (int(t) for t in sender[1:].split(".h"))
        d = (src["z"][p, layer, :, h] - base["z"][p, layer, :, h]) @ model.blocks.W_O[...][layer, h]
    return d * jnp.asarray(batch.patchable[p], jnp.float32)[:, None]


def reference_edge(model, batch, base, src, p, name: str, eps=1.0, emb_t=None):
    """Edge ``name`` of pair ``p`` by hooked full forwards: the receiver's input sum plus ``eps`` times the
    sender's change, normalised by the receiver's own LayerNorm, replaces that one input. ``emb_t``: in the run
    whose embeddings' output is moved that far toward the perturbed one (the change stays the baseline's: EAP-IG
    over inputs), read from one more forward."""
    sender, receiver = name.split("->")
    d = eps * sender_change(model, batch, base, src, p, sender)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ivs, run = [], {k: v[p] for k, v in base.items()}
    if emb_t is not None:
        pm = jnp.asarray(batch.patchable[p], jnp.float32)
        ivs = [PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L), pm, alpha=emb_t)]
        run = _forward(model, *_inputs(batch, p), ivs, capture=SITES)[1]
    if receiver == "logits":
        iv = PatchSpec("resid_post", run["resid_post"].at[L - 1].add(d), one_hot(L - 1, L))
    elif receiver.startswith("m"):
        layer = int(receiver[1:])
        new = jax.tree.map(lambda a: a[layer], model.blocks).ln2(run["resid_mid"][layer] + d)
        iv = PatchSpec("normalized_resid_mid", jnp.zeros_like(run["resid_mid"]).at[layer].set(new),
                       one_hot(layer, L))
    else:
        head, kind = receiver[1:-1].split("<")
        layer, h = (int(t) for t in head.split(".h"))
        iv = HeadReplacement(kind, layer, one_hot(h, H), model.project(run["resid_pre"][layer] + d, layer, kind))
    return _forward(model, *_inputs(batch, p), [*ivs, iv])[0]


def every_sender_patched(model, batch, src, p) -> float:
    """Pair ``p``'s score by one hooked full forward in which every sender's output (the embeddings', every head's
    ``z``, every MLP's) is the perturbed run's where patchable: the empty circuit's definition."""
    pm = jnp.asarray(batch.patchable[p], jnp.float32)
    ivs = [PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, model.cfg.n_layers), pm),
           PatchSpec("z", src["z"][p], None, pm), PatchSpec("mlp_out", src["mlp_out"][p], None, pm)]
    return float(_forward(model, *_inputs(batch, p), ivs)[0])


def _index(g: EdgeGraph, names):
    lookup = {g.edge_name(e): e for e in range(g.n_edges)}
    return [lookup[n] for n in names]


def test_anchors_no_edge_is_the_baseline_every_edge_every_sender_patched(mb):
    model, batch, data, base, src, g = mb
    kept = edges_patched_scores(model, data, jnp.ones((2, g.n_edges)))
    np.testing.assert_allclose(kept, data.baseline_score, rtol=0, atol=ENGINE_ATOL)
    empty = np.asarray(edges_patched_scores(model, data, jnp.zeros((2, g.n_edges))))
    for p in range(2):  # nothing frozen: the run whose every sender output is the perturbed one where patchable
        assert empty[p] == pytest.approx(every_sender_patched(model, batch, src, p), abs=ENGINE_ATOL)
    # the score pools [CLS], where every sender is patched (the closed position reaches [CLS] only through its
    # heads, whose outputs are the perturbed ones): the perturbed run's score, nothing frozen
    np.testing.assert_allclose(empty, data.perturbed_score, rtol=0, atol=ENGINE_ATOL)


def test_exact_edges_equal_hooked_full_forwards_and_the_stack_engine(mb):
    model, batch, data, base, src, g = mb
    edges = _index(g, PICKS)
    exact = exact_edge_scores(model, data, edges, chunk_size=4)
    for p in range(2):
        want = [float(reference_edge(model, batch, base, src, p, n)) for n in PICKS]
        np.testing.assert_allclose(exact[p], want, rtol=0, atol=ENGINE_ATOL, err_msg=f"pair {p}")
    keep = np.ones((len(edges), g.n_edges), np.float32)
    keep[np.arange(len(edges)), edges] = 0.0
    for p in range(2):  # vmap = loop: the stack engine with one edge's coefficient 1
        stack = edges_patched_scores(model, data.pair(np.full(len(edges), p)), jnp.asarray(keep))
        np.testing.assert_allclose(stack, exact[p], rtol=0, atol=ENGINE_ATOL)
    assert np.abs(exact - np.asarray(data.baseline_score)[:, None]).min(0).max() > 1e-3


def _slope(model, batch, base, src, p, name, emb_t=None):
    """``d/d eps`` at 0 of the hooked edge patch scaled by ``eps``."""
    f = lambda t: reference_edge(model, batch, base, src, p, name, t, emb_t)
    return float(jax.jvp(f, (jnp.float32(0.0),), (jnp.float32(1.0),))[1])


def test_eap_and_ig_inputs_are_derivatives_of_the_hooked_definition_and_ig_is_complete(mb):
    model, batch, data, base, src, g = mb
    eap = estimate_edges(model, data, "eap")
    ig = estimate_edges(model, data, "eap-ig-inputs", steps=2)
    for p in range(2):
        for i, (name, e) in enumerate(zip(PICKS, _index(g, PICKS), strict=True)):
            assert eap[p, e] == pytest.approx(_slope(model, batch, base, src, p, name), abs=ENGINE_ATOL), (p, name)
            if (i + p) % 2:  # EAP-IG on half of them (each costs two more hooked derivatives)
                want = np.mean([_slope(model, batch, base, src, p, name, t) for t in midpoints(2)])
                assert ig[p, e] == pytest.approx(want, abs=ENGINE_ATOL), (p, name)
    assert np.abs(ig - eap).max() > 1e-3  # the interpolated runs differ from the baseline
    full = np.asarray(data.baseline_score)
    empty = np.asarray(edges_patched_scores(model, data, jnp.zeros((2, g.n_edges))))
    errors = [np.abs(estimate_edges(model, data, "eap-ig-activations", steps=s).sum(1) - (empty - full))
              for s in (1, 8)]
    assert np.all(np.abs(empty - full) > 0.01)
    assert np.all(errors[1] <= 0.05 * np.abs(empty - full).max()), errors
    assert np.all(errors[1] < errors[0] / 8), errors  # the midpoint rule converges toward the empty circuit


def test_mean_pooling_without_biases_reads_the_closed_position(mb):
    """A mean-pooled model without biases: exact edges equal the hooked definition, and the empty circuit is the
    run with every sender patched where patchable, which is not the perturbed run (the closed position is pooled)."""
    _, batch, _, _, _, g = mb
    hf = build(TINY, bias=False, pooling="mean", seed=4, init=0.2)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    data = edge_data(model, batch)
    _, base = run_cached(model, *map(jnp.asarray, batch.baseline), capture=SITES)
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=SITES)
    picks = PICKS[::2]
    exact = exact_edge_scores(model, data, _index(g, picks), chunk_size=4)
    for p in range(2):
        want = [float(reference_edge(model, batch, base, src, p, n)) for n in picks]
        np.testing.assert_allclose(exact[p], want, rtol=0, atol=ENGINE_ATOL, err_msg=f"pair {p}")
    empty = np.asarray(edges_patched_scores(model, data, jnp.zeros((2, g.n_edges))))
    for p in range(2):
        assert empty[p] == pytest.approx(every_sender_patched(model, batch, src, p), abs=ENGINE_ATOL)
    assert np.all(np.abs(empty - np.asarray(data.perturbed_score)) > 1e-4)


@pytest.fixture(scope="module")
def planted(mb):
    """The model with every head's and MLP's output scaled down: the embeddings' direct edge dominates."""
    model = jax.tree.map(lambda x: x, mb[0])
    model.blocks.W_O[...] = mb[0].blocks.W_O[...] * 1e-3
    model.blocks.W_out[...] = mb[0].blocks.W_out[...] * 1e-3
    return model


@pytest.mark.parametrize("at_cls", [True, False])
def test_planted_direct_edge_is_found_first_or_rejected_by_every_method(planted, at_cls):
    """[CLS] perturbed: ``input->logits`` must come first under every method. A document token perturbed: the
    score pools [CLS] alone, so that edge has no effect at all and must not."""
    data = edge_data(planted, planted_pairs(at_cls))
    g = EdgeGraph(planted.cfg.n_layers, planted.cfg.n_heads)
    direct = _index(g, ["input->logits"])[0]
    effects = {"exact": exact_edge_scores(planted, data) - np.asarray(data.baseline_score)[:, None]}
    for method in ("eap", "eap-ig-inputs", "eap-ig-activations"):
        effects[method] = estimate_edges(planted, data, method, steps=2)
    for method, eff in effects.items():
        size = np.abs(eff.mean(0))
        if at_cls:
            assert int(np.argmax(size)) == direct, method
        else:
            assert size[direct] < 1e-6 < size.max(), method


def test_edge_circuits_runs_on_modernbert(mb):
    model, _, data, *_ = mb
    out = edge_circuits(model, data, method="eap", steps=1, verify_top_k=8, n_random=8, recall_n=8, grid=(0, 40))
    assert out["n_edges"] == EdgeGraph(model.cfg.n_layers, model.cfg.n_heads).n_edges
    curve = {c["n_edges"]: c["recovery"] for c in out["faithfulness"]}
    assert curve[0] == pytest.approx(0.0, abs=1e-4) and curve[out["n_edges"]] == pytest.approx(1.0, abs=1e-4)
    assert -1.0 <= out["verified_spearman"] <= 1.0 and 0.0 <= out["top_recall"] <= 1.0


def test_span_edges_add_up_and_restart_as_the_stack_engine(mb):
    """Span-aware edges on the pre-LN engine: the groups of a partition of the positions add up to the edge (EAP),
    and a restarted exact span patch equals the stack engine with a one-hot (receiver, sender, group)."""
    model, batch, _, _, _, g = mb
    groups = np.random.RandomState(0).randint(0, 3, batch.patchable.shape)
    spans = (groups[:, None, :] == np.arange(3)[None, :, None]) & batch.patchable[:, None, :]
    data = edge_data(model, batch, spans=spans)
    by_span = estimate_edges(model, data, "eap", spans=True)
    np.testing.assert_allclose(by_span.sum(-1), estimate_edges(model, data, "eap"), rtol=0, atol=ENGINE_ATOL)
    picks = [("input->a0.h1<k>", 0), ("a0.h2->a2.h1<v>", 1), ("a1.h3->m1", 2), ("m2->logits", 1)]
    edges, kinds = _index(g, [n for n, _ in picks]), [k for _, k in picks]
    exact = exact_edge_scores(model, data, edges, groups=kinds, chunk_size=2)
    forward = jax.jit(lambda ex, a: edge_forward(model, ex, a))
    for p in range(2):
        for i, (e, k) in enumerate(zip(edges, kinds, strict=True)):
            r, s = g.edges[e]
            alpha = jnp.zeros((g.n_receivers, g.n_senders, 3)).at[r, s, k].set(1.0)
            assert exact[p, i] == pytest.approx(float(forward(data.pair(p), alpha)), abs=ENGINE_ATOL), picks[i]
    assert np.abs(exact_edge_scores(model, data, edges, chunk_size=2) - exact).max() > 1e-4  # a span is not the edge


def test_pair_chunk_comes_from_the_compiled_programs_memory(mb, monkeypatch):
    """`edge_pair_chunk` reads the one-pair program's memory analysis: with memory for one pair's program it
    picks 1, with plenty every pair, with less than one pair it refuses; the estimates do not depend on the
    chunk, and the two-pair program's memory is within the linear estimate."""
    from jaxmech import runtime
    from jaxmech.patching import edge_attribution

    model, _, data, *_ = mb
    fixed, per_pair = edge_attribution._program_bytes(model, data, "eap", 1, False)
    assert per_pair > 0
    monkeypatch.setattr(runtime, "available_memory", lambda: (2 * (fixed + per_pair), "test memory"))
    assert edge_attribution.edge_pair_chunk(model, data, "eap") == 1
    one = estimate_edges(model, data, "eap")
    monkeypatch.setattr(runtime, "available_memory", lambda: (2 * (fixed + 10 * per_pair), "test memory"))
    assert edge_attribution.edge_pair_chunk(model, data, "eap") == 2
    np.testing.assert_allclose(estimate_edges(model, data, "eap"), one, rtol=0, atol=1e-6)
    m = edge_attribution.edge_gradients.lower(model, data, method="eap", steps=1).compile().memory_analysis()
    two = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    assert two <= 1.1 * (fixed + 2 * per_pair), (two, fixed, per_pair)  # the linear estimate holds at 2 pairs
    monkeypatch.setattr(runtime, "available_memory", lambda: (fixed, "test memory"))
    with pytest.raises(ValueError, match=r"^edge attribution \(eap\): one pair of 24 tokens needs about"):
        edge_attribution.edge_pair_chunk(model, data, "eap")


def test_analyze_edges_cli_on_a_modernbert_folder(tmp_path):
    """``jaxmech analyze edges`` end to end on a ModernBERT folder with its own tokenizer (padding id at the end of
    the vocabulary, mean pooling): the JSON's anchors hold, and with every position patchable the empty circuit
    is the perturbed run (pre-LN: nothing frozen)."""
    import json

    from arch_checkpoints import modernbert_tokenizer

    from jaxmech.cli import main

    hf_tok = modernbert_tokenizer(tmp_path / "m")
    ids = {t: hf_tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    sizes = dict(TINY, vocab_size=len(hf_tok), pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"],
                 sep_token_id=ids["[SEP]"], bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"])
    build(sizes, bias=True, pooling="mean", seed=8).save_pretrained(tmp_path / "m")
    out = tmp_path / "edges.json"
    assert main(["analyze", "edges", "--model", str(tmp_path / "m"), "--source", "demo", "--limit", "2", "--method",
                 "eap", "--verify-top-k", "5", "--n-random", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_edges"] == EdgeGraph(TINY["num_hidden_layers"], TINY["num_attention_heads"]).n_edges
    assert res["empty_score"] == pytest.approx(res["perturbed_score"], abs=ENGINE_ATOL)
    assert abs(res["perturbed_score"] - res["baseline_score"]) > 1e-4
    assert res["faithfulness"][-1]["recovery"] == pytest.approx(1.0, abs=1e-3)


def test_alpha_gradient_by_receiver_inputs_is_the_gradient_of_the_stack(mb):
    """The pre-LN engine differentiates the current-run stack as ``<G_r, D[s]>`` (one backward in additions to the
    receivers' inputs, no stack per layer): equal to ``jax.grad`` of the stack engine, spans included."""
    from jaxmech.patching.edges import edge_alpha_gradient

    model, _, data, _, _, g = mb
    ex = data.pair(1)
    alpha = 0.3 * jnp.asarray(g.valid, jnp.float32)
    want = jax.jit(jax.grad(lambda a: edge_forward(model, ex, a)))(alpha)
    got = jax.jit(lambda a: edge_alpha_gradient(model, ex, a))(alpha)
    np.testing.assert_allclose(np.asarray(got)[g.valid], np.asarray(want)[g.valid], rtol=0, atol=ENGINE_ATOL)
    assert np.abs(np.asarray(want)[g.valid]).max() > 1e-2 and not np.asarray(got)[~g.valid].any()
    by_span = jax.jit(lambda a: edge_alpha_gradient(model, ex, a))(alpha[..., None])  # one span: every position
    np.testing.assert_allclose(np.asarray(by_span)[..., 0][g.valid], np.asarray(want)[g.valid], rtol=0,
                               atol=ENGINE_ATOL)
