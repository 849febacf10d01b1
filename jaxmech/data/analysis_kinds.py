"""Dataset kinds for the analyses: E7 (the highest-IDF query word moved to the front) and LNC1 realigned.

**E7, ``idf_front``** (paper-notes §4, E7). The paper's attention-score-as-metric experiment perturbs the
*query*: its highest-IDF word is moved to the front (``"what is the acceptance rate at wellesley"`` becomes
``"wellesley what is the acceptance rate at"``). The document is unchanged. Both sides have the same word
pieces in another order, so they have the same length; patching is position-wise as in the paper (the
position map is the identity, so position ``i`` of the baseline receives position ``i`` of the perturbed
input, a *different* token in the query span). ``meta["permutation"]`` gives, for each baseline position,
where the same token sits in the perturbed input (an exact token-level alignment for analyses that want
it); ``meta["moved_positions"]`` are the perturbed positions of the moved word. The token type ``Qplus``
marks the moved word at its baseline position. Queries whose highest-IDF word is already first are left
out (counted in ``stats["excluded_already_first"]``).

IDF of a query word: the maximum IDF, in a word table (`jaxmech.data.idf`), of the tokenizer's normalised
words of that whitespace word; a word missing from the table counts as the rarest (the table's maximum).

**LNC1 realigned** (`realign`). The LNC1 builder aligns the short document with the long one by appending
``"a"`` fillers to the short one (``align="append"``). Both inputs then have the *same* token count: the
pair compares "k fillers" with "k tokens of added sentences" at equal length, i.e. the effect of the added
*content*, with the softmax denominators of both runs spread over the same number of keys (the fillers
absorb attention too). It does not compare a short document with a long one. For length effects use
`realign(..., align="diff")`: no fillers, each side its natural length, the shared first sentence mapped
position to position and the added sentences unmatched (``-1`` in the position map); attention analyses
(`jaxmech.analysis.soft_tf`) run each document at its natural length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxmech.data.pairs import ALIGN_MODES, BuildResult, PerturbationItem, build_pairs
from jaxmech.data.records import AlignedPair, DataError, DiagnosticSource
from jaxmech.data.token_types import assign_token_types, word_pieces_with_words

E7_KIND = "idf_front"


def word_idf_of(word: str, table: Mapping[str, float], tokenizer, *, missing: float | None = None) -> float:
    """IDF of one whitespace word: the largest IDF of its normalised words (``missing`` if none is known)."""
    words = word_pieces_with_words(tokenizer, [word])[0].words
    vals = [table[w] for w in words if w in table]
    if vals:
        return max(vals)
    return float(max(table.values()) if missing is None else missing)


def idf_front_query(query: str, table: Mapping[str, float], tokenizer) -> tuple[str, int, str]:
    """``(moved query, index of the moved word, the word)``: the highest-IDF word of ``query`` moved first
    (ties: the first such word)."""
    words = query.split()
    if not words:
        raise ValueError(f"query {query!r} has no words")
    scores = [word_idf_of(w, table, tokenizer) for w in words]
    i = max(range(len(words)), key=lambda j: (scores[j], -j))
    return " ".join([words[i], *words[:i], *words[i + 1 :]]), i, words[i]


def build_idf_front(
    source: DiagnosticSource,
    tokenizer,
    idf_table: Mapping[str, float],
    *,
    docs_per_query: int | None = None,
    limit: int | None = None,
    term_match: str = "word",
) -> BuildResult:
    """E7 pairs: (query, doc) -> (query with its highest-IDF word first, doc), for every doc of the source.

    Args:
        source: Queries and documents (``source.docs``).
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        idf_table: Word-level ``word -> idf`` (e.g. `jaxmech.analysis.idf_svd.stream_idf` of the collection).
        docs_per_query: Use the first this many documents of each query.
        limit: Build at most this many pairs.
        term_match: Token-type term matching (`jaxmech.data.token_types`).

    Returns:
        A `BuildResult` of kind ``"idf_front"`` (see the module docstring).

    Raises:
        DataError: If the source has no documents, or the IDF table is empty.
    """
    if not source.docs:
        raise DataError(source.name, None, "E7 (idf_front) needs documents (source.docs is empty)")
    if not idf_table:
        raise DataError(source.name, None, "E7 (idf_front) needs a non-empty word IDF table")
    moved, already_first = _moved_queries(source, idf_table, tokenizer)
    items = [
        (qid, doc_id, doc)
        for qid, docs in source.docs.items()
        if qid in moved
        for doc_id, doc in list(docs.items())[:docs_per_query]
    ][:limit]
    texts = list(
        dict.fromkeys(
            [source.queries[q] for q, _, _ in items]
            + [moved[q][0] for q, _, _ in items]
            + [d for _, _, d in items]
            + [moved[q][2] for q, _, _ in items]
        )
    )
    wp = dict(zip(texts, word_pieces_with_words(tokenizer, texts), strict=True))
    made = [_idf_front_pair(qid, doc_id, doc, source.queries[qid], moved[qid], wp, tokenizer, term_match)
            for qid, doc_id, doc in items]
    pairs = [p for p in made if p is not None]
    stats = {
        "items": len(items),
        "built": len(pairs),
        "excluded_too_long": len(made) - len(pairs),
        "excluded_already_first": len(already_first),
        "excluded": already_first,
    }
    return BuildResult(E7_KIND, pairs, stats)


def _moved_queries(source: DiagnosticSource, idf_table: Mapping[str, float], tokenizer):
    """``({qid: idf_front_query(...)}, [exclusion records])``: each query of ``source.docs`` with its
    highest-IDF word moved first, or left out when that word is already first."""
    moved: dict[str, tuple[str, int, str]] = {}
    already_first: list[dict[str, Any]] = []
    for qid in source.docs:
        if qid not in source.queries:
            raise DataError(source.name, f"qid {qid}", "unknown qid (no such query loaded)")
        m = idf_front_query(source.queries[qid], idf_table, tokenizer)
        if m[1] == 0:
            already_first.append({"qid": qid, "reason": "already_first", "word": m[2]})
        else:
            moved[qid] = m
    return moved, already_first


def _idf_front_pair(qid: str, doc_id: str, doc: str, query: str, moved: tuple[str, int, str], wp: Mapping,
                    tokenizer, term_match: str) -> AlignedPair | None:
    """One E7 pair (None when the baseline is longer than the tokenizer's ``max_length``)."""
    pert_query, index, word = moved
    qb, qp, d = wp[query], wp[pert_query], wp[doc]
    b_ids, b_tt = tokenizer.pair_ids(qb.ids, d.ids)
    p_ids, p_tt = tokenizer.pair_ids(qp.ids, d.ids)
    if len(b_ids) > tokenizer.max_length:
        return None
    # exact token alignment of the permuted query span: the moved word's pieces first, then the rest
    word_of = qb.word_index
    moved_words = _moved_word_indices(query, index, wp[word], tokenizer)
    first = [j for j, w in enumerate(word_of) if w in moved_words]
    rest = [j for j, w in enumerate(word_of) if w not in moved_words]
    perm_q = {j: 1 + k for k, j in enumerate(first + rest)}
    permutation = [0, *[perm_q[j] for j in range(len(qb.ids))], *range(len(qb.ids) + 1, len(b_ids))]
    types = assign_token_types(qb, d, wp[word].words, term_match=term_match)
    meta = {
        "perturbed_query": pert_query,
        "moved_word": word,
        "moved_from_word": index,
        "permutation": permutation,
        "moved_positions": list(range(1, 1 + len(first))),
        "alignment": "identity",
    }
    return AlignedPair(b_ids, b_tt, p_ids, p_tt, list(range(len(b_ids))), kind=E7_KIND, qid=qid, doc_id=doc_id,
                       query=query, baseline_doc=doc, perturbed_doc=doc, token_types=types, term=word, meta=meta)


def _moved_word_indices(query: str, index: int, word_wp, tokenizer) -> set[int]:
    """Normalised-word indices (in the query's `WordPieces`) that belong to whitespace word ``index``."""
    before = " ".join(query.split()[:index])
    n_before = len(word_pieces_with_words(tokenizer, [before])[0].words) if before else 0
    return set(range(n_before, n_before + len(word_wp.words)))


def realign(result: BuildResult | Sequence[AlignedPair], tokenizer, *, align: str = "diff") -> BuildResult:
    """Rebuilds pairs with another alignment (e.g. LNC1 without fillers: ``align="diff"``).

    Args:
        result: A `BuildResult` or its pairs.
        tokenizer: The tokenizer they were built with.
        align: One of ``append``, ``prepend``, ``diff``, ``paper`` (`jaxmech.data.pairs.build_pairs`).

    Returns:
        A `BuildResult` with the same kind, texts and meta, aligned anew.
    """
    if align not in ALIGN_MODES:
        raise ValueError(f"align={align!r}; choose one of {ALIGN_MODES}")
    pairs = result.pairs if isinstance(result, BuildResult) else list(result)
    if not pairs:
        raise ValueError("realign: no pairs")
    kind = pairs[0].kind
    keep = ("alignment", "fillers")
    items = [
        PerturbationItem(
            p.qid,
            p.doc_id,
            p.query,
            p.term,
            p.baseline_doc,
            p.perturbed_doc,
            {k: v for k, v in p.meta.items() if k not in keep},
        )
        for p in pairs
    ]
    return build_pairs(kind, items, tokenizer, align=align, source=f"realign({kind})")


__all__ = ["E7_KIND", "build_idf_front", "idf_front_query", "realign", "word_idf_of"]
