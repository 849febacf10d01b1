"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--kind``, ``--init-head-seed``, ``--max-length``."""
    p.add_argument("--model", required=True,
                   help="local folder, hub id, 'packaged' (all-MiniLM-L6-v2 bi-encoder) or 'packaged-ce' "
                   "(MiniLM-L6 cross-encoder)")
    p.add_argument("--kind", default="auto", choices=["auto", "cross", "bi"],
                   help="cross-encoder or bi-encoder (default: from the folder)")
    p.add_argument("--init-head-seed", type=int, default=None,
                   help="for --kind cross on an encoder-only checkpoint: seed of the fresh classifier head")
    p.add_argument("--max-length", type=int_in(8, 4096), default=None, help="tokenizer maximum length (default 512)")


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}" + (f" and <= {high}" if high else ""))
        return value

    return parse


def non_negative_float(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value
