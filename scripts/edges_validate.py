"""Validation of edge-level circuit discovery on a cross-encoder and TFC1 pairs (issue 20).

    python scripts/edges_validate.py --model ../shared/models/minilm6-ce-distilled --pairs 16 --out OUT_DIR

Stages (each saved to OUT_DIR as it finishes, so a cut-off run keeps what ran): the edge data; EAP; EAP-IG over
inputs and over activations (``--steps``); exact edge patches of every edge (pair by pair, ``exact_p{i}.npy``);
then ``summary.json``: per estimate the Spearman correlation with exact over the exact top 200 edges, the recall
of the exact top 50, the worst-tracked receiver kinds, faithfulness of the exact ranking and of each estimate,
and how the smallest 80 % circuit connects the paper's heads. Timings printed are wall clock on whatever machine
runs it (meaningless under load).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _pairs(lm, n: int, max_len: int):
    """The first ``n`` TFC1 pairs of the shared data no longer than ``max_len`` tokens."""
    from jaxmech.analysis.inputs import tfc1_pairs as _tfc1_pairs

    pool = _tfc1_pairs(lm, source="shared", docs_per_query=2, limit=8 * n)
    return [q for q in pool if len(q.baseline_ids) <= max_len][:n]


def _kind(name: str) -> str:
    r = name.split("->")[1]
    return "logits" if r == "logits" else ("mlp" if r.startswith("m") else r.split("<")[1][0])


def _compare(graph, est, exact) -> dict:
    from scipy.stats import spearmanr

    from jaxmech.analysis.edges import top_edges

    t200, t50 = top_edges(exact, 200), top_edges(exact, 50)
    kinds = np.array([_kind(graph.edge_name(e)) for e in range(graph.n_edges)])
    by_kind = {}
    for k in np.unique(kinds):
        sel = np.flatnonzero(kinds == k)
        top = sel[top_edges(exact[sel], min(50, sel.size))]
        by_kind[str(k)] = float(spearmanr(est[top], exact[top]).statistic)
    return {"spearman_top200": float(spearmanr(est[t200], exact[t200]).statistic),
            "recall_top50": len(set(t50) & set(top_edges(est, 50))) / 50,
            "spearman_top50_by_receiver_kind": by_kind}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--max-len", type=int, default=96)
    p.add_argument("--exact-pairs", type=int, default=None, help="exact patches for the first N pairs only")
    p.add_argument("--compare-only", action="store_true", help="skip faithfulness (summary_compare.json)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from jaxmech.analysis.edge_export import connections
    from jaxmech.analysis.edges import PAPER_HEADS, faithfulness, top_edges
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.edge_attribution import estimate_edges
    from jaxmech.patching.edge_graph import EdgeGraph
    from jaxmech.patching.edges import edge_data, exact_edge_scores
    from jaxmech.patching.inputs import batch_pairs

    lm = load_model(args.model)
    model = lm.model
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    batch = batch_pairs(_pairs(lm, args.pairs, args.max_len), buckets=(args.max_len,), max_length=model.cfg.n_ctx)
    data = edge_data(model, batch)
    base = np.asarray(data.baseline_score)
    print(json.dumps({"pairs": batch.n_pairs, "n_pos": batch.n_pos, "n_edges": graph.n_edges,
                      "baseline": float(base.mean()), "perturbed": float(np.mean(data.perturbed_score))}), flush=True)
    est = {}
    for method in ("eap", "eap-ig-inputs", "eap-ig-activations"):
        f = out / f"{method}.npy"
        t = time.time()
        if not f.exists():
            np.save(f, estimate_edges(model, data, method, steps=args.steps, pair_chunk=2))
        est[method] = np.load(f)
        print(f"{method}: {time.time() - t:.0f}s", flush=True)
    exact_rows = []
    for i in range(batch.n_pairs if args.exact_pairs is None else args.exact_pairs):
        f = out / f"exact_p{i}.npy"
        t = time.time()
        if not f.exists():
            np.save(f, exact_edge_scores(model, data.pair(np.array([i])), chunk_size=64)[0] - base[i])
        exact_rows.append(np.load(f))
        print(f"exact pair {i}: {time.time() - t:.0f}s", flush=True)
    summary = {"n_pairs": batch.n_pairs, "n_pos": batch.n_pos, "n_edges": graph.n_edges, "steps": args.steps}
    n_ex = len(exact_rows)
    if exact_rows:
        exact = np.mean(exact_rows, 0)
        summary["exact_pairs"] = len(exact_rows)
        summary["exact_top20"] = [[graph.edge_name(int(e)), float(exact[e])] for e in top_edges(exact, 20)]
        summary["vs_exact"] = {m: _compare(graph, v[:n_ex].mean(0), exact) for m, v in est.items()}
    if args.compare_only:
        (out / "summary_compare.json").write_text(json.dumps(summary, indent=1))
        return
    est = {m: v.mean(0) for m, v in est.items()}
    sub = data.pair(np.arange(max(n_ex, 1)))
    if exact_rows:
        est["exact"] = exact
    for m, v in est.items():
        faith = faithfulness(model, data if m != "exact" else sub, v)
        n80 = faith["smallest"]["n_edges"] if faith["smallest"] else graph.n_edges
        circuit = np.zeros(graph.n_edges, bool)
        circuit[top_edges(v, n80)] = True
        summary[m] = {"faithfulness": faith, "top10": [graph.edge_name(int(e)) for e in top_edges(v, 10)],
                      "connections_80": connections(graph, circuit, PAPER_HEADS["sources"], PAPER_HEADS["targets"])}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(m, json.dumps(faith["smallest"]), flush=True)


if __name__ == "__main__":
    main()
