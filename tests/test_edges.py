"""Exact edge patching against its definition written as interventions on full forwards (frozen LayerNorm
scales, every other component frozen to read the edge's input change, then that change added to one receiver
input), and its invariants."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL
from edge_reference import edge_batch, hooked_caches, reference_edge

from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import edge_data, edges_patched_scores, exact_edge_scores


@pytest.fixture(scope="module")
def batch(tiny_model):
    return edge_batch(tiny_model)


@pytest.fixture(scope="module")
def data(tiny_model, batch):
    return edge_data(tiny_model, batch)


PICKS = ["input->a0.h1<q>", "a0.h2->a1.h0<k>", "m0->a2.h4<v>", "a1.h3->m1", "input->m0", "a2.h1->logits",
         "m2->logits", "a0.h0->m2", "m1->a2.h2<q>"]
"""One edge of every kind: embeddings -> q and MLP, head -> k, head -> MLP, head -> score, MLP -> v, q, score."""


@pytest.fixture(scope="module")
def picked(tiny_model, data):
    """``(edges, exact scores [pair, edge])``: `PICKS` and 6 random edges, exact (computed once: each reference
    below reads them)."""
    g = EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    index = {g.edge_name(e): e for e in range(g.n_edges)}
    edges = [index[n] for n in PICKS] + list(np.random.RandomState(0).choice(g.n_edges, 6, replace=False))
    return edges, exact_edge_scores(tiny_model, data, edges, chunk_size=4)


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


def test_exact_edges_match_hooked_forwards(tiny_model, batch, data, picked):
    g = EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    base, src = hooked_caches(tiny_model, batch)
    edges, exact = picked
    keep = np.ones((len(edges), g.n_edges), np.float32)
    keep[np.arange(len(edges)), edges] = 0
    moved = 0
    for p in range(2):
        via_stack = edges_patched_scores(tiny_model, data.pair(np.full(len(edges), p)), jnp.asarray(keep))
        np.testing.assert_allclose(exact[p], via_stack, rtol=0, atol=ENGINE_ATOL)
        for i, e in enumerate(edges):
            sender, receiver = g.edge_name(e).split("->")
            ref = float(reference_edge(tiny_model, batch, base, src, p, receiver, sender))
            assert exact[p, i] == pytest.approx(ref, abs=ENGINE_ATOL), g.edge_name(e)
            moved += abs(ref - float(data.baseline_score[p])) > 1e-3
    assert moved >= 10  # the edges do change the score: the comparison is not between baselines


@pytest.mark.torch
def test_exact_edges_match_an_independent_pytorch_implementation(tiny_cross_dir, tiny_model, batch, data, picked):
    """`PICKS` by forward hooks on transformers' BERT (`benchmarks.baselines.torch_edges`: no jaxmech code)."""
    pytest.importorskip("torch")
    from transformers import BertForSequenceClassification

    from benchmarks.baselines.torch_edges import TorchEdgePatcher

    patcher = TorchEdgePatcher(BertForSequenceClassification.from_pretrained(tiny_cross_dir))
    exact = picked[1]
    moved = 0
    for p in range(2):
        n = int(batch.lengths[p])
        base, pert = (tuple(np.asarray(a[p])[:n] for a in run) for run in (batch.baseline, batch.perturbed))
        for i, name in enumerate(PICKS):
            sender, receiver = name.split("->")
            ref = patcher.edge_score(base, pert, sender, receiver, patchable=batch.patchable[p][:n])
            assert exact[p, i] == pytest.approx(ref, abs=ENGINE_ATOL), name
            moved += abs(ref - float(data.baseline_score[p])) > 1e-3
    assert moved >= 12  # the edges change the score: the comparison is not between baselines


def _linear_ln_model(silent_mlps: bool = True):
    """A tiny cross-encoder whose LayerNorms are linear to fp32 precision (eps 1e8: the scale ``sqrt(var + eps)``
    moves by ~var / 2e8) with weights scaled back up, and whose MLPs output nothing (``W_out = 0``): every head's
    only path to the score is the direct one."""
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model

    cfg = EncoderConfig(n_layers=3, d_model=24, n_heads=3, d_head=8, d_mlp=16, n_ctx=48, d_vocab=211,
                        initializer_range=0.3, eps=1e8)
    m = build_model(cfg, "cross", seed=4)
    for ln in (m.blocks.ln1, m.blocks.ln2, m.embed.ln):
        ln.w[...] = ln.w[...] * 1e4
    m.blocks.mlp.W_out[...] = m.blocks.mlp.W_out[...] * (0 if silent_mlps else 1)
    return m


@pytest.mark.parametrize("silent_mlps", [True, False])
def test_edges_into_the_score_are_path_patching_when_that_is_the_only_path(silent_mlps):
    """`path_to_score` (every other head's ``z`` frozen, MLPs and LayerNorms live) coincides with the edge
    ``a{l}.h{h} -> logits`` when the LayerNorms are linear and the MLPs silent (one engine each), and not when
    the MLPs give the heads a second path."""
    from jaxmech.patching import path_to_score

    model = _linear_ln_model(silent_mlps)
    batch = edge_batch(model, seed=6)
    data = edge_data(model, batch)
    g = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    names = [g.edge_name(e) for e in range(g.n_edges)]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    edges = [names.index(f"a{lyr}.h{h}->logits") for lyr in range(L) for h in range(H)]
    exact = exact_edge_scores(model, data, edges).reshape(2, L, H)
    path = path_to_score(model, batch).patched
    assert np.abs(path - np.asarray(data.baseline_score)[:, None, None]).max() > 1e-2  # the heads matter
    if silent_mlps:
        np.testing.assert_allclose(exact, path, rtol=0, atol=ENGINE_ATOL)
    else:
        assert np.abs(exact - path).max() > 1e-3
