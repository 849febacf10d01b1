"""Scale-aware near-zero denominators and robust aggregation over pairs (issue 13, item 10)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.patching.metrics import normalized_effect, relative_denominator_flags
from jaxmech.patching.summaries import mean_by_token_type, over_pairs, top_heads

BASE = np.zeros(5)
PERT = np.array([1.0, 0.9, 1.1, 0.005, 0.95])  # pair 3: a planted small denominator


@pytest.mark.parametrize("scale", [1.0, 1e-2, 1e3])
def test_the_relative_rule_flags_the_planted_small_denominator_at_any_scale(scale):
    patched = np.full((5, 2), 0.5) * scale
    absolute = normalized_effect(patched, BASE, PERT * scale)  # the absolute 1e-3 misses it on a 1 / 1e3 scale
    relative = normalized_effect(patched, BASE, PERT * scale, relative_min_denominator=0.1)
    assert relative.flagged.tolist() == [False, False, False, True, False]
    assert np.isnan(relative.values[3]).all()
    assert ("median" in relative.reason) == (not absolute.flagged.any())  # the reason names the rule that flagged
    np.testing.assert_array_equal(relative.values[~relative.flagged], absolute.values[~relative.flagged])
    flags, threshold = relative_denominator_flags(BASE, PERT * scale, 0.1)
    assert flags.tolist() == relative.flagged.tolist() and threshold == pytest.approx(0.095 * scale)
    if scale >= 1:
        assert not absolute.flagged.any() and absolute.values[3, 0] == pytest.approx(100.0, rel=1e-5)


def test_the_defaults_are_unchanged_and_the_spread_can_be_restricted():
    patched = np.linspace(0, 1, 10).reshape(5, 2)
    a = normalized_effect(patched, BASE, PERT)
    b = normalized_effect(patched, BASE, PERT, relative_min_denominator=None)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.reason == b.reason == ""
    flags, threshold = relative_denominator_flags(BASE, PERT, 0.5, among=np.array([1, 1, 1, 0, 0], bool))
    assert threshold == pytest.approx(0.5) and flags.tolist() == [False, False, False, True, False]
    assert not relative_denominator_flags(BASE, PERT, 0.5, among=np.zeros(5, bool))[0].any()
    with pytest.raises(ValueError, match=">= 0"):
        relative_denominator_flags(BASE, PERT, -1)


def test_median_and_trimmed_mean_resist_one_huge_effect():
    x = np.ones((10, 2, 3))
    x[0, 1, 2] = 8.0  # one pair with a huge effect
    x[1:3, 0, 0] = np.nan  # missing values are ignored
    x[:, 0, 1] = np.nan  # no pair: NaN
    np.testing.assert_array_equal(over_pairs(x, "mean")[1, 2], 1.7)
    for stat in ("median", "trimmed"):
        got = over_pairs(x, stat)
        assert got[1, 2] == 1.0 and got[0, 0] == 1.0 and np.isnan(got[0, 1])
    assert top_heads(x, 1)[0][0] == "1.2" and top_heads(x, 1, statistic="median")[0][1] == 1.0
    with pytest.raises(ValueError, match="unknown statistic"):
        over_pairs(x, "mode")


def test_by_type_aggregation_with_a_statistic():
    values = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 50.0]])  # [pair, pos]
    types = [["CLS", "Dinj"]] * 3
    mean, count = mean_by_token_type(values, types, types=("CLS", "Dinj"))
    med, count2 = mean_by_token_type(values, types, types=("CLS", "Dinj"), statistic="median")
    assert mean.tolist() == [1.0, 18.0] and med.tolist() == [1.0, 2.0] and count.tolist() == count2.tolist() == [3, 3]
