"""``jaxmech bench``: runs ``benchmarks/bench_patching.py`` of a source checkout with the given arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark script."""
    import runpy

    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "bench_patching.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: `jaxmech bench` runs the benchmarks of a source checkout "
                                "(git clone the repository and pip install -e '.[test]')")
    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``bench``."""
    p = subparsers.add_parser("bench", help="run benchmarks/bench_patching.py (source checkout)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark script")
    p.set_defaults(func=run)
    return p
