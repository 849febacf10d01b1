"""Background interventions: heads ablated in both runs of a sweep, checked against full forwards with the
ablation written as interventions (zero: plain `PatchSpec` s; mean: `HeadAblation`) and numpy means."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, forward_jit, random_pairs, tiny_lm, zero_ablation_specs

from jaxmech.interventions import PatchSpec, one_hot
from jaxmech.patching import run_patching
from jaxmech.patching.background import Ablation, as_ablations, parse_ablation, resolve_background

HEADS = ["0.1", "1.3", "1.4", "2.0"]


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_lm(tiny_model, (32,))


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return random_pairs(2, tiny_model.cfg.d_vocab, seed=5)


def arrays(p, which):
    ids = p.baseline_ids if which == "baseline" else p.perturbed_ids
    tt = p.baseline_token_type_ids if which == "baseline" else p.perturbed_token_type_ids
    return jnp.asarray(ids), jnp.asarray(tt), jnp.ones(len(ids), jnp.int32)


def test_declarations_are_checked():
    assert parse_ablation("9.1, 9.2", "mean").heads == ((9, 1), (9, 2))
    with pytest.raises(ValueError, match="LAYER.HEAD"):
        Ablation(("9",))
    with pytest.raises(ValueError, match="kind"):
        Ablation(("1.1",), kind="resample")
    with pytest.raises(ValueError, match="site"):
        Ablation(("1.1",), site="v")
    with pytest.raises(ValueError, match="twice"):
        as_ablations([Ablation(("1.1",)), Ablation(("1.1",), "mean")])
    with pytest.raises(TypeError, match="PatchSpec"):
        as_ablations([PatchSpec("z", jnp.zeros(3))])


def test_out_of_range_head_is_refused(lm, pairs):
    with pytest.raises(ValueError, match="ablated head 3.0 is out of range"):
        run_patching(lm, pairs, ["head_all_pos_z"], background=Ablation(("3.0",)))


@pytest.mark.parametrize("site", ["z", "result"])
def test_folded_model_equals_the_interventions(tiny_model, pairs, site):
    bg = resolve_background(tiny_model, pairs, Ablation(tuple(HEADS), "mean", site))
    folded = bg.fold(tiny_model)
    for p in pairs:
        ids, tt, mask = arrays(p, "perturbed")
        ref, ref_cache = forward_jit(tiny_model, ids, tt, mask, bg.interventions(), capture=frozenset({"resid_post"}))
        got, got_cache = forward_jit(folded, ids, tt, mask, [], capture=frozenset({"resid_post"}))
        np.testing.assert_allclose(got, ref, atol=ENGINE_ATOL, rtol=0)
        np.testing.assert_allclose(got_cache["resid_post"], ref_cache["resid_post"], atol=ENGINE_ATOL, rtol=0)
    if site == "z":  # zero ablation: the folded model equals the hand-written PatchSpecs
        zero = resolve_background(tiny_model, pairs, Ablation(tuple(HEADS))).fold(tiny_model)
        ids, tt, mask = arrays(pairs[0], "baseline")
        ref, _ = forward_jit(tiny_model, ids, tt, mask, zero_ablation_specs(tiny_model, HEADS, len(ids)))
        got, _ = forward_jit(zero, ids, tt, mask, [])
        np.testing.assert_allclose(got, ref, atol=ENGINE_ATOL, rtol=0)
        assert abs(float(got) - float(forward_jit(tiny_model, ids, tt, mask, [])[0])) > 1e-3  # the ablation matters


def test_mean_ablation_means_are_numpy_means(tiny_model, pairs, lm):
    bg = resolve_background(tiny_model, pairs, [Ablation(("1.3", "2.0"), "mean"), Ablation(("0.1",), "zero")])
    captured, n = [], 0
    for p in pairs:
        for which in ("baseline", "perturbed"):
            _, cache = forward_jit(tiny_model, *arrays(p, which), [], capture=frozenset({"z"}))
            captured.append(np.asarray(cache["z"], np.float64))  # [layer, pos, head, d_head], real tokens only
            n += captured[-1].shape[1]
    mean = np.concatenate(captured, axis=1).mean(axis=1)
    mask, value = bg.values["z"]
    np.testing.assert_allclose(value[1, 3], mean[1, 3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(value[2, 0], mean[2, 0], atol=1e-6, rtol=0)
    assert not value[0, 1].any() and mask.sum() == 3 and bg.n_tokens == n
    # Padding never counts: the same pairs padded to a longer bucket give the same means.
    longer = resolve_background(tiny_model, pairs, Ablation(("1.3",), "mean"), buckets=(40,))
    np.testing.assert_allclose(longer.values["z"][1][1, 3], mean[1, 3], atol=1e-6, rtol=0)
    meta = run_patching(lm, pairs, ["head_all_pos_z"], background=Ablation(("1.3",), "mean")).meta["background"]
    assert meta["mean_tokens"] == n and np.allclose(meta["means"]["z"]["1.3"], mean[1, 3], atol=1e-6)


def _block_every_reference(model, p, heads, positions):
    """Block patching at ``positions`` by full forwards, the zero ablation as PatchSpecs in both runs (NaN
    elsewhere)."""
    ids, tt, mask = arrays(p, "baseline")
    T, L = len(ids), model.cfg.n_layers
    bg = zero_ablation_specs(model, heads, T)
    sites = ("resid_pre", "attn_out", "mlp_out")
    _, src = forward_jit(model, *arrays(p, "perturbed"), bg, capture=frozenset(sites))
    out = np.full((3, L, T), np.nan, np.float32)
    for c, site in enumerate(sites):
        for layer in range(L):
            for pos in positions:
                spec = PatchSpec(site, src[site], one_hot(layer, L), one_hot(pos, T))
                out[c, layer, pos] = forward_jit(model, ids, tt, mask, [*bg, spec])[0]
    return out


def _path_to_score_reference(model, p, heads):
    """Path patching to the score by full forwards: every z frozen to the (ablated) baseline's but the sender's."""
    ids, tt, mask = arrays(p, "baseline")
    T, L, H = len(ids), model.cfg.n_layers, model.cfg.n_heads
    bg = zero_ablation_specs(model, heads, T)
    z_base = forward_jit(model, ids, tt, mask, bg, capture=frozenset({"z"}))[1]["z"]
    z_pert = forward_jit(model, *arrays(p, "perturbed"), bg, capture=frozenset({"z"}))[1]["z"]
    out = np.zeros((L, H), np.float32)
    for layer in range(L):
        for head in range(H):
            frozen = z_base.at[layer, :, head].set(z_pert[layer, :, head])
            out[layer, head] = forward_jit(model, ids, tt, mask, [*bg, PatchSpec("z", frozen)])[0]
    return out


def test_zero_background_equals_manual_patchspec_runs(lm, pairs):
    """The restarted engine (block patching, dirty rows, CLS-only last block) and path patching's frozen runs,
    with the background: equal to full forwards with the ablation and the patch as PatchSpecs."""
    res = run_patching(lm, pairs, ["block_every", "path_to_score"], metric="raw", background=Ablation(tuple(HEADS)))
    p = pairs[0]  # references for one pair (its own length: one compile per intervention structure)
    T = len(p.baseline_ids)
    positions = [0, 1, T // 2, T - 2, T - 1]  # CLS, first query token, a document token, the last two
    ref = _block_every_reference(lm.model, p, HEADS, positions)
    np.testing.assert_allclose(res.raw["block_every"][0][..., positions], ref[..., positions], atol=ENGINE_ATOL,
                               rtol=0)
    assert np.isfinite(res.raw["block_every"][0, :, :, :T - 1]).all()
    np.testing.assert_allclose(res.raw["path_to_score"][0], _path_to_score_reference(lm.model, p, HEADS),
                               atol=ENGINE_ATOL, rtol=0)
    for i, q in enumerate(pairs):
        zero = zero_ablation_specs(lm.model, HEADS, len(q.baseline_ids))
        base = forward_jit(lm.model, *arrays(q, "baseline"), zero)[0]
        np.testing.assert_allclose(res.pairs["score_baseline"][i], base, atol=ENGINE_ATOL, rtol=0)
        plain = forward_jit(lm.model, *arrays(q, "baseline"), [])[0]
        assert abs(float(plain) - float(base)) > 1e-3  # the background matters
    assert res.meta["background"]["ablations"] == [{"heads": HEADS, "kind": "zero", "site": "z"}]
    plain = run_patching(lm, pairs, ["path_to_score"], metric="raw")  # same shapes: no new compile
    assert "background" not in plain.meta


def test_mean_background_restarted_heads_equal_full_forwards(lm, pairs):
    """Head families (k/v reach every row; z by position) with a mean ablation: restarted = full forward with
    the HeadAblation interventions and the patch."""
    ablation = Ablation(("1.3", "2.0"), "mean")
    bg = resolve_background(lm.model, pairs, ablation)
    res = run_patching(lm, pairs, ["head_all_pos_v", "head_by_pos_z"], metric="raw", background=ablation)
    model, L, H = lm.model, lm.model.cfg.n_layers, lm.model.cfg.n_heads
    p = pairs[0]
    ids, tt, mask = arrays(p, "baseline")
    T = len(ids)
    _, src = forward_jit(model, *arrays(p, "perturbed"), bg.interventions(), capture=frozenset({"v", "z"}))
    for layer in range(L):
        for head in range(H):
            spec = PatchSpec("v", src["v"], one_hot(layer, L), None, one_hot(head, H))
            ref = forward_jit(model, ids, tt, mask, [*bg.interventions(), spec])[0]
            np.testing.assert_allclose(res.raw["head_all_pos_v"][0, layer, head], ref, atol=ENGINE_ATOL, rtol=0)
            for pos in (0, T - 2):
                spec = PatchSpec("z", src["z"], one_hot(layer, L), one_hot(pos, T), one_hot(head, H))
                ref = forward_jit(model, ids, tt, mask, [*bg.interventions(), spec])[0]
                np.testing.assert_allclose(res.raw["head_by_pos_z"][0, layer, pos, head], ref, atol=ENGINE_ATOL,
                                           rtol=0)
