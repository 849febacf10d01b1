"""Attribution variants of path_to_score and path_to_heads: the estimate is the derivative of the exact path
patch at zero (jvp and finite differences through the definition as full forwards), and the exact verification
of the top-k senders equals exact path patching."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, random_pairs, tiny_lm

from jaxmech.patching import PatchSpec, batch_pairs, one_hot, path_to_heads, path_to_score, run_patching
from jaxmech.patching.caches import run_cached
from jaxmech.patching.path_attribution import path_attribution_patch, path_verify_top_k

RECEIVERS = ["2.1", "1.3"]


@pytest.fixture(scope="module")
def batch(tiny_model):
    return batch_pairs(random_pairs(2, tiny_model.cfg.d_vocab, seed=4), buckets=(24, 32), max_length=48)


@functools.partial(jax.jit, static_argnames=("receivers", "receiver_input"))
def _path_score(model, inputs, z_base, z_src, pm, layer, head, alpha, receivers=None, receiver_input="k"):
    """The definition: every z frozen to the baseline's, the sender's blended toward the perturbed run's with
    ``alpha`` (all patchable positions); to the score, or through the receivers' inputs (stage 2)."""
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    ivs = [PatchSpec("z", z_base), PatchSpec("z", z_src, one_hot(layer, L), pm, one_hot(head, H), alpha)]
    if receivers is None:
        return model.forward_one(*inputs, interventions=ivs).score
    new = model.forward_one(*inputs, interventions=ivs, capture=frozenset({receiver_input})).cache[receiver_input]
    stage2 = [PatchSpec(receiver_input, new, one_hot(r, L), None, one_hot(h, H)) for r, h in receivers]
    return model.forward_one(*inputs, interventions=stage2).score


@pytest.mark.parametrize("family", ["path_to_score", "path_to_heads"])
def test_estimate_is_the_derivative_of_the_exact_path_patch(tiny_model, batch, family):
    receivers = ((2, 1), (1, 3)) if family == "path_to_heads" else None
    est = path_attribution_patch(tiny_model, batch, family, receivers=RECEIVERS if receivers else ())
    L = 2 if receivers else tiny_model.cfg.n_layers
    assert est.patched.shape == (batch.n_pairs, L, tiny_model.cfg.n_heads)
    np.testing.assert_allclose(est.baseline_score, path_to_score(tiny_model, batch).baseline_score, atol=ENGINE_ATOL,
                               rtol=0)
    _, base = run_cached(tiny_model, *map(jnp.asarray, batch.baseline), capture=frozenset({"z"}))
    _, src = run_cached(tiny_model, *map(jnp.asarray, batch.perturbed), capture=frozenset({"z"}))
    rng = np.random.RandomState(1)
    for p in range(batch.n_pairs):
        inputs = tuple(jnp.asarray(a[p]) for a in batch.baseline)
        pm = jnp.asarray(batch.patchable[p], jnp.float32)
        for layer, head in [(rng.randint(L), rng.randint(tiny_model.cfg.n_heads)) for _ in range(3)]:
            f = lambda a, layer=layer, head=head, inputs=inputs, pm=pm, p=p: _path_score(
                tiny_model, inputs, base["z"][p], src["z"][p], pm, layer, head, a, receivers)
            _, deriv = jax.jvp(f, (0.0,), (1.0,))
            estimate = est.patched[p, layer, head] - est.baseline_score[p]
            np.testing.assert_allclose(estimate, deriv, atol=ENGINE_ATOL, rtol=1e-4)
            eps = 1e-2  # central finite difference: O(eps^2) truncation, so a looser check of the same number
            fd = (float(f(eps)) - float(f(-eps))) / (2 * eps)
            np.testing.assert_allclose(estimate, fd, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("family", ["path_to_score", "path_to_heads"])
def test_exact_top_k_equals_exact_path_patching(tiny_model, batch, family):
    kw = {"receivers": RECEIVERS, "receiver_input": "q"} if family == "path_to_heads" else {}
    est = path_attribution_patch(tiny_model, batch, family, **kw)
    exact = (path_to_heads(tiny_model, batch, RECEIVERS, "q") if kw else path_to_score(tiny_model, batch)).patched
    checked = path_verify_top_k(tiny_model, batch, est, family, k=4, **kw)
    assert [c["pair"] for c in checked] == [0, 1]
    for item in checked:
        p = item["pair"]
        effect = np.abs(est.patched[p] - est.baseline_score[p])
        assert np.all(effect[tuple(item["index"].T)] >= np.sort(effect.ravel())[-4] - 1e-7)  # the top 4 estimates
        np.testing.assert_allclose(item["exact"], exact[p][tuple(item["index"].T)], atol=ENGINE_ATOL, rtol=0)
    m = np.isfinite(exact)
    r = np.corrcoef(exact[m], est.patched[m])[0, 1]
    assert r > 0.5, f"the estimate should track exact path patching on this model (r={r:.3f})"


def test_run_patching_and_sweep_config_accept_attribution_for_path_families(tiny_model):
    from jaxmech.sweeps.config import FamilySection

    lm = tiny_lm(tiny_model, (24, 32), max_length=48)
    pairs = random_pairs(2, tiny_model.cfg.d_vocab, seed=4)
    res = run_patching(lm, pairs, ["path_to_score", "path_to_heads"], method="attribution", metric="raw",
                       receivers=RECEIVERS)
    direct = path_attribution_patch(tiny_model, batch_pairs(pairs, buckets=(24, 32), max_length=48), "path_to_heads",
                                    receivers=RECEIVERS)
    np.testing.assert_allclose(res.raw["path_to_heads"], direct.patched, atol=ENGINE_ATOL, rtol=0)
    assert res.raw["path_to_score"].shape == (2, 3, 5) and res.meta["method"] == "attribution"
    assert FamilySection("path_to_heads", "attribution", 3, ["2.1"]).key == "attribution:path_to_heads"
    with pytest.raises(ValueError, match="not available for path_components_to_heads"):
        FamilySection("path_components_to_heads", "attribution", 0, ["2.1"])
    with pytest.raises(ValueError, match="not available for path_components_to_heads"):
        run_patching(lm, pairs, ["path_components_to_heads"], method="attribution", receivers=RECEIVERS)
