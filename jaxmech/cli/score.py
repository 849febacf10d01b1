"""``jaxmech score``: scores of documents for a query, as JSON (`jaxmech.scoring.score`)."""

from __future__ import annotations

import argparse
import json

from jaxmech.cli.common import add_model_args


def run(args: argparse.Namespace) -> int:
    """Scores and prints JSON."""
    from jaxmech.scoring import score

    print(json.dumps(score(args.model, args.query, args.doc, kind=args.kind, init_head_seed=args.init_head_seed,
                           max_length=args.max_length, truncation=args.truncation), indent=2))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``score``."""
    p = subparsers.add_parser("score", help="score documents for a query (raw logits or similarities) as JSON")
    add_model_args(p)
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument("--doc", action="append", required=True, help="a document (repeat for several)")
    p.add_argument("--truncation", default="longest_first",
                   choices=["longest_first", "only_first", "only_second", "error"],
                   help="how pairs longer than the maximum length are cut ('error' refuses)")
    p.set_defaults(func=run)
    return p
