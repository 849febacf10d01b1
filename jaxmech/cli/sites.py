"""``jaxmech sites [--model M]``: the activation-site table (`jaxmech.sites.site_table_markdown`), or one model's
table with its architecture, residual identities and shapes (`jaxmech.architectures.site_table_for`)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Prints the table."""
    if args.model:
        from jaxmech.architectures import site_table_for

        print(site_table_for(args.model))
        return 0
    from jaxmech.sites import site_table_markdown

    print(site_table_markdown())
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``sites``."""
    p = subparsers.add_parser("sites", help="print the activation-site table")
    p.add_argument("--model", default=None, help="a model folder or hub id: print that model's table (config only)")
    p.set_defaults(func=run)
    return p
