"""``jaxmech report RUN_DIR [--out DIR]``: the report page, report.md and numbers.json of a run."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``report`` subcommand (sets ``func``)."""
    p = subparsers.add_parser(
        "report",
        help="write report.html, report.md and numbers.json for a run",
        description="Figures of every family and analysis of a run, every result set beside "
        "the paper's with a computed verdict, in one self-contained HTML page "
        "(no server, no network), report.md and numbers.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of the results store, or a `jaxmech patch` .npz")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report, or <npz stem>_report)")
    p.add_argument("--analyses", default=None, help="a folder of analysis JSON files to include (<name>.json)")
    p.add_argument(
        "--no-demo-score", action="store_true", help="do not load the run's model to score the paper's demo pair"
    )
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    """Builds the report (`jaxmech.report.build.build_report`), prints the page's path."""
    from jaxmech.report.build import build_report  # checks that --out can be written before any work

    print(build_report(args.run_dir, args.out, analyses=args.analyses, score_demo=not args.no_demo_score))
    return 0
