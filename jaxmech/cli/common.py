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
    p.add_argument("--max-length", type=int, default=None, help="tokenizer maximum length (default 512)")
