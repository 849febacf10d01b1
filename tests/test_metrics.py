"""Patching metrics."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.patching import apply_metric, normalized_effect, rank_change


def test_normalized_effect_is_zero_at_baseline_and_one_at_perturbed():
    patched = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    r = normalized_effect(patched, np.array([0.0, 5.0]), np.array([2.0, 5.0 + 1e-6]))
    np.testing.assert_allclose(r.values[0], [0.0, 0.5, 1.0], atol=0, rtol=1e-7)
    assert r.flagged.tolist() == [False, True] and r.n_flagged == 1
    assert np.isnan(r.values[1]).all() and "perturbed - baseline" in r.reason
    np.testing.assert_allclose(r.mean(), [0.0, 0.5, 1.0], atol=0, rtol=1e-7)


def test_rank_change_counts_places_gained():
    # candidates of pair 0 score 3, 1, -1; the doc is at 0 (rank 3) and at 2.5 when patched (rank 2)
    r = rank_change(np.array([[2.5, 4.0, np.nan]]), np.array([0.0]), np.array([[3.0, 1.0, -1.0]]))
    np.testing.assert_array_equal(r.values[0, :2], [1.0, 2.0])
    assert np.isnan(r.values[0, 2])


def test_named_and_custom_metrics():
    patched, b, p = np.array([[1.0, 3.0]]), np.array([1.0]), np.array([3.0])
    np.testing.assert_array_equal(apply_metric("difference", patched, b, p).values, [[0.0, 2.0]])
    np.testing.assert_array_equal(apply_metric("raw", patched, b, p).values, patched)
    custom = apply_metric(lambda x, b, p: x * 2, patched, b, p)
    np.testing.assert_array_equal(custom.values, patched * 2)
    with pytest.raises(ValueError, match="unknown metric"):
        apply_metric("nope", patched, b, p)
    with pytest.raises(ValueError, match="candidate_scores"):
        apply_metric("rank_change", patched, b, p)
