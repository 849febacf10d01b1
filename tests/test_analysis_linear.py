"""Linear semantic BM25: features, splits and fits recover planted linear scores; BM25 tuning recovers a planted
BM25; each pair's document is bounded by its own [SEP]."""

from __future__ import annotations

import numpy as np
import pytest
from planted import FakeTokenizer, exact_match_model

from jaxmech.analysis.linear_bm25 import (
    bm25_baseline,
    doc_targets,
    feature_matrix,
    fit_linear,
    linear_bm25_from_arrays,
    random_features_like,
    regression_metrics,
    soft_tf_features,
    split_indices,
)


def test_feature_layout_is_the_papers_135():
    rng = np.random.default_rng(0)
    tf, idf = rng.random((7, 13, 5)), rng.random((7, 5))
    X, names = feature_matrix(tf, idf)
    assert X.shape == (7, 135) and len(names) == 135
    assert names[:2] == ["q0.idf", "q0.tf[0]"] and names[14] == "q0.tf_idf[0]"
    np.testing.assert_array_equal(X[:, 0], idf[:, 0])
    np.testing.assert_array_equal(X[:, 1 + 13 + 4], tf[:, 4, 0] * idf[:, 0])
    np.testing.assert_array_equal(X[:, 27 + 1 + 2], tf[:, 2, 1])


def test_split_by_query_holds_out_whole_queries():
    groups = [f"q{i // 10}" for i in range(500)]
    train, test = split_indices(500, groups, split="query", seed=42)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert len({groups[i] for i in test}) == 10  # 20% of 50 queries
    again = split_indices(500, groups, split="query", seed=42)
    np.testing.assert_array_equal(again[1], test)
    other = split_indices(500, groups, split="query", seed=1)
    assert set(other[1]) != set(test)
    tr, te = split_indices(500, None, split="pair", seed=42)
    assert len(te) == 100 and not set(tr) & set(te)
    with pytest.raises(ValueError, match="split"):
        split_indices(10, None, split="doc")


def test_planted_linear_score_is_recovered_and_random_features_are_not():
    rng = np.random.default_rng(1)
    n, heads, nq = 600, 13, 5
    tf = rng.gamma(2.0, 0.1, (n, heads, nq))
    idf = rng.normal(5, 2, (n, nq))
    X, _ = feature_matrix(tf, idf)
    w = rng.normal(size=X.shape[1])
    y = X @ w + 3.0  # an exact linear function of the planted features
    groups = [i // 6 for i in range(n)]
    res = linear_bm25_from_arrays(tf, idf, y, groups, split="query")
    assert res["fit"]["test"]["pearson"] > 1 - 1e-9
    assert res["fit"]["test"]["r2"] > 1 - 1e-9
    sd = X[res["train"]].std(0)
    np.testing.assert_allclose(res["fit"]["coef"], w * sd, rtol=1e-6, atol=1e-8)  # z-units
    assert abs(res["random"]["test"]["pearson"]) < 0.3


def test_regression_metrics_and_random_control():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = regression_metrics(y, y)
    assert m["pearson"] == pytest.approx(1.0) and m["rmse"] == 0 and m["r2"] == 1.0 and m["spearman"] == 1.0
    X = np.random.default_rng(0).normal([1, 10], [2, 0.5], (4000, 2))
    R = random_features_like(X, seed=3)
    np.testing.assert_allclose(R.mean(0), X.mean(0), atol=0.1)
    np.testing.assert_allclose(R.std(0), X.std(0), rtol=0.05)
    fit = fit_linear(np.c_[np.ones(10)], np.arange(10.0), np.arange(8), np.arange(8, 10))  # constant feature
    assert np.isfinite(fit["intercept"])


def test_tuned_bm25_recovers_a_planted_bm25():
    from jaxmech.data.bm25 import token_bm25

    rng = np.random.default_rng(0)
    idf = rng.uniform(0.5, 5.0, 50)
    qs = [list(rng.integers(0, 50, 5)) for _ in range(300)]
    ds = [list(rng.integers(0, 50, rng.integers(20, 120))) for _ in range(300)]
    y = token_bm25(qs, ds, idf, k1=1.2, b=0.75, avg_len=60.0)
    train, test = np.arange(240), np.arange(240, 300)
    res = bm25_baseline(
        qs, ds, y, idf, train, test, avg_len=60.0, k1_grid=[0.5, 0.9, 1.2, 2.0], b_grid=[0.25, 0.5, 0.75, 1.0]
    )
    assert (res["k1"], res["b"]) == (1.2, 0.75)
    assert res["test"]["pearson"] == pytest.approx(1.0, abs=1e-12)


def test_doc_targets_use_the_pairs_own_sep():
    t = doc_targets(5, 4)  # [CLS] q1..q5 [SEP]=6 d=7..10 [SEP]=11
    assert t.shape == (12, 12)
    np.testing.assert_array_equal(np.flatnonzero(t[1]), [7, 8, 9, 10, 11])
    assert not t[0].any() and not t[6].any() and t[1:6].all(axis=0).sum() == 5
    t2 = doc_targets(5, 4, include_final_sep=False)
    np.testing.assert_array_equal(np.flatnonzero(t2[3]), [7, 8, 9, 10])


def test_soft_tf_features_read_the_planted_head():
    """On the exact-match model, query token i's soft TF in head 0.0 is m_i / (m_i + 1) for m_i document copies."""
    model = exact_match_model()
    qs = [[3, 4, 5, 6, 7], [3, 4, 5, 6, 8]]
    ds = [[3, 3, 4, 11, 12, 13], [9, 10, 11, 12, 13, 14, 15]]
    tf, score = soft_tf_features(model, FakeTokenizer(), qs, ds, batch_size=2)
    assert tf.shape == (2, 2, 2, 5) and score.shape == (2,)
    np.testing.assert_allclose(tf[0, 0, 0], [2 / 3, 1 / 2, 0, 0, 0], atol=0.02)
    np.testing.assert_allclose(tf[1, 0, 0], 0.0, atol=0.02)


def test_fixed_test_queries_and_both_bm25_fallbacks():
    from jaxmech.analysis.linear_bm25 import split_indices
    from jaxmech.data.bm25 import token_bm25

    groups = ["q1", "q1", "q2", "q3", "q3", "q4"]
    train, test = split_indices(6, groups, test_groups={"q3"})
    assert test.tolist() == [3, 4] and train.tolist() == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="cover 0 of 6"):
        split_indices(6, groups, test_groups={"q9"})
    rng = np.random.default_rng(1)
    idf = rng.uniform(0.5, 5.0, 50)
    idf[:10] = 0.0  # word pieces without an IDF: only the BEIR fallback gives them a weight
    qs = [list(rng.integers(0, 20, 5)) for _ in range(200)]
    ds = [list(rng.integers(0, 50, rng.integers(20, 80))) for _ in range(200)]
    y = token_bm25(qs, ds, idf, k1=1.2, b=0.75, avg_len=60.0, fallback="beir")
    tr, te = np.arange(160), np.arange(160, 200)
    grid = dict(avg_len=60.0, k1_grid=[0.6, 1.2, 2.0], b_grid=[0.5, 0.75, 1.0])
    paper = bm25_baseline(qs, ds, y, idf, tr, te, **grid)  # default: no fallback
    beir = bm25_baseline(qs, ds, y, idf, tr, te, fallback="beir", **grid)
    assert paper["fallback"] is None and beir["test"]["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert paper["test"]["pearson"] < 0.99
    with pytest.raises(ValueError, match="fallback"):
        bm25_baseline(qs, ds, y, idf, tr, te, fallback="zero", **grid)


def test_linear_bm25_step_reads_test_qids_from_a_file(tmp_path, monkeypatch):
    """``--test-qids FILE`` reaches `linear_bm25` as the list of ids in the file (the step reads it)."""
    import jaxmech.analysis.linear_bm25 as lb
    from jaxmech.analysis import steps
    from jaxmech.analysis.options import LinearBm25Options

    seen = {}
    monkeypatch.setattr(steps, "resolve_model", lambda m: m)
    monkeypatch.setattr(steps, "resolve_source", lambda source, qids=None: source)
    monkeypatch.setattr(lb, "linear_bm25", lambda lm, src, **kw: seen.update(kw) or {"ok": True})
    f = tmp_path / "test_qids.txt"
    f.write_text("q3\nq7\n")
    assert steps.linear_bm25_step("model", LinearBm25Options(source="src", test_qids=f)) == {"ok": True}
    assert seen["test_qids"] == ["q3", "q7"] and seen["bm25_fallback"] is None
