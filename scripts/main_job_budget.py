"""python scripts/main_job_budget.py --json benchmarks/results/main_job_budget.json

The README's main job (``jaxmech sweep configs/demo.toml``) as a fresh machine runs it: a new run folder and an
empty jaxmech cache (converted parameters and JAX's persistent compilation cache, in a temporary
``$JAXMECH_CACHE``), in this process. Records, for the patching part and for each step after it (analyses,
report): wall time, this process's CPU time, the programs JAX needed and how many it compiled with XLA
(JAX's monitoring events, counted as `jaxmech.progress.CompileMeter` does, by listeners of this
script's own: the sweep installs its meter anew), and the peak RSS; then the totals and whether the report was written.
Counts do not depend on the machine's load; times do, so run it alone on the machine the budget is for
(the issue's: 2 idle CPU cores, at most 8 minutes in all):

    taskset -c 0,1 python scripts/main_job_budget.py --json benchmarks/results/main_job_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--keep", default=None, help="run folder to keep (default: a temporary one)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="jaxmech-budget-"))
    os.environ["JAXMECH_CACHE"] = str(tmp / "cache")  # before jaxmech is imported: empty caches
    out_dir = Path(args.keep) if args.keep else tmp / "run"

    import jax.monitoring as mon

    from jaxmech.progress import _BACKEND, _COMPILE_EVENTS, _HIT
    from jaxmech.sweeps import steps as steps_mod
    from jaxmech.sweeps.job import run_sweep

    counts = {"programs": 0, "cache_hits": 0, "compile_seconds": 0.0}

    def on_duration(event: str, seconds: float, **_) -> None:
        if event in _COMPILE_EVENTS:
            counts["compile_seconds"] += seconds
            counts["programs"] += event == _BACKEND

    def on_event(event: str, **_) -> None:
        counts["cache_hits"] += event == _HIT

    mon.register_event_duration_secs_listener(on_duration)
    mon.register_event_listener(on_event)

    class Meter:
        @staticmethod
        def as_dict() -> dict:
            return {**counts, "xla_compiles": counts["programs"] - counts["cache_hits"]}

    meter = Meter()
    phases: list[dict] = []

    def snapshot(name: str, wall0: float, cpu0: float, before: dict) -> None:
        now = meter.as_dict()
        phases.append({
            "phase": name,
            "wall_s": round(time.perf_counter() - wall0, 2),
            "cpu_s": round(time.process_time() - cpu0, 2),
            "programs": now["programs"] - before["programs"],
            "xla_compiles": now["xla_compiles"] - before["xla_compiles"],
            "compile_s": round(now["compile_seconds"] - before["compile_seconds"], 2),
        })

    original = steps_mod.run_step

    def timed_step(name, run_dir, options=None):
        w, c, b = time.perf_counter(), time.process_time(), meter.as_dict()
        try:
            return original(name, run_dir, options)
        finally:
            snapshot(name, w, c, b)

    steps_mod.run_step = timed_step  # run_steps imports it from the module at call time
    w0, c0, b0 = time.perf_counter(), time.process_time(), meter.as_dict()
    summary = run_sweep(args.config, out=out_dir, fresh=True, quiet=True)
    snapshot("total", w0, c0, b0)
    total = phases.pop()
    patching = {k: round(v - sum(p[k] for p in phases), 2) for k, v in total.items() if k != "phase"}
    patching = {"phase": "patching (model, datasets, families)", **patching}
    report = out_dir / "report" / "report.html"
    result = {
        "config": args.config,
        "n_pairs": summary.pairs,
        "families": summary.families,
        "phases": [patching, *phases],
        "total": total,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "load_average_at_end": os.getloadavg(),
        "report_written": report.is_file(),
        "run_dir": str(out_dir),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["report_written"] else 1


if __name__ == "__main__":
    sys.exit(main())
