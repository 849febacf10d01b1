"""Builders of the paper's diagnostic datasets (Table 1; paper-notes §3) as aligned pairs.

Every builder reads a `DiagnosticSource` and returns a `BuildResult` (pairs + build statistics):

==================  ======================================================================================
kind                baseline -> perturbed
==================  ======================================================================================
``tfc1``            passage + k fillers  ->  passage + " " + term        (k = word pieces of the term)
``tfc1_prepend``    k fillers + passage  ->  term + " " + passage
``stmc1``           passage + k fillers  ->  passage + " " + related word (``most_similar_synonym``)
``tfc2``            answer with all term occurrences -> pronoun (tf 0)  ->  last k restored (k = 1..5)
``lnc1``            first sentence  ->  first sentence + i sentences of another query's answer (i = 1..4)
``<kind>_remove``   the reverse axiom: baseline and perturbed swapped (``tfc1_remove``: the appended term
                    is removed, i.e. replaced by fillers; ``lnc1_remove``: the added sentences removed; ...)
==================  ======================================================================================

Each builder makes `PerturbationItem` s (texts) and hands them to `jaxmech.data.pairs.build_pairs`, the
generic core that tokenises, aligns and types them. Positions are aligned as described in
`jaxmech.data.align`: filler alignment (identity map, equal lengths) for the append/prepend kinds and LNC1,
token diff alignment for TFC2 (or ``align="paper"``: fillers at the end whatever the change, the paper's
inexact choice). Token types are those of `jaxmech.data.token_types`, on the baseline sequence.

Nothing is truncated: a pair longer than the tokenizer's ``max_length`` is left out and counted in
``stats["excluded_too_long"]`` with its ids in ``stats["excluded"]``; builds are deterministic (LNC1 partners
come from a permutation seeded by ``seed``).

Build everything in batches: all texts of a build are word-piece encoded in one call of the fast tokenizer,
so the 10,000 TFC1 pairs of the paper take about 3.4 s on a 2-core CPU (``benchmarks/bench_datasets.py``).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import numpy as np

from jaxmech.data.analysis_kinds import build_idf_front
from jaxmech.data.pairs import BuildResult, PerturbationItem, build_pairs
from jaxmech.data.records import DataError, DiagnosticSource

BASE_KINDS = ("tfc1", "tfc1_prepend", "stmc1", "tfc2", "lnc1")
KINDS = BASE_KINDS + tuple(f"{k}_remove" for k in BASE_KINDS)
"""The document perturbations (the axioms and their reverses)."""
ALL_KINDS = KINDS + ("idf_front",)
"""Every kind `build` (``jaxmech dataset build``, sweep datasets) makes; ``idf_front`` is E7, a query
perturbation (`jaxmech.data.analysis_kinds.build_idf_front`)."""


def _limit(items: list[PerturbationItem], limit: int | None) -> list[PerturbationItem]:
    return items if limit is None else items[: max(0, limit)]


def _split_kind(kind: str) -> tuple[str, bool]:
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")
    return (kind[: -len("_remove")], True) if kind.endswith("_remove") else (kind, False)


# -- TFC1 / STMC1 -------------------------------------------------------------------------------------------
def _doc_items(source: DiagnosticSource, added: dict[str, str], *, prepend: bool, meta_key: str | None):
    items = []
    for qid, docs in source.docs.items():
        if qid not in source.queries:
            raise DataError(source.name, f"qid {qid}", "unknown qid (no such query loaded)")
        if qid not in source.terms:
            raise DataError(source.name, f"qid {qid}", "no selected term for this query")
        word = added.get(qid)
        if word is None:
            raise DataError(source.name, f"qid {qid}", f"no {meta_key or 'term'} to add for this query")
        meta = {meta_key: word} if meta_key else {}
        for doc_id, doc in docs.items():
            pert = f"{word} {doc}" if prepend else f"{doc} {word}"
            items.append(PerturbationItem(qid, doc_id, source.queries[qid], source.terms[qid], doc, pert,
                                          meta))
    return items


def build_tfc1(source: DiagnosticSource, tokenizer, *, prepend: bool = False, reverse: bool = False,
               limit: int | None = None, term_match: str = "word") -> BuildResult:
    """TFC1: the selected term appended (or prepended) to every document of its query.

    Args:
        source: Queries, terms and documents.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        prepend: Put the term before the document (``tfc1_prepend``).
        reverse: Reverse axiom: the baseline has the term, the perturbed input has fillers instead.
        limit: Build at most this many pairs (the first, in source order).
        term_match: Term-to-word matching for token types.

    Returns:
        A `BuildResult` with identity position maps and equal lengths.
    """
    kind = ("tfc1_prepend" if prepend else "tfc1") + ("_remove" if reverse else "")
    items = _limit(_doc_items(source, source.terms, prepend=prepend, meta_key=None), limit)
    return build_pairs(kind, items, tokenizer, align="prepend" if prepend else "append", reverse=reverse,
                       term_match=term_match, source=source.name)


def build_stmc1(source: DiagnosticSource, tokenizer, *, related: dict[str, str] | None = None,
                reverse: bool = False, limit: int | None = None, term_match: str = "word") -> BuildResult:
    """STMC1: a word related to the selected term appended to every document of its query.

    Args:
        source: Queries, terms and documents; ``source.related`` is the default mapping.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        related: ``qid -> word`` to append instead of ``source.related``.
        reverse: Reverse axiom (the related word removed).
        limit: Build at most this many pairs.
        term_match: Term-to-word matching for token types.

    Raises:
        DataError: If a query with documents has no related word.
    """
    items = _limit(_doc_items(source, related if related is not None else source.related, prepend=False,
                              meta_key="synonym"), limit)
    return build_pairs("stmc1_remove" if reverse else "stmc1", items, tokenizer, align="append",
                       reverse=reverse, term_match=term_match, source=source.name)


# -- TFC2 ---------------------------------------------------------------------------------------------------
def _term_pattern(term: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(term.lower())}(?!\w)")


def count_occurrences(doc: str, term: str, *, whole_words: bool = False) -> int:
    """Occurrences of the term in the lower-cased document (substrings, as the paper counts, by default)."""
    if whole_words:
        return len(_term_pattern(term).findall(doc.lower()))
    return doc.lower().count(term.lower())


def tfc2_variants(doc: str, term: str, pronoun: str, *, max_tf: int = 5,
                  whole_words: bool = False) -> list[str]:
    """The paper's TFC2 documents: ``[doc.lower().replace(term, pronoun, max_tf - k) for k in 0..max_tf]``.

    ``replace`` substitutes the *first* ``max_tf - k`` occurrences, so variant ``k`` has its last ``k``
    occurrences restored and variant 0 (the baseline) has none (for a document with ``max_tf`` occurrences).

    Args:
        doc: The answer text.
        term: Selected term.
        pronoun: Its replacement.
        max_tf: Highest term frequency (5 in the paper).
        whole_words: Replace only whole-word occurrences (the paper replaces substrings).
    """
    low, t = doc.lower(), term.lower()
    if not whole_words:
        return [low.replace(t, pronoun, max_tf - k) for k in range(max_tf + 1)]
    pat = _term_pattern(term)
    return [pat.sub(pronoun, low, count=max_tf - k) if k < max_tf else low for k in range(max_tf + 1)]


def build_tfc2(source: DiagnosticSource, tokenizer, *, align: str = "diff", max_tf: int = 5,
               whole_words: bool = False, reverse: bool = False, limit: int | None = None,
               term_match: str = "word") -> BuildResult:
    """TFC2: for each answer, pairs (tf 0, tf k) for k = 1..max_tf by pronoun replacement (notes §3.4).

    Answers in which the term never occurs (the paper's two ``?`` terms) are left out and counted in
    ``stats["excluded_no_occurrence"]``; ``stats["occurrences"]`` is the histogram of occurrence counts. Pairs
    whose two sides are equal (fewer than ``max_tf`` occurrences) are left out too.

    Args:
        source: Queries, terms, pronouns and answers.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        align: ``"diff"`` (exact token alignment, lengths may differ) or ``"paper"`` (fillers at the end).
        max_tf: Highest restored term frequency.
        whole_words: Match the term as a whole word instead of a substring.
        reverse: Reverse axiom (baseline tf k, perturbed tf 0).
        limit: Build at most this many pairs.
        term_match: Term-to-word matching for token types.

    Raises:
        DataError: If an answer's query has no term or pronoun.
    """
    if align not in ("diff", "paper"):
        raise ValueError(f"TFC2 align={align!r}; choose 'diff' or 'paper'")
    items: list[PerturbationItem] = []
    hist: Counter[int] = Counter()
    no_occ: list[dict[str, Any]] = []
    for qid, term, pronoun, doc_id, doc in _answers(source, need_pronoun=True):
        n = count_occurrences(doc, term, whole_words=whole_words)
        hist[n] += 1
        if n == 0:
            no_occ.append({"qid": qid, "doc_id": doc_id, "reason": "no_occurrence"})
            continue
        variants = tfc2_variants(doc, term, pronoun, max_tf=max_tf, whole_words=whole_words)
        base_tf = max(0, n - max_tf)
        for k in range(1, max_tf + 1):
            tf = n - max(0, min(n, max_tf - k))
            items.append(PerturbationItem(qid, doc_id, source.queries[qid], term, variants[0], variants[k],
                                          {"k": k, "tf": tf, "baseline_tf": base_tf, "occurrences": n,
                                           "pronoun": pronoun}))
    items = _limit(items, limit)
    stats = {"occurrences": {str(k): v for k, v in sorted(hist.items())},
             "excluded_no_occurrence": len(no_occ), "excluded": no_occ}
    res = build_pairs("tfc2_remove" if reverse else "tfc2", items, tokenizer, align=align, reverse=reverse,
                      term_match=term_match, source=source.name, stats=stats)
    res.stats["equal_length_pairs"] = sum(p.same_length for p in res.pairs)
    return res


def _answers(source: DiagnosticSource, *, need_pronoun: bool):
    for qid, answers in source.answers.items():
        if qid not in source.queries:
            raise DataError(source.name, f"qid {qid}", "unknown qid (answers for a query that is not loaded)")
        if qid not in source.terms:
            raise DataError(source.name, f"qid {qid}", "no selected term for this query")
        if need_pronoun and qid not in source.pronouns:
            raise DataError(source.name, f"qid {qid}", "no pronoun for this query's term")
        for doc_id, doc in answers:
            yield qid, source.terms[qid], source.pronouns.get(qid, ""), doc_id, doc


# -- LNC1 ---------------------------------------------------------------------------------------------------
def first_sentence(doc: str) -> str:
    """The paper's LNC1 base: the first ``". "``-separated sentence, lower-cased, unquoted, with a period."""
    return doc.lower().replace('"', "").split(". ")[0].rstrip(".") + "."


def lnc1_documents(doc: str, other_doc: str, other_term: str, other_pronoun: str, *,
                   n_max: int = 4) -> list[str]:
    """LNC1 variants 0..n_max: the first sentence of ``doc`` followed by i sentences of ``other_doc``.

    In ``other_doc`` (lower-cased, quotes removed) the other query's own term is replaced by its pronoun, so
    the added text is non-relevant to both queries' terms. Variant i appends ``". ".join(first i sentences)``
    and a final period (notes §3.5).
    """
    base = first_sentence(doc)
    other = other_doc.lower().replace('"', "").replace(other_term.lower(), other_pronoun).split(". ")
    out = [base]
    for i in range(1, n_max + 1):
        chunk = ". ".join(other[:i]).strip()
        out.append(f"{base} {chunk.rstrip('.')}.")
    return out


def build_lnc1(source: DiagnosticSource, tokenizer, *, seed: int = 0, n_max: int = 4, reverse: bool = False,
               limit: int | None = None, term_match: str = "word") -> BuildResult:
    """LNC1: (first sentence, first sentence + i non-relevant sentences) pairs, i = 1..n_max (notes §3.5).

    Each answer gets a partner answer of *another* query, chosen by a permutation seeded with ``seed`` (the
    paper's unseeded ``random.shuffle`` made its datasets irreproducible). Variants for which the partner has
    fewer than i sentences would repeat variant i - 1 and are left out.

    Args:
        source: Queries, terms, pronouns and answers.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        seed: Seed of the partner permutation.
        n_max: Most sentences appended.
        reverse: Reverse axiom (the added sentences removed).
        limit: Build at most this many pairs.
        term_match: Term-to-word matching for token types.
    """
    units = list(_answers(source, need_pronoun=True))
    if len({u[0] for u in units}) < 2:
        raise DataError(source.name, None, "LNC1 needs answers of at least two queries")
    order = np.random.default_rng(seed).permutation(len(units))
    by_unit: dict[int, list[PerturbationItem]] = {}
    short = 0
    for j, u in enumerate(order):
        qid, term, _, doc_id, doc = units[u]
        s = 1  # the next unit in the permuted cycle that belongs to another query
        while units[order[(j + s) % len(units)]][0] == qid:
            s += 1
        oqid, oterm, opron, odoc_id, odoc = units[order[(j + s) % len(units)]]
        docs = lnc1_documents(doc, odoc, oterm, opron, n_max=n_max)
        n_other = len(odoc.lower().replace('"', "").split(". "))
        for i in range(1, n_max + 1):
            if i > n_other:  # the partner has run out of sentences: a duplicate of variant i - 1
                short += 1
                continue
            by_unit.setdefault(int(u), []).append(PerturbationItem(
                qid, f"{doc_id}+{odoc_id}", source.queries[qid], term, docs[0], docs[i],
                {"n_sentences": i, "partner_qid": oqid, "term_count": count_occurrences(docs[i], term)}))
    items = _limit([it for u in sorted(by_unit) for it in by_unit[u]], limit)  # source order
    return build_pairs("lnc1_remove" if reverse else "lnc1", items, tokenizer, align="append",
                       reverse=reverse, term_match=term_match, source=source.name,
                       stats={"seed": seed, "excluded_short_partner": short})


# -- dispatch -----------------------------------------------------------------------------------------------
def build(kind: str, source: DiagnosticSource, tokenizer, *, limit: int | None = None, seed: int = 0,
          **options) -> BuildResult:
    """Builds any dataset kind of `ALL_KINDS` from a source.

    Args:
        kind: One of `ALL_KINDS`.
        source: The loaded source.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        limit: Build at most this many pairs.
        seed: Seed (LNC1 partners).
        **options: Passed to the builder (``align``, ``term_match``, ``whole_words``, ...); for ``idf_front``
            ``idf_table`` (a ``word<TAB>idf`` TSV path or a ``word -> idf`` mapping; default: word IDF over the
            source's own documents) and ``docs_per_query``.

    Raises:
        ValueError: On an unknown kind.
    """
    if kind == "idf_front":
        return _build_idf_front(source, tokenizer, limit=limit, **options)
    base, reverse = _split_kind(kind)
    if base in ("tfc1", "tfc1_prepend"):
        return build_tfc1(source, tokenizer, prepend=base == "tfc1_prepend", reverse=reverse, limit=limit,
                          **options)
    if base == "stmc1":
        return build_stmc1(source, tokenizer, reverse=reverse, limit=limit, **options)
    if base == "tfc2":
        return build_tfc2(source, tokenizer, reverse=reverse, limit=limit, **options)
    return build_lnc1(source, tokenizer, seed=seed, reverse=reverse, limit=limit, **options)


def _build_idf_front(source: DiagnosticSource, tokenizer, *, limit: int | None = None, idf_table=None,
                     docs_per_query: int | None = None, term_match: str = "word") -> BuildResult:
    """E7 pairs, the IDF table read from a TSV, given, or computed over the source's own documents."""
    from jaxmech.data.idf import load_idf_tsv, word_idf

    if idf_table is None:
        texts = list(dict.fromkeys(t for docs in source.docs.values() for t in docs.values()))
        table = word_idf(texts, tokenizer)
    elif isinstance(idf_table, (str, os.PathLike)):
        table = load_idf_tsv(idf_table)
    else:
        table = dict(idf_table)
    return build_idf_front(source, tokenizer, table, docs_per_query=docs_per_query, limit=limit,
                           term_match=term_match)


def build_dataset_file(kind: str, source: str, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
                       limit: int | None = None, seed: int = 0, align: str = "diff",
                       term_match: str = "word", idf_table: str | os.PathLike | None = None) -> BuildResult:
    """Builds a dataset from a ``--source`` spec and writes it: ``jaxmech dataset build`` in one call.

    Args:
        kind: One of `KINDS`.
        source: A source spec (see `jaxmech.data.loaders.load_source`).
        out: The ``.jsonl`` file to write (atomically).
        model: Tokenizer folder (default: the packaged MiniLM, see `jaxmech.files`).
        limit: At most this many pairs.
        seed: Seed for LNC1 partners and random term choice.
        align: TFC2 position alignment (``"diff"`` or ``"paper"``).
        term_match: ``"word"`` (the paper's whole-word rule) or ``"span"``.
        idf_table: ``idf_front`` (E7): a ``word<TAB>idf`` TSV (default: word IDF over the source's documents).

    Returns:
        The `BuildResult` written.
    """
    from jaxmech.data.loaders import load_source
    from jaxmech.data.records import write_dataset
    from jaxmech.files import packaged_model_path, resolve_model_path
    from jaxmech.hf.tokenizer import PairTokenizer

    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number of pairs, got {limit}")
    model = resolve_model_path(model) if model else packaged_model_path()  # "packaged"/"packaged-ce" too
    tokenizer = PairTokenizer.from_pretrained(model)
    loaded = load_source(source, seed=seed)
    options: dict[str, Any] = {"term_match": term_match}
    if kind.startswith("tfc2"):
        options["align"] = align
    if idf_table is not None:
        if kind != "idf_front":
            raise ValueError(f"--idf-table applies to --kind idf_front, not {kind}")
        options["idf_table"] = idf_table
    result = build(kind, loaded, tokenizer, limit=limit, seed=seed, **options)
    if not result.pairs:
        raise ValueError(f"no {kind} pairs could be built from {loaded.name} (excluded: "
                         f"{ {k: v for k, v in result.stats.items() if k.startswith('excluded_') and v} }); "
                         "nothing written")
    write_dataset(out, result.pairs, result.header(tokenizer, loaded.name, model=str(model)))
    return result
