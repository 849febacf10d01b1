"""Patching invariants: empty patch = baseline, full patch = source, sweep = loop of single patches,
jit = eager, causality, alignment and padding, several devices = one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, REPO, random_pairs
from conftest import forward_jit as _forward

from jaxmech.patching import (
    FAMILIES,
    AlignedPair,
    AlignmentError,
    PatchSpec,
    activation_patch,
    align_with_filler,
    batch_pairs,
    get_family,
    one_hot,
    reverse_batch,
)
from jaxmech.patching.caches import run_cached
from jaxmech.sites import BLOCK_ORDER, LAYER_SITES


@pytest.fixture(scope="module")
def batch(tiny_model):
    return batch_pairs(random_pairs(2, tiny_model.cfg.d_vocab, seed=1), buckets=(24, 32), max_length=48)


def _inputs(batch, p, which="baseline"):
    return [jnp.asarray(a[p]) for a in getattr(batch, which)]


def _source(model, batch, sites):
    return run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset(sites))[1]


def test_zero_mask_reproduces_the_unpatched_run_bit_for_bit(tiny_model, batch):
    """Op by op (eager) the blend with w = 0 returns its input exactly, at every site. Under jit the patched
    and clean programs are fused differently by XLA (reductions may be reordered), so there the check is
    the engine tolerance."""
    L, T = tiny_model.cfg.n_layers, batch.n_pos
    src = _source(tiny_model, batch, LAYER_SITES)
    ivs = [PatchSpec(s, src[s][0], jnp.zeros(L), jnp.zeros(T)) for s in LAYER_SITES]
    capture = frozenset(LAYER_SITES)
    with jax.disable_jit():
        clean = tiny_model.forward_one(*_inputs(batch, 0), capture=capture)
        patched = tiny_model.forward_one(*_inputs(batch, 0), capture=capture, interventions=ivs)
    assert float(patched.score) == float(clean.score)
    for s in LAYER_SITES:
        np.testing.assert_array_equal(patched.cache[s], clean.cache[s], err_msg=s)
    clean_score, _ = _forward(tiny_model, *_inputs(batch, 0), [])
    score, _ = _forward(tiny_model, *_inputs(batch, 0), ivs)
    np.testing.assert_allclose(score, clean_score, atol=ENGINE_ATOL, rtol=0)


@pytest.mark.parametrize("site", ["embed_sum", "resid_pre", "resid_mid", "normalized_resid_mid", "resid_post",
                                  "normalized_resid_post"])
def test_full_patch_of_a_residual_cut_reproduces_the_source_run(tiny_model, batch, site):
    """Every path from the input to the score crosses these sites, so patching them everywhere gives the
    source run (other sites, e.g. z, are not cuts: the residual stream carries the input around them)."""
    src = _source(tiny_model, batch, [site])
    score, _ = _forward(tiny_model, *_inputs(batch, 0), [PatchSpec(site, src[site][0])])
    pert_score, _ = _forward(tiny_model, *_inputs(batch, 0, "perturbed"), [])
    np.testing.assert_allclose(score, pert_score, atol=ENGINE_ATOL, rtol=0)
    base_score, _ = _forward(tiny_model, *_inputs(batch, 0), [])
    assert abs(float(pert_score) - float(base_score)) > 1e-3, "the pair must differ for this test to mean much"


def test_every_site_patched_from_the_source_gives_the_source_run_exactly(tiny_model, batch):
    src = _source(tiny_model, batch, LAYER_SITES)
    ivs = [PatchSpec(s, src[s][0]) for s in LAYER_SITES]
    score, _ = _forward(tiny_model, *_inputs(batch, 0), ivs)
    pert_score, _ = _forward(tiny_model, *_inputs(batch, 0, "perturbed"), [])
    np.testing.assert_allclose(score, pert_score, atol=ENGINE_ATOL, rtol=0)


def test_jit_equals_eager(tiny_model, batch):
    L, H, T = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, batch.n_pos
    src = _source(tiny_model, batch, ["z"])
    spec = PatchSpec("z", src["z"][0], one_hot(1, L), one_hot(5, T), one_hot(2, H), alpha=0.7)
    eager = tiny_model.forward_one(*_inputs(batch, 0), interventions=[spec]).score
    jitted, _ = _forward(tiny_model, *_inputs(batch, 0), [spec])
    np.testing.assert_allclose(jitted, eager, atol=ENGINE_ATOL, rtol=0)


def test_a_patch_at_layer_l_leaves_everything_before_it_unchanged(tiny_model, batch):
    L = tiny_model.cfg.n_layers
    src = _source(tiny_model, batch, ["mlp_pre"])
    capture = frozenset(LAYER_SITES)
    _, clean = _forward(tiny_model, *_inputs(batch, 0), [], capture)
    _, patched = _forward(tiny_model, *_inputs(batch, 0), [PatchSpec("mlp_pre", src["mlp_pre"][0], one_hot(1, L))],
                          capture)
    patched_at = BLOCK_ORDER.index("mlp_pre")
    for s in LAYER_SITES:
        np.testing.assert_array_equal(patched[s][0], clean[s][0], err_msg=f"{s} at layer 0")
        if BLOCK_ORDER.index(s) < patched_at:
            np.testing.assert_array_equal(patched[s][1], clean[s][1], err_msg=f"{s} at layer 1")
    assert not np.array_equal(patched["mlp_out"][1], clean["mlp_out"][1])
    assert not np.array_equal(patched["resid_pre"][2], clean["resid_pre"][2])


def _loop_reference(model, batch, family):
    """Each patch of a family as its own full forward with a one-hot PatchSpec (the definition)."""
    fam = get_family(family)
    cfg = model.cfg
    src = _source(model, batch, fam.sites)
    out = np.full((batch.n_pairs, len(fam.sites), cfg.n_layers, batch.n_pos, cfg.n_heads), np.nan)
    for p in range(batch.n_pairs):
        inputs = _inputs(batch, p)
        for c, site in enumerate(fam.sites):
            for layer in range(cfg.n_layers):
                for pos in (np.nonzero(batch.patchable[p])[0] if fam.per_pos else [None]):
                    for h in (range(cfg.n_heads) if fam.per_head else [None]):
                        pm = (one_hot(pos, batch.n_pos) if pos is not None
                              else jnp.asarray(batch.patchable[p], jnp.float32))
                        hm = one_hot(h, cfg.n_heads) if h is not None else None
                        spec = PatchSpec(site, src[site][p], one_hot(layer, cfg.n_layers), pm, hm)
                        score, _ = _forward(model, *inputs, [spec])
                        out[p, c, layer, pos or 0, h or 0] = float(score)
    return out


def _as_canonical(result, family, n_layers, n_pos, n_heads):
    fam = get_family(family)
    x = result.patched if len(fam.sites) > 1 else result.patched[:, None]
    full = np.full((x.shape[0], x.shape[1], n_layers, n_pos, n_heads), np.nan)
    for idx in np.ndindex(*x.shape[2:]):
        named = dict(zip(fam.layout, idx, strict=True))
        full[:, :, named["l"], named.get("p", 0), named.get("h", 0)] = x[(slice(None), slice(None), *idx)]
    return full


@pytest.mark.parametrize("family", ["block_every", "head_all_pos_v", "head_all_pos_z", "head_by_pos_z",
                                    "head_by_pos_pattern", "head_by_pos_q", "head_by_pos_k", "head_all_pos_pattern",
                                    "resid_mid_by_pos", "normalized_resid_post_all_pos", "head_by_pos_result"])
def test_vmapped_restarted_sweep_equals_a_loop_of_single_patches(tiny_model, batch, family):
    cfg = tiny_model.cfg
    result = activation_patch(tiny_model, batch, family, chunk_size=7)  # odd chunk: padding items too
    expected = _loop_reference(tiny_model, batch, family)
    got = _as_canonical(result, family, cfg.n_layers, batch.n_pos, cfg.n_heads)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), "patched exactly the patchable sites"
    np.testing.assert_allclose(got, expected, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(result.baseline_score, [_forward(tiny_model, *_inputs(batch, p), [])[0]
                                                       for p in range(2)], atol=ENGINE_ATOL, rtol=0)


def test_result_shapes_follow_transformerlens(tiny_model, batch):
    L, H, T = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, batch.n_pos
    expected = {"block_every": (3, L, T), "head_all_pos_v": (L, H), "head_by_pos_z": (L, T, H),
                "head_by_pos_pattern": (L, H, T), "head_all_pos_every": (5, L, H), "head_by_pos_every": (5, L, T, H),
                "attn_out_by_pos": (L, T), "mlp_out_all_pos": (L,)}
    for name, shape in expected.items():
        assert FAMILIES[name].shape(L, T, H) == shape


def test_padding_and_unaligned_positions_are_never_patched(tiny_model):
    pairs = random_pairs(2, tiny_model.cfg.d_vocab, seed=3)
    # pair 1: an explicit map where two positions have no counterpart
    p = pairs[1]
    pmap = list(p.position_map)
    pmap[3] = pmap[4] = -1
    pairs[1] = AlignedPair(p.baseline_ids, p.baseline_token_type_ids, p.perturbed_ids, p.perturbed_token_type_ids,
                           pmap, "m")
    batch = batch_pairs(pairs, buckets=(32,))
    res = activation_patch(tiny_model, batch, "resid_pre_by_pos")
    for i, pair in enumerate(pairs):
        n = len(pair.baseline_ids)
        assert np.isnan(res.patched[i, :, n:]).all()
        assert np.isfinite(res.patched[i, :, :n][:, np.asarray(pair.position_map) >= 0]).all()
    assert np.isnan(res.patched[1, :, [3, 4]]).all()


def test_explicit_position_map_takes_the_source_from_the_mapped_position(tiny_model):
    """A perturbed input with one token inserted; the map skips it, so patching baseline position i takes
    the perturbed activation at map[i]."""
    rng = np.random.RandomState(5)
    q = list(rng.randint(10, 200, 3))
    d = list(rng.randint(10, 200, 8))
    base = [1, *q, 2, *d, 2]
    pert = [1, *q, 2, 99, *d, 2]
    pmap = list(range(len(q) + 2)) + [i + 1 for i in range(len(q) + 2, len(base))]
    tt_b = [0] * (len(q) + 2) + [1] * (len(d) + 1)
    tt_p = [0] * (len(q) + 2) + [1] * (len(d) + 2)
    batch = batch_pairs([AlignedPair(base, tt_b, pert, tt_p, pmap)], buckets=(16,))
    res = activation_patch(tiny_model, batch, "resid_pre_by_pos")
    src = _source(tiny_model, batch, ["resid_pre"])["resid_pre"][0]
    L, T = tiny_model.cfg.n_layers, batch.n_pos
    for layer, pos in ((0, 7), (2, 3)):
        aligned = src.at[:, pos].set(src[:, pmap[pos]])
        spec = PatchSpec("resid_pre", aligned, one_hot(layer, L), one_hot(pos, T))
        score, _ = _forward(tiny_model, *_inputs(batch, 0), [spec])
        np.testing.assert_allclose(res.patched[0, layer, pos], score, atol=ENGINE_ATOL, rtol=0)
    with pytest.raises(AlignmentError, match="one-to-one"):
        activation_patch(tiny_model, batch, "head_by_pos_pattern")


def test_reverse_direction_swaps_the_runs(tiny_model, batch):
    fwd = activation_patch(tiny_model, batch, "attn_out_all_pos")
    rev = activation_patch(tiny_model, batch, "attn_out_all_pos", reverse=True)
    np.testing.assert_allclose(rev.baseline_score, fwd.perturbed_score, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(rev.perturbed_score, fwd.baseline_score, atol=ENGINE_ATOL, rtol=0)
    twice = reverse_batch(reverse_batch(batch))
    np.testing.assert_array_equal(twice.position_map, batch.position_map)


def test_filler_alignment_follows_the_paper(tokenizer):
    pair = align_with_filler(tokenizer, "what is the acceptance rate at wellesley",
                             "College acceptance rates in the USA are becoming more competitive.",
                             "College acceptance rates in the USA are becoming more competitive. wellesley")
    assert len(pair.baseline_ids) == len(pair.perturbed_ids) == 22
    assert pair.baseline_ids[-3:] == [1012, 1037, 102]  # '.', filler 'a', [SEP]
    assert pair.is_identity
    diff = [i for i, (a, b) in enumerate(zip(pair.baseline_ids, pair.perturbed_ids, strict=True)) if a != b]
    assert diff == [20]
    with pytest.raises(AlignmentError, match="empty"):
        align_with_filler(tokenizer, "q", "", "doc")


def test_four_devices_give_the_same_results_as_one(tiny_cross_dir, tmp_path):
    """Runs the same sweeps in a subprocess with 4 forced CPU devices (items sharded over them)."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import json, sys, numpy as np, jax
sys.path.insert(0, {str(REPO / 'tests')!r})
from conftest import random_pairs
from jaxmech.hf.loading import load_model
from jaxmech.patching import activation_patch, batch_pairs, path_to_score
lm = load_model({str(tiny_cross_dir)!r}, use_cache=False)
batch = batch_pairs(random_pairs(3, lm.model.cfg.d_vocab, seed=4), buckets=(24, 32), max_length=48)
out = {{"devices": jax.device_count()}}
for fam in ("head_by_pos_z", "block_every"):
    out[fam] = activation_patch(lm.model, batch, fam, chunk_size=8).patched.tolist()
out["path_to_score"] = path_to_score(lm.model, batch, chunk_size=8).patched.tolist()
print(json.dumps(out))
""")
    results = []
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert results[0]["devices"] == 1 and results[1]["devices"] == 4
    for key in ("head_by_pos_z", "block_every", "path_to_score"):
        np.testing.assert_allclose(np.array(results[1][key], float), np.array(results[0][key], float),
                                   atol=ENGINE_ATOL, rtol=0, err_msg=key)
