"""``jaxmech verify RUN``: checks every completed chunk of a sweep's run folder against what its marker recorded
(presence, sizes and sha256 of every stored file; `jaxmech.results.integrity.check_run` with ``full=True``).

Prints one line; exit code 0 when the run is complete and intact, 1 when a chunk fails or is not computed yet
(rerunning the sweep recomputes both), 2 when RUN is not a run folder.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Checks the run and prints the verdict."""
    from pathlib import Path

    from jaxmech.results.integrity import check_run

    root = Path(args.run)
    check = check_run(root, full=not args.quick)  # FileNotFoundError when RUN is not a run folder
    how = "sizes and sha256" if check.full else "sizes"
    counted = f"{len(check.done)}/{check.n_chunks} chunks complete, {check.files} files checked ({how})"
    old = (f"; {len(check.unrecorded)} chunks written by an older jaxmech record no files and were not checked"
           if check.unrecorded else "")
    if not check.ok:
        print(f"jaxmech verify: {root}: FAILED: {check.describe(limit=5)} ({counted}). Rerun its sweep "
              f"(jaxmech sweep CONFIG --out {root}) to recompute the failing chunks", file=sys.stderr)
        return 1
    if check.missing:
        print(f"{root}: incomplete: {counted}{old}; chunks {_ranges(check.missing)} are not computed yet "
              f"(rerun its sweep to compute them)")
        return 1
    print(f"{root}: ok: {counted}{old}")
    return 0


def _ranges(ks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], None
    for i, k in enumerate(ks):
        start = k if start is None else start
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            out.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(out)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``verify``."""
    p = subparsers.add_parser("verify", help="check a sweep's run folder: every stored chunk present, whole, "
                              "with its recorded checksum")
    p.add_argument("run", help="run folder of `jaxmech sweep`")
    p.add_argument("--quick", action="store_true", help="presence and sizes only (what opening a run checks)")
    p.set_defaults(func=run)
    return p
