"""`jaxmech sweep`: results equal the library's, streamed to disk; a SIGKILL and a rerun give bit-identical
results; a changed config refuses to resume; two jax.distributed processes give the same results as one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ENGINE_ATOL, REPO, save_tiny_cross

from jaxmech import results
from jaxmech.sweeps import ResumeError, load_sweep_config, run_sweep

CONFIG = """
[run]
name = "tiny"

[model]
path = "{model}"

[[datasets]]
kind = "tfc1"
source = "demo"
sample = {sample}
seed = 3

[[families]]
name = "block_every"

[[families]]
name = "path_to_score"

[[families]]
name = "head_by_pos_z"
method = "attribution"
verify_top_k = 2

[patching]
metric = "{metric}"

[chunking]
pairs_per_chunk = 2

[[analyses]]
name = "summary"
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer cross-encoder with random weights (std 0.3, so scores differ) and the MiniLM tokenizer."""
    return save_tiny_cross(tmp_path_factory.mktemp("model") / "tiny-cross", minilm_path)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Subprocess environment: this checkout first, one persistent compilation cache for the module."""
    cache = tmp_path_factory.mktemp("cache")
    e = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "JAXMECH_CACHE": str(cache),
        "JAXMECH_COMPILATION_CACHE": "1",  # the suite turns it off in-process (tests/conftest.py)
        "HF_HUB_OFFLINE": "1",
    }
    os.environ["JAXMECH_CACHE"] = str(cache)  # the in-process runs share it
    return e


def write_config(folder: Path, model: Path, *, sample: int = 6, metric: str = "normalized") -> Path:
    path = folder / "sweep.toml"
    path.write_text(CONFIG.format(model=model, sample=sample, metric=metric))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, env):
    """An uninterrupted in-process run."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder, tiny_model)
    summary = run_sweep(cfg, out=folder / "run", quiet=True)
    assert summary.complete
    return cfg, folder / "run"


def sweep_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxmech.cli", "sweep", str(cfg), "--out", str(out), "--quiet", *extra]


def assert_identical_runs(a: Path, b: Path) -> None:
    ra, rb = results.open(a), results.open(b)
    assert ra.complete and rb.complete and ra.families == rb.families
    for fam in ra.families:
        for get in (lambda r, f=fam: r[f], lambda r, f=fam: r.raw(f)):
            x, y = np.asarray(get(ra)), np.asarray(get(rb))
            assert x.shape == y.shape and x.dtype == y.dtype
            assert x.tobytes() == y.tobytes(), f"{fam}: not bit-identical"
    for col in ("score_baseline", "score_perturbed", "flagged", "qid", "doc_id", "index"):
        assert ra.pairs[col].tobytes() == rb.pairs[col].tobytes(), col
    va, vb = ra.verify("attribution:head_by_pos_z"), rb.verify("attribution:head_by_pos_z")
    for part in ("index", "estimated", "exact"):
        assert va[part].tobytes() == vb[part].tobytes(), part


def test_results_match_the_library_and_read_lazily(reference, tiny_model):
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching
    from jaxmech.sweeps.plan import plan_sweep

    cfg_path, out = reference
    run = results.open(out)
    n = run.meta["n_pairs"]
    assert run.families == ["block_every", "path_to_score", "attribution:head_by_pos_z"]
    x = run["block_every"]
    T = run.meta["T_max"]
    assert x.dims == ("pair", "component", "layer", "pos") and x.shape == (n, 3, 2, T)
    assert run["path_to_score"].dims == ("pair", "layer", "head") and run["path_to_score"].shape == (n, 2, 2)
    assert run["attribution:head_by_pos_z"].dims == ("pair", "layer", "pos", "head")
    assert np.asarray(x[1:3]).shape == (2, 3, 2, T)
    assert len(run.pairs["token_types"][0]) == run.pairs["length"][0]
    assert "summary" in run.analyses and run.meta["model"]["weights_sha256"]
    assert run.meta["datasets"][0]["pairs"] == n == 6
    verify = run.verify("attribution:head_by_pos_z")
    assert verify["exact"].shape == (n, 1, 2) and np.isfinite(verify["exact"]).all()
    # Each pair run alone by the library (no chunking, one call per bucket) gives the stored values.
    lm = load_model(tiny_model)
    plan = plan_sweep(load_sweep_config(cfg_path), lm)
    for i in (0, n - 1):
        res = run_patching(lm, [plan.pairs[i]], ["block_every", "path_to_score"])
        for fam in ("block_every", "path_to_score"):
            stored, want = np.asarray(run.raw(fam)[i]), res.raw[fam][0]
            np.testing.assert_allclose(stored[tuple(slice(0, s) for s in want.shape)], want, atol=ENGINE_ATOL, rtol=0)
            stored, want = np.asarray(run[fam][i]), res.effects[fam][0]
            np.testing.assert_allclose(stored[tuple(slice(0, s) for s in want.shape)], want, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(
            run.pairs["score_baseline"][i], res.pairs["score_baseline"][0], atol=ENGINE_ATOL, rtol=0
        )


PAUSE_AFTER_FIRST_CHUNK = """
import time

from jaxmech.results import store

_mark_done = store.SweepStore.mark_done


def _mark_then_pause(self, chunk, info=None):
    _mark_done(self, chunk, info)
    time.sleep(600)


store.SweepStore.mark_done = _mark_then_pause
"""


def test_sigkill_mid_run_then_rerun_is_bit_identical(tmp_path, reference, tiny_model, env):
    _, ref_out = reference
    cfg = write_config(tmp_path, tiny_model)
    out = tmp_path / "run"
    # The killed process sleeps after its first chunk's marker (a sitecustomize of this test only): the kill lands
    # mid-run whatever the machine's speed (a warm compilation cache runs the other chunks in milliseconds).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_AFTER_FIRST_CHUNK)
    paused = {**env, "PYTHONPATH": f"{hook}{os.pathsep}{env['PYTHONPATH']}"}
    proc = subprocess.Popen(sweep_cmd(cfg, out), env=paused, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (out / "done").is_dir() and any(p.name.startswith("chunk-") for p in (out / "done").iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = results.open(out)
    assert not killed.complete and 0 < killed.done.sum() < killed.meta["n_pairs"]
    assert len(list((out / "done").glob("chunk-*"))) == 1  # killed while paused after its first chunk
    rerun = subprocess.run(sweep_cmd(cfg, out), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in rerun.stdout and "resuming" in rerun.stderr and str(out) in rerun.stdout
    assert_identical_runs(ref_out, out)
    # A new process compiles nothing: every program comes from the persistent compilation cache.
    timings = results.open(out).meta["timings"]["timings"]
    assert timings["xla_compiles"] == 0 and timings["persistent_cache_hits"] == timings["programs"] > 0


def test_changed_config_refuses_to_resume_and_says_what_changed(tmp_path, reference, tiny_model):
    _, ref_out = reference
    changed = write_config(tmp_path, tiny_model, metric="difference")
    with pytest.raises(ResumeError, match=r"patching\.metric: 'normalized' -> 'difference'.*--fresh"):
        run_sweep(changed, out=ref_out, quiet=True)
    resampled = write_config(tmp_path, tiny_model, sample=5)
    with pytest.raises(ResumeError, match=r"datasets\[0\]\.sample: 6 -> 5"):
        run_sweep(resampled, out=ref_out, quiet=True)
    assert results.open(ref_out).complete  # untouched


def test_rerun_of_a_complete_run_computes_and_compiles_nothing(reference):
    cfg, out = reference
    summary = run_sweep(cfg, out=out, quiet=True)
    assert summary.complete and summary.chunks_computed == 0 and summary.chunks_resumed == 3
    assert summary.timings["xla_compiles"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_jax_distributed_processes_write_one_run(tmp_path, reference, tiny_model, env):
    _, ref_out = reference
    cfg = write_config(tmp_path, tiny_model)
    out = tmp_path / "run"
    port = _free_port()
    procs = [
        subprocess.Popen(
            sweep_cmd(cfg, out, "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "sweep complete" in outs[0][0]
    per_process = results.open(out).meta["timings"]["processes"]
    assert sorted(per_process) == ["0", "1"] and all(t["chunks_computed"] > 0 for t in per_process.values())
    assert_identical_runs(ref_out, out)
