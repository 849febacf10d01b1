"""``jaxmech bench``: runs ``benchmarks/bench_patching.py`` of a source checkout with the given arguments."""

from __future__ import annotations

import argparse
import contextlib
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
    if {"-h", "--help"} & set(rest):
        print(script_help(script))  # without running the script, which imports JAX and PyTorch
        return 0
    sys.argv = ["jaxmech bench", *rest]  # argparse's usage line names the command, not the script
    runpy.run_path(str(script), run_name="__main__")
    return 0


def script_help(script: Path) -> str:
    """The benchmark script's ``--help``, built from its source (its docstring and the ``add_argument`` calls
    of its ``main``) without importing it."""
    import ast

    tree = ast.parse(script.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    parser = argparse.ArgumentParser(prog="jaxmech bench [--]", description=doc.split("\n\n")[0],
                                     epilog=f"the options of {script.name}; see its docstring for more")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            try:
                names = [ast.literal_eval(a) for a in node.args]
            except ValueError:
                continue
            kwargs = {}
            for k in node.keywords:
                if k.arg in ("default", "help"):
                    with contextlib.suppress(ValueError):
                        kwargs[k.arg] = ast.literal_eval(k.value)
            parser.add_argument(*names, **kwargs)
    return parser.format_help()


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``bench``."""
    p = subparsers.add_parser("bench", help="run benchmarks/bench_patching.py (source checkout)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark script")
    p.set_defaults(func=run)
    return p
