"""The IDF direction: a planted IDF direction in an embedding matrix is recovered with the paper's sign, and
centring separates it from a planted mean-direction confound; IDF streamed from a collection equals the
in-memory table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmech.analysis.idf_svd import (
    component_correlations,
    embedding_svd,
    idf_svd_analysis,
    iter_collection,
    stream_idf,
    u0_idf_scale,
)
from jaxmech.data.records import DataError


def _planted(n=3000, d=24, *, mean_scale=0.0, seed=0):
    rng = np.random.default_rng(seed)
    idf = np.where(rng.random(n) < 0.2, 0.0, rng.gamma(3.0, 1.5, n))  # 20% ids without an IDF (word pieces)
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    z = (idf - idf.mean()) / idf.std()
    W = np.outer(3.0 * z, v) + 0.3 * rng.normal(size=(n, d))
    if mean_scale:
        m = rng.normal(size=d)
        m -= (m @ v) * v  # a mean direction orthogonal to the IDF direction, carrying no IDF
        W += mean_scale * m / np.linalg.norm(m) * (1 + 0.02 * rng.normal(size=(n, 1)))
    return W, idf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_idf_direction_is_u0_with_negative_sign(seed):
    W, idf = _planted(seed=seed)
    for flip in (1.0, -1.0):  # the orientation must not depend on the sign LAPACK happens to return
        svd = embedding_svd(flip * W, idf=idf)
        r = component_correlations(svd.U, idf, n_components=10)
        assert r[0] < -0.95
        assert np.all(np.abs(r[1:]) < 0.2)
    np.testing.assert_allclose(svd.reconstruct(), -W, atol=1e-9)


def test_centring_separates_the_mean_direction_confound():
    W, idf = _planted(mean_scale=40.0)
    out = idf_svd_analysis(W, {"word": idf}, n_components=10)
    assert out["u0_mean_cosine"] > 0.95  # U_0 of the raw matrix is the mean direction
    assert abs(out["u0_idf_pearson"]) < 0.3
    assert out["components"][1]["pearson"] < -0.9 or out["components"][1]["pearson"] > 0.9
    assert out["u0_idf_pearson_centered"] < -0.95  # the IDF direction, after centring
    assert out["strongest_component"] == 1 and out["strongest_component_centered"] == 0
    assert set(out) >= {
        "analysis",
        "model",
        "u0_idf_pearson",
        "u0_idf_pearson_centered",
        "u0_mean_cosine",
        "components",
        "variants",
        "scatter",
    }
    assert out["variants"]["word_centered"] == pytest.approx(out["u0_idf_pearson_centered"])
    json.dumps(out, default=lambda x: x.tolist())


def test_u0_idf_scale_matches_idf_moments():
    rng = np.random.default_rng(0)
    u0, idf = rng.normal(size=100), rng.gamma(2.0, 1.0, 100)
    s = u0_idf_scale(u0, idf)
    assert s.mean() == pytest.approx(idf.mean()) and s.std() == pytest.approx(idf.std())
    assert np.corrcoef(s, u0)[0, 1] == pytest.approx(1.0)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="one value per vocabulary id"):
        embedding_svd(np.ones((5, 3)), idf=np.ones(4))
    with pytest.raises(ValueError, match="non-zero IDF"):
        component_correlations(np.ones((5, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="main_rule"):
        idf_svd_analysis(np.eye(5), {"word": np.arange(5.0)}, main_rule="wordpiece")


def test_iter_collection_tsv_jsonl_and_errors(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("1\tfirst doc\n2\ttitle\tsecond doc\n\n")
    assert list(iter_collection(tsv)) == ["first doc", "title second doc"]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"_id": "1", "title": "T", "text": "x y"}\n{"text": "z"}\n')
    assert list(iter_collection(jl)) == ["T x y", "z"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tok\nno-tab-here\n")
    with pytest.raises(DataError, match="line 2"):
        list(iter_collection(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_collection(tmp_path / "missing.tsv"))


def test_stream_idf_equals_the_in_memory_table(tokenizer):
    from jaxmech.data.idf import word_idf, wordpiece_idf

    texts = [
        "Tides are caused by the moon.",
        "The moon orbits the Earth.",
        "Cats sleep a lot; cats purr.",
        "Playing and played",
        "the the the",
    ]
    assert stream_idf(iter(texts), tokenizer, chunk_size=2) == pytest.approx(word_idf(texts, tokenizer))
    assert stream_idf(texts, tokenizer, level="wordpiece", chunk_size=3) == pytest.approx(
        wordpiece_idf(texts, tokenizer)
    )
    with pytest.raises(ValueError, match="empty"):
        stream_idf([], tokenizer)


def test_sign_free_u0_measure_can_come_out_either_way():
    """The stored u0_idf_pearson is oriented by IDF (negative by construction); the sign-free measure
    corr(U_0 * sum(Vt[0]), IDF) is a property of W_E: negating W_E flips it and leaves the oriented r alone."""
    W, idf = _planted(seed=3)
    a = idf_svd_analysis(W, {"word": idf}, n_components=5)
    b = idf_svd_analysis(-W, {"word": idf}, n_components=5)
    assert a["u0_idf_pearson"] == pytest.approx(b["u0_idf_pearson"]) and a["u0_idf_pearson"] < -0.95
    assert a["u0_idf_pearson_sign_free"] == pytest.approx(-b["u0_idf_pearson_sign_free"])
    assert abs(a["u0_idf_pearson_sign_free"]) > 0.95


def test_base_comparison_tells_an_inherited_u0_from_a_learned_one():
    from jaxmech.analysis.idf_svd import base_comparison

    W, idf = _planted(seed=4)
    rng = np.random.default_rng(5)
    close = base_comparison(W + 0.003 * rng.normal(size=W.shape), W, idf)  # fine-tuning barely moved W_E
    assert close["u0_abs_cosine"] > 0.99 and close["w_e_relative_difference"] < 0.01
    other = base_comparison(W, rng.normal(size=W.shape), idf)  # a base without the IDF direction
    assert other["u0_abs_cosine"] < 0.2 and abs(other["base_u0_idf_pearson"]) < 0.2
    with pytest.raises(ValueError, match="not its base"):
        base_comparison(W, W[:10], idf)
