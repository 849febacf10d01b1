"""nDCG@k and MRR@k follow trec_eval (hand-computed cases; pytrec_eval when installed), labels from scores,
and correlations."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.train.evaluate import (
    agreement,
    evaluate_run,
    labels_from_scores,
    mrr_at_k,
    ndcg_at_k,
    ranking,
    rerank_metrics,
)


def test_ndcg_and_mrr_of_a_single_relevant_document_at_rank_two():
    scores = {"a": 3.0, "b": 2.0, "c": 1.0}
    assert ndcg_at_k(scores, {"b": 1}, 10) == pytest.approx(1 / np.log2(3))
    assert mrr_at_k(scores, {"b": 1}, 10) == 0.5


def test_ndcg_uses_linear_gains_and_an_ideal_over_all_judged_documents():
    scores = {"a": 3.0, "b": 2.0}
    rels = {"a": 1, "b": 0, "z": 2}  # z is judged but not retrieved: it still counts in the ideal
    dcg = 1.0
    idcg = 2.0 + 1.0 / np.log2(3)
    assert ndcg_at_k(scores, rels, 10) == pytest.approx(dcg / idcg)


def test_cutoff_drops_documents_below_rank_k():
    scores = {str(i): float(-i) for i in range(12)}
    assert mrr_at_k(scores, {"10": 1}, 10) == 0.0 and ndcg_at_k(scores, {"10": 1}, 10) == 0.0
    assert mrr_at_k(scores, {"9": 1}, 10) == pytest.approx(0.1)


def test_ties_are_broken_by_document_id_descending_as_trec_eval():
    assert ranking({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]


def test_means_skip_queries_without_relevant_documents():
    run = {"q1": {"a": 1.0, "b": 0.0}, "q2": {"a": 1.0}}
    m = rerank_metrics(run, {"q1": {"a": 1}, "q2": {"a": 0}}, k=10)
    assert m == {"ndcg@10": 1.0, "mrr@10": 1.0, "queries": 1}


def test_labels_from_scores_marks_the_top_k():
    labels = labels_from_scores({"q": {"a": 0.1, "b": 0.9, "c": 0.5}}, 2)
    assert labels == {"q": {"a": 0, "b": 1, "c": 1}}


def test_agreement_of_a_monotone_transform_is_one_in_spearman():
    rng = np.random.default_rng(0)
    run = {f"q{i}": {f"d{j}": float(rng.normal()) for j in range(10)} for i in range(3)}
    ref = {q: {d: float(np.exp(s)) for d, s in docs.items()} for q, docs in run.items()}
    a = agreement(run, ref)
    assert a["spearman"] == pytest.approx(1.0) and a["spearman_per_query"] == pytest.approx(1.0)
    assert 0.5 < a["pearson"] < 1.0 and a["pairs"] == 30


def test_evaluating_a_teacher_against_itself_is_perfect():
    rng = np.random.default_rng(1)
    run = {f"q{i}": {f"d{j}": float(rng.normal()) for j in range(20)} for i in range(4)}
    out = evaluate_run(run, k=10, label_top_k=5, teacher=run)
    assert out["vs_teacher"]["ndcg@10"] == pytest.approx(1.0) and out["vs_teacher"]["mrr@10"] == 1.0


def test_metrics_match_pytrec_eval_on_random_graded_runs():
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec_eval (trec_eval bindings) not installed")
    rng = np.random.default_rng(2)
    run, qrels = {}, {}
    for i in range(30):
        docs = [f"d{j}" for j in range(25)]
        # coarse scores so that ties occur
        run[f"q{i}"] = {d: float(rng.integers(0, 8)) for d in docs}
        qrels[f"q{i}"] = {d: int(rng.choice([0, 0, 0, 1, 2])) for d in docs[:20]}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"})
    ref = ev.evaluate(run)
    top10 = {q: dict(sorted(s.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, s in run.items()}
    ref_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for q in run:
        if not any(qrels[q].values()):
            continue
        assert ndcg_at_k(run[q], qrels[q], 10) == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-4)
        assert mrr_at_k(run[q], qrels[q], 10) == pytest.approx(ref_rr[q]["recip_rank"], abs=1e-4)
