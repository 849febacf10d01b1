"""``jaxmech analyze circuit|soft-tf|idf-svd|edit-idf|linear-bm25|edges``: the analyses as JSON files.

    jaxmech analyze idf-svd --model packaged --source shared --out idf_svd.json
    jaxmech analyze soft-tf --model ../shared/models/minilm6-ce-distilled --source shared --out soft_tf.json
    jaxmech analyze circuit --model M --source shared --qids qids.txt --out circuit.json
    jaxmech analyze edit-idf --model M --source shared --qids qids.txt --scales 1 2 5 --out edit.json
    jaxmech analyze linear-bm25 --model M --source shared --docs-per-query 20 --out linear.json

``--source`` is ``shared``, ``demo`` or a folder (the paper's files or an MS MARCO-style collection +
queries + qrels); ``--dataset`` a file of `jaxmech dataset build`; ``--qids`` a file of query ids (one per
line); ``edges`` takes the arguments of `jaxmech.cli.edges`. The JSON is what the report reads
(`jaxmech.analysis.registry.analyze`); the command prints its headline numbers. The arguments become the
analysis' typed Options (`jaxmech.analysis.options`, `options_from_args`); errors are one line naming what was
wrong, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from jaxmech.cli.edges import HEADLINES as EDGE_HEADLINES
from jaxmech.cli.edges import add_edges_parser

HEADLINES = {
    "idf_svd": ("u0_idf_pearson", "u0_idf_pearson_centered", "u0_mean_cosine", "strongest_component", "variants"),
    "linear_bm25": (
        "test_pearson",
        "test_p_value",
        "bm25_test_pearson",
        "bm25_fallback",
        "bm25_grid_edge",
        "bm25_other_fallback",
        "random_features_test_pearson",
        "n_pairs",
        "heads",
    ),
    "soft_tf": ("matching_heads",),
    "circuit": ("roles",),
    "edit_idf": ("heads", "scales", "unedited"),
    "edges": EDGE_HEADLINES,
}


def _thresholds(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for it in items:
        role, _, value = it.partition("=")
        try:
            out[role.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--threshold {it!r}: expected ROLE=NUMBER (e.g. relevance_scoring=0.05)") from None
    return out


def check_inputs(name: str, options) -> None:
    """Fails fast, before a model is loaded: missing files, or no input for an analysis that needs one.

    Args:
        name: The analysis.
        options: Its `jaxmech.analysis.options` dataclass.

    Raises:
        FileNotFoundError / ValueError: Naming the option.
    """
    from pathlib import Path

    def opt(key):
        return getattr(options, key, None)

    for key in ("dataset", "qids", "idf_table", "collection", "test_qids"):
        if opt(key) is not None and not Path(opt(key)).is_file():
            raise FileNotFoundError(f"--{key.replace('_', '-')} {opt(key)}: no such file")
    src = opt("source")
    if (
        src is not None
        and src not in ("shared", "demo")
        and not src.startswith("ir_datasets:")
        and not Path(src).exists()
    ):
        raise FileNotFoundError(f"--source {src}: not 'shared', 'demo', 'ir_datasets:NAME' or an existing path")
    inputs = [k for k in ("source", "dataset", "collection", "idf_table") if opt(k) is not None]
    if not inputs:
        need = "--source" if name == "soft_tf" else "--source or --dataset"
        raise ValueError(f"{name.replace('_', '-')} needs {need}")
    if name == "soft_tf" and opt("source") is None:
        raise ValueError("soft-tf needs --source (TFC2/LNC1 answers and STMC1 documents)")


_NOT_OPTIONS = ("command", "func", "analysis", "model", "out")
"""Arguments of the command that are not the analysis' options."""


def options_from_args(args: argparse.Namespace):
    """The analysis' Options (`jaxmech.analysis.options`) from the command's arguments: every argument given
    (not None) but the model and the output, ``--threshold ROLE=VALUE`` as ``thresholds`` and
    ``--experiments a,b`` as a list.

    Raises:
        ValueError: An argument the analysis has no option for, or a malformed ``--threshold``.
    """
    from jaxmech.analysis.registry import parse_options

    opts = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS and v is not None}
    if "threshold" in opts:
        opts["thresholds"] = _thresholds(opts.pop("threshold"))
    if "experiments" in opts:
        opts["experiments"] = [e.strip() for e in opts["experiments"].split(",") if e.strip()]
    return parse_options(args.analysis, opts)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Runs one analysis (`jaxmech.analysis.registry.analyze`) and prints its headline numbers."""
    from jaxmech.analysis.registry import analyze

    name = args.analysis.replace("-", "_")
    options = options_from_args(args)
    check_inputs(name, options)
    result = analyze(name, args.model, options, out=args.out)
    print(json.dumps({"out": args.out, **{k: result.get(k) for k in HEADLINES[name]}}, default=str))
    return 0


def _common(q, *, source=True, dataset=True, qids=True) -> None:
    """The arguments every analysis command has (``--model``, ``--out``) and the inputs it reads."""
    q.add_argument("--model", required=True,
                   help="local folder, hub id, 'packaged' (all-MiniLM-L6-v2 bi-encoder) or 'packaged-ce' "
                   "(MiniLM-L6 cross-encoder)")
    q.add_argument("--out", required=True, help="output JSON file")
    if source:
        q.add_argument("--source", help="shared | demo | DIR (the paper's files or an MS MARCO-style folder)")
    if dataset:
        q.add_argument("--dataset", help="a dataset file of `jaxmech dataset build`")
    if qids:
        q.add_argument("--qids", help="file of query ids (one per line) to restrict the queries")
    q.set_defaults(func=cmd_analyze)


def _idf_svd_args(q) -> None:
    _common(q, qids=False)
    q.add_argument("--collection", help="collection to stream IDF from (pid<TAB>text TSV or JSONL)")
    q.add_argument("--idf-table", help="word<TAB>idf TSV instead of streaming")
    q.add_argument("--formula", default="lucene", choices=["lucene", "robertson", "log", "smooth"])
    q.add_argument("--n-components", type=int, default=50)


def _soft_tf_args(q) -> None:
    _common(q, dataset=False)
    q.add_argument("--heads", nargs="+", help="heads LAYER.HEAD (default: the exact-match detector's top)")
    q.add_argument("--n-heads", type=int, default=8)
    q.add_argument("--experiments", default="tfc2,lnc1,stmc1", help="comma-separated subset of tfc2,lnc1,stmc1")
    q.add_argument("--docs-per-query", type=int, default=3)
    q.add_argument("--limit", type=int, help="at most this many answers/documents per experiment")
    q.add_argument("--seed", type=int, default=0, help="LNC1 partner permutation seed")


def _circuit_args(q) -> None:
    _common(q)
    q.add_argument("--docs-per-query", type=int, default=5)
    q.add_argument("--n-queries", type=int)
    q.add_argument("--limit", type=int, default=200, help="at most this many pairs")
    q.add_argument(
        "--threshold", action="append", help="ROLE=VALUE (relevance_scoring, contextual_query, matching); repeatable"
    )
    q.add_argument("--min-heads", type=int, default=1)
    q.add_argument("--receiver-inputs", nargs="+", default=["k", "v"], choices=["q", "k", "v"])
    q.add_argument("--method", default="exact", choices=["exact", "attribution"],
                   help="attribution: path-patching estimates for every sender, exact patches of the top "
                   "--verify-top-k per stage")
    q.add_argument("--verify-top-k", type=int, default=10, help="with --method attribution: senders verified exactly")


def _edit_idf_args(q) -> None:
    _common(q)
    q.add_argument("--n-queries", type=int, default=5)
    q.add_argument("--docs-per-query", type=int, default=6)
    q.add_argument("--limit", type=int)
    q.add_argument("--heads", nargs="+", help="heads LAYER.HEAD (default: top E4 heads)")
    q.add_argument("--n-heads", type=int, default=3)
    q.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 5.0, 10.0])
    q.add_argument("--methods", nargs="+", default=["u0", "row"], choices=["u0", "row"])
    q.add_argument("--idf-table", help="word<TAB>idf TSV orienting U_0 (default: streamed from the documents)")


def _linear_bm25_args(q) -> None:
    _common(q)
    q.add_argument("--docs-per-query", type=int, default=20)
    q.add_argument("--heads", nargs="+", help="matching heads LAYER.HEAD (default: the detector's top --n-heads)")
    q.add_argument("--n-heads", type=int, default=13)
    q.add_argument("--split", default="query", choices=["query", "pair"],
                   help="held-out queries (default) or pairs (leaks test queries into training)")
    q.add_argument("--test-qids", help="file of query ids (one a line): train on the other queries, test on "
                   "exactly these (overrides --split)")
    q.add_argument("--bm25-fallback", default="none", choices=["none", "beir"],
                   help="BM25 baseline IDF-0 rule: none (the paper's MS MARCO BM25; default) or the BEIR script's "
                   "fallback; the other is reported beside it")
    q.add_argument("--seed", type=int, default=42)
    q.add_argument("--idf-table", help="word<TAB>idf TSV (default: streamed from the documents)")


_ARGUMENTS = {"idf_svd": _idf_svd_args, "soft_tf": _soft_tf_args, "circuit": _circuit_args,
              "edit_idf": _edit_idf_args, "linear_bm25": _linear_bm25_args}
"""Analysis -> the function adding its command's arguments (``edges``: `jaxmech.cli.edges.add_edges_parser`)."""


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``analyze`` (with one subcommand per analysis) to the main parser's subparsers (help texts from
    `jaxmech.analysis.registry.ANALYSES`)."""
    from jaxmech.analysis.registry import ANALYSES

    p = subparsers.add_parser(
        "analyze", help="the paper's analyses (circuit, soft-TF, IDF direction, editing, linear semantic BM25) as JSON"
    )
    sub = p.add_subparsers(dest="analysis", required=True)
    for name, add_arguments in _ARGUMENTS.items():
        add_arguments(sub.add_parser(name.replace("_", "-"), help=ANALYSES[name].description))
    add_edges_parser(sub, _common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxmech.cli.analyze analyze ...``: the command on its own."""
    from jaxmech.data.records import DataError

    parser = argparse.ArgumentParser(prog="jaxmech")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, DataError, ImportError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jaxmech analyze: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
