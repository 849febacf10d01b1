"""A sweep's run folder as a user meets it: chunks that prove their integrity (markers record sizes and
checksums; opening, resuming, `jaxmech verify` and the report notice a missing, truncated or altered chunk),
one writer per folder, configs checked against the model before anything is written, and Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, save_tiny_cross

from jaxmech import results
from jaxmech.results.integrity import IntegrityError
from jaxmech.sweeps import run_sweep
from jaxmech.sweeps.lock import RunLock, RunLockedError

CONFIG = """
[run]
name = "robust"

[model]
path = "{model}"

[[datasets]]
kind = "tfc1"
source = "demo"
sample = 6
seed = 3

[[families]]
name = "{family}"
{extra}

[patching]
metric = "{metric}"

[chunking]
pairs_per_chunk = 2

[[analyses]]
name = "summary"
"""

ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}


def write_config(folder: Path, model: Path, *, family="block_every", extra="", metric="normalized") -> Path:
    path = folder / f"sweep-{family}-{metric}.toml"
    path.write_text(CONFIG.format(model=model, family=family, extra=extra, metric=metric))
    return path


def jaxmech(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxmech.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_path) -> Path:
    return save_tiny_cross(tmp_path_factory.mktemp("model") / "tiny-cross", minilm_path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """A finished 3-chunk run (block_every, 6 pairs, 2 per chunk), computed in this process."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder, tiny_model)
    summary = run_sweep(cfg, out=folder / "run", quiet=True)
    assert summary.complete and summary.chunks_computed == 3
    return cfg, folder / "run"


def chunk_file(run: Path, array: str, chunk: int) -> Path:
    files = sorted((run / "arrays" / array / "c" / str(chunk)).rglob("*"))
    return next(f for f in files if f.is_file())


def test_markers_record_every_stored_file_and_verify_passes(reference):
    _, run = reference
    marker = json.loads((run / "done" / "chunk-000001").read_text())
    assert "effects.block_every/c/1/0/0/0" in marker["files"]
    size, digest = marker["files"]["effects.block_every/c/1/0/0/0"]
    assert size == chunk_file(run, "effects.block_every", 1).stat().st_size and len(digest) == 64
    ok = jaxmech("verify", str(run))
    assert ok.returncode == 0 and "ok: 3/3 chunks complete" in ok.stdout and "sha256" in ok.stdout, ok


def test_missing_truncated_or_altered_chunks_are_noticed_and_a_rerun_repairs_them(tmp_path, reference):
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    chunk_file(run, "effects.block_every", 1).unlink()  # deleted, its marker kept
    truncated = chunk_file(run, "raw.block_every", 2)
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(IntegrityError, match=r"chunk 1: arrays/effects\.block_every/c/1/0/0/0 is missing.*"
                       r"chunk 2: arrays/raw\.block_every/c/2/0/0/0 has \d+ bytes, \d+ were written"):
        results.open(run)
    partial = results.open(run, check=False)
    assert not partial.complete and partial.done.tolist() == [True, True, False, False, False, False]
    bad = jaxmech("verify", str(run))
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "chunk 1" in bad.stderr and "chunk 2" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    report = jaxmech("report", str(run))
    assert report.returncode == 2 and "chunk 1" in report.stderr and "Traceback" not in report.stderr
    logs = []
    summary = run_sweep(cfg, out=run, quiet=True, log=logs.append)
    assert summary.complete and summary.chunks_computed == 2 and summary.chunks_resumed == 1
    assert any("2 of 3 completed chunks fail their check" in line and "recomputing" in line for line in logs)
    for get in (lambda r: r["block_every"], lambda r: r.raw("block_every")):
        assert np.asarray(get(results.open(run))).tobytes() == np.asarray(get(results.open(ref))).tobytes()
    # A byte changed in place keeps the size: opening (sizes only) passes, `jaxmech verify` (sha256) does not.
    altered = chunk_file(run, "effects.block_every", 0)
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF
    altered.write_bytes(bytes(data))
    assert results.open(run).complete
    bad = jaxmech("verify", str(run))
    assert bad.returncode == 1 and "does not match its sha256" in bad.stderr


def test_a_locked_run_folder_is_refused_naming_its_holder(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, metric="difference")
    out = tmp_path / "run"
    with RunLock(out):
        busy = jaxmech("sweep", str(cfg), "--out", str(out), "--quiet")
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(out).acquire()
    assert busy.returncode == 2 and len(busy.stderr.strip().splitlines()) == 1
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in busy.stderr and "another --out" in busy.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, the lock removed on release


def test_the_lock_of_a_killed_sweep_is_taken_over(tmp_path):
    out = tmp_path / "run"
    code = (f"from jaxmech.sweeps.lock import RunLock; import os; RunLock({str(out)!r}).acquire(); "
            "os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", code], env=ENV, timeout=120)
    assert killed.returncode == -signal.SIGKILL and (out / ".lock").exists()
    logs: list[str] = []
    lock = RunLock(out).acquire(logs.append)
    try:
        assert lock.locked and "taking over the lock left by a sweep that has ended" in logs[0]
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (out / ".lock").exists()


def test_config_errors_against_the_model_come_before_anything_is_written_and_without_jax(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, family="path_to_heads", extra='receivers = ["99.99"]')
    out = tmp_path / "run"
    code = ("import sys; from jaxmech.cli import main; rc = main(sys.argv[1:]); "
            "print('jax imported' if 'jax' in sys.modules else 'no jax'); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "sweep", str(cfg), "--out", str(out)], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout.strip() == "no jax", res
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "[[families]][0] (path_to_heads): receiver head 99.99 is out of range" in res.stderr
    assert str(cfg) in res.stderr and not out.exists()


def test_an_unwritable_out_is_one_line_before_compute(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model)
    (tmp_path / "file").write_text("x")
    res = jaxmech("sweep", str(cfg), "--out", str(tmp_path / "file" / "run"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot create the run folder" in res.stderr and "Traceback" not in res.stderr


def test_ctrl_c_stops_between_chunks_keeps_them_and_a_rerun_resumes(tmp_path, tiny_model, reference, monkeypatch,
                                                                     capsys):
    import jaxmech.sweeps.compute as compute
    from jaxmech.cli import main

    real = compute.compute_chunk
    calls = []

    def compute_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during the first chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(compute, "compute_chunk", compute_then_ctrl_c)
    cfg, ref = reference
    out = tmp_path / "run"
    try:
        rc = main(["sweep", str(cfg), "--out", str(out), "--quiet"])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the command ignores a further Ctrl-C as it exits
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(calls) == 1
    assert err[-1] == (f"jaxmech sweep: interrupted after the chunk in progress: 1/3 chunks complete and kept in "
                       f"{out}; rerun the same command to resume")
    assert "Ctrl-C again to stop at once" in err[-2]
    monkeypatch.setattr(compute, "compute_chunk", real)
    summary = run_sweep(cfg, out=out, quiet=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the sweep restored the handler
    assert summary.complete and summary.chunks_resumed == 1 and summary.chunks_computed == 2
    assert np.asarray(results.open(out)["block_every"]).tobytes() == np.asarray(
        results.open(ref)["block_every"]).tobytes()


def test_rerunning_a_finished_sweep_skips_steps_whose_inputs_did_not_change(tmp_path, reference):
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    summary_json = run / "analyses" / "summary.json"
    before = summary_json.stat().st_mtime_ns
    logs: list[str] = []
    summary = run_sweep(cfg, out=run, quiet=True, log=logs.append)
    assert summary.chunks_computed == 0 and summary.steps["summary"] == summary_json
    assert any("step summary: inputs unchanged" in line for line in logs) and summary_json.stat().st_mtime_ns == before
    summary_json.unlink()  # its output gone: the step runs again
    logs.clear()
    run_sweep(cfg, out=run, quiet=True, log=logs.append)
    assert any(line.startswith("sweep: step summary done") for line in logs) and summary_json.exists()
    record = json.loads((run / "steps.json").read_text())
    assert record["summary"]["output"] == "analyses/summary.json" and len(record["summary"]["inputs"]) == 64


@pytest.mark.parametrize("family, extra, message", [
    ("heads_joint", 'groups = [["0.1", "5.0"]]', r"\[\[families\]\]\[0\] \(heads_joint\): .*5\.0"),
    ("block_every", '[background]\nablate = ["9.0"]', r"\[background\] .*9"),
    ("block_every", '[patching]\nreadout = "attn:7.1:CLS->Dinj"',
     r"\[patching\] readout 'attn:7\.1:CLS->Dinj.*layer 7 is out of range"),
])
def test_what_depends_on_the_model_is_checked_before_anything_is_written(tmp_path, tiny_model, family, extra,
                                                                        message):
    cfg = write_config(tmp_path, tiny_model, family=family, extra=extra)
    if "[patching]" in extra:  # one [patching] table
        text = cfg.read_text().replace('[patching]\nreadout = "attn:7.1:CLS->Dinj"\n', "")
        cfg.write_text(text.replace('[patching]\n', '[patching]\nreadout = "attn:7.1:CLS->Dinj"\n'))
    with pytest.raises(ValueError, match=message):
        run_sweep(cfg, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
