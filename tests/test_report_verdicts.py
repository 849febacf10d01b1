"""Verdict rules that must come out both ways: matching heads (a detector-confirmed third stage, or two stages,
or not run), one outlier pair (flagged by the relative floor, not by the absolute one), wrong-sign pairs, per
dataset judgements and merged word pieces."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.analysis.circuit import circuit_from_effects
from jaxmech.patching.summaries import mean_by_token_type
from jaxmech.plot.view import PairView, pair_flags
from jaxmech.report.build import judged_views
from jaxmech.report.compare import compare_all, compare_matching
from jaxmech.report.synthetic import synthetic_run

L6 = "my/minilm-l6-cross"


def _circuit(stage3_detector: float, *, stage2_detector: float = 0.0, stages=3) -> dict:
    """A 6 x 4 circuit: scoring 5.1, contextual 3.2 (E5 into 5.1), stage-3 head 1.3 with the given detector score."""
    e4, e5a, e5b = np.zeros((6, 4)), np.full((6, 4), np.nan), np.full((6, 4), np.nan)
    e4[5, 1] = 0.3
    e5a[:5] = 0.0
    e5a[3, 2], e5a[2, 0] = 0.2, 0.001  # 2.0 is below a tenth of the stage's largest effect
    e5b[:3] = 0.0
    e5b[1, 3] = 0.04
    det = np.zeros((6, 4))
    det[1, 3], det[3, 2] = stage3_detector, stage2_detector
    return circuit_from_effects(e4, e5a if stages >= 2 else None, e5b if stages >= 3 else None, detector=det,
                                thresholds={"contextual_query": 0.0005}, model=L6)


def _run_with(circuit: dict):
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    run.analyses["circuit"] = circuit
    return run


def test_relative_floor_and_detector_select_roles():
    c = _circuit(0.4)
    assert c["roles"] == {"relevance_scoring": ["5.1"], "contextual_query": ["3.2"], "matching": ["1.3"]}
    assert c["stages_run"] == ["relevance_scoring", "contextual_query", "matching"]
    c = _circuit(0.01)  # stage 3's head is not an exact-match head: left out, listed as rejected
    assert c["roles"]["matching"] == [] and [(h["layer"], h["head"]) for h in c["rejected"]] == [(1, 3)]
    old = circuit_from_effects(np.eye(6, 4) * 0.3, relative_floor=0.0)  # the rule before: absolute only
    assert old["roles"]["relevance_scoring"] == ["0.0", "1.1", "2.2", "3.3"]
    e4 = np.eye(6, 4) * 0.3
    e4[0, 0] = 6.0  # one dominant head: the others are below a tenth of it
    assert circuit_from_effects(e4)["roles"]["relevance_scoring"] == ["0.0"]


def test_matching_verdict_agrees_differs_or_not_run():
    run = _run_with(_circuit(0.4))
    c = compare_matching(_src(run), 6)
    assert c.verdict == "agrees in kind", c
    run = _run_with(_circuit(0.01, stage2_detector=0.5))
    c = compare_matching(_src(run), 6)
    assert c.verdict == "differs in kind" and "two stages" in c.ours and "3.2" in c.ours, c
    run = _run_with(_circuit(0.4, stages=1))
    c = compare_matching(_src(run), 6)
    assert c.verdict == "not in this run", c
    # an older circuit file: stage-3 heads stored with detector scores near 0 are not confirmed
    old = {"heads": [{"layer": 5, "head": 1, "role": "relevance_scoring", "effect": 0.3},
                     {"layer": 1, "head": 8, "role": "matching", "effect": 0.009, "detector_score": 0.002}],
           "effects": {"path_to_heads_contextual": [[0.0]]}}
    assert compare_matching(_src(_run_with(old)), 6).verdict == "differs in kind"


def _src(run):
    from jaxmech.results.source import open_results

    return open_results(run)


def _outlier_run():
    """Six pairs planting the E4 scoring heads in the last layers; pair 1 changes its score by 0.002 only and
    has huge effects at head 0.3 (as the STMC1 pair of issue 18)."""
    run = synthetic_run(n_pairs=6, seq=10, n_layers=6, n_heads=12, model=L6)
    sb, sp = run.pairs["score_baseline"], run.pairs["score_perturbed"]
    sp[1] = sb[1] + 0.002
    run.arrays["path_to_score"].values[1, 0, 3] = 9.65 * 6
    return run


def test_one_pair_cannot_flip_a_verdict_under_the_relative_floor():
    run = _outlier_run()
    pooled_mean = judged_views(_src(run), aggregate="mean", relative_floor=None, wrong_sign=False,
                               merge_pieces="mean", per_dataset=False)
    v = {c.key: c.verdict for c in compare_all(run, views=pooled_mean)}
    assert v["scoring_heads"] == "differs in kind"  # the old rule: 0.002 > 1e-3, so the pair counts
    v = {c.key: c.verdict for c in compare_all(run, views=judged_views(_src(run)))}
    assert v["scoring_heads"] == "agrees in kind"
    flags = pair_flags(run.pairs)
    assert flags.counts()["flagged_small_change"] == 1 and flags.small[1]


def test_wrong_sign_pairs_are_flagged_per_dataset():
    run = synthetic_run(n_pairs=6, seq=10, n_layers=6, n_heads=4, model=L6)
    run.pairs["dataset"] = np.array(["tfc1"] * 3 + ["stmc1"] * 3)
    sb, sp = run.pairs["score_baseline"], run.pairs["score_perturbed"]
    sp[4] = sb[4] - 2.0  # the perturbation lowered the score: normalized effects reverse meaning
    f = pair_flags(run.pairs)
    assert np.flatnonzero(f.wrong_sign).tolist() == [4]
    assert not pair_flags(run.pairs, wrong_sign=False).wrong_sign.any()
    views = judged_views(_src(run))
    assert [label for label, _ in views] == ["tfc1", "stmc1"]
    assert views[1][1].flags.counts() == {"pairs": 3, "kept": 2, "flagged_stored": 0, "flagged_small_change": 0,
                                          "flagged_wrong_sign": 1}
    keys = [c.key for c in compare_all(run, views=views)]
    assert "scoring_heads[tfc1]" in keys and "block_every[stmc1]" in keys
    with pytest.raises(ValueError, match="no dataset 'lnc1'"):
        PairView(_src(run), dataset="lnc1")


def test_split_term_pieces_are_merged():
    types = [["CLS", "Qplus", "Qplus", "SEP1", "Dother", "Dinj", "Dinj", "SEP2"]]
    values = np.array([[0.0, 0.8, 0.0, 0.0, 0.1, 0.9, 0.1, 0.0]])
    order = ("Qplus", "Dinj", "Dother")
    mean, _ = mean_by_token_type(values, types, types=order)
    assert mean == pytest.approx([0.4, 0.5, 0.1])  # each piece a position: the term's effect halves
    assert mean_by_token_type(values, types, types=order, merge_pieces="max")[0] == pytest.approx([0.8, 0.9, 0.1])
    assert mean_by_token_type(values, types, types=order, merge_pieces="sum")[0] == pytest.approx([0.8, 1.0, 0.1])
    two = [["Dplus", "Dother", "Dplus", "Dplus"]]  # two occurrences: pieces merged, occurrences averaged
    m, _ = mean_by_token_type(np.array([[0.2, 0.0, 0.5, 0.1]]), two, types=("Dplus",), merge_pieces="max")
    assert m == pytest.approx([0.35])


def _soft_tf_run(tfc2_curve):
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    for d in run.analyses["soft_tf"]["tfc2"]["heads"].values():
        d["mean"] = list(tfc2_curve)
        d["lo"], d["hi"] = [v - 0.01 for v in tfc2_curve], [v + 0.01 for v in tfc2_curve]
    return run


def test_tfc2_saturation_is_judged_from_tf1():
    sat = [0.0, 0.5, 0.67, 0.75, 0.8, 0.83]  # tf / (tf + 1): saturates
    lin = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # rises linearly: the old test (first step from tf = 0) passed it
    v = {c.key: c.verdict for c in compare_all(_soft_tf_run(sat))}
    assert v["soft_tf_tfc2"] == "agrees in kind"
    v = {c.key: c.verdict for c in compare_all(_soft_tf_run(lin))}
    assert v["soft_tf_tfc2"] == "differs in kind"
    jump = [0.0, 0.6, 0.6, 0.6, 0.6, 0.6]  # all of the rise from tf = 0 (by construction): no rise from tf = 1
    assert {c.key: c.verdict for c in compare_all(_soft_tf_run(jump))}["soft_tf_tfc2"] == "differs in kind"


def test_u0_sign_is_tested_sign_free():
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    a = run.analyses["idf_svd"]
    a["u0_idf_pearson"], a["u0_idf_pearson_sign_free"] = -0.9, -0.9
    assert {c.key: c.verdict for c in compare_all(run)}["u0_idf"] == "agrees in kind"
    a["u0_idf_pearson_sign_free"] = 0.9  # same oriented r (negative by construction), opposite sign-free sign
    assert {c.key: c.verdict for c in compare_all(run)}["u0_idf"] == "partly agrees in kind"
    del a["u0_idf_pearson_sign_free"]  # an older file: the sign is not tested at all
    c = next(c for c in compare_all(run) if c.key == "u0_idf")
    assert c.verdict == "agrees in kind" and "sign not tested" in c.criterion


def _verdict(run, key):
    return next(c for c in compare_all(run) if c.key == key)


def test_one_share_rule_for_e2_and_e4():
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    assert _verdict(run, "head_all_pos_v").verdict == "agrees in kind"
    spread = run.arrays["head_all_pos_v"].values
    spread[:, :4, :] += 0.07  # 16 more heads at 0.07: the top 3 now carry ~25% of the positive effect
    c = _verdict(run, "head_all_pos_v")
    assert c.verdict == "differs in kind" and "one rule for E2 and E4" in c.criterion, c
    assert c.values["top_share_of_positive_effect"] < 0.3


@pytest.mark.parametrize("r, verdict", [(0.7, "agrees in kind"), (0.35, "partly agrees in kind"),
                                        (0.1, "differs in kind")])
def test_linear_fit_in_kind_needs_a_strong_fit(r, verdict):
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    a = run.analyses["linear_bm25"]
    a["test_pearson"], a["bm25_test_pearson"], a["random_features_test_pearson"] = r, 0.0, 0.0
    assert _verdict(run, "linear_r").verdict == verdict


def test_stmc1_needs_an_effect_size_not_only_a_sign():
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    assert _verdict(run, "soft_tf_stmc1").verdict == "agrees in kind"
    for d in run.analyses["soft_tf"]["stmc1"]["heads"].values():  # filler, synonym, exact
        d["mean"], d["lo"], d["hi"] = [0.10, 0.105, 0.43], [0.1, 0.104, 0.42], [0.1, 0.106, 0.44]
    c = _verdict(run, "soft_tf_stmc1")  # the synonym gains ~1.5% of the exact match's attention
    assert c.verdict == "differs in kind" and "1.5%" in c.ours, c


def test_lnc1_change_uses_a_paired_interval():
    from jaxmech.analysis.soft_tf import head_curves, paired_change

    rng = np.random.default_rng(0)
    n_docs, offsets = 12, rng.normal(0, 0.2, 12)  # documents differ a lot; each drops by 0.05 +- 0.005
    x = [0, 4] * n_docs
    groups = [g for g in range(n_docs) for _ in range(2)]
    values = np.zeros((2 * n_docs, 1, 1))
    values[0::2, 0, 0] = 0.5 + offsets
    values[1::2, 0, 0] = 0.45 + offsets + rng.normal(0, 0.005, n_docs)
    pc = paired_change(values, x, groups, 0, 4, [(0, 0)])
    curves = head_curves(values, x, [0, 4], [(0, 0)])["heads"]
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    run.analyses["soft_tf"]["lnc1"].update(x=[0, 4], heads={"0.0": {k: list(v) for k, v in curves["0.0"].items()}})
    assert _verdict(run, "soft_tf_lnc1").verdict == "differs in kind"  # unpaired: the drop is inside the bands
    run.analyses["soft_tf"]["lnc1"]["paired_change"] = pc
    c = _verdict(run, "soft_tf_lnc1")
    assert c.verdict == "agrees in kind" and "paired" in c.criterion, c
    assert pc["heads"]["0.0"]["mean"] == pytest.approx(-0.05, abs=0.005) and pc["heads"]["0.0"]["n"] == n_docs


def test_e5_receivers_off_the_runs_own_e4_are_warned_about():
    from jaxmech.report.build import receiver_warnings

    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, n_heads=4, model=L6)
    assert receiver_warnings(_src(run)) == []  # the synthetic E5 receives at its top E4 head
    for fam in run.meta["config"]["families"]:
        if fam["receivers"]:
            fam["receivers"] = ["0.0"]
    w = receiver_warnings(_src(run))
    assert w and "receivers 0.0 are not among this run's E4 top heads" in w[0]


def test_report_counts_and_lists_the_pairs_left_out(tmp_path):
    import json

    from jaxmech.report.build import build_report

    page = build_report(_outlier_run(), tmp_path, score_demo=False)
    left = json.loads((tmp_path / "numbers.json").read_text())["pairs_left_out"]["all"]
    assert (left["pairs"], left["kept"], left["flagged_small_change"]) == (6, 5, 1)
    assert [p["why"] for p in left["left_out"]] == ["small change"] and left["left_out"][0]["pair"] == "q1/d1"
    html = page.read_text()
    assert "Pairs left out" in html and "q1/d1 (+0.0020: small change)" in html
    assert "10%-trimmed mean over 5 of 6 pairs; 1 flagged" in html  # the statistic, as on every figure


def test_the_earlier_rules_stay_reachable():
    run = _outlier_run()
    src = _src(run)
    old = PairView(src, statistic="mean", relative_floor=0, wrong_sign=False, merge_pieces="mean")
    for fam in ("path_to_score", "head_all_pos_v"):
        np.testing.assert_allclose(old.pair_mean(fam)[0].values, src.pair_mean(fam)[0].values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(old.by_token_type("block_every").values, src.by_token_type("block_every").values,
                               rtol=0, atol=1e-12)
    new = PairView(src)
    assert not np.allclose(new.pair_mean("path_to_score")[0].values, src.pair_mean("path_to_score")[0].values)
