"""The forwards a sweep starts from (`jaxmech.patching.caches.prepare`): one compiled forward serves the baseline
and perturbed runs when the extra captures are small, each run its own above the limit, and both ways give the
same caches, sources and patching results."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, random_pairs

from jaxmech.patching import activation_patch, batch_pairs, caches, path_to_score
from jaxmech.patching.caches import capture_bytes, prepare, run_cached


def _batch(model, n_pairs, bucket):
    return batch_pairs(random_pairs(n_pairs, model.cfg.d_vocab, seed=8), buckets=(bucket,), max_length=48)


def _compiled_forwards_during(fn):
    """How many new programs `run_cached` compiled while ``fn`` ran, and its result."""
    before = run_cached._cache_size()
    out = fn()
    return run_cached._cache_size() - before, out


def _prepared(model, batch, **kw):
    return prepare(model, batch, base_sites=("z", "attn_out"), source_sites=("z", "mlp_out"), **kw)


def _assert_same(a, b):
    np.testing.assert_allclose(a.baseline_score, b.baseline_score, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(a.perturbed_score, b.perturbed_score, atol=ENGINE_ATOL, rtol=0)
    for name in ("resid_pre", "q", "k", "v"):
        np.testing.assert_allclose(getattr(a.cache, name), getattr(b.cache, name), atol=ENGINE_ATOL, rtol=0)
    assert sorted(a.cache.sites) == sorted(b.cache.sites) == ["attn_out", "z"]
    assert sorted(a.sources) == sorted(b.sources) == ["mlp_out", "z"]
    for name in a.cache.sites:
        np.testing.assert_allclose(a.cache.sites[name], b.cache.sites[name], atol=ENGINE_ATOL, rtol=0)
    for name in a.sources:
        np.testing.assert_allclose(a.sources[name], b.sources[name], atol=ENGINE_ATOL, rtol=0)


def test_small_batches_compile_one_forward_for_both_runs_and_large_ones_two(tiny_model, monkeypatch):
    batch = _batch(tiny_model, 2, 40)  # a bucket no other test uses, so nothing is compiled yet
    n_shared, shared = _compiled_forwards_during(lambda: _prepared(tiny_model, batch))
    assert n_shared == 1
    monkeypatch.setattr(caches, "SHARED_FORWARD_MAX_BYTES", 0)
    n_split, split = _compiled_forwards_during(lambda: _prepared(tiny_model, batch))
    assert n_split == 2  # each run captures only its own sites: two programs
    _assert_same(shared, split)
    # The caches hold what was asked for, not the union the shared forward captured.
    assert shared.cache.q.shape == split.cache.q.shape


def test_the_limit_is_on_the_bytes_the_runs_capture_for_each_other(tiny_model, monkeypatch):
    batch = _batch(tiny_model, 3, 40)
    base = caches.restart_capture(("z",))
    extra = capture_bytes(tiny_model, 3, 40, (base - {"z"}))
    monkeypatch.setattr(caches, "SHARED_FORWARD_MAX_BYTES", extra)
    assert caches.paired_captures(tiny_model, batch, base, frozenset({"z"})) == (base, base)
    monkeypatch.setattr(caches, "SHARED_FORWARD_MAX_BYTES", extra - 1)
    assert caches.paired_captures(tiny_model, batch, base, frozenset({"z"})) == (base, frozenset({"z"}))


@pytest.mark.parametrize("sites", [("z", "pattern", "resid_pre"),
                                   ("mlp_post", "embed", "ln1_scale", "pooler_out", "logits")])
def test_capture_bytes_are_the_captured_arrays_bytes(tiny_model, sites):
    batch = _batch(tiny_model, 2, 32)
    _, cache = run_cached(tiny_model, *map(jnp.asarray, batch.baseline), capture=frozenset(sites))
    assert capture_bytes(tiny_model, 2, 32, sites) == sum(cache[s].nbytes for s in sites)


def test_patching_results_do_not_depend_on_sharing_the_forward(tiny_model, monkeypatch):
    batch = _batch(tiny_model, 2, 40)
    shared = [activation_patch(tiny_model, batch, "head_all_pos_z").patched, path_to_score(tiny_model, batch).patched]
    monkeypatch.setattr(caches, "SHARED_FORWARD_MAX_BYTES", 0)
    split = [activation_patch(tiny_model, batch, "head_all_pos_z").patched, path_to_score(tiny_model, batch).patched]
    for a, b in zip(shared, split, strict=True):
        np.testing.assert_allclose(a, b, atol=ENGINE_ATOL, rtol=0)
