"""Precision as an explicit setting of every patching entry point, the run API and ``jaxmech patch``: checked
before any work, traced with the requested matmul precision (fp32 by default), recorded with the device."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_pairs, tiny_lm

from jaxmech import runtime
from jaxmech.patching import (
    PatchingResult,
    activation_patch,
    attribution_patch,
    batch_pairs,
    path_components_to_heads,
    path_to_heads,
    path_to_score,
    run_patching,
    verify_top_k,
)
from jaxmech.patching.run import check_request, summarize


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_lm(tiny_model)


@pytest.fixture(scope="module")
def batch(tiny_model):
    return batch_pairs(random_pairs(2, tiny_model.cfg.d_vocab, seed=5), buckets=(16,))


ENTRY_POINTS = {
    "activation_patch": lambda m, b, **kw: activation_patch(m, b, "head_all_pos_z", **kw),
    "attribution_patch": lambda m, b, **kw: attribution_patch(m, b, "head_all_pos_z", **kw),
    "path_to_score": lambda m, b, **kw: path_to_score(m, b, **kw),
    "path_to_heads": lambda m, b, **kw: path_to_heads(m, b, [(2, 1)], "k", **kw),
    "path_components_to_heads": lambda m, b, **kw: path_components_to_heads(m, b, [(2, 1)], "k", **kw),
}


@pytest.fixture()
def seen(monkeypatch):
    """The precision in effect whenever a patching module prepares its baseline and perturbed runs."""
    import jaxmech.patching.activation as activation
    import jaxmech.patching.attribution as attribution
    import jaxmech.patching.path as path

    calls = []
    for module in (activation, attribution, path):
        original = module.prepare

        def spy(*a, original=original, **kw):
            calls.append(runtime.current_precision())
            return original(*a, **kw)

        monkeypatch.setattr(module, "prepare", spy)
    return calls


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_points_run_in_fp32_by_default_and_in_the_mode_asked_for(tiny_model, batch, seen, entry):
    run = ENTRY_POINTS[entry]
    default = run(tiny_model, batch)
    assert seen and set(seen) == {"fp32"}
    seen.clear()
    fast = run(tiny_model, batch, precision="bf16")
    assert seen and set(seen) == {"bf16"}
    np.testing.assert_array_equal(fast.patched, default.patched)  # XLA:CPU computes every mode in fp32
    seen.clear()
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid: fp32, tf32, bf16x3, bf16"):
        run(tiny_model, batch, precision="fp16")
    assert seen == []  # refused before any model work


def test_verify_top_k_takes_the_precision_too(tiny_model, batch, seen):
    est = attribution_patch(tiny_model, batch, "head_all_pos_z")
    seen.clear()
    verify_top_k(tiny_model, batch, est, "head_all_pos_z", k=2, precision="tf32")
    assert seen and set(seen) == {"tf32"}


def test_run_api_records_precision_and_device(lm, seen, tmp_path):
    pairs = random_pairs(3, lm.model.cfg.d_vocab, seed=4)
    res = run_patching(lm, pairs, ["head_all_pos_z", "path_to_score"], precision="tf32")
    assert seen and set(seen) == {"tf32"}  # nested entry points inherit the run's precision
    assert res.meta["precision"] == "tf32"
    device = {**runtime.describe_device(), "matmul_precision": "tf32"}  # described inside the run
    assert res.meta["device"] == device and isinstance(res.meta["compilation_cache"]["enabled"], bool)
    summary = summarize(res)
    assert summary["device"] == runtime.device_line() and summary["precision"] == "tf32"
    loaded = PatchingResult.load(res.save(tmp_path / "r.npz"))
    assert loaded.meta["precision"] == "tf32" and loaded.meta["device"]["platform"] == res.meta["device"]["platform"]
    assert run_patching(lm, pairs, ["path_to_score"]).meta["precision"] == "fp32"


def test_bad_precision_is_refused_by_the_request_check():
    with pytest.raises(ValueError, match=r"^--precision: unknown precision 'highest'"):
        check_request(["path_to_score"], precision="highest")
    assert check_request(["path_to_score"], precision="bf16x3")


def test_patch_command_refuses_a_bad_precision_in_one_line(capsys):
    from jaxmech.cli import main

    args = ["patch", "--model", "packaged", "--family", "path_to_score", "--query", "q", "--baseline-doc", "a"]
    args += ["--perturbed-doc", "b", "--out", "x.npz", "--precision", "fp16"]
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything is imported or loaded
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--precision" in err and "fp16" in err and len(err.strip().splitlines()) == 1
