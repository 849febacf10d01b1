"""Compare two sweep run folders: are their results the same, apart from timings, dates and the install path?

    python scripts/compare_runs.py RUN_A RUN_B [--json OUT]

Every stored array file and every other file must match byte for byte, except these, which are compared after
normalising: JSON files (``meta.json``, ``complete.json``, ``done/chunk-*`` markers, ``steps.json``,
``analyses/*.json``, ``report/numbers.json``) with their timing, date, host and cache keys left out and each
run's checkout folder replaced by ``ROOT``; text files (``report/report.md``, ``report/report.html``) line by
line with the same normalisation, where a line naming a time or a date is reported apart. ``processes/``
(per-process timings) is skipped. ``steps.json`` input hashes cover ``meta.json`` and so differ whenever its
dates do; they are listed apart too. This is how the renovation of issue 19 was checked on the main job:
both checkouts ran ``jaxmech sweep configs/demo.toml`` and every stored array came out byte-identical.

Exit code 0 when nothing but timings differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VOLATILE_KEYS = ("second", "time", "wall", "created", "finished", "generated", "elapsed", "rss", "compile", "xla",
                 "flops", "rate", "throughput", "cache", "runs_per", "host", "pid", "date", "inputs")
"""Keys (substrings, lower case) whose values depend on the machine, the load or the clock."""

VOLATILE_TEXT = ("UTC", "seconds", "finished", "generated", "timings", "rss", "GFLOP", "flops", "matmul_rate",
                 "per_second")
"""A differing text line holding one of these is a timing line."""


def _clean(x, roots: tuple[str, ...]):
    if isinstance(x, dict):
        return {k: _clean(v, roots) for k, v in x.items() if not any(t in k.lower() for t in VOLATILE_KEYS)}
    if isinstance(x, list):
        return [_clean(v, roots) for v in x]
    if isinstance(x, str):
        for r in roots:
            x = x.replace(r, "ROOT")
    return x


def _is_json(path: Path) -> bool:
    return path.suffix == ".json" or path.parent.name == "done"


def compare_file(pa: Path, pb: Path, roots: tuple[str, ...]) -> str:
    """``"same"``, ``"timings"`` (only volatile values differ) or ``"differs"``."""
    if pa.read_bytes() == pb.read_bytes():
        return "same"
    if _is_json(pa):
        try:
            ja, jb = json.loads(pa.read_text()), json.loads(pb.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "differs"
        return "timings" if _clean(ja, roots) == _clean(jb, roots) else "differs"
    if pa.suffix in (".md", ".html", ".txt"):
        la, lb = pa.read_text().splitlines(), pb.read_text().splitlines()
        if len(la) != len(lb):
            return "differs"
        for x, y in zip(la, lb, strict=True):
            x, y = _clean(x, roots), _clean(y, roots)
            if x != y and not any(t in x for t in VOLATILE_TEXT):
                return "differs"
        return "timings"
    return "differs"


def compare_runs(a: Path, b: Path, roots: tuple[str, ...] = ()) -> dict:
    """Every file of two run folders compared (see the module docstring); ``roots``: the checkout folders whose
    paths the files name (default: the folder two levels above each run, ``CHECKOUT/runs/NAME``)."""
    roots = roots or (str(a.resolve().parent.parent), str(b.resolve().parent.parent))
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "processes" not in p.relative_to(a).parts}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "processes" not in p.relative_to(b).parts}
    out = {"a": str(a), "b": str(b), "same": [], "timings": [], "differs": [],
           "only_in_a": sorted(map(str, fa - fb)), "only_in_b": sorted(map(str, fb - fa))}
    for rel in sorted(fa & fb):
        if rel.name == ".lock":
            continue
        out[compare_file(a / rel, b / rel, roots)].append(str(rel))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--json", type=Path, help="write the comparison here")
    ap.add_argument("--roots", nargs="+", default=(), help="checkout folders named in the files (default: the "
                    "folder two levels above each run)")
    args = ap.parse_args(argv)
    for run in (args.a, args.b):
        if not (run / "meta.json").is_file():
            ap.error(f"{run}: not a sweep run folder (no meta.json)")
    res = compare_runs(args.a, args.b, tuple(args.roots))
    arrays = [f for f in res["same"] if f.startswith("arrays/")]
    print(f"{len(res['same'])} files identical ({len(arrays)} array files), {len(res['timings'])} differ only in "
          f"timings, dates or paths, {len(res['differs'])} differ: {res['differs'][:10]}; "
          f"only in one: {res['only_in_a'][:5] + res['only_in_b'][:5]}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if not (res["differs"] or res["only_in_a"] or res["only_in_b"]) else 1


if __name__ == "__main__":
    sys.exit(main())
