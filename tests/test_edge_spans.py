"""Span-aware edges: groups of a partition of the positions add up to the edge (EAP), and the restarted exact
span patch equals the stack engine's with a one-hot (receiver, sender, group) coefficient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL
from edge_reference import edge_batch

from jaxmech.analysis.edge_spans import SPAN_GROUPS, span_masks
from jaxmech.patching.edge_attribution import estimate_edges
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import edge_data, edge_forward, exact_edge_scores


@pytest.fixture(scope="module")
def setup(tiny_model):
    batch = edge_batch(tiny_model)
    rng = np.random.RandomState(0)
    groups = rng.randint(0, 3, batch.patchable.shape)
    spans = (groups[:, None, :] == np.arange(3)[None, :, None]) & batch.patchable[:, None, :]
    return edge_data(tiny_model, batch, spans=spans), EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)


def test_span_estimates_add_up_to_the_edge(tiny_model, setup):
    data, g = setup
    full = estimate_edges(tiny_model, data, "eap")
    by_span = estimate_edges(tiny_model, data, "eap", spans=True)
    assert by_span.shape == (2, g.n_edges, 3)
    np.testing.assert_allclose(by_span.sum(-1), full, rtol=0, atol=1e-5)
    assert np.abs(by_span).max(-1).mean() > 0.2 * np.abs(full).mean()  # the groups split the effect


def test_exact_span_edges_match_the_stack_engine(tiny_model, setup):
    data, g = setup
    names = [g.edge_name(e) for e in range(g.n_edges)]
    picks = [("input->a1.h0<k>", 0), ("a0.h2->a2.h1<v>", 1), ("a1.h3->m1", 2), ("m2->logits", 1),
             ("a0.h0->a2.h4<q>", 2)]
    edges = [names.index(n) for n, _ in picks]
    groups = [k for _, k in picks]
    exact = exact_edge_scores(tiny_model, data, edges, groups=groups, chunk_size=2)
    forward = jax.jit(lambda ex, a: edge_forward(tiny_model, ex, a))
    for p in range(2):
        ex = data.pair(p)
        for i, (e, k) in enumerate(zip(edges, groups, strict=True)):
            r, s = g.edges[e]
            alpha = jnp.zeros((g.n_receivers, g.n_senders, 3)).at[r, s, k].set(1.0)
            assert exact[p, i] == pytest.approx(float(forward(ex, alpha)), abs=ENGINE_ATOL), names[e]
    whole = exact_edge_scores(tiny_model, data, edges, chunk_size=2)
    assert np.abs(whole - exact).max() > 1e-3  # a span is not the whole edge


def test_span_masks_from_token_types():
    from jaxmech.data.records import AlignedPair

    tt = ["CLS", "Qplus", "Qsub", "SEP1", "Dplus", "Dother", "Dinj", "SEP2"]
    pair = AlignedPair(list(range(1, 9)), [0] * 8, list(range(1, 9)), [0] * 8, list(range(8)), "x", token_types=tt)
    m = span_masks([pair], 10)
    assert m.shape == (1, len(SPAN_GROUPS), 10)
    assert np.array_equal(m[0].sum(0), [1] * 8 + [0, 0])  # a partition of the real positions
    names = list(SPAN_GROUPS)
    assert m[0, names.index("doc_matches"), 4] == 1 and m[0, names.index("injected"), 6] == 1
