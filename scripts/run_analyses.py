"""python scripts/run_analyses.py [--models distilled packaged] [--only idf_svd soft_tf ...] [--quick]

Runs the paper's analyses (issue 10) on the shared MS MARCO diagnostic data for the distilled MiniLM-L6
cross-encoder (``../shared/models/minilm6-ce-distilled``) and the packaged bi-encoder all-MiniLM-L6-v2, and
writes one JSON per analysis and model under ``benchmarks/results/analyses/<model>/<analysis>.json`` plus
``benchmarks/results/analyses/summary.json`` (headline numbers, settings, wall time, device). Every number is
computed here; the settings below are sized for a shared 2-core CPU (subsets of the 100 queries; the paper's
full sizes are one option away: ``--docs-per-query 100``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

from jaxmech.analysis.common import to_jsonable, write_json
from jaxmech.analysis.inputs import resolve_model
from jaxmech.analysis.registry import analyze

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "analyses"
MODELS = {"distilled": str(REPO.parent / "shared" / "models" / "minilm6-ce-distilled"), "packaged": "packaged"}
SHARED = str(REPO.parent / "shared" / "data" / "msmarco-diagnostic")
EDIT_QIDS = ["1101090"]  # the paper's editing query ("dr azadpour phone number"), then the next ones in order


def settings(quick: bool, docs_per_query: int | None) -> dict[str, dict]:
    """Options per analysis (`jaxmech.analysis.options`)."""
    q = 0.5 if quick else 1.0
    return {
        "idf_svd": {"source": SHARED},
        "soft_tf": {"source": SHARED, "limit": int(60 * q), "docs_per_query": 2, "n_heads": 8},
        "circuit": {"source": SHARED, "n_queries": int(16 * q), "docs_per_query": 2, "limit": None},
        "edit_idf": {"source": SHARED, "n_queries": int(6 * q), "docs_per_query": 5, "scales": (1.0, 2.0, 5.0, 10.0)},
        "linear_bm25": {"source": SHARED, "docs_per_query": docs_per_query or int(20 * q)},
    }


def headline(name: str, r: dict) -> dict:
    """The numbers the closing note quotes."""
    if name == "idf_svd":
        return {
            k: r[k]
            for k in (
                "u0_idf_pearson",
                "u0_idf_pearson_centered",
                "u0_mean_cosine",
                "variants",
                "strongest_component",
                "strongest_component_centered",
            )
        }
    if name == "linear_bm25":
        return {
            k: r[k]
            for k in (
                "test_pearson",
                "test_p_value",
                "test_spearman",
                "test_r2",
                "bm25_test_pearson",
                "bm25_k1",
                "bm25_b",
                "bm25_tuned_on_all_pearson",
                "random_features_test_pearson",
                "other_split",
                "n_pairs",
                "n_queries",
                "heads",
            )
        }
    if name == "soft_tf":
        out = {"matching_heads": r["matching_heads"], "detector_scores": r.get("detector_scores")}
        for e in ("tfc2", "lnc1", "stmc1"):
            if e in r:
                out[e] = {
                    h: [round(v, 4) if v is not None else None for v in to_jsonable(c["mean"])]
                    for h, c in list(r[e]["heads"].items())[:4]
                }
        return out
    if name == "circuit":
        return {
            "roles": r["roles"],
            "heads": r["heads"],
            "n_pairs": r.get("n_pairs"),
            "n_flagged": r.get("n_flagged"),
            "detector_top": r.get("detector_top"),
        }
    return {
        "heads": r["heads"],
        "scales": r["scales"],
        "unedited": r["unedited"],
        "gain": {c: v["mean"] for c, v in r["score"].items()},
        "cls_attention": r["cls_attention"],
        "edited_tokens": r["edited_tokens"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--only", nargs="+", default=["idf_svd", "soft_tf", "circuit", "edit_idf", "linear_bm25"])
    p.add_argument("--quick", action="store_true", help="half-size subsets")
    p.add_argument("--docs-per-query", type=int, help="linear_bm25 documents per query (default 20)")
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="rebuild summary.json from the per-analysis JSON files (wall times from --log lines)",
    )
    p.add_argument("--log", nargs="*", default=[], help="logs of earlier runs ('<model> <analysis>: <n> s' lines)")
    args = p.parse_args()
    opts = settings(args.quick, args.docs_per_query)
    if args.summary_only:
        rebuild_summary(opts, args.log)
        return
    for tag in args.models:
        lm = resolve_model(MODELS[tag])
        for name in args.only:
            t0 = time.time()
            if name == "edit_idf":
                from jaxmech.data.loaders import load_paper_source

                order = list(load_paper_source(SHARED).queries)
                qids = EDIT_QIDS + [q for q in order if q not in EDIT_QIDS][: opts[name]["n_queries"] - 1]
                res = analyze(
                    name,
                    lm,
                    out=OUT / tag / f"{name}.json",
                    qids=qids,
                    **{k: v for k, v in opts[name].items() if k != "n_queries"},
                )
            else:
                res = analyze(name, lm, out=OUT / tag / f"{name}.json", **opts[name])
            wall = time.time() - t0
            update_summary(
                tag,
                name,
                {"wall_s": round(wall, 1), "settings": opts[name], "model": MODELS[tag], **headline(name, res)},
            )
            print(f"{tag} {name}: {wall:.0f} s", flush=True)


def update_summary(tag: str, name: str, entry: dict) -> None:
    """Merges one entry into summary.json (re-read first: several runs may write it)."""
    path = OUT / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {"analysis": "summary", "model": "per entry"}
    summary["device"] = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "note": "shared 2-core CPU, several processes running",
    }
    summary.setdefault(tag, {})[name] = to_jsonable(entry)
    write_json(path, summary)


def rebuild_summary(opts: dict, logs: list[str]) -> None:
    """summary.json from the per-analysis files; wall times from logs of the runs that wrote them."""
    walls = {}
    for log in logs:
        for line in Path(log).read_text().splitlines():
            m = re.fullmatch(r"(\w+) (\w+): (\d+) s", line.strip())
            if m:
                walls[(m[1], m[2])] = float(m[3])
    for tag in MODELS:
        for f in sorted((OUT / tag).glob("*.json")):
            name = f.stem
            res = json.loads(f.read_text())
            update_summary(
                tag,
                name,
                {
                    "wall_s": walls.get((tag, name)),
                    "settings": opts.get(name),
                    "model": MODELS[tag],
                    **headline(name, res),
                },
            )


if __name__ == "__main__":
    main()
