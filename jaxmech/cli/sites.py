"""``jaxmech sites``: the activation-site table (`jaxmech.sites.site_table_markdown`)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Prints the table."""
    from jaxmech.sites import site_table_markdown

    print(site_table_markdown())
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``sites``."""
    p = subparsers.add_parser("sites", help="print the activation-site table")
    p.set_defaults(func=run)
    return p
