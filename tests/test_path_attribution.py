"""Path patching against its definition as interventions on the full forward, and attribution patching
against the exact derivative and exact patches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, random_pairs
from conftest import forward_jit as _forward

from jaxmech.patching import (
    PatchSpec,
    activation_patch,
    attribution_patch,
    batch_pairs,
    one_hot,
    parse_heads,
    path_components_to_heads,
    path_to_heads,
    path_to_score,
    verify_top_k,
)
from jaxmech.patching.caches import run_cached

RECEIVERS = ["2.1", "1.3"]


@pytest.fixture(scope="module")
def batch(tiny_model):
    return batch_pairs(random_pairs(2, tiny_model.cfg.d_vocab, seed=2), buckets=(24, 32), max_length=48)


def _caches(model, batch):
    sites = frozenset({"z", "q", "k", "v", "resid_pre", "attn_out", "mlp_out"})
    _, base = run_cached(model, *map(jnp.asarray, batch.baseline), capture=sites)
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=sites)
    return base, src


def _freeze_and_send(base, src, p, layer, head, L, H, pm):
    return [PatchSpec("z", base["z"][p]), PatchSpec("z", src["z"][p], one_hot(layer, L), pm, one_hot(head, H))]


def _stage2(model, inputs, values, receiver_input, receivers, L, H):
    ivs = [PatchSpec(receiver_input, values, one_hot(r, L), None, one_hot(h, H)) for r, h in receivers]
    return float(_forward(model, *inputs, ivs)[0])


def test_path_to_score_freezes_every_other_head(tiny_model, batch):
    cfg = tiny_model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    base, src = _caches(tiny_model, batch)
    res = path_to_score(tiny_model, batch)
    assert res.patched.shape == (2, L, H)
    for p in range(2):
        inputs = [jnp.asarray(a[p]) for a in batch.baseline]
        pm = jnp.asarray(batch.patchable[p], jnp.float32)
        for layer in range(L):
            for h in range(H):
                score, _ = _forward(tiny_model, *inputs, _freeze_and_send(base, src, p, layer, h, L, H, pm))
                np.testing.assert_allclose(res.patched[p, layer, h], score, atol=ENGINE_ATOL, rtol=0)


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_path_to_heads_is_a_two_stage_patch(tiny_model, batch, receiver_input):
    cfg = tiny_model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    receivers = parse_heads(RECEIVERS)
    base, src = _caches(tiny_model, batch)
    res = path_to_heads(tiny_model, batch, RECEIVERS, receiver_input)
    assert res.patched.shape == (2, 2, H)  # senders below the last receiver layer (2)
    for p in range(2):
        inputs = [jnp.asarray(a[p]) for a in batch.baseline]
        pm = jnp.asarray(batch.patchable[p], jnp.float32)
        for layer in range(2):
            for h in range(H):
                ivs = _freeze_and_send(base, src, p, layer, h, L, H, pm)
                _, c = _forward(tiny_model, *inputs, ivs, frozenset({receiver_input}))
                expected = _stage2(tiny_model, inputs, c[receiver_input], receiver_input, receivers, L, H)
                np.testing.assert_allclose(res.patched[p, layer, h], expected, atol=ENGINE_ATOL, rtol=0)


def test_components_to_heads_patches_only_the_receivers(tiny_model, batch):
    cfg = tiny_model.cfg
    L, H, T = cfg.n_layers, cfg.n_heads, batch.n_pos
    receivers = parse_heads(RECEIVERS)
    base, src = _caches(tiny_model, batch)
    res = path_components_to_heads(tiny_model, batch, RECEIVERS, "k")
    assert res.patched.shape == (2, 3, 2, T)
    total = activation_patch(tiny_model, batch, "block_every").patched
    p = 1
    inputs = [jnp.asarray(a[p]) for a in batch.baseline]
    for c, site in enumerate(("resid_pre", "attn_out", "mlp_out")):
        for layer in range(2):
            for pos in range(0, batch.lengths[p], 3):
                spec = PatchSpec(site, src[site][p], one_hot(layer, L), one_hot(pos, T))
                _, cache = _forward(tiny_model, *inputs, [spec], frozenset({"k"}))
                expected = _stage2(tiny_model, inputs, cache["k"], "k", receivers, L, H)
                np.testing.assert_allclose(res.patched[p, c, layer, pos], expected, atol=ENGINE_ATOL, rtol=0)
    # the path effect is not the total effect (the reference code's double patch would give `total`)
    assert np.nanmax(np.abs(res.patched[:, :, :2] - total[:, :, :2])) > 1e-4


def test_bad_receivers_are_refused(tiny_model, batch):
    with pytest.raises(ValueError, match="LAYER.HEAD"):
        path_to_heads(tiny_model, batch, ["10"])
    with pytest.raises(ValueError, match="out of range"):
        path_to_heads(tiny_model, batch, ["7.1"])
    with pytest.raises(ValueError, match="receiver input"):
        path_to_heads(tiny_model, batch, ["2.1"], "z")


@pytest.mark.parametrize("family", ["head_by_pos_z", "block_every", "head_all_pos_v", "head_by_pos_pattern"])
def test_attribution_is_the_derivative_of_the_patch_at_zero(tiny_model, batch, family):
    """estimate(site) = d score / d alpha at alpha = 0 for the exact patch of that site (checked with jvp on
    the full forward for a sample of sites)."""
    from jaxmech.patching import get_family

    fam = get_family(family)
    cfg = tiny_model.cfg
    L, H, T = cfg.n_layers, cfg.n_heads, batch.n_pos
    est = attribution_patch(tiny_model, batch, family)
    assert est.patched.shape == activation_patch(tiny_model, batch, "mlp_out_all_pos").patched.shape[:1] + \
        fam.shape(L, T, H)
    _, src = run_cached(tiny_model, *map(jnp.asarray, batch.perturbed), capture=frozenset(fam.sites))
    rng = np.random.RandomState(0)
    p = 0
    inputs = [jnp.asarray(a[p]) for a in batch.baseline]
    for c, site in enumerate(fam.sites):
        x = est.patched[p] if len(fam.sites) == 1 else est.patched[p, c]
        for _ in range(4):
            idx = tuple(rng.randint(0, n) for n in x.shape)
            named = dict(zip(fam.layout, idx, strict=True))
            if "p" in named and not batch.patchable[p, named["p"]]:
                continue
            pm = one_hot(named["p"], T) if "p" in named else jnp.asarray(batch.patchable[p], jnp.float32)
            hm = one_hot(named["h"], H) if "h" in named else None

            def score(alpha, site=site, pm=pm, hm=hm, named=named):
                spec = PatchSpec(site, src[site][p], one_hot(named["l"], L), pm, hm, alpha)
                return tiny_model.forward_one(*inputs, interventions=[spec]).score

            _, deriv = jax.jvp(score, (0.0,), (1.0,))
            np.testing.assert_allclose(x[idx] - est.baseline_score[p], deriv, atol=ENGINE_ATOL, rtol=1e-4)


def test_attribution_correlates_with_exact_and_top_k_is_verified_exactly(tiny_model, batch):
    exact = activation_patch(tiny_model, batch, "head_by_pos_z")
    est = attribution_patch(tiny_model, batch, "head_by_pos_z")
    m = np.isfinite(exact.patched)
    assert np.array_equal(m, np.isfinite(est.patched))
    r = np.corrcoef(exact.patched[m], est.patched[m])[0, 1]
    assert r > 0.5, f"attribution should track exact patching on this model (r={r:.3f})"
    checked = verify_top_k(tiny_model, batch, est, "head_by_pos_z", k=5)
    assert len(checked) == 2
    for item in checked:
        p = item["pair"]
        for (layer, pos, head), value in zip(item["index"], item["exact"], strict=True):
            np.testing.assert_allclose(value, exact.patched[p, layer, pos, head], atol=ENGINE_ATOL, rtol=0)
