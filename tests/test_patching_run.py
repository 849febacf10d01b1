"""The run API: one call over many pairs and families, chunked with fixed shapes, with progress and stop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import ENGINE_ATOL, random_pairs, tiny_lm

from jaxmech.patching import REGISTRY, PatchingResult, activation_patch, batch_pairs, run_patching
from jaxmech.patching.run import check_request
from jaxmech.patching.runners import RUNNER_OPTIONS, run_family, runner


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_lm(tiny_model)


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return random_pairs(5, tiny_model.cfg.d_vocab, seed=3)


FAMS = ["resid_pre_by_pos", "head_all_pos_z", "path_to_score"]


def test_every_registered_family_declares_axes_and_a_runner():
    for fam in REGISTRY.values():
        assert callable(runner(fam)), fam.name
        assert len(fam.axes) == len(fam.full_layout) and fam.description
    assert REGISTRY["block_every"].axes == ("component", "layer", "pos")
    assert REGISTRY["path_components_to_heads"].axes == ("component", "layer", "pos")


def test_run_family_refuses_an_unknown_option_and_knows_every_option_a_run_passes():
    with pytest.raises(TypeError, match="recievers"):
        run_family("path_to_heads", None, None, recievers=["1.0"])  # before the model or batch is touched
    assert set(check_request(["path_to_heads"], receivers=["1.0"])[0].options()) <= RUNNER_OPTIONS


def test_run_matches_the_per_batch_sweep(lm, pairs):
    res = run_patching(lm, pairs, ["head_by_pos_z"], metric="raw")
    direct = activation_patch(lm.model, batch_pairs(pairs, buckets=(16,)), "head_by_pos_z")
    np.testing.assert_array_equal(res.raw["head_by_pos_z"], direct.patched)
    assert res.axes["head_by_pos_z"] == ("pair", "layer", "pos", "head")
    assert res.pairs["name"] == [p.name for p in pairs] and res.pairs["done"].all()


def test_fixed_shape_chunks_give_the_same_results_and_report_progress(lm, pairs):
    whole = run_patching(lm, pairs, FAMS)
    seen = []
    chunked = run_patching(lm, pairs, FAMS, pairs_per_chunk=2, steps_per_call=2, chunk_size=3,
                           progress=lambda p: seen.append((p.pairs_done, p.chunks_done, p.chunks_total)))
    assert seen == [(2, 1, 3), (4, 2, 3), (5, 3, 3)]
    for fam in FAMS:  # patched scores agree to the engine's tolerance (batch shapes change the summation order)
        a, b = whole.raw[fam], chunked.raw[fam]
        assert a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(b, a, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(chunked.pairs["score_baseline"], whole.pairs["score_baseline"], atol=ENGINE_ATOL, rtol=0)


def test_progress_returning_false_stops_between_chunks(lm, pairs, tmp_path):
    res = run_patching(lm, pairs, ["head_all_pos_z"], pairs_per_chunk=2, progress=lambda p: False)
    assert res.meta["stopped"] and res.pairs["done"].tolist() == [True, True, False, False, False]
    assert np.isnan(res.effects["head_all_pos_z"][2:]).all() and not np.isnan(res.effects["head_all_pos_z"][:2]).all()
    back = PatchingResult.load(res.save(tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.effects["head_all_pos_z"], res.effects["head_all_pos_z"])


@pytest.mark.parametrize("families, options, message", [
    (["nope"], {}, "unknown patching family 'nope'"),
    (["heads_joint"], {"method": "attribution", "groups": [["1.1"]]}, "not available for heads_joint"),
    (["path_to_heads"], {}, "needs --receiver"),
    (["block_every"], {"metric": "ratio"}, "unknown metric"),
])
def test_bad_requests_are_refused_before_any_model_work(families, options, message):
    with pytest.raises((KeyError, ValueError), match=message):
        check_request(families, **options)


def test_pairs_with_nothing_patched_are_flagged_and_the_summary_is_strict_json(lm, pairs):
    import dataclasses
    import json

    from jaxmech.patching.run import summarize

    dead = dataclasses.replace(pairs[0], position_map=[-1] * len(pairs[0].baseline_ids), name="dead")
    res = run_patching(lm, [dead, pairs[1]], ["head_all_pos_z", "resid_pre_by_pos"])
    assert res.pairs["flagged"].tolist() == [True, False] and res.pairs["no_result"].tolist() == [True, False]
    assert np.isnan(res.effects["head_all_pos_z"][0]).all()
    s = summarize(res)
    assert s["flagged_no_result"] == ["dead"] and s["flagged_near_zero_denominator"] == 0
    assert s["metric"]["name"] == "normalized" and "mean" in s["top_heads_statistic"]
    only_dead = summarize(run_patching(lm, [dead], ["head_all_pos_z"]))
    json.dumps(only_dead, allow_nan=False)  # no -Infinity
    assert only_dead["top_heads"]["head_all_pos_z"][0][1] is None
    assert "every pair is flagged" in only_dead["warnings"][0]


def test_relative_denominator_rule_flags_small_denominators_and_robust_aggregation_ranks_heads(lm, pairs, tmp_path):
    from jaxmech.patching.run import summarize

    default = run_patching(lm, pairs, ["head_all_pos_z"])
    d = np.abs(default.pairs["score_perturbed"].astype(np.float64) - default.pairs["score_baseline"])
    rel = run_patching(lm, pairs, ["head_all_pos_z"], relative_min_denominator=1.0)  # below the median: flagged
    small = d < np.median(d)
    assert small.any() and (rel.pairs["flagged"] == (small | default.pairs["flagged"])).all()
    assert np.isnan(rel.effects["head_all_pos_z"][small]).all()
    kept = ~rel.pairs["flagged"]
    np.testing.assert_array_equal(rel.effects["head_all_pos_z"][kept], default.effects["head_all_pos_z"][kept])
    assert rel.meta["relative_denominator_threshold"] == pytest.approx(np.median(d))
    assert "relative_min_denominator" not in default.meta and "aggregate" not in default.meta
    median = run_patching(lm, pairs, ["head_all_pos_z"], aggregate="median")
    np.testing.assert_array_equal(median.effects["head_all_pos_z"], default.effects["head_all_pos_z"])
    s = summarize(median)
    assert "median" in s["top_heads_statistic"]
    from jaxmech.analysis import top_heads

    assert s["top_heads"]["head_all_pos_z"][0][0] == top_heads(default.effects["head_all_pos_z"], 1,
                                                               statistic="median")[0][0]
    with pytest.raises(ValueError, match="unknown aggregate"):
        run_patching(lm, pairs, ["head_all_pos_z"], aggregate="mode")


def test_sigint_sets_the_flag_only_while_installed_and_the_run_stops_after_the_chunk(lm, pairs):
    import os
    import signal

    from jaxmech.patching.run import InterruptibleProgress

    before = signal.getsignal(signal.SIGINT)
    calls = []

    def send_sigint_once(event):
        calls.append(event.pairs_done)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during the first chunk

    with InterruptibleProgress(send_sigint_once) as tracker:
        assert signal.getsignal(signal.SIGINT) != before
        res = run_patching(lm, pairs, ["head_all_pos_z"], pairs_per_chunk=2, progress=tracker)
    assert signal.getsignal(signal.SIGINT) == before
    assert tracker.interrupted and calls == [2] and tracker.last.pairs_done == 2
    assert res.meta["stopped"] and res.pairs["done"].tolist() == [True, True, False, False, False]


def test_on_step_names_each_family_of_each_chunk_and_the_patch_heartbeat_prints_it(lm, pairs, capsys):
    import time

    from jaxmech.patching.run import InterruptibleProgress

    steps: list[str] = []
    run_patching(lm, pairs, FAMS, pairs_per_chunk=2, steps_per_call=2, chunk_size=3, on_step=steps.append)
    assert len(steps) == 3 * len(FAMS)
    assert steps[0].startswith("chunk 1/3 (2 pairs of length ") and steps[0].endswith("family resid_pre_by_pos (1/3)")
    assert steps[-1].startswith("chunk 3/3 (1 pairs of length ") and steps[-1].endswith("family path_to_score (3/3)")
    with InterruptibleProgress(bar=True, sigint=False, heartbeat=0.05) as tracker:
        time.sleep(0.2)
        assert capsys.readouterr().err == ""  # nothing is being computed yet: no heartbeat
        tracker.step(steps[4])
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert f"patch: computing {steps[4]}, 0s so far" in err


def test_one_request_runs_families_with_their_own_options_as_separate_runs_do(lm, pairs):
    from jaxmech.patching.run import FamilyRequest, run_values

    fams = [FamilyRequest(REGISTRY["path_to_heads"], receivers=("2.1",), receiver_input="v", key="p_v"),
            FamilyRequest(REGISTRY["path_to_heads"], receivers=((1, 0),), key="p_k"),
            FamilyRequest(REGISTRY["head_all_pos_z"], method="attribution")]
    res = run_patching(lm, pairs, fams, pairs_per_chunk=2)
    assert res.families == ["p_v", "p_k", "head_all_pos_z"] and res.axes["p_v"] == ("pair", "layer", "head")
    steps = []
    values = run_values(lm, pairs, check_request(fams), pairs_per_chunk=2, on_step=steps.append)
    assert len(steps) % 3 == 0 and "family p_k (2/3)" in steps[1]
    for request, options in zip(fams, [dict(receivers=["2.1"], receiver_input="v"), dict(receivers=["1.0"]),
                                       dict(method="attribution")], strict=True):
        alone = run_patching(lm, pairs, [request.family.name], pairs_per_chunk=2, **options)
        np.testing.assert_array_equal(res.raw[request.key], alone.raw[request.family.name])
        np.testing.assert_array_equal(values.effects[request.key], alone.effects[request.family.name])
    with pytest.raises(ValueError, match="two results of one name"):
        check_request([fams[0], dataclasses.replace(fams[1], key="p_v")])
    with pytest.raises(ValueError, match="receiver head 9.1 is out of range"):
        check_request([dataclasses.replace(fams[0], receivers=("9.1",))], model_shape=(3, 4))
