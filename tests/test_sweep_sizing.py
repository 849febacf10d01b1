"""Chunk sizes from compiled memory (`jaxmech.sweeps.sizing`): an unset ``pairs_per_chunk`` is the most that fit
and the sweep says so; a given one that cannot fit is refused before anything is computed, naming the largest
that fits."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_tiny_cross

from jaxmech.sweeps import ConfigError, compute, load_sweep_config, run_sweep, sizing
from jaxmech.sweeps.compute import sweep_sites

CONFIG = """
[run]
name = "sizing"

[model]
path = "{model}"

[[datasets]]
kind = "tfc1"
source = "demo"
sample = 3
seed = 3

[[families]]
name = "path_to_score"

[[families]]
name = "head_by_pos_z"
method = "attribution"

[chunking]
{chunking}
"""


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, minilm_path) -> Path:
    return save_tiny_cross(tmp_path_factory.mktemp("model") / "tiny-cross", minilm_path)


def _config(folder: Path, model: Path, chunking: str) -> Path:
    path = folder / "sweep.toml"
    path.write_text(CONFIG.format(model=model, chunking=chunking))
    return path


@pytest.fixture(scope="module")
def memory(model_folder):
    """The tiny model's chunk estimate at the demo pairs' longest bucket (what the sweep computes)."""
    from jaxmech.hf.loading import load_model

    lm = load_model(model_folder, kind="cross", require_tokenizer=True)
    fams = load_sweep_config(_config(model_folder.parent, model_folder, "")).families
    mem = sizing.chunk_memory(lm.model, sweep_sites(fams), ("z",), 64)
    return mem


def test_the_estimate_grows_with_the_pairs_by_what_the_compiled_programs_hold(memory):
    assert memory.per_pair > 0 and memory.bytes(8) > memory.bytes(2)
    budget = memory.bytes(5)
    assert memory.largest(budget) == 5 and memory.largest(budget - 1) == 4


def _no_compute(monkeypatch):
    calls = []
    monkeypatch.setattr(compute, "compute_chunk", lambda *a, **k: calls.append(1) or pytest.fail("computed"))
    return calls


def _budget_for(monkeypatch, memory, pairs: int):
    """The machine's free memory, made to hold exactly ``pairs`` pairs (at memory_fraction 1)."""
    monkeypatch.setattr(sizing, "chunk_memory", lambda *a, **k: memory)
    monkeypatch.setattr(sizing, "available_memory", lambda: (memory.bytes(pairs), "test memory"))


def test_a_given_size_that_cannot_fit_is_refused_before_any_compute_naming_the_largest(
        tmp_path, model_folder, memory, monkeypatch):
    _budget_for(monkeypatch, memory, 3)
    calls = _no_compute(monkeypatch)
    cfg = _config(tmp_path, model_folder, "pairs_per_chunk = 8\nmemory_fraction = 1.0")
    with pytest.raises(ConfigError, match=r"pairs_per_chunk: 8 pairs need about .* the largest that fits is 3"):
        run_sweep(cfg, out=tmp_path / "run", quiet=True)
    assert not calls and not (tmp_path / "run").exists()


def test_a_tiny_memory_fraction_refuses_even_one_pair(tmp_path, model_folder, monkeypatch):
    calls = _no_compute(monkeypatch)
    cfg = _config(tmp_path, model_folder, "pairs_per_chunk = 2\nmemory_fraction = 1e-9")
    with pytest.raises(ConfigError, match="the largest that fits is 0"):
        run_sweep(cfg, out=tmp_path / "run", quiet=True)
    assert not calls


def test_unset_picks_the_most_that_fit_and_says_so(tmp_path, model_folder, memory, monkeypatch):
    _budget_for(monkeypatch, memory, 2)
    lines = []
    summary = run_sweep(_config(tmp_path, model_folder, "memory_fraction = 1.0"), out=tmp_path / "run", quiet=True,
                        log=lines.append)
    assert summary.complete
    assert any("pairs_per_chunk 2 (from compiled memory" in line for line in lines), lines
    import json

    assert json.loads((tmp_path / "run" / "meta.json").read_text())["pairs_per_chunk"] == 2
    # The roofline (jaxmech.sweeps.roofline) is in complete.json and the summary line.
    t = json.loads((tmp_path / "run" / "complete.json").read_text())["timings"]
    assert t["flops_per_patched_run"] > 0 and t["matmul_flops"] > 0
    assert t["achieved_flops"] == pytest.approx(t["fraction_of_matmul_rate"] * t["matmul_flops"], rel=1e-3)
    assert "GFLOP per patched run" in summary.line() and "of the measured matmul rate" in summary.line()
    # Resuming with more free memory keeps the run's chunks (a new choice would refuse to resume).
    _budget_for(monkeypatch, memory, 3)
    again = run_sweep(_config(tmp_path, model_folder, "memory_fraction = 1.0"), out=tmp_path / "run", quiet=True)
    assert again.complete and again.chunks_computed == 0 and again.chunks_resumed == 2
