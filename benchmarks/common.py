"""Shared by the benchmark scripts: where results go, atomic JSON writes, repeated timings with their spread."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def fresh_out_dir(out: str | Path | None) -> Path:
    """The folder a run writes to: ``out`` if given (created), else a new
    ``benchmarks/results/runs/<UTC time>-<pid>`` so that a run never overwrites committed results."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = RESULTS / "runs" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def write_json(path: Path, obj) -> Path:
    """Writes ``obj`` as indented JSON through a temporary file, so a partial file never looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def spread(values: list[float]) -> dict:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "rel_spread": (max(values) - min(values)) / med if med else None,
    }


def repeat(fn: Callable[[], object], n: int) -> tuple[object, list[float]]:
    """Runs ``fn`` ``n`` times; returns the last output and each run's seconds."""
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times
