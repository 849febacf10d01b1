"""Edge-level circuits on post-LN and pre-LN (ModernBERT) encoders: estimates checked against exact edge patches,
and faithfulness (the edge of each: `jaxmech.patching.edge_graph`).

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

**Ablations.** ``ablation="perturbed"`` (the default) patches the edges outside a circuit to their perturbed
values; ``"mean"`` to their senders' mean outputs over the pairs' real tokens
(`jaxmech.patching.edges.mean_ablated`; the empty circuit is then the model with every edge mean-ablated);
``"both"`` reports the two curves (the mean one under ``mean_ablation``). The edges are ranked by the method's
effects of the perturbation either way (the question is which edges carry its effect); the ablation only decides
what the rest of the model sees.

**The circuit** the JSON exports (``eap_ig_graph``'s ``in_graph``, the heads' connections) is the smallest 80 %
circuit by default, or with ``threshold`` every edge whose ``|mean effect|`` is at least the threshold
(``threshold_circuit``: its size and recovery); ``circuit`` says which rule chose it.
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
from jaxmech.patching.edges import EdgeData, edges_patched_scores, exact_edge_scores, mean_ablated

DEFAULT_GRID = (0, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
ABLATIONS = ("perturbed", "mean", "both")
"""What the edges outside a circuit are patched to (see the module docstring)."""
PAPER_HEADS = {"sources": ["2.9", "1.1"], "targets": ["5.7", "5.1", "5.5", "5.3"]}
"""The exact-match heads and the scoring heads of the paper's circuit on the distilled MiniLM-L6."""


def check_method(method: str, steps: int, ablation: str = "perturbed", threshold: float | None = None) -> None:
    """One-line error for an unknown method or ablation, a bad step count or threshold (before any compute)."""
    if method != "exact" and method not in METHODS:
        raise ValueError(f"edges: method {method!r}: expected exact, {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"edges: steps={steps} must be >= 1")
    if ablation not in ABLATIONS:
        raise ValueError(f"edges: ablation {ablation!r}: expected one of {', '.join(ABLATIONS)}")
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"edges: threshold={threshold} must be a finite number >= 0")


def edge_effects(model, data: EdgeData, method: str, steps: int = 5, *, chunk_size: int = 64) -> np.ndarray:
    """``[pair, edge]`` ``patched - baseline`` by the method (exact or an estimate)."""
    check_method(method, steps)
    if method == "exact":
        return exact_edge_scores(model, data, chunk_size=chunk_size) - np.asarray(data.baseline_score)[:, None]
    return estimate_edges(model, data, method, steps=steps)


def top_edges(effect, n: int) -> np.ndarray:
    """Indices of the ``n`` largest ``|effect|`` (stable order)."""
    return np.argsort(-np.abs(np.asarray(effect)), kind="stable")[:n]


def circuit_mask(effect, *, n: int | None = None, threshold: float | None = None) -> np.ndarray:
    """``[edge]`` bool: the top ``n`` edges by ``|effect|``, or (``threshold``) every edge with
    ``|effect| >= threshold``. Exactly one of the two is given."""
    if (n is None) == (threshold is None):
        raise ValueError("circuit_mask: give exactly one of n and threshold")
    effect = np.asarray(effect)
    if threshold is not None:
        return np.abs(effect) >= threshold
    mask = np.zeros(effect.size, bool)
    mask[top_edges(effect, n)] = True
    return mask


def recovery(model, data: EdgeData, circuit, anchors: tuple[float, float]) -> float:
    """``(m(C) - m(empty)) / (m(full) - m(empty))`` of the circuit ``[edge]`` (every other edge patched by
    ``data``: perturbed, or `mean_ablated`); ``anchors``: ``(m(full), m(empty))``."""
    keep = jnp.broadcast_to(jnp.asarray(circuit, jnp.float32), (data.ids.shape[0], np.size(circuit)))
    m = float(np.mean(edges_patched_scores(model, data, keep)))
    full, empty = anchors
    return (m - empty) / (full - empty)


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
    return recovery(model, data, keep, anchors)


def faithfulness(model, data: EdgeData, effect, grid: Sequence[int] = DEFAULT_GRID, *, target: float = 0.8,
                 refine: int = 6) -> dict:
    """Recovery of circuits of the top ``n`` edges of ``effect`` ``[edge]`` for ``n`` in ``grid`` (+ every edge),
    CPR, CMD and the smallest circuit reaching ``target`` (see the module docstring). ``data``: `edge_data`
    (every other edge patched to its perturbed value) or its `mean_ablated` (to its mean)."""
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


def _faithfulness_by_ablation(model, data: EdgeData, effect, grid, ablation: str) -> dict[str, dict]:
    """`faithfulness` under each ablation ``ablation`` asks for, the primary one first."""
    names = ("perturbed", "mean") if ablation == "both" else (ablation,)
    runs = {name: mean_ablated(data) if name == "mean" else data for name in names}
    return {name: {**faithfulness(model, d, effect, grid), "data": d} for name, d in runs.items()}


def _faith_json(f: dict) -> dict:
    return {"faithfulness": [{"n_edges": p["n_edges"], "recovery": p["recovery"]} for p in f["curve"]],
            "cpr": f["cpr"], "cmd": f["cmd"], "smallest_80": f["smallest"], "empty_score": f["empty_score"]}


def _chosen_circuit(model, graph: EdgeGraph, effect, faith: dict[str, dict], threshold) -> tuple[np.ndarray, dict]:
    """The exported circuit (smallest 80 % under the primary ablation, or by ``threshold``) and its JSON."""
    primary = next(iter(faith.values()))
    if threshold is None:
        n80 = primary["smallest"]["n_edges"] if primary["smallest"] else graph.n_edges
        circuit = circuit_mask(effect, n=n80)
        return circuit, {"circuit": {"rule": "smallest_80", "n_edges": int(circuit.sum())}}
    circuit = circuit_mask(effect, threshold=threshold)
    rec = {("recovery" if i == 0 else f"recovery_{name}"):
           recovery(model, f["data"], circuit, (f["full_score"], f["empty_score"]))
           for i, (name, f) in enumerate(faith.items())}
    n = int(circuit.sum())
    return circuit, {"circuit": {"rule": "threshold", "n_edges": n},
                     "threshold_circuit": {"threshold": float(threshold), "n_edges": n, "fraction": n / graph.n_edges,
                                           **rec}}


def edge_circuits(model, data: EdgeData, *, method: str = "eap-ig-inputs", steps: int = 5, verify_top_k: int = 50,
                  n_random: int = 50, recall_n: int = 50, exact_all: bool = False, grid=DEFAULT_GRID,
                  heads: dict | None = None, seed: int = 0, model_label: str = "", spans: bool = False,
                  ablation: str = "perturbed", threshold: float | None = None) -> dict:
    """The ``edges`` analysis JSON (see the module docstring); ``heads``: ``{"sources": [...], "targets":
    [...]}`` whose connections in the exported circuit are reported (default `PAPER_HEADS` when the model has
    their layers and heads); ``spans``: also `span_report` (``data.spans`` holds the groups); ``ablation``: one
    of `ABLATIONS`; ``threshold``: export the circuit of every edge with ``|mean effect| >= threshold`` instead
    of the smallest 80 % one."""
    check_method(method, steps, ablation, threshold)
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    per_pair = edge_effects(model, data, method, steps)
    effect = per_pair.mean(0)
    exact = effect if method == "exact" else (edge_effects(model, data, "exact").mean(0) if exact_all else None)
    ver = verify(model, data, effect, k=verify_top_k, n_random=n_random, recall_n=recall_n, exact_all=exact,
                 seed=seed)
    faith = _faithfulness_by_ablation(model, data, effect, grid, ablation)
    circuit, circuit_json = _chosen_circuit(model, graph, effect, faith, threshold)
    primary = next(iter(faith.values()))
    if heads is None and model.cfg.n_layers > 5 and model.cfg.n_heads > 9:
        heads = PAPER_HEADS
    out = {"analysis": "edges", "model": model_label, "method": method, "steps": steps if method != "eap" else 1,
           "n_pairs": int(data.ids.shape[0]), "n_edges": graph.n_edges,
           "verified_spearman": ver["spearman"], "top_recall": ver["recall"], "top_recall_scope": ver["recall_scope"],
           "recall_n": recall_n, "n_verified": int(len(ver["edges"])), "ablation": ablation,
           **{k: v for k, v in _faith_json(primary).items() if k != "empty_score"},
           "baseline_score": primary["full_score"], "empty_score": primary["empty_score"],
           "perturbed_score": float(np.mean(data.perturbed_score)), **circuit_json,
           "top_edges": [{"edge": graph.edge_name(int(e)), "effect": float(effect[e])}
                         for e in top_edges(effect, 50)],
           "verified": [{"edge": graph.edge_name(int(e)), "estimate": float(a), "exact": float(b)}
                        for e, a, b in zip(ver["edges"], ver["estimate"], ver["exact"], strict=True)]}
    if ablation == "both":
        out["mean_ablation"] = _faith_json(faith["mean"])
    if exact is not None and method != "exact":
        top200 = top_edges(exact, 200)
        out["spearman_exact_top200"] = float(spearmanr(effect[top200], exact[top200]).statistic)
    if heads:
        out["connections_80" if threshold is None else "connections_threshold"] = connections(
            graph, circuit, heads["sources"], heads["targets"])
    if spans:
        out["top_span_edges"] = span_report(model, data, method, steps)
    out["eap_ig_graph"] = to_eap_ig_json(graph, effect, circuit, d_model=model.cfg.d_model)
    return out


def edges_step(run_or_model, options: EdgesOptions) -> dict:
    """`edge_circuits` on TFC1 pairs (``dataset`` or built from ``source``; pairs longer than ``max_length``
    tokens left out). ``heads``: ``"2.9,1.1->5.7,5.1"`` (sources -> targets) whose connections are reported;
    ``eap_ig_json``: also write the circuit there in EAP-IG's graph format; ``spans``: also the top span-aware
    edges (`span_report`, groups from the pairs' token types); ``ablation``: see `edge_circuits`;
    ``prune_threshold``: its ``threshold`` (a circuit of every edge with ``|mean effect|`` at least this).
    ``options``: `EdgesOptions`, whose defaults hold."""
    from jaxmech.analysis.inputs import resolve_model
    from jaxmech.analysis.inputs import tfc1_pairs as _tfc1_pairs
    from jaxmech.patching.edges import check_edge_model, edge_data
    from jaxmech.patching.inputs import batch_pairs

    o = options
    source, dataset, qids, n_queries, docs_per_query = o.source, o.dataset, o.qids, o.n_queries, o.docs_per_query
    limit, max_length, method, steps, heads, spans = o.limit, o.max_length, o.method, o.steps, o.heads, o.spans
    verify_top_k, n_random, recall_n, exact_all, eap_ig_json, seed = (o.verify_top_k, o.n_random, o.recall_n,
                                                                      o.exact_all, o.eap_ig_json, o.seed)
    ablation, prune_threshold = o.ablation, o.prune_threshold
    check_method(method, steps, ablation, prune_threshold)
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
    batch = batch_pairs(pairs, pad_id=getattr(lm.tokenizer, "pad_id", 0), max_length=lm.model.cfg.n_ctx)
    groups = None
    if spans:
        from jaxmech.analysis.edge_spans import span_masks

        groups = span_masks(pairs, batch.n_pos)
    data = edge_data(lm.model, batch, spans=groups)
    out = edge_circuits(lm.model, data, method=method, steps=steps, verify_top_k=verify_top_k, n_random=n_random,
                        recall_n=recall_n, exact_all=bool(exact_all), heads=heads, seed=seed,
                        model_label=str(getattr(lm, "folder", "")), spans=bool(spans), ablation=ablation,
                        threshold=prune_threshold)
    if eap_ig_json is not None:
        import json

        from jaxmech.files import atomic_write

        atomic_write(eap_ig_json, lambda tmp: Path(tmp).write_text(json.dumps(out["eap_ig_graph"])))
    return out


__all__ = ["ABLATIONS", "DEFAULT_GRID", "PAPER_HEADS", "check_method", "circuit_mask", "edge_circuits",
           "edge_effects", "edges_step", "faithfulness", "recovery", "top_edges", "verify"]
