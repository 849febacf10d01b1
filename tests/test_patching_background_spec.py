"""Backgrounds given as interventions (`PatchSpec`): families run by full forwards
(`jaxmech.patching.engines.full_forward`), checked against the folded head-ablation path and a loop of full forwards
with both interventions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, forward_jit, random_pairs, tiny_lm, zero_ablation_specs

from jaxmech.interventions import PatchSpec, one_hot
from jaxmech.patching import run_patching
from jaxmech.patching.background import Ablation, resolve_background

HEADS = ["0.1", "1.3", "1.4", "2.0"]
T = 32  # every pair in one bucket: background PatchSpecs have the padded length


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_lm(tiny_model, (T,))


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return random_pairs(2, tiny_model.cfg.d_vocab, seed=5)


def blend_spec(model):
    """A background no ablation can express: resid_mid of layer 1 halfway toward a random vector."""
    cfg = model.cfg
    src = np.random.RandomState(3).normal(size=(cfg.n_layers, T, cfg.d_model)).astype(np.float32)
    return PatchSpec("resid_mid", jnp.asarray(src), one_hot(1, cfg.n_layers), alpha=jnp.float32(0.5))


def padded(p, which):
    ids = p.baseline_ids if which == "baseline" else p.perturbed_ids
    tt = p.baseline_token_type_ids if which == "baseline" else p.perturbed_token_type_ids
    n = len(ids)
    out = [np.zeros(T, np.int32) for _ in range(3)]
    out[0][:n], out[1][:n], out[2][:n] = ids, tt, 1
    return tuple(map(jnp.asarray, out))


def test_zero_ablation_as_patchspecs_equals_the_folded_path(lm, pairs):
    """Full forwards with the zero ablation written as PatchSpecs = the restarted engine on the folded model."""
    fams = ["head_all_pos_z", "resid_pre_by_pos"]
    spec = run_patching(lm, pairs, fams, metric="raw", background=zero_ablation_specs(lm.model, HEADS, T))
    folded = run_patching(lm, pairs, fams, metric="raw", background=Ablation(tuple(HEADS)))
    for f in fams:
        np.testing.assert_allclose(spec.raw[f], folded.raw[f], atol=ENGINE_ATOL, rtol=0)
    for key in ("score_baseline", "score_perturbed"):
        np.testing.assert_allclose(spec.pairs[key], folded.pairs[key], atol=ENGINE_ATOL, rtol=0)
    plain = forward_jit(lm.model, *padded(pairs[0], "baseline"), [])[0]
    assert abs(float(plain) - spec.pairs["score_baseline"][0]) > 1e-3  # the background matters
    assert spec.meta["background"]["interventions"] == [{"type": "PatchSpec", "site": "z"}] * 3
    assert "full forward" in spec.meta["background"]["interventions_method"]


def test_patchspec_background_equals_a_loop_of_full_forwards(lm, pairs):
    """A mean ablation (folded) plus a resid_mid blend (full forwards), head_by_pos_v: each patched score equals
    one full forward with the ablation's HeadAblations, the blend and the patch (vmapped chunks = a loop)."""
    model, L, H = lm.model, lm.model.cfg.n_layers, lm.model.cfg.n_heads
    ablation = Ablation(("1.3", "2.0"), "mean")
    blend = blend_spec(model)
    res = run_patching(lm, pairs, ["head_by_pos_v"], metric="raw", background=[ablation, blend], chunk_size=7)
    assert res.meta["background"]["ablations"][0]["kind"] == "mean"
    bg = [*resolve_background(model, pairs, ablation).interventions(), blend]
    for i, p in enumerate(pairs):
        base, pert = padded(p, "baseline"), padded(p, "perturbed")
        score_b = forward_jit(model, *base, bg)[0]
        score_p, src = forward_jit(model, *pert, bg, capture=frozenset({"v"}))
        np.testing.assert_allclose(res.pairs["score_baseline"][i], score_b, atol=ENGINE_ATOL, rtol=0)
        np.testing.assert_allclose(res.pairs["score_perturbed"][i], score_p, atol=ENGINE_ATOL, rtol=0)
        n = len(p.baseline_ids)
        got = res.raw["head_by_pos_v"][i]
        assert np.isfinite(got[:, :n - 1]).all()
        for layer in range(L):
            for pos in (0, n // 2, n - 2):
                for head in range(H):
                    patch = PatchSpec("v", src["v"], one_hot(layer, L), one_hot(pos, T), one_hot(head, H))
                    ref = forward_jit(model, *base, [*bg, patch])[0]
                    np.testing.assert_allclose(got[layer, pos, head], ref, atol=ENGINE_ATOL, rtol=0)
    only_ablation = forward_jit(model, *padded(pairs[0], "baseline"), bg[:-1])[0]
    assert abs(float(only_ablation) - res.pairs["score_baseline"][0]) > 1e-3  # the blend matters


def test_unsupported_requests_are_refused(lm, pairs, tmp_path):
    from jaxmech.patching.run import patch

    spec = blend_spec(lm.model)
    with pytest.raises(ValueError, match="path_to_score.*activation families only"):
        run_patching(lm, pairs, ["path_to_score"], background=spec)
    with pytest.raises(ValueError, match="exact patching only"):
        run_patching(lm, pairs, ["head_all_pos_z"], method="attribution", background=spec)
    with pytest.raises(TypeError, match="neither an Ablation nor an intervention"):
        run_patching(lm, pairs, ["head_all_pos_z"], background=[spec, "9.1"])
    with pytest.raises(TypeError, match="command line"):  # files/CLI/sweeps: head ablations only
        patch(tmp_path / "model", ["head_all_pos_z"], background=spec)
