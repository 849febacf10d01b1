"""Reranking evaluation: nDCG@k and MRR@k of a model's scores over each query's candidates, and agreement
with reference scores.

**Why our own code.** The two metrics are a dozen lines each; the maintained libraries (``pytrec_eval``, a C
extension wrapping trec_eval; ``ranx``, numba; ``ir_measures``, which wraps both) would be a dependency for
that. We follow trec_eval's conventions exactly and test against ``pytrec_eval`` whenever it is installed
(``tests/test_train_evaluate.py``):

* documents are ranked by score, descending; ties are broken by document id, descending (trec_eval's order);
* nDCG@k uses linear gain ``rel`` and discount ``1 / log2(rank + 1)``; the ideal ranking is over *all* judged
  documents of the query (not only retrieved ones); a query with no relevant document scores 0;
* MRR@k is ``1 / rank`` of the first document with ``rel > 0`` within the top k, else 0.

Means are over the queries of the run that have at least one relevant judged document.

**Labels without qrels.** The shared MS MARCO set has no relevance judgements, so `labels_from_scores` turns
a score source into binary labels: its top-k candidates of each query are relevant. We use two independent
sources: the teacher's scores (did the student learn the teacher's ranking?) and the TAS-B scores shipped
with the data (a different, relevance-trained model). `agreement` adds Pearson and Spearman correlations,
pooled over all pairs and averaged per query.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

Run = Mapping[str, Mapping[str, float]]
"""``qid -> {doc_id: score}``."""
Qrels = Mapping[str, Mapping[str, float]]
"""``qid -> {doc_id: relevance}``."""


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Document ids by score descending, ties by id descending (trec_eval's order)."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def ndcg_at_k(scores: Mapping[str, float], rels: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of one query (linear gain, log2 discount, ideal over all judged documents)."""
    ranked = ranking(scores)[:k]
    dcg = sum(float(rels.get(d, 0.0)) / np.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted((float(r) for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / np.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(scores: Mapping[str, float], rels: Mapping[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 if none)."""
    for i, d in enumerate(ranking(scores)[:k]):
        if rels.get(d, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def rerank_metrics(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    """Mean nDCG@k and MRR@k over the queries of ``run`` that have a relevant judged document.

    Returns:
        ``{"ndcg@k": ..., "mrr@k": ..., "queries": n}``.
    """
    qs = [q for q in run if any(r > 0 for r in qrels.get(q, {}).values())]
    nd = [ndcg_at_k(run[q], qrels[q], k) for q in qs]
    mr = [mrr_at_k(run[q], qrels[q], k) for q in qs]
    return {
        f"ndcg@{k}": float(np.mean(nd)) if qs else float("nan"),
        f"mrr@{k}": float(np.mean(mr)) if qs else float("nan"),
        "queries": len(qs),
    }


def labels_from_scores(run: Run, top_k: int) -> dict[str, dict[str, int]]:
    """Binary labels: the ``top_k`` best-scored candidates of each query (trec_eval order) are relevant."""
    out = {}
    for q, scores in run.items():
        top = set(ranking(scores)[:top_k])
        out[q] = {d: int(d in top) for d in scores}
    return out


def agreement(run: Run, reference: Run) -> dict[str, float]:
    """Correlation of a run's scores with reference scores on the pairs both have.

    Returns:
        ``pearson`` and ``spearman`` pooled over pairs, ``spearman_per_query`` (mean over queries with at
        least 3 shared pairs) and ``pairs``.
    """
    xs, ys, per_query = [], [], []
    for q, scores in run.items():
        ref = reference.get(q, {})
        shared = [d for d in scores if d in ref]
        x = np.array([scores[d] for d in shared], np.float64)
        y = np.array([ref[d] for d in shared], np.float64)
        xs.append(x)
        ys.append(y)
        if len(shared) >= 3 and x.std() > 0 and y.std() > 0:
            per_query.append(stats.spearmanr(x, y).statistic)
    x, y = np.concatenate(xs) if xs else np.zeros(0), np.concatenate(ys) if ys else np.zeros(0)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return {
            "pearson": float("nan"),
            "spearman": float("nan"),
            "spearman_per_query": float("nan"),
            "pairs": len(x),
        }
    return {
        "pearson": float(stats.pearsonr(x, y).statistic),
        "spearman": float(stats.spearmanr(x, y).statistic),
        "spearman_per_query": float(np.mean(per_query)) if per_query else float("nan"),
        "pairs": len(x),
    }


def run_from_rows(qids, doc_ids, scores) -> dict[str, dict[str, float]]:
    """``qid -> {doc_id: score}`` from parallel row lists."""
    out: dict[str, dict[str, float]] = {}
    for q, d, s in zip(qids, doc_ids, scores, strict=True):
        out.setdefault(q, {})[d] = float(s)
    return out


def evaluate_run(
    run: Run,
    *,
    k: int = 10,
    label_top_k: int = 10,
    teacher: Run | None = None,
    labels: Qrels | None = None,
    reference: Run | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric the trainer reports for a run of held-out queries.

    Args:
        run: The model's scores.
        k: Metric cutoff.
        label_top_k: Teacher/reference top-k counted as relevant.
        teacher: Teacher scores: ``vs_teacher`` gets nDCG/MRR with the teacher's top-k as labels and the
            correlations.
        labels: Data labels: ``vs_labels`` gets nDCG/MRR.
        reference: Independent reference scores (e.g. TAS-B): ``vs_reference`` like ``vs_teacher``.
    """
    out: dict[str, dict[str, float]] = {}
    for name, src in (("vs_teacher", teacher), ("vs_reference", reference)):
        if src is not None:
            sub = {q: {d: src[q][d] for d in run[q] if d in src.get(q, {})} for q in run}
            out[name] = {
                **rerank_metrics(run, labels_from_scores(sub, label_top_k), k),
                **agreement(run, sub),
            }
    if labels is not None:
        out["vs_labels"] = rerank_metrics(run, labels, k)
    return out
