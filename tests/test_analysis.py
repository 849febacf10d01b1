"""Aggregation of patching results by token type and head ranking."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.analysis import TOKEN_TYPE_ORDER, mean_by_token_type, top_heads


def test_mean_by_token_type_averages_positions_then_pairs():
    # pair 0: positions CLS, Qplus, Dinj, Dinj ; pair 1: CLS, Qsub, Dinj (padded, last position NaN)
    values = np.array([[[1.0, 2.0, 3.0, 5.0]], [[3.0, 7.0, 1.0, np.nan]]])  # [pair, layer=1, pos]
    types = [["CLS", "Qplus", "Dinj", "Dinj"], ["CLS", "Qsub", "Dinj"]]
    mean, count = mean_by_token_type(values, types, pos_axis=2)
    idx = {t: i for i, t in enumerate(TOKEN_TYPE_ORDER)}
    assert mean.shape == (1, len(TOKEN_TYPE_ORDER))
    assert mean[0, idx["CLS"]] == 2.0
    assert mean[0, idx["Dinj"]] == ((3.0 + 5.0) / 2 + 1.0) / 2
    assert mean[0, idx["Qplus"]] == 2.0 and mean[0, idx["Qsub"]] == 7.0
    assert np.isnan(mean[0, idx["Dplus"]])
    assert count[idx["CLS"]] == 2 and count[idx["Qplus"]] == 1 and count[idx["Dplus"]] == 0
    with pytest.raises(ValueError, match="1 token-type lists for 2 pairs"):
        mean_by_token_type(values, types[:1], pos_axis=2)


def test_top_heads_ranks_by_mean_effect_ignoring_nan():
    effect = np.zeros((2, 3, 4))
    effect[:, 2, 1] = [0.2, 0.4]
    effect[0, 1, 3] = np.nan
    effect[1, 1, 3] = 0.5
    ranked = top_heads(effect, k=2)
    assert ranked[0][0] == "1.3" and ranked[0][1] == pytest.approx(0.5)
    assert ranked[1][0] == "2.1" and ranked[1][1] == pytest.approx(0.3)
