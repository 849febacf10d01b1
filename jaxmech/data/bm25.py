"""BM25: document-level scores, and the paper's token-level BM25 over word pieces with a (k1, b) grid search.

**Document level.** `BM25Index` is our own numpy/scipy implementation: a sparse document x term matrix of
precomputed BM25 weights, and a batch of queries scored by one sparse x dense product over the columns the
queries use. We measured it against the two maintained PyPI libraries, ``bm25s`` 0.3.16 and ``rank_bm25``
0.2.2, with ``scripts/compare_bm25.py`` (2-core AMD EPYC, same tokens, k1 = 1.5, b = 0.75; results in
``benchmarks/results/compare_bm25.json``):

* agreement: ``rank_bm25`` (Okapi, given the same IDF table) to 7e-15; ``bm25s`` (``method="lucene"``, which
  drops the constant ``k1 + 1`` factor) to 4.8e-6 on scores up to 44, the rounding of its float32 storage;
* the paper's 9,943 passages and 100 queries: index 0.19 s (bm25s 0.33 s, rank_bm25 0.13 s), scoring all
  passages 4 ms (bm25s 3 ms, rank_bm25 1.0 s);
* a synthetic 200,000-document corpus, 1,000 queries: index 6.0 s (bm25s 8.5 s); scoring every document
  4.2 s into a float64 array (bm25s 1.2 s into float32).

So we keep our own: at the diagnostic sets' scale both are milliseconds; ours is exact in float64 (bm25s's
float32 would not pass a 1e-6 reference check), takes any tokens (the tokenizer's words, word-piece ids) and
any IDF formula or table (`jaxmech.data.idf`), and adds no dependency. ``rank_bm25`` is 250x slower to score.

Per term ``t`` of a query (with multiplicity) and document ``d``::

    idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

**Token level** (paper-notes §8): `token_bm25` scores a query against a document by word-piece ids with a
per-id IDF vector (`jaxmech.data.idf.vocab_idf`), given ``k1``, ``b`` and an average length ``L`` (84.32 in
the paper); the BEIR script's fallback replaces an IDF of 0 by ``log((1 + |d|) / (1 + tf)) + 1``. Grids of
``(k1, b)`` are evaluated at once; `grid_search_bm25` returns the setting with the best Pearson correlation
with given model scores (the paper's "tuned BM25", r = 0.42 reported).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from jaxtyping import Float

from jaxmech.data.idf import idf_values

PAPER_AVG_LEN = 84.32
"""Average document length (word pieces) in the paper's token-level BM25 (notes §8)."""
PAPER_BEIR_K1, PAPER_BEIR_B = 0.5, 0.9
"""(k1, b) of the paper's BEIR script."""

_WORD = re.compile(r"\w+", re.UNICODE)


def simple_tokenize(text: str) -> list[str]:
    """Lower-cased ``\\w+`` words: a tokenizer-free default for document-level BM25."""
    return _WORD.findall(text.lower())


def saturation(tf: np.ndarray, dl: np.ndarray, *, k1, b, avg_len) -> np.ndarray:
    """The BM25 term-frequency factor ``tf (k1 + 1) / (tf + k1 (1 - b + b dl / avg_len))`` (broadcasting)."""
    return tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl / avg_len))


class BM25Index:
    """Document-level BM25 over a tokenised corpus.

    Args:
        docs: Documents as strings (tokenised with ``tokenize``) or as token sequences.
        k1: Term-frequency saturation.
        b: Length normalisation.
        idf: A formula name of `jaxmech.data.idf.IDF_FORMULAS`, or a ``term -> idf`` mapping (terms missing
            from it get 0).
        tokenize: Tokenizer for string documents and queries.

    Attributes:
        vocab: ``term -> column``.
        idf: ``[terms]`` IDF per column.
        doc_len: ``[docs]`` document lengths in tokens.
        avg_len: Mean document length.
    """

    def __init__(self, docs: Sequence[str] | Sequence[Sequence[Hashable]], *, k1: float = 1.5,
                 b: float = 0.75, idf: str | Mapping[Hashable, float] = "lucene",
                 tokenize: Callable[[str], list[Hashable]] = simple_tokenize):
        self.k1, self.b, self.tokenize = float(k1), float(b), tokenize
        toks = [tokenize(d) if isinstance(d, str) else list(d) for d in docs]
        self.vocab: dict[Hashable, int] = {}
        rows, cols, vals = [], [], []
        for i, d in enumerate(toks):
            for t, c in Counter(d).items():
                rows.append(i)
                cols.append(self.vocab.setdefault(t, len(self.vocab)))
                vals.append(c)
        n_docs, n_terms = len(toks), len(self.vocab)
        tf = sp.csr_matrix((np.asarray(vals, np.float64), (rows, cols)), shape=(n_docs, n_terms))
        self.doc_len = np.asarray([len(d) for d in toks], np.float64)
        self.avg_len = float(self.doc_len.mean()) if n_docs else 0.0
        df = np.bincount(np.asarray(cols, np.int64), minlength=n_terms)
        if isinstance(idf, str):
            self.idf = idf_values(df, n_docs, idf)
        else:
            terms = [None] * n_terms
            for t, j in self.vocab.items():
                terms[j] = t
            self.idf = np.array([float(idf.get(t, 0.0)) for t in terms], np.float64)
        # weights[d, t] = idf(t) * saturation(tf(t, d), |d|); stored sparse like tf
        coo = tf.tocoo()
        w = self.idf[coo.col] * saturation(coo.data, self.doc_len[coo.row], k1=self.k1, b=self.b,
                                            avg_len=self.avg_len or 1.0)
        self.weights = sp.csr_matrix((w, (coo.row, coo.col)), shape=tf.shape)
        self._weights_csc = self.weights.tocsc()  # column slices for scoring all documents

    def __len__(self) -> int:
        return self.weights.shape[0]

    def _query_matrix(self, queries: Sequence[str] | Sequence[Sequence[Hashable]]) -> sp.csr_matrix:
        rows, cols = [], []
        for i, q in enumerate(queries):
            for t in self.tokenize(q) if isinstance(q, str) else q:
                j = self.vocab.get(t)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(self.vocab)))

    def scores(self, queries: Sequence[str] | Sequence[Sequence[Hashable]]
               ) -> Float[np.ndarray, "queries docs"]:
        """BM25 of every query against every document (query terms counted with multiplicity)."""
        q = self._query_matrix(queries)
        cols = np.unique(q.indices)  # only the columns some query uses: sparse [docs, u] @ dense [u, queries]
        return np.asarray(self._weights_csc[:, cols] @ q[:, cols].toarray().T).T

    def score_pairs(self, queries: Sequence[str] | Sequence[Sequence[Hashable]],
                    doc_indices: Sequence[int]) -> Float[np.ndarray, " pairs"]:
        """BM25 of ``queries[i]`` against document ``doc_indices[i]``."""
        q = self._query_matrix(queries)
        d = self.weights[np.asarray(doc_indices, np.int64)]
        return np.asarray(q.multiply(d).sum(axis=1)).ravel()

    def top_k(self, queries: Sequence[str] | Sequence[Sequence[Hashable]], k: int = 10
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(doc_indices, scores)``, each ``[queries, k]``, best first."""
        s = self.scores(queries)
        k = min(k, s.shape[1])
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(s, idx, 1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(idx, order, 1), np.take_along_axis(part, order, 1)


# -- token level (paper §8) ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TokenMatches:
    """Flattened (pair, query token) entries of a set of query-document pairs.

    Attributes:
        pair: ``[entries]`` pair index of each query token.
        token: ``[entries]`` its vocabulary id.
        tf: ``[entries]`` its count in the pair's document.
        doc_len: ``[pairs]`` document lengths.
    """

    pair: np.ndarray
    token: np.ndarray
    tf: np.ndarray
    doc_len: np.ndarray


def token_matches(query_ids: Sequence[Sequence[int]], doc_ids: Sequence[Sequence[int]], *,
                  max_query_tokens: int | None = None) -> TokenMatches:
    """Counts each query word piece in its document (the paper keeps the first 5: ``max_query_tokens=5``)."""
    if len(query_ids) != len(doc_ids):
        raise ValueError(f"{len(query_ids)} queries but {len(doc_ids)} documents")
    pair, token, tf = [], [], []
    for i, (q, d) in enumerate(zip(query_ids, doc_ids, strict=True)):
        counts = Counter(d)
        for t in list(q)[:max_query_tokens]:
            pair.append(i)
            token.append(t)
            tf.append(counts.get(t, 0))
    return TokenMatches(np.asarray(pair, np.int64), np.asarray(token, np.int64), np.asarray(tf, np.float64),
                        np.asarray([len(d) for d in doc_ids], np.float64))


def token_bm25(query_ids: Sequence[Sequence[int]] | TokenMatches, doc_ids: Sequence[Sequence[int]] | None,
               idf: Float[np.ndarray, " vocab"], *, k1=1.5, b=0.75, avg_len: float | None = PAPER_AVG_LEN,
               fallback: str | None = "beir", max_query_tokens: int | None = None) -> np.ndarray:
    """The paper's token-level BM25 of query-document pairs over word-piece ids.

    ``score = sum over query pieces t of idf'(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / L))`` where
    ``idf'(t) = idf[t]``, or with ``fallback="beir"`` and ``idf[t] == 0``: ``log((1 + |d|) / (1 + tf)) + 1``.

    Args:
        query_ids: Query word pieces per pair (no special tokens), or precomputed `TokenMatches`.
        doc_ids: Document word pieces per pair (``None`` with `TokenMatches`).
        idf: ``[vocab]`` IDF per id (`jaxmech.data.idf.vocab_idf`).
        k1: Scalar or 1-D grid.
        b: Scalar or 1-D grid.
        avg_len: ``L``; ``None`` = mean length of the given documents.
        fallback: ``"beir"`` or ``None``.
        max_query_tokens: Use only the first this many query pieces.

    Returns:
        ``[pairs]`` for scalar ``k1`` and ``b``, else ``[len(k1), len(b), pairs]``.
    """
    m = query_ids if isinstance(query_ids, TokenMatches) else token_matches(
        query_ids, doc_ids, max_query_tokens=max_query_tokens)
    idf = np.asarray(idf, np.float64)
    L = float(m.doc_len.mean()) if avg_len is None else float(avg_len)
    dl = m.doc_len[m.pair]
    w = idf[m.token]
    if fallback == "beir":
        w = np.where(w == 0.0, np.log((1.0 + dl) / (1.0 + m.tf)) + 1.0, w)
    elif fallback is not None:
        raise ValueError(f"fallback={fallback!r}; choose 'beir' or None")
    scalar = np.ndim(k1) == 0 and np.ndim(b) == 0
    k1s = np.atleast_1d(np.asarray(k1, np.float64))
    bs = np.atleast_1d(np.asarray(b, np.float64))[:, None]
    n_pairs, n_entries = len(m.doc_len), len(m.pair)
    # summing entries into pairs is one sparse product; loop over k1 to bound memory ([b, entries] at a time)
    gather = sp.csr_matrix((np.ones(n_entries), (m.pair, np.arange(n_entries))), shape=(n_pairs, n_entries))
    out = np.zeros((len(k1s), bs.shape[0], n_pairs))
    for i, k in enumerate(k1s):
        contrib = w * saturation(m.tf, dl, k1=k, b=bs, avg_len=L)  # [b, entries]
        out[i] = (gather @ contrib.T).T
    return out[0, 0] if scalar else out


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``x`` (``[..., n]``) with ``y`` (``[n]``); NaN where a row is constant."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean()
    den = np.sqrt((xc**2).sum(-1) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


@dataclasses.dataclass
class GridSearchResult:
    """Result of `grid_search_bm25`.

    Attributes:
        k1: Best k1.
        b: Best b.
        r: Pearson r at the best setting.
        k1_grid: Grid of k1.
        b_grid: Grid of b.
        r_grid: ``[len(k1_grid), len(b_grid)]`` Pearson r (NaN where the BM25 scores are constant).
        avg_len: ``L`` used.
        edge: Where the optimum still sits on the grid's edge after widening (``"k1 = 64 (the widest k1)"``,
            ``"b = 1 (its range ends at 1)"``), empty when inside.
    """

    k1: float
    b: float
    r: float
    k1_grid: np.ndarray
    b_grid: np.ndarray
    r_grid: np.ndarray
    avg_len: float
    edge: str = ""


DEFAULT_K1_GRID = np.round(np.arange(0.1, 3.01, 0.1), 2)
DEFAULT_B_GRID = np.round(np.arange(0.0, 1.001, 0.05), 2)
MAX_K1 = 100.0
"""The widest k1 `grid_search_bm25` widens to: beyond it the tf factor ``tf (k1 + 1) / (tf + k1 K)`` is within
a few percent of its linear limit ``tf (1 + 1/k1) / K`` for the term counts of a passage."""


def grid_search_bm25(query_ids: Sequence[Sequence[int]], doc_ids: Sequence[Sequence[int]],
                     model_scores: Sequence[float], idf: Float[np.ndarray, " vocab"], *,
                     k1_grid: Sequence[float] = DEFAULT_K1_GRID, b_grid: Sequence[float] = DEFAULT_B_GRID,
                     avg_len: float | None = PAPER_AVG_LEN, fallback: str | None = "beir",
                     max_query_tokens: int | None = None, widen: bool = False) -> GridSearchResult:
    """Finds the (k1, b) whose token-level BM25 correlates best (Pearson) with the model's scores.

    Args:
        query_ids: Query word pieces per pair.
        doc_ids: Document word pieces per pair.
        model_scores: ``[pairs]`` model scores (e.g. cross-encoder logits).
        idf: ``[vocab]`` IDF per id.
        k1_grid: Values of k1 to try.
        b_grid: Values of b to try.
        avg_len: ``L`` (``None``: mean document length).
        fallback: IDF-0 fallback (`token_bm25`).
        max_query_tokens: Use only the first this many query pieces.
        widen: While the best k1 is the grid's largest, extend the k1 grid geometrically (x2 up to `MAX_K1`);
            b is bounded by 1, so an optimum at b = 1 is reported in ``edge``.

    Raises:
        ValueError: If every setting gives constant scores (no correlation defined).
    """
    y = np.asarray(model_scores, np.float64)
    if y.shape != (len(query_ids),):
        raise ValueError(f"{y.shape[0] if y.ndim else 0} model scores for {len(query_ids)} pairs")
    m = token_matches(query_ids, doc_ids, max_query_tokens=max_query_tokens)
    k1g, bg = np.asarray(k1_grid, np.float64), np.asarray(b_grid, np.float64)
    while True:
        s = token_bm25(m, None, idf, k1=k1g, b=bg, avg_len=avg_len, fallback=fallback)
        if s.ndim == 1:
            s = s[None, None]
        r = pearson(s, y)
        if np.all(np.isnan(r)):
            raise ValueError("BM25 scores are constant for every (k1, b); no correlation to maximise")
        i, j = np.unravel_index(np.nanargmax(r), r.shape)
        top = float(k1g.max())
        more = np.unique(np.round(np.clip(np.geomspace(top * 1.25, 2 * top, 4), None, MAX_K1), 3))
        more = more[more > top]
        if not (widen and len(k1g) > 1 and k1g[i] == top and more.size):
            break
        k1g = np.r_[k1g, more]
    edge = []
    if len(k1g) > 1 and k1g[i] == k1g.max():
        edge.append(f"k1 = {k1g[i]:g}, the widest k1 " + ("(no term-frequency saturation fits best)" if widen
                                                        else "of the grid"))
    if len(k1g) > 1 and k1g[i] == k1g.min() and k1g[i] > 0:
        edge.append(f"k1 = {k1g[i]:g} (the smallest k1)")
    if len(bg) > 1 and j in (0, len(bg) - 1):
        edge.append(f"b = {bg[j]:g} ({'its range ends at ' if bg[j] in (0.0, 1.0) else 'the grid ends at '}{bg[j]:g})")
    L = float(m.doc_len.mean()) if avg_len is None else float(avg_len)
    return GridSearchResult(float(k1g[i]), float(bg[j]), float(r[i, j]), k1g, bg, r, L, "; ".join(edge))


def split_pair(ids: Sequence[int], sep_id: int) -> tuple[list[int], list[int]]:
    """Query and document pieces of ``[CLS] q [SEP] d [SEP]`` (paper: ``ids[1:sep]``, ``ids[sep+1:-1]``)."""
    ids = list(ids)
    sep = ids.index(sep_id)
    return ids[1:sep], ids[sep + 1 : -1]
