"""``jaxmech patch``: activation / path / attribution patching to an ``.npz`` file
(`jaxmech.patching.run.patch`; the file is `jaxmech.patching.results.PatchingResult.save`'s)."""

from __future__ import annotations

import argparse
import json
import sys

from jaxmech.cli.common import add_model_args, int_in, non_negative_float


def run(args: argparse.Namespace) -> int:
    """Runs the sweep, writes the file, prints the summary as JSON."""
    from jaxmech.patching.background import parse_ablation
    from jaxmech.patching.run import PatchInterrupted, patch, summarize

    background = parse_ablation(args.ablate, args.ablation, args.ablate_site) if args.ablate else None
    try:
        res = patch(args.model, args.family, dataset=args.dataset, triples=args.triples, query=args.query,
                    baseline_doc=args.baseline_doc, perturbed_doc=args.perturbed_doc, limit=args.limit, kind=args.kind,
                    init_head_seed=args.init_head_seed, max_length=args.max_length, out=args.out, method=args.method,
                    metric=args.metric, min_denominator=args.min_denominator,
                    relative_min_denominator=args.relative_min_denominator, aggregate=args.aggregate,
                    reverse=args.reverse,
                    receivers=args.receiver, receiver_input=args.receiver_input, chunk_size=args.chunk_size,
                    overwrite=args.overwrite, precision=args.precision, pairs_per_chunk=args.pairs_per_chunk,
                    background=background, groups=args.group or None, show_progress=not args.no_progress,
                    stop_on_sigint=True, readout=args.readout)
    except PatchInterrupted as err:  # Ctrl-C while the pairs ran: stopped after the chunk in progress
        print(f"jaxmech patch: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C while loading, or a second Ctrl-C
        print("jaxmech patch: interrupted; nothing was saved", file=sys.stderr)
        return 130
    summary = {"out": res.meta["out"], **summarize(res)}
    print(json.dumps(summary, indent=2, allow_nan=False))
    for warning in summary.get("warnings", []):
        print(f"jaxmech patch: warning: {warning}", file=sys.stderr)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``patch``."""
    p = subparsers.add_parser("patch", help="activation / path / attribution patching sweeps to an .npz file")
    add_model_args(p)
    p.add_argument("--query", help="query of a single triple (with --baseline-doc and --perturbed-doc)")
    p.add_argument("--baseline-doc", help="document of the run that gets patched")
    p.add_argument("--perturbed-doc", help="document whose activations are patched in")
    p.add_argument("--triples", help="TSV (query, baseline_doc, perturbed_doc) or JSONL file of triples")
    p.add_argument("--dataset", help="a dataset file from `jaxmech dataset build`")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs (N >= 1)")
    p.add_argument("--family", action="append", required=True, help="patching family (repeatable; see "
                   "`jaxmech families`)")
    p.add_argument("--method", default="exact", choices=["exact", "attribution"],
                   help="exact patching, or first-order attribution estimates (activation families)")
    p.add_argument("--metric", default="normalized", choices=["normalized", "difference", "raw"],
                   help="normalized: (patched - baseline) / (perturbed - baseline), the paper's")
    p.add_argument("--min-denominator", type=non_negative_float, default=1e-3,
                   help="normalized metric: flag pairs with |perturbed - baseline| below this")
    p.add_argument("--relative-min-denominator", type=non_negative_float, default=None, metavar="FRACTION",
                   help="normalized metric, scale-aware: also flag pairs with |perturbed - baseline| below FRACTION "
                   "times its median over the pairs (e.g. 0.1); default: only --min-denominator")
    p.add_argument("--aggregate", default="mean", choices=["mean", "median", "trimmed"],
                   help="how top_heads and by-type results aggregate pairs: mean (default), median, or a 10%%-trimmed "
                   "mean (robust to a few pairs with huge effects)")
    p.add_argument("--reverse", action="store_true", help="patch baseline activations into the perturbed run")
    p.add_argument("--receiver", action="append", default=[], help="receiver head LAYER.HEAD (layer >= 1) for "
                   "path_to_heads and path_components_to_heads (repeatable)")
    p.add_argument("--receiver-input", default="k", choices=["q", "k", "v"],
                   help="which input of the receiver heads path families patch")
    p.add_argument("--group", action="append", default=[], metavar="L.H,L.H",
                   help="a head group of heads_joint (repeatable: one result per group)")
    p.add_argument("--ablate", action="append", default=[], metavar="L.H,L.H",
                   help="background: ablate these heads in both runs (and so in every patched run); repeatable")
    p.add_argument("--ablation", default="zero", choices=["zero", "mean"],
                   help="ablated heads' value: zero, or their mean over the pairs' real tokens (clean model)")
    p.add_argument("--ablate-site", default="z", choices=["z", "result"], help="the ablated heads' site")
    p.add_argument("--readout", default=None, metavar="SPEC",
                   help="what each patched run measures instead of the score: attn:LAYER.HEAD:FROM->TO[:sum,mean] "
                   "(attention weight; FROM/TO a position or token types such as CLS, Qplus, Q, Dinj), margin:I,J "
                   "(logit margin, num_labels > 1), proj:SITE:LAYER:POSITION:FILE.npy[:mean] (projection of a "
                   "hidden state on a direction); see jaxmech.patching.readouts")
    p.add_argument("--pairs-per-chunk", type=int_in(1), default=None,
                   help="pairs per chunk within a length bucket (default: the whole bucket); progress is shown and "
                   "Ctrl-C is acted on between chunks")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("--chunk-size", type=int_in(1), default=None, help="sites per vmapped step (default: automatic)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16x3", "bf16"],
                   help="matmul precision: fp32 (default, exact), or a faster mode on GPUs/TPUs (equal to fp32 on "
                   "CPU); see README, Devices")
    p.add_argument("--out", required=True, help="output .npz (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)
    return p
