"""Edge-level circuits on post-LN encoders: estimates checked against exact edge patches, and faithfulness.

`edge_circuits` runs, on aligned pairs (TFC1 in the paper's setting):

1. per-edge effects ``patched - baseline`` averaged over pairs, by ``method`` ``exact`` (one exact edge patch per
   edge, `jaxmech.patching.edges.exact_edge_scores`) or an estimate (``eap``, ``eap-ig-inputs``,
   ``eap-ig-activations``, `jaxmech.patching.edge_attribution`);
2. verification: exact patches of the ``verify_top_k`` edges the estimate ranks highest (by ``|mean effect|``)
   and of ``n_random`` others drawn at random; ``verified_spearman`` is the rank correlation of estimate and
   exact over those edges, ``top_recall`` the share of the exact top ``recall_n`` that the estimate also ranks in
   its top ``recall_n`` (over every edge when ``exact_all`` runs all exact patches, else over the verified ones:
   ``top_recall_scope`` says which);
3. faithfulness: circuits of the top ``n`` edges (ranked by the method's effects), every other edge patched to its
   perturbed value (`edges_patched_scores`); ``recovery(n) = (m(C_n) - m(empty)) / (m(full) - m(empty))`` with
   ``m`` the mean score over pairs, the full model (nothing patched, the baseline) and the empty circuit (every
   edge patched) as anchors. MIB's CPR is the area under ``recovery`` against the fraction of edges kept
   (trapezoids over the evaluated points), CMD the area under ``|1 - recovery|``; ``smallest_80`` is the
   smallest evaluated ``n`` with recovery >= 0.8, refined by bisection between grid points.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

from jaxmech.analysis.edge_export import connections, to_eap_ig_json
from jaxmech.analysis.options import EdgesOptions
from jaxmech.patching.edge_attribution import METHODS, estimate_edges
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import EdgeData, edges_patched_scores, exact_edge_scores

DEFAULT_GRID = (0, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
PAPER_HEADS = {"sources": ["2.9", "1.1"], "targets": ["5.7", "5.1", "5.5", "5.3"]}
"""The exact-match heads and the scoring heads of the paper's circuit on the distilled MiniLM-L6."""


def check_method(method: str, steps: int) -> None:
    """One-line error for an unknown method or bad step count (before any compute)."""
    if method != "exact" and method not in METHODS:
        raise ValueError(f"edges: method {method!r}: expected exact, {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"edges: steps={steps} must be >= 1")


def edge_effects(model, data: EdgeData, method: str, steps: int = 5, *, chunk_size: int = 64) -> np.ndarray:
    """``[pair, edge]`` ``patched - baseline`` by the method (exact or an estimate)."""
    check_method(method, steps)
    if method == "exact":
        return exact_edge_scores(model, data, chunk_size=chunk_size) - np.asarray(data.baseline_score)[:, None]
    return estimate_edges(model, data, method, steps=steps)


def top_edges(effect, n: int) -> np.ndarray:
    """Indices of the ``n`` largest ``|effect|`` (stable order)."""
    return np.argsort(-np.abs(np.asarray(effect)), kind="stable")[:n]


def verify(model, data: EdgeData, estimate, *, k: int = 50, n_random: int = 50, recall_n: int = 50,
           exact_all=None, seed: int = 0, chunk_size: int = 64) -> dict:
    """Exact patches of the estimate's top ``k`` edges and ``n_random`` random others (see the module docstring).

    Args:
        estimate: ``[edge]`` mean estimated effect.
        exact_all: ``[edge]`` mean exact effect of every edge when already computed (then nothing is run).
    """
    estimate = np.asarray(estimate)
    rng = np.random.RandomState(seed)
    top = top_edges(estimate, k)
    rest = np.setdiff1d(np.arange(estimate.size), top)
    chosen = np.concatenate([top, rng.choice(rest, min(n_random, rest.size), replace=False)])
    if exact_all is not None:
        exact = np.asarray(exact_all)[chosen]
    else:
        exact = (exact_edge_scores(model, data, chosen, chunk_size=chunk_size)
                 - np.asarray(data.baseline_score)[:, None]).mean(0)
    rho = float(spearmanr(estimate[chosen], exact).statistic)
    if exact_all is not None:
        n = min(recall_n, estimate.size)
        recall, scope = len(set(top_edges(exact_all, n)) & set(top_edges(estimate, n))) / n, "all edges"
    else:
        n = min(recall_n, chosen.size)
        hit = set(top_edges(exact, n)) & set(top_edges(estimate[chosen], n))
        recall, scope = len(hit) / n, "verified edges"
    return {"edges": chosen, "estimate": estimate[chosen], "exact": exact, "spearman": rho, "recall": recall,
            "recall_scope": scope}


def _recovery_at(model, data: EdgeData, order: np.ndarray, n: int, anchors) -> float:
    keep = np.zeros(order.size, np.float32)
    keep[order[:n]] = 1
    m = float(np.mean(edges_patched_scores(model, data, jnp.broadcast_to(keep, (data.ids.shape[0], keep.size)))))
    full, empty = anchors
    return (m - empty) / (full - empty)


def faithfulness(model, data: EdgeData, effect, grid: Sequence[int] = DEFAULT_GRID, *, target: float = 0.8,
                 refine: int = 6) -> dict:
    """Recovery of circuits of the top ``n`` edges of ``effect`` ``[edge]`` for ``n`` in ``grid`` (+ every edge),
    CPR, CMD and the smallest circuit reaching ``target`` (see the module docstring)."""
    E = np.asarray(effect).size
    order = top_edges(effect, E)
    full = float(np.mean(data.baseline_score))
    empty = float(np.mean(edges_patched_scores(model, data, jnp.zeros((data.ids.shape[0], E)))))
    if abs(full - empty) < 1e-6:
        raise ValueError("edges: the empty circuit scores as the full model; recovery is undefined on these pairs")
    ns = sorted({min(int(n), E) for n in grid} | {0, E})
    rec = {n: _recovery_at(model, data, order, n, (full, empty)) for n in ns}
    hit = next((n for n in ns if rec[n] >= target), None)
    if hit is not None and hit > 0:  # bisect between the last grid point below the target and the first above
        lo = max(n for n in ns if n < hit)
        hi = hit
        for _ in range(refine):
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            rec[mid] = _recovery_at(model, data, order, mid, (full, empty))
            lo, hi = (mid, hi) if rec[mid] < target else (lo, mid)
        hit = hi
    xs = np.array(sorted(rec)) / E
    ys = np.array([rec[n] for n in sorted(rec)])
    area = lambda v: float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(xs)))
    return {"curve": [{"n_edges": int(n), "fraction": n / E, "recovery": float(rec[n])} for n in sorted(rec)],
            "cpr": area(ys), "cmd": area(np.abs(1 - ys)), "full_score": full, "empty_score": empty,
            "smallest": None if hit is None else {"n_edges": int(hit), "fraction": hit / E, "target": target}}


def span_report(model, data: EdgeData, method: str, steps: int, k: int = 20) -> list[dict]:
    """The ``k`` span-aware edges (`jaxmech.analysis.edge_spans.SPAN_GROUPS` of ``data.spans``) with the largest
    mean estimated effect (``eap-ig-inputs`` when ``method`` is exact), each verified by its exact span patch."""
    from jaxmech.analysis.edge_spans import SPAN_GROUPS

    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    est = estimate_edges(model, data, "eap-ig-inputs" if method == "exact" else method, steps=steps,
                         spans=True).mean(0)
    top = top_edges(est.ravel(), k)
    edges, groups = np.divmod(top, est.shape[1])
    exact = (exact_edge_scores(model, data, edges, groups=groups) - np.asarray(data.baseline_score)[:, None]).mean(0)
    names = list(SPAN_GROUPS)
    return [{"edge": f"{graph.edge_name(int(e))}@{names[g] if len(names) == est.shape[1] else g}",
             "estimate": float(est[e, g]), "exact": float(x)} for e, g, x in zip(edges, groups, exact, strict=True)]


def edge_circuits(model, data: EdgeData, *, method: str = "eap-ig-inputs", steps: int = 5, verify_top_k: int = 50,
                  n_random: int = 50, recall_n: int = 50, exact_all: bool = False, grid=DEFAULT_GRID,
                  heads: dict | None = None, seed: int = 0, model_label: str = "", spans: bool = False) -> dict:
    """The ``edges`` analysis JSON (see the module docstring); ``heads``: ``{"sources": [...], "targets":
    [...]}`` whose connections in the smallest 80 % circuit are reported (default `PAPER_HEADS` when the model has
    their layers and heads); ``spans``: also `span_report` (``data.spans`` holds the groups)."""
    check_method(method, steps)
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    per_pair = edge_effects(model, data, method, steps)
    effect = per_pair.mean(0)
    exact = effect if method == "exact" else (edge_effects(model, data, "exact").mean(0) if exact_all else None)
    ver = verify(model, data, effect, k=verify_top_k, n_random=n_random, recall_n=recall_n, exact_all=exact,
                 seed=seed)
    faith = faithfulness(model, data, effect, grid)
    n80 = faith["smallest"]["n_edges"] if faith["smallest"] else graph.n_edges
    circuit = np.zeros(graph.n_edges, bool)
    circuit[top_edges(effect, n80)] = True
    if heads is None and model.cfg.n_layers > 5 and model.cfg.n_heads > 9:
        heads = PAPER_HEADS
    out = {"analysis": "edges", "model": model_label, "method": method, "steps": steps if method != "eap" else 1,
           "n_pairs": int(data.ids.shape[0]), "n_edges": graph.n_edges,
           "verified_spearman": ver["spearman"], "top_recall": ver["recall"], "top_recall_scope": ver["recall_scope"],
           "recall_n": recall_n, "n_verified": int(len(ver["edges"])),
           "faithfulness": [{"n_edges": p["n_edges"], "recovery": p["recovery"]} for p in faith["curve"]],
           "cpr": faith["cpr"], "cmd": faith["cmd"], "smallest_80": faith["smallest"],
           "baseline_score": faith["full_score"], "empty_score": faith["empty_score"],
           "perturbed_score": float(np.mean(data.perturbed_score)),
           "top_edges": [{"edge": graph.edge_name(int(e)), "effect": float(effect[e])}
                         for e in top_edges(effect, 50)],
           "verified": [{"edge": graph.edge_name(int(e)), "estimate": float(a), "exact": float(b)}
                        for e, a, b in zip(ver["edges"], ver["estimate"], ver["exact"], strict=True)]}
    if exact is not None and method != "exact":
        top200 = top_edges(exact, 200)
        out["spearman_exact_top200"] = float(spearmanr(effect[top200], exact[top200]).statistic)
    if heads:
        out["connections_80"] = connections(graph, circuit, heads["sources"], heads["targets"])
    if spans:
        out["top_span_edges"] = span_report(model, data, method, steps)
    out["eap_ig_graph"] = to_eap_ig_json(graph, effect, circuit, d_model=model.cfg.d_model)
    return out




def edges_step(run_or_model, options: EdgesOptions) -> dict:
    """`edge_circuits` on TFC1 pairs (``dataset`` or built from ``source``; pairs longer than ``max_length``
    tokens left out). ``heads``: ``"2.9,1.1->5.7,5.1"`` (sources -> targets) whose connections are reported;
    ``eap_ig_json``: also write the circuit there in EAP-IG's graph format; ``spans``: also the top span-aware
    edges (`span_report`, groups from the pairs' token types). ``options``: `EdgesOptions`, whose defaults hold."""
    from jaxmech.analysis.inputs import resolve_model
    from jaxmech.analysis.inputs import tfc1_pairs as _tfc1_pairs
    from jaxmech.patching.edges import check_edge_model, edge_data
    from jaxmech.patching.inputs import batch_pairs

    o = options
    source, dataset, qids, n_queries, docs_per_query = o.source, o.dataset, o.qids, o.n_queries, o.docs_per_query
    limit, max_length, method, steps, heads, spans = o.limit, o.max_length, o.method, o.steps, o.heads, o.spans
    verify_top_k, n_random, recall_n, exact_all, eap_ig_json, seed = (o.verify_top_k, o.n_random, o.recall_n,
                                                                      o.exact_all, o.eap_ig_json, o.seed)
    check_method(method, steps)
    lm = resolve_model(run_or_model)
    check_edge_model(lm.model)
    pool = _tfc1_pairs(lm, source, dataset, qids, n_queries, docs_per_query, None)
    pairs = [p for p in pool if max_length is None or len(p.baseline_ids) <= max_length][:limit]
    if not pairs:
        raise ValueError(f"edges: no TFC1 pairs of at most {max_length} tokens")
    if isinstance(heads, str):
        src, _, dst = heads.partition("->")
        heads = {"sources": [h.strip() for h in src.split(",") if h.strip()],
                 "targets": [h.strip() for h in dst.split(",") if h.strip()]}
    batch = batch_pairs(pairs, max_length=lm.model.cfg.n_ctx)
    groups = None
    if spans:
        from jaxmech.analysis.edge_spans import span_masks

        groups = span_masks(pairs, batch.n_pos)
    data = edge_data(lm.model, batch, spans=groups)
    out = edge_circuits(lm.model, data, method=method, steps=steps, verify_top_k=verify_top_k, n_random=n_random,
                        recall_n=recall_n, exact_all=bool(exact_all), heads=heads, seed=seed,
                        model_label=str(getattr(lm, "folder", "")), spans=bool(spans))
    if eap_ig_json is not None:
        import json

        from jaxmech.files import atomic_write

        atomic_write(eap_ig_json, lambda tmp: Path(tmp).write_text(json.dumps(out["eap_ig_graph"])))
    return out


__all__ = ["DEFAULT_GRID", "PAPER_HEADS", "check_method", "edge_circuits", "edge_effects", "edges_step",
           "faithfulness", "top_edges", "verify"]
