"""``jaxmech families``: the family registry (`jaxmech.patching.families.describe_families`)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Prints one line per family: name, sites, result axes after the pair axis, description."""
    from jaxmech.patching.families import describe_families

    for f in describe_families():
        print(f"{f['name']:30s} {f['sites']:28s} {f['axes']:22s} {f['description']}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``families``."""
    p = subparsers.add_parser("families", help="list patching families (sites, result axes, description)")
    p.set_defaults(func=run)
    return p
