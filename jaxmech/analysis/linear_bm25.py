"""Linear semantic BM25 (paper-notes §8): fit the model's score with BM25-like features of its own attention.

**Inputs** (the paper's): TFC1-perturbed pairs (each document with the selected term appended) whose query has
at least ``n_query_tokens`` (5) word pieces; the query is truncated to its first 5 pieces *in the model
input*, ``[CLS] q1..q5 [SEP] d [SEP]``, and the score ``y`` is the model's on that input (bi-encoders: the
similarity of the truncated query and the document, encoded separately; their attention features come
from the trunk run on the concatenated pair).

**Features**, ``n_query_tokens * (1 + 2 * n_heads)`` (135 for 5 tokens and 13 heads): for each query token
``i``, ``idf_i = -U0_idf[token_i]`` (the IDF direction of the embedding, `jaxmech.analysis.idf_svd`), and for
each matching head ``h`` the soft TF ``tf_ih = sum_{j in doc} pattern_h[i, j]`` and the product
``tf_ih * idf_i``. The document of each pair is bounded by **that pair's own first [SEP]** (the reference
code used the untruncated input's [SEP] index, skipping the first ``query_len - 5`` document tokens); as in
the paper, the document range includes the final [SEP].

**Fit.** Features are z-scored with the training split's statistics (std 0 -> 1; an affine rescaling does
not change least-squares predictions with an intercept, so this equals the paper's z-scoring over all
examples), then ordinary least squares with an intercept. Splits, both seeded: ``"query"`` (80/20 of the
queries: the test pairs' queries are never seen in training, the honest held-out number) and ``"pair"``
(80/20 of pairs, the paper's ``train_test_split(test_size=0.2, random_state=42)`` protocol). Reported on the
test split: Pearson r (with its p-value), Spearman rho, RMSE and R^2.

**Baselines**, on the same test pairs: token-level BM25 over the same query pieces and document pieces
(`jaxmech.data.bm25`), with (k1, b) tuned by grid search on the *training* pairs; and the random-feature
control, Gaussian features with each real feature's mean and std, through the same pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from jaxmech.analysis.common import (
    DEFAULT_BATCH,
    attention_to,
    head_name,
    model_label,
    model_scores,
    parse_head_names,
    unwrap,
)
from jaxmech.data.records import DiagnosticSource

SPLITS = ("query", "pair")


# -- inputs and features ------------------------------------------------------------------------------------
def truncated_inputs(
    tokenizer, queries: Sequence[str], docs: Sequence[str], *, n_query_tokens: int = 5
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """``(kept, query_pieces, doc_pieces)``: pairs whose query has at least ``n_query_tokens`` pieces, with
    the query cut to its first ``n_query_tokens`` (pairs too long for the tokenizer are left out)."""
    from jaxmech.data.token_types import word_piece_ids

    uq = list(dict.fromkeys(queries))
    ud = list(dict.fromkeys(docs))
    qp = dict(zip(uq, word_piece_ids(tokenizer, uq), strict=True))
    dp = dict(zip(ud, word_piece_ids(tokenizer, ud), strict=True))
    kept, qs, ds = [], [], []
    for i, (q, d) in enumerate(zip(queries, docs, strict=True)):
        if len(qp[q]) < n_query_tokens or n_query_tokens + len(dp[d]) + 3 > tokenizer.max_length or not dp[d]:
            continue
        kept.append(i)
        qs.append(list(qp[q][:n_query_tokens]))
        ds.append(list(dp[d]))
    return kept, qs, ds


def doc_targets(n_query: int, n_doc: int, *, include_final_sep: bool = True) -> np.ndarray:
    """``[len, len]`` indicator of (query row, document key) for ``[CLS] q [SEP] d [SEP]``: the document is
    bounded by this sequence's own first [SEP] (position ``n_query + 1``)."""
    n = n_query + n_doc + 3
    t = np.zeros((n, n), np.float32)
    first_sep = n_query + 1
    t[1 : 1 + n_query, first_sep + 1 : n if include_final_sep else n - 1] = 1.0
    return t


def soft_tf_features(
    model,
    tokenizer,
    query_pieces: Sequence[Sequence[int]],
    doc_pieces: Sequence[Sequence[int]],
    *,
    batch_size: int = DEFAULT_BATCH,
    include_final_sep: bool = True,
    with_score: bool = True,
) -> tuple[Float[np.ndarray, "n layer head qtok"], np.ndarray | None]:
    """Soft TF of every query token for every head: ``[n, layer, head, n_query_tokens]`` (and the scores of
    cross-encoders, from the same forward)."""
    n_q = {len(q) for q in query_pieces}
    if len(n_q) > 1:
        raise ValueError(f"soft_tf_features: queries must have one length; got lengths {sorted(n_q)}")
    nq = n_q.pop() if n_q else 0
    seqs, types = [], []
    for q, d in zip(query_pieces, doc_pieces, strict=True):
        ids, tt = tokenizer.pair_ids(q, d)
        seqs.append(ids)
        types.append(tt)
    targets = [doc_targets(nq, len(d), include_final_sep=include_final_sep) for d in doc_pieces]
    mass, score = attention_to(model, seqs, types, targets, batch_size=batch_size, with_score=with_score)
    return mass[..., 1 : 1 + nq], score


def feature_matrix(
    tf: Float[np.ndarray, "n n_heads qtok"], idf: Float[np.ndarray, "n qtok"]
) -> tuple[Float[np.ndarray, "n features"], list[str]]:
    """The paper's features: per query token, ``idf``, then ``tf`` and ``tf * idf`` per head.

    Returns:
        ``(X, names)`` with ``qtok * (1 + 2 * n_heads)`` columns.
    """
    n, n_heads, nq = tf.shape
    if idf.shape != (n, nq):
        raise ValueError(f"idf has shape {idf.shape}; expected {(n, nq)}")
    cols, names = [], []
    for i in range(nq):
        cols.append(idf[:, i])
        names.append(f"q{i}.idf")
        for h in range(n_heads):
            cols.append(tf[:, h, i])
            names.append(f"q{i}.tf[{h}]")
        for h in range(n_heads):
            cols.append(tf[:, h, i] * idf[:, i])
            names.append(f"q{i}.tf_idf[{h}]")
    return np.stack(cols, 1), names


# -- fitting ------------------------------------------------------------------------------------------------
def split_indices(
    n: int, groups: Sequence | None, *, split: str = "query", test_size: float = 0.2, seed: int = 42,
    test_groups: set | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices: by group (``"query"``: whole queries held out) or by pair (``"pair"``); with
    ``test_groups``, exactly the pairs of those groups are the test set (``split`` is ignored).

    Raises:
        ValueError: On an unknown split, or fewer than two groups/pairs to split, or a fixed test set that
            leaves no pair on one side.
    """
    if test_groups is not None:
        is_test = np.array([g in test_groups for g in (groups or [])], bool)
        if len(is_test) != n or not is_test.any() or is_test.all():
            raise ValueError(f"the fixed test queries cover {int(is_test.sum())} of {n} pairs; both sides need pairs")
        return np.flatnonzero(~is_test), np.flatnonzero(is_test)
    rng = np.random.default_rng(seed)
    if split == "pair":
        if n < 2:
            raise ValueError(f"split='pair' needs at least 2 pairs; got {n}")
        perm = rng.permutation(n)
        n_test = max(1, int(round(test_size * n)))
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    if split != "query":
        raise ValueError(f"split={split!r}; choose one of {SPLITS}")
    if groups is None or len(groups) != n:
        raise ValueError("split='query' needs one group (query id) per pair")
    uniq = list(dict.fromkeys(groups))
    if len(uniq) < 2:
        raise ValueError(f"split='query' needs at least 2 queries; got {len(uniq)}")
    perm = rng.permutation(len(uniq))
    n_test = max(1, int(round(test_size * len(uniq))))
    test_groups = {uniq[i] for i in perm[:n_test]}
    is_test = np.array([g in test_groups for g in groups])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Pearson r and p, Spearman rho, RMSE and R^2 of predictions."""
    from scipy import stats

    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if len(y_true) < 3 or np.std(y_pred) == 0 or np.std(y_true) == 0:
        r = p = rho = float("nan")
    else:
        r, p = stats.pearsonr(y_true, y_pred)
        rho = stats.spearmanr(y_true, y_pred).statistic
    ss_res = float(((y_true - y_pred) ** 2).sum())
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "pearson": float(r),
        "p_value": float(p),
        "spearman": float(rho),
        "rmse": float(np.sqrt(ss_res / max(len(y_true), 1))),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }


def fit_linear(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict:
    """Least squares with an intercept on z-scored features (training statistics).

    Returns:
        ``{"coef", "intercept", "y_pred" (test), "train": metrics, "test": metrics}`` (coefficients in z-units).
    """
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    mu = X[train].mean(0)
    sd = X[train].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (X - mu) / sd
    A = np.column_stack([np.ones(len(train)), Z[train]])
    w, *_ = np.linalg.lstsq(A, y[train], rcond=None)
    pred = w[0] + Z @ w[1:]
    return {
        "coef": w[1:],
        "intercept": float(w[0]),
        "y_pred": pred[test],
        "train": regression_metrics(y[train], pred[train]),
        "test": regression_metrics(y[test], pred[test]),
    }


def random_features_like(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gaussian features with each column's mean and std (the paper's control)."""
    rng = np.random.default_rng(seed)
    return rng.normal(X.mean(0), X.std(0), size=X.shape)


BM25_FALLBACKS = (None, "beir")
"""IDF-0 rules of the BM25 baseline: ``None`` (the paper's MS MARCO BM25: a word piece without an IDF scores
0) or ``"beir"`` (the BEIR script's fallback ``log((1 + |d|) / (1 + tf)) + 1``, which gives every word piece a
weight and raises the held-out r)."""


def bm25_baseline(
    query_pieces, doc_pieces, y: np.ndarray, idf: np.ndarray, train: np.ndarray, test: np.ndarray, *,
    fallback: str | None = None, **grid
) -> dict:
    """Token-level BM25 with (k1, b) tuned on the training pairs (the k1 grid widened until the optimum is
    inside it); Pearson r on the test pairs (and tuned on all pairs, the paper's in-sample number)."""
    from jaxmech.data.bm25 import grid_search_bm25, token_bm25

    if fallback not in BM25_FALLBACKS:
        raise ValueError(f"bm25 fallback={fallback!r}; choose one of {BM25_FALLBACKS}")
    grid = {"widen": True, **grid, "fallback": fallback}
    y = np.asarray(y, np.float64)
    tr = grid_search_bm25([query_pieces[i] for i in train], [doc_pieces[i] for i in train], y[train], idf, **grid)
    s = token_bm25(
        [query_pieces[i] for i in test],
        [doc_pieces[i] for i in test],
        idf,
        k1=tr.k1,
        b=tr.b,
        avg_len=grid.get("avg_len", tr.avg_len),
        fallback=fallback,
    )
    full = grid_search_bm25(query_pieces, doc_pieces, y, idf, **grid)
    return {
        "fallback": fallback,
        "k1": tr.k1,
        "b": tr.b,
        "edge": tr.edge,
        "k1_grid_max": float(tr.k1_grid.max()),
        "test": regression_metrics(y[test], s),
        "tuned_on_all_pearson": full.r,
        "tuned_on_all_k1": full.k1,
        "tuned_on_all_b": full.b,
        "tuned_on_all_edge": full.edge,
    }


# -- the analysis -------------------------------------------------------------------------------------------
def linear_bm25_from_arrays(
    tf: np.ndarray,
    idf_feat: np.ndarray,
    y: np.ndarray,
    groups: Sequence,
    *,
    split: str = "query",
    seed: int = 42,
    test_size: float = 0.2,
    random_seed: int = 0,
    test_groups: set | None = None,
) -> dict:
    """Fit, evaluate and control on precomputed soft TF ``[n, n_heads, qtok]`` and IDF features ``[n, qtok]``
    (``test_groups``: a fixed test set of queries, see `split_indices`)."""
    X, names = feature_matrix(tf, idf_feat)
    train, test = split_indices(len(y), groups, split=split, test_size=test_size, seed=seed, test_groups=test_groups)
    fit = fit_linear(X, y, train, test)
    ctrl = fit_linear(random_features_like(X, random_seed), y, train, test)
    return {"X": X, "names": names, "train": train, "test": test, "fit": fit, "random": ctrl}


def linear_bm25(
    lm, source: DiagnosticSource | None = None, *, queries: Sequence[str] | None = None,
    docs: Sequence[str] | None = None, qids: Sequence[str] | None = None,
    heads: Sequence[str | tuple[int, int]] | None = None, n_heads: int = 13, idf: np.ndarray | None = None,
    idf_texts: Sequence[str] | None = None, n_query_tokens: int = 5, docs_per_query: int | None = 20,
    split: str = "query", seed: int = 42, test_size: float = 0.2, batch_size: int = DEFAULT_BATCH,
    bm25_grid: dict | None = None, predictions: int = 2000, bm25_fallback: str | None = None,
    test_qids: Sequence[str] | None = None,
) -> dict:
    """The linear semantic-BM25 analysis on TFC1-perturbed pairs of a source (or given query/doc lists).

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel`.
        source: Queries, terms and documents; pairs are (query, doc + " " + term).
        queries: Instead of ``source``: one query per pair.
        docs: Instead of ``source``: one document per pair (used as given).
        qids: Query id per pair (the split groups); with ``source``, restricts to these queries.
        heads: Matching heads of the features; None: the top ``n_heads`` of the exact-match detector
            (`jaxmech.analysis.circuit.match_scores`) on these inputs.
        n_heads: Number of detected heads (13 in the paper).
        idf: ``[vocab]`` per-id IDF for U_0's orientation and the BM25 baseline; None: streamed (word rule,
            `jaxmech.analysis.idf_svd`) from ``idf_texts`` or the source's documents.
        idf_texts: Collection to stream IDF from.
        n_query_tokens: Query pieces kept (5).
        docs_per_query: Documents per query from the source (None: all; the paper uses 100).
        split: ``"query"`` (headline) or ``"pair"``; the other is reported under ``other_split``.
        seed: Split seed (42 as the paper).
        test_size: Held-out fraction.
        batch_size: Inputs per forward.
        bm25_grid: Passed to `jaxmech.data.bm25.grid_search_bm25` (``k1_grid``, ``b_grid``, ``avg_len``).
        predictions: At most this many test predictions in the JSON (seeded sample).
        bm25_fallback: The BM25 baseline's IDF-0 rule (`BM25_FALLBACKS`; default the paper's, none); the other
            rule is reported beside it (``bm25_other_fallback``).
        test_qids: A fixed test set: train on the other queries and test on exactly these (``split`` becomes
            ``"fixed"``; no ``other_split``). Default: the seeded query split (the pair split, reported under
            ``other_split``, leaks test queries into training).

    Returns:
        The ``linear_bm25`` JSON object (``analysis`` and ``model``, plus ``heads``, ``n_pairs``, ``bm25_k1``, ...).

    Raises:
        ValueError: On inconsistent inputs, before running the model.
    """
    model, tok = unwrap(lm)
    if tok is None:
        raise ValueError("linear_bm25 needs the model's tokenizer")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose one of {SPLITS}")
    if bm25_fallback not in BM25_FALLBACKS:
        raise ValueError(f"bm25_fallback={bm25_fallback!r}; choose one of {BM25_FALLBACKS}")
    if source is not None:
        queries, docs, groups = _source_pairs(source, qids, docs_per_query)
        if idf is None and idf_texts is None:
            idf_texts = list(dict.fromkeys(t for ds in source.docs.values() for t in ds.values()))
    else:
        groups = _given_groups(queries, docs, qids)
    if heads is not None:
        heads = parse_head_names(heads, model.cfg.n_layers, model.cfg.n_heads, where="linear_bm25 heads")
    idf = _idf_of(idf, idf_texts, tok)
    kept, qp, dp = truncated_inputs(tok, queries, docs, n_query_tokens=n_query_tokens)
    if len(kept) < 10:
        raise ValueError(f"linear_bm25: only {len(kept)} pairs have a query of >= {n_query_tokens} word pieces")
    groups = [groups[i] for i in kept]
    fixed = _fixed_test_set(test_qids, groups)
    tf, idf_feat, y, heads = _features(model, tok, qp, dp, idf, heads, n_heads, batch_size)
    if fixed is not None:
        split = "fixed"
        runs = {split: linear_bm25_from_arrays(tf, idf_feat, y, groups, seed=seed, test_groups=fixed)}
    else:
        runs = {sp: linear_bm25_from_arrays(tf, idf_feat, y, groups, split=sp, seed=seed, test_size=test_size)
                for sp in SPLITS}
    rules = (bm25_fallback, *[f for f in BM25_FALLBACKS if f != bm25_fallback])
    bms = [bm25_baseline(qp, dp, y, idf, runs[split]["train"], runs[split]["test"], fallback=fb,
                         max_query_tokens=None, **(bm25_grid or {})) for fb in rules]
    head = {"analysis": "linear_bm25", "model": model_label(lm), "split": split, "seed": seed, "test_size": test_size}
    return {**head, **_result_fields(runs, split, y, groups, heads, bms, bm25_fallback, fixed, predictions)}


def _idf_of(idf, idf_texts, tok) -> np.ndarray:
    """``idf`` as float64, or streamed (word rule) from ``idf_texts``."""
    from jaxmech.analysis import idf_svd as isvd

    if idf is None:
        if idf_texts is None:
            raise ValueError("linear_bm25: give idf, idf_texts or a source to stream IDF from")
        idf = isvd.vocab_idf_rules(isvd.stream_idf(idf_texts, tok), None, tok)["word"]
    return np.asarray(idf, np.float64)


def _result_fields(runs: dict, split: str, y, groups, heads, bms, bm25_fallback, fixed, predictions: int) -> dict:
    """The JSON fields after ``analysis``, ``model``, ``split``, ``seed`` and ``test_size``."""
    main = runs[split]
    return {
        "n_pairs": len(y),
        "n_train": len(main["train"]),
        "n_test": len(main["test"]),
        "n_queries": len(set(groups)),
        "n_features": main["X"].shape[1],
        "heads": [head_name(*h) for h in heads],
        **_fit_fields(main["fit"]),
        **_bm25_fields(bms[0], bms[1], bm25_fallback),
        "random_features_test_pearson": main["random"]["test"]["pearson"],
        **(_other_split_fields(runs, split) if fixed is None else {"test_qids": sorted(fixed)}),
        **_prediction_fields(main, y, predictions),
        "doc_range": "each pair's own first [SEP] + 1 .. final [SEP] (inclusive)",
    }


def _source_pairs(source: DiagnosticSource, qids, docs_per_query: int | None) -> tuple[list, list, list]:
    """``(queries, docs, groups)``: each query's first ``docs_per_query`` documents with its term appended
    (TFC1-perturbed), grouped by qid; only queries with a term (and in ``qids`` when given)."""
    keep = set(qids) if qids is not None else None
    if keep is not None and not keep & set(source.docs):
        raise ValueError("linear_bm25: none of the given qids has documents in the source")
    queries, docs, groups = [], [], []
    for qid, ds in source.docs.items():
        if (keep is not None and qid not in keep) or qid not in source.terms:
            continue
        for d in list(ds.values())[:docs_per_query]:
            queries.append(source.queries[qid])
            docs.append(f"{d} {source.terms[qid]}")
            groups.append(qid)
    return queries, docs, groups


def _given_groups(queries, docs, qids) -> list:
    """The split groups of given query/doc lists: ``qids``, or the queries themselves."""
    if queries is None or docs is None or len(queries) != len(docs):
        raise ValueError("linear_bm25: give a source, or queries and docs of equal length")
    groups = list(qids) if qids is not None else list(queries)
    if len(groups) != len(queries):
        raise ValueError(f"linear_bm25: {len(groups)} qids for {len(queries)} pairs")
    return groups


def _fixed_test_set(test_qids, groups: Sequence) -> set[str] | None:
    """The fixed test queries (None: a seeded split); both sides must keep pairs."""
    if test_qids is None:
        return None
    fixed = {str(q) for q in test_qids}
    n_fixed = sum(g in fixed for g in groups)
    if not n_fixed or n_fixed == len(groups):
        raise ValueError(f"linear_bm25: the {len(fixed)} test qids cover {n_fixed} of {len(groups)} pairs; "
                         "the test and the training queries both need pairs")
    return fixed


def _features(model, tok, qp, dp, idf: np.ndarray, heads, n_heads: int, batch_size: int):
    """``(tf [pair, head, qtok], idf_feat [pair, qtok], y [pair], heads)``: the matching heads' soft TF (heads
    from the exact-match detector on the first 256 pairs when not given), -U_0's IDF feature of each query
    piece, and the model's scores."""
    from jaxmech.analysis import idf_svd as isvd
    from jaxmech.analysis.circuit import top_heads_of

    W_E = np.asarray(model.embed.W_E[...])
    svd = isvd.embedding_svd(W_E, idf=idf)
    idf_feat_vocab = -isvd.u0_idf_scale(svd.U[:, 0], idf)
    tf_all, score = soft_tf_features(model, tok, qp, dp, batch_size=batch_size, with_score=True)
    y = model_scores(model, tok, qp, dp, batch_size=batch_size) if score is None or score.ndim > 1 else score
    if heads is None:
        from jaxmech.analysis.circuit import match_scores
        from jaxmech.analysis.common import PairInputs

        det = match_scores(model, PairInputs.from_pieces(tok, qp[:256], dp[:256]), batch_size=batch_size)
        heads = top_heads_of(det, n_heads)
    tf = np.stack([tf_all[:, layer, h, :] for layer, h in heads], 1)
    return tf, idf_feat_vocab[np.asarray(qp)], y, heads


def _fit_fields(fit: dict) -> dict:
    return {
        "test_pearson": fit["test"]["pearson"],
        "test_p_value": fit["test"]["p_value"],
        "test_spearman": fit["test"]["spearman"],
        "test_rmse": fit["test"]["rmse"],
        "test_r2": fit["test"]["r2"],
        "train_pearson": fit["train"]["pearson"],
    }


def _bm25_fields(bm: dict, bm_other: dict, bm25_fallback: str | None) -> dict:
    """The tuned BM25 baseline with the chosen IDF-0 rule, and the other rule beside it."""
    return {
        "bm25_test_pearson": bm["test"]["pearson"],
        "bm25_k1": bm["k1"],
        "bm25_b": bm["b"],
        "bm25_tuned_on_all_pearson": bm["tuned_on_all_pearson"],
        "bm25_fallback": bm25_fallback or "none (paper: a word piece without an IDF scores 0)",
        "bm25_grid_edge": bm["edge"] or "inside the grid",
        "bm25_k1_grid_max": bm["k1_grid_max"],
        "bm25_other_fallback": {"fallback": bm_other["fallback"] or "none", "test_pearson": bm_other["test"]["pearson"],
                                "k1": bm_other["k1"], "b": bm_other["b"], "edge": bm_other["edge"] or "inside the grid",
                                "tuned_on_all_pearson": bm_other["tuned_on_all_pearson"]},
    }


def _other_split_fields(runs: dict, split: str) -> dict:
    other = SPLITS[1 - SPLITS.index(split)]
    return {"other_split": {
        "split": other,
        "test_pearson": runs[other]["fit"]["test"]["pearson"],
        "test_p_value": runs[other]["fit"]["test"]["p_value"],
        "random_features_test_pearson": runs[other]["random"]["test"]["pearson"],
        "note": "the pair split leaks test queries into training" if other == "pair" else "",
    }}


def _prediction_fields(main: dict, y: np.ndarray, predictions: int) -> dict:
    """A seeded sample of at most ``predictions`` test predictions and the 15 largest coefficients."""
    test, fit = main["test"], main["fit"]
    rng = np.random.default_rng(0)
    show = np.sort(rng.choice(len(test), size=min(predictions, len(test)), replace=False))
    return {
        "test_predictions": {"y_true": y[test][show], "y_pred": fit["y_pred"][show]},
        "top_coefficients": sorted(
            ({"feature": n, "coef": float(c)} for n, c in zip(main["names"], fit["coef"], strict=True)),
            key=lambda d: -abs(d["coef"]),
        )[:15],
    }


__all__ = [
    "BM25_FALLBACKS",
    "SPLITS",
    "bm25_baseline",
    "doc_targets",
    "feature_matrix",
    "fit_linear",
    "linear_bm25",
    "linear_bm25_from_arrays",
    "random_features_like",
    "regression_metrics",
    "soft_tf_features",
    "split_indices",
    "truncated_inputs",
]
