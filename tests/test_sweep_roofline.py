"""FLOPs per patched run in a sweep (`jaxmech.sweeps.roofline`): the counts order the families as the engine's
work does, and the totals follow the sweep's own run counts."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.config import MINILM_L12_H384
from jaxmech.patching.flops import full_forward_flops
from jaxmech.sweeps.config import FamilySection
from jaxmech.sweeps.roofline import run_flops, sweep_flops


def test_run_counts_follow_the_engine_not_a_full_forward():
    c, T = MINILM_L12_H384, 128
    full = full_forward_flops(c, T)
    by_pos = run_flops(c, FamilySection(name="head_by_pos_z"), T)
    all_pos = run_flops(c, FamilySection(name="head_all_pos_v"), T)
    to_score = run_flops(c, FamilySection(name="path_to_score"), T)
    # A restart from the patched layer costs less than a full forward, on average about half of it.
    assert 0.2 * full < by_pos < 0.7 * full and 0.2 * full < all_pos < full
    # path_to_score runs the [CLS] row alone through frozen attention: orders of magnitude less.
    assert to_score < 0.05 * by_pos
    assert run_flops(c, FamilySection(name="head_by_pos_z", method="attribution"), T) == full
    assert run_flops(c, FamilySection(name="heads_joint", groups=[["1.1"]]), T) is None
    assert run_flops(c, FamilySection(name="head_by_pos_z"), 2 * T) > 2 * by_pos  # attention grows as T^2


class _Pair:
    def __init__(self, n):
        self.position_map = np.r_[np.arange(n), -1]


def test_totals_are_runs_times_flops_per_run_plus_the_attribution_backward():
    c, T = MINILM_L12_H384, 64
    fams = [FamilySection(name="head_by_pos_z"), FamilySection(name="head_by_pos_z", method="attribution",
                                                                verify_top_k=2)]
    runs = lambda fam, n, cfg: 7 * n if fam.method == "exact" else 2
    total = sweep_flops(c, fams, [_Pair(3), _Pair(5)], [T, T], runs)
    expect = 7 * 8 * run_flops(c, fams[0], T) + 2 * 2 * full_forward_flops(c, T) + 2 * 3 * full_forward_flops(c, T)
    assert total == pytest.approx(expect, rel=1e-12)
