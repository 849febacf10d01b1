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
    base, src = hooked_caches(tiny_model, batch)
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
            ref = float(reference_edge(tiny_model, batch, base, src, p, receiver, sender))
            assert exact[p, i] == pytest.approx(ref, abs=ENGINE_ATOL), g.edge_name(e)
            moved += abs(ref - float(data.baseline_score[p])) > 1e-3
    assert moved >= 10  # the edges do change the score: the comparison is not between baselines
