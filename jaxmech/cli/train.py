"""``jaxmech train CONFIG`` and ``jaxmech train eval CONFIG``.

    jaxmech train configs/train_smoke.toml --out runs/smoke          # train (fails if checkpoints exist)
    jaxmech train configs/train_smoke.toml --out runs/smoke --resume # continue from the newest checkpoint
    jaxmech train eval configs/train_smoke.toml --out runs/smoke     # held-out metrics of runs/smoke/export
    jaxmech train eval configs/train_smoke.toml --model FOLDER       # ... of any cross-encoder folder

The config format is described in `jaxmech.train.config`. ``train eval`` prints the held-out metrics as JSON
(the same split, labels and reference as training). Progress goes to stderr, results (JSON) to stdout. Errors
in the config, the data or the run folder are printed as one line naming the file and the problem, exit code 2.

`register` adds the command to the main ``jaxmech`` parser; ``python -m jaxmech.cli.train`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``train`` to an ``add_subparsers()`` object; its ``func`` takes the parsed args and returns an
    exit code."""
    p = subparsers.add_parser(
        "train",
        help="train a cross-encoder from a TOML config (or evaluate one: train eval CONFIG)",
        description="Train a cross-encoder with optax from a TOML config (see jaxmech.train.config), or "
        "`train eval CONFIG` to evaluate a model folder on the config's held-out queries.",
    )
    p.add_argument("config", metavar="CONFIG", help="the TOML config (or the word 'eval' followed by CONFIG)")
    p.add_argument("eval_config", nargs="?", metavar="EVAL_CONFIG", help=argparse.SUPPRESS)
    p.add_argument("--out", metavar="DIR", help="run folder (default: [run] out_dir or runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.add_argument("--model", metavar="FOLDER", help="train eval: the model folder (default: <run>/export)")
    p.set_defaults(func=run)
    return p


def _fail(msg: str) -> int:
    print(f"jaxmech train: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Runs ``train`` or ``train eval`` from parsed arguments (`jaxmech.train.run`)."""
    evaluating = args.config == "eval"
    path = args.eval_config if evaluating else args.config
    if evaluating and path is None:
        return _fail("train eval needs a CONFIG")
    if not evaluating and args.eval_config is not None:
        return _fail(f"unexpected argument {args.eval_config!r} (did you mean `train eval CONFIG`?)")
    if args.model and not evaluating:
        return _fail("--model is only used by `train eval`")
    from jaxmech.train.run import evaluate_from_config, train_from_config  # imports no JAX

    try:
        if evaluating:
            out = evaluate_from_config(path, out=args.out, model=args.model)
        else:
            out = train_from_config(path, out=args.out, resume=args.resume)
    except (ValueError, FileNotFoundError) as err:  # ConfigError, DataError, WeightsError, ModelNotFoundError too
        return _fail(str(err))
    except RuntimeError as err:
        from jaxmech.train.trainer import ResumeError  # imported already: the trainer raises it

        if not isinstance(err, ResumeError):
            raise
        return _fail(str(err))
    print(json.dumps(out, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxmech.cli.train train CONFIG ...``."""
    parser = argparse.ArgumentParser(prog="jaxmech")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
