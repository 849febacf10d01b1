"""Exact edge patching against its definition written as interventions on full forwards (frozen LayerNorm
scales, every other component frozen to read the edge's input change, then that change added to one receiver
input), and its invariants."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, random_pairs
from conftest import forward_jit as _forward

from jaxmech.interventions import AdditiveDelta, PatchSpec, one_hot
from jaxmech.patching import batch_pairs
from jaxmech.patching.caches import run_cached
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import edge_data, edges_patched_scores, exact_edge_scores

SITES = frozenset({"result", "mlp_out", "resid_pre", "ln1_scale", "ln2_scale", "normalized_resid_mid",
                   "normalized_resid_post"})


@pytest.fixture(scope="module")
def batch(tiny_model):
    return batch_pairs(random_pairs(2, tiny_model.cfg.d_vocab, seed=3), buckets=(24, 32), max_length=48)


@pytest.fixture(scope="module")
def data(tiny_model, batch):
    return edge_data(tiny_model, batch)


def _frozen_scales(base, p):
    return [PatchSpec("ln1_scale", base["ln1_scale"][p]), PatchSpec("ln2_scale", base["ln2_scale"][p])]


def _reference(model, batch, base, src, p, receiver: str, sender: str):
    """Edge ``sender -> receiver`` of pair ``p`` by hooked full forwards (independent of the stack engine)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    inputs = [jnp.asarray(a[p]) for a in batch.baseline]
    pm = jnp.asarray(batch.patchable[p], jnp.float32)
    frozen = _frozen_scales(base, p)
    # stage A: only the sender differs from the baseline, every other component frozen, scales frozen
    ivs = frozen + [PatchSpec("result", base["result"][p]), PatchSpec("mlp_out", base["mlp_out"][p])]
    if sender == "input":
        ivs.append(PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L), pm))
    elif sender.startswith("m"):
        ivs.append(PatchSpec("mlp_out", src["mlp_out"][p], one_hot(int(sender[1:]), L), pm))
    else:
        lyr, h = (int(t) for t in sender[1:].split(".h"))
        ivs.append(PatchSpec("result", src["result"][p], one_hot(lyr, L), pm, one_hot(h, H)))
    _, cache_a = _forward(model, *inputs, ivs, capture=SITES)
    # stage B: the change at the receiver's input added to that input only
    blocks = model.blocks
    if receiver == "logits":
        d = cache_a["normalized_resid_post"][-1] - base["normalized_resid_post"][p, -1]
        add = AdditiveDelta("normalized_resid_post", jnp.zeros_like(base["normalized_resid_post"][p]).at[-1].set(d))
    elif receiver.startswith("m"):
        lyr = int(receiver[1:])
        d = cache_a["normalized_resid_mid"][lyr] - base["normalized_resid_mid"][p, lyr]
        z = jnp.zeros((L, d.shape[0], model.cfg.d_mlp))
        add = AdditiveDelta("mlp_pre", z.at[lyr].set(d @ blocks.mlp.W_in[lyr]))
    else:
        head, kind = receiver[1:-1].split("<")
        lyr, h = (int(t) for t in head.split(".h"))
        d = cache_a["resid_pre"][lyr] - base["resid_pre"][p, lyr]
        W = {"q": blocks.attn.W_Q, "k": blocks.attn.W_K, "v": blocks.attn.W_V}[kind][lyr, h]
        z = jnp.zeros((L, d.shape[0], H, model.cfg.d_head))
        add = AdditiveDelta(kind, z.at[lyr, :, h].set(d @ W))
    score, _ = _forward(model, *inputs, frozen + [add])
    return float(score)


def test_graph_counts_and_names():
    g = EdgeGraph(2, 2)
    assert (g.n_senders, g.n_receivers) == (7, 15)
    # head receivers at layer 0: input only (6 of them); layer 1: input + 2 heads + m0 (6 x 4)
    # m0: input + 2 heads; m1: input, 4 heads, m0; logits: all 7
    assert g.n_edges == 6 * 1 + 6 * 4 + 3 + 6 + 7
    names = {g.edge_name(e) for e in range(g.n_edges)}
    assert {"input->a0.h1<k>", "a0.h0->m0", "m0->a1.h1<v>", "m1->logits"} <= names
    assert not {"a1.h0->a1.h1<q>", "m0->m0", "a1.h0->a0.h0<q>"} & names
    assert np.array_equal(g.per_edge(g.dense(np.arange(g.n_edges))), np.arange(g.n_edges))


def test_no_edge_patched_is_the_baseline(tiny_model, data):
    g = EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    keep = jnp.ones((2, g.n_edges))
    np.testing.assert_allclose(edges_patched_scores(tiny_model, data, keep), data.baseline_score, rtol=0,
                               atol=ENGINE_ATOL)


def test_exact_edges_match_hooked_forwards(tiny_model, batch, data):
    g = EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    _, base = run_cached(tiny_model, *map(jnp.asarray, batch.baseline), capture=SITES)
    _, src = run_cached(tiny_model, *map(jnp.asarray, batch.perturbed), capture=SITES)
    rng = np.random.RandomState(0)
    picks = ["input->a0.h1<q>", "a0.h2->a1.h0<k>", "m0->a2.h4<v>", "a1.h3->m1", "input->m0", "a2.h1->logits",
             "m2->logits", "a0.h0->m2", "m1->a2.h2<q>"]
    index = {g.edge_name(e): e for e in range(g.n_edges)}
    edges = [index[n] for n in picks] + list(rng.choice(g.n_edges, 6, replace=False))
    exact = exact_edge_scores(tiny_model, data, edges, chunk_size=4)
    keep = np.ones((len(edges), g.n_edges), np.float32)
    keep[np.arange(len(edges)), edges] = 0
    moved = 0
    for p in range(2):
        via_stack = edges_patched_scores(tiny_model, data.pair(np.full(len(edges), p)), jnp.asarray(keep))
        np.testing.assert_allclose(exact[p], via_stack, rtol=0, atol=ENGINE_ATOL)
        for i, e in enumerate(edges):
            sender, receiver = g.edge_name(e).split("->")
            ref = _reference(tiny_model, batch, base, src, p, receiver, sender)
            assert exact[p, i] == pytest.approx(ref, abs=ENGINE_ATOL), g.edge_name(e)
            moved += abs(ref - float(data.baseline_score[p])) > 1e-3
    assert moved >= 10  # the edges do change the score: the comparison is not between baselines
