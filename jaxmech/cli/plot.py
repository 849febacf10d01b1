"""``jaxmech plot RESULTS NAME --out F.png``: one figure of a patching family or an analysis."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``plot`` subcommand (sets ``func``)."""
    p = subparsers.add_parser(
        "plot",
        help="draw one figure of a run or a `jaxmech patch` .npz",
        description="Draw the figure of a patching family (block_every, head_all_pos_v, "
        "head_by_pos_z, path_to_score, path_to_heads, ...) or an analysis "
        "(circuit, soft_tf, idf_svd, idf_svd_scatter, edit_idf, linear_bm25).",
    )
    p.add_argument("results", help="a run directory of the results store, or a .npz from `jaxmech patch`")
    p.add_argument("name", metavar="FAMILY", help="patching family or analysis name")
    p.add_argument("--out", required=True, help="output image (.png, .svg or .pdf)")
    p.add_argument(
        "--by",
        default="auto",
        choices=["auto", "token_type", "pos"],
        help="position axis: the paper's token types (default when known) or positions",
    )
    p.add_argument("--dpi", type=int, default=110)
    p.set_defaults(func=cmd_plot)
    return p


def cmd_plot(args) -> int:
    """Draws and writes the figure, prints the path."""
    from jaxmech.plot.dispatch import draw_to_file

    print(draw_to_file(args.results, args.name, args.out, by=args.by, dpi=args.dpi))
    return 0
