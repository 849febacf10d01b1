"""EAP and EAP-IG against the derivative of the hooked edge patch, IG completeness, and a planted edge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edge_reference import edge_batch, hooked_caches, planted_model, planted_pairs, reference_edge

from jaxmech.patching.edge_attribution import estimate_edges, midpoints
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import edge_data, edges_patched_scores, exact_edge_scores

PICKS = ["input->a0.h1<q>", "a0.h2->a1.h0<k>", "m0->a2.h4<v>", "a1.h3->m1", "a2.h1->logits", "m1->a2.h2<q>"]


@pytest.fixture(scope="module")
def setup(tiny_model):
    batch = edge_batch(tiny_model)
    return batch, edge_data(tiny_model, batch), EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)


def _slope(model, batch, base, src, p, name, emb_t=None):
    sender, receiver = name.split("->")
    f = lambda eps: reference_edge(model, batch, base, src, p, receiver, sender, eps=eps, emb_t=emb_t)
    return float(jax.jvp(f, (jnp.float32(0.0),), (jnp.float32(1.0),))[1])


def test_eap_and_ig_inputs_are_derivatives_of_the_hooked_edge_patch(tiny_model, setup):
    batch, data, g = setup
    base, src = hooked_caches(tiny_model, batch)
    index = {g.edge_name(e): e for e in range(g.n_edges)}
    eap = estimate_edges(tiny_model, data, "eap")
    ig = estimate_edges(tiny_model, data, "eap-ig-inputs", steps=2)
    for p in range(2):
        for i, name in enumerate(PICKS):
            e = index[name]
            assert eap[p, e] == pytest.approx(_slope(tiny_model, batch, base, src, p, name), abs=1e-5), name
            if (i + p) % 2:  # EAP-IG on half of them (each costs two more hooked derivatives)
                want = np.mean([_slope(tiny_model, batch, base, src, p, name, emb_t=t) for t in midpoints(2)])
                assert ig[p, e] == pytest.approx(want, abs=1e-5), name
    assert np.abs(ig - eap).max() > 1e-3  # the interpolated runs differ from the baseline


def test_ig_activations_is_complete_toward_the_empty_circuit(tiny_model, setup):
    _, data, g = setup
    full = np.asarray(data.baseline_score)
    empty = np.asarray(edges_patched_scores(tiny_model, data, jnp.zeros((2, g.n_edges))))
    errors = []
    for steps in (1, 8):
        est = estimate_edges(tiny_model, data, "eap-ig-activations", steps=steps)
        errors.append(np.abs(est.sum(1) - (empty - full)))
    assert np.all(np.abs(empty - full) > 0.01)
    assert np.all(errors[1] <= 0.05 * np.abs(empty - full).max()), errors
    assert np.all(errors[1] < errors[0] / 8), errors  # the midpoint rule converges (O(steps^-2))


def test_planted_direct_edge_comes_first_under_every_method(tiny_model):
    """The perturbation changes [CLS] itself and the components are weak: ``input->logits`` (the [CLS] change
    read directly by the score) must rank first everywhere. With the change on a document token instead, it must
    have no effect at all (the score reads [CLS] only)."""
    model = planted_model(tiny_model, 0.1)
    g = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    direct = [g.edge_name(e) for e in range(g.n_edges)].index("input->logits")
    for at_cls in (True, False):
        data = edge_data(model, planted_pairs(at_cls))
        exact = exact_edge_scores(model, data) - np.asarray(data.baseline_score)[:, None]
        methods = {"exact": exact, "eap": estimate_edges(model, data, "eap"),
                   "eap-ig-inputs": estimate_edges(model, data, "eap-ig-inputs", steps=2),
                   "eap-ig-activations": estimate_edges(model, data, "eap-ig-activations", steps=8)}  # as above: reused
        for name, est in methods.items():
            effect = np.abs(est).mean(0)
            assert np.count_nonzero(effect > 1e-4) > 20, name  # many edges do something
            if at_cls:
                assert int(np.argmax(effect)) == direct, name
            else:
                assert effect[direct] < 1e-6, name
