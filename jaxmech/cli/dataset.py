"""``jaxmech dataset build|stats``: build diagnostic dataset files and summarise them.

    jaxmech dataset build --kind tfc1 --source demo --out tfc1_demo.jsonl
    jaxmech dataset build --kind tfc2 --source shared --out tfc2.jsonl --align diff
    jaxmech dataset stats tfc1_demo.jsonl

``build`` is `jaxmech.data.diagnostic.build_dataset_file` (``--source`` as in
`jaxmech.data.loaders.load_source`; ``--model`` is a folder with the tokenizer, default the packaged MiniLM);
``stats`` prints `jaxmech.data.records.summarize_dataset`.
"""

from __future__ import annotations

import argparse
import json


def cmd_build(args: argparse.Namespace) -> int:
    """Runs ``dataset build``."""
    from jaxmech.data.diagnostic import build_dataset_file

    result = build_dataset_file(args.kind, args.source, args.out, model=args.model, limit=args.limit,
                                seed=args.seed, align=args.align, term_match=args.term_match,
                                idf_table=args.idf_table)
    print(f"wrote {len(result.pairs)} {args.kind} pairs to {args.out}")
    dropped = {k: v for k, v in result.stats.items() if k.startswith("excluded_") and v}
    if dropped:
        print("excluded: " + ", ".join(f"{k[len('excluded_'):]}={v}" for k, v in dropped.items()))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Runs ``dataset stats``."""
    from jaxmech.data.records import read_dataset, summarize_dataset

    header, pairs = read_dataset(args.file)
    s = summarize_dataset(header, pairs)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{args.file}: {s['pairs']} pairs over {s['queries']} queries  (source {s['source']})")
    print("kinds:        " + ", ".join(f"{k}={v}" for k, v in s["kinds"].items()))
    for side in ("baseline", "perturbed"):
        L = s[f"{side}_length"]
        if L:
            print(f"{side + ' length:':<17} min {L['min']}  mean {L['mean']}  max {L['max']}")
    print(f"equal length:    {s['equal_length']} of {s['pairs']}")
    print("token types:    " + "  ".join(f"{k}={v}" for k, v in s["token_types"].items()))
    print("excluded:       " + ("  ".join(f"{k[len('excluded_'):]}={v}" for k, v in s["excluded"].items())
                                 or "none recorded"))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``dataset build`` and ``dataset stats``; each sets ``func`` (parsed arguments -> exit code)."""
    from jaxmech.data.diagnostic import ALL_KINDS

    p = subparsers.add_parser("dataset", description=__doc__.split("\n\n")[0],
                              help="build and inspect diagnostic datasets (TFC1, STMC1, TFC2, LNC1, E7 idf_front)")
    sub = p.add_subparsers(dest="dataset_command", required=True)
    b = sub.add_parser("build", help="build a dataset file of aligned pairs")
    b.add_argument("--kind", required=True, choices=ALL_KINDS, help="which diagnostic dataset")
    b.add_argument("--source", default="demo", help="demo | shared | ir_datasets:NAME | FILE | FOLDER")
    b.add_argument("--model", default=None, help="tokenizer folder, 'packaged' or 'packaged-ce' "
                   "(default: the packaged MiniLM)")
    b.add_argument("--out", required=True, help="output .jsonl file")
    b.add_argument("--limit", type=int, default=None, help="at most this many pairs (>= 1)")
    b.add_argument("--seed", type=int, default=0, help="seed for LNC1 partners and random term choice")
    b.add_argument("--align", default="diff", choices=("diff", "paper"), help="TFC2 position alignment")
    b.add_argument("--term-match", default="word", choices=("word", "span"),
                   help="match multi-word terms as a span (default: the paper's whole-word rule)")
    b.add_argument("--idf-table", default=None, help="idf_front (E7): word<TAB>idf TSV choosing each query's "
                   "highest-IDF word (default: word IDF over the source's documents)")
    b.set_defaults(func=cmd_build)
    s = sub.add_parser("stats", help="summarise a dataset file")
    s.add_argument("file", help="a dataset .jsonl file")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_stats)
    return p
