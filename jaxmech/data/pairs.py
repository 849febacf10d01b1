"""The generic core of the dataset builders: perturbation items (texts) to aligned, typed pairs.

`build_pairs` tokenises every text of a build once, aligns each item's baseline and perturbed documents
(`jaxmech.data.align`: fillers for append/prepend, token diff, or the paper's fillers at the end), maps
positions over the whole ``[CLS] q [SEP] d [SEP]`` input and assigns the paper's token types
(`jaxmech.data.token_types`); items that would be too long, identical or not aligned as asked are left out
and counted. The axioms' builders (`jaxmech.data.diagnostic`) and the analyses' kinds
(`jaxmech.data.analysis_kinds`) make the items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jaxmech.data.align import FILLER, diff_alignment, is_prefix_extension, is_suffix_extension
from jaxmech.data.records import AlignedPair, DataError, term_in_query
from jaxmech.data.token_types import WordPieces, assign_token_types, word_piece_ids, word_pieces_with_words

ALIGN_MODES = ("append", "prepend", "diff", "paper")


@dataclasses.dataclass
class PerturbationItem:
    """One (baseline text, perturbed text) document pair for a query, before tokenisation.

    Attributes:
        qid: Query id.
        doc_id: Document id.
        query: Query text.
        term: Selected query term (``None`` for none).
        baseline_doc: Baseline document text (no fillers).
        perturbed_doc: Perturbed document text.
        meta: Details stored with the pair.
    """

    qid: str
    doc_id: str
    query: str
    term: str | None
    baseline_doc: str
    perturbed_doc: str
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BuildResult:
    """Pairs of one build and its statistics.

    Attributes:
        kind: Dataset kind.
        pairs: The built pairs.
        stats: Counts (``items``, ``built``, ``excluded_too_long``, ...) and the ``excluded`` records.
    """

    kind: str
    pairs: list[AlignedPair]
    stats: dict[str, Any]

    def header(self, tokenizer, source: str, **extra) -> dict[str, Any]:
        """Header for `jaxmech.data.records.write_dataset`."""
        return {"kind": self.kind, "tokenizer": str(getattr(tokenizer.hf, "name_or_path", "")),
                "max_length": tokenizer.max_length, "source": source, "stats": self.stats, **extra}


def _tokenize_unique(tokenizer, texts: Sequence[str], *, words: bool = True) -> dict[str, WordPieces]:
    """Tokenises each distinct text once; ``words=False`` skips the word merge (ids only)."""
    uniq = list(dict.fromkeys(texts))
    if words:
        return dict(zip(uniq, word_pieces_with_words(tokenizer, uniq), strict=True))
    return {t: WordPieces(ids, [], []) for t, ids in zip(uniq, word_piece_ids(tokenizer, uniq), strict=True)}


def build_pairs(kind: str, items: Sequence[PerturbationItem], tokenizer, *, align: str = "append",
                reverse: bool = False, term_match: str = "word", source: str = "<items>",
                stats: dict[str, Any] | None = None) -> BuildResult:
    """Tokenises and aligns perturbation items into pairs.

    Args:
        kind: Kind recorded in each pair.
        items: Document pairs to build.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        align: ``"append"`` / ``"prepend"`` (the longer document extends the shorter at the end / start; the
            shorter is padded with fillers there: identity map), ``"diff"`` (token diff, no padding) or
            ``"paper"`` (fillers at the end of the shorter whatever the change).
        reverse: Swap baseline and perturbed (reverse axioms).
        term_match: How the term is matched to words (`jaxmech.data.token_types`).
        source: Name for error messages.
        stats: Counters to extend (builder-specific counts).

    Returns:
        A `BuildResult`; items whose pair would exceed ``tokenizer.max_length``, whose two sides are
        identical, or whose tokenisation does not extend as ``align`` requires are left out and counted.

    Raises:
        DataError: On a term that is not a word of its query, or an empty query.
    """
    if align not in ALIGN_MODES:
        raise ValueError(f"align={align!r}; choose one of {ALIGN_MODES}")
    for it in items:
        if it.term is not None and not term_in_query(it.term, it.query):
            raise DataError(source, f"qid {it.qid}, doc {it.doc_id}",
                            f"selected term {it.term!r} is not a word of the query {it.query!r}")
    filler_id = tokenizer.filler_id  # the tokenizer's own piece for the filler word (RoBERTa: Ġa)
    pieces = _ItemPieces.of(items, tokenizer, reverse)
    stats = dict(stats or {})
    stats.update(items=len(items), built=0, excluded_too_long=0, excluded_identical=0, excluded_not_aligned=0)
    excluded: list[dict[str, Any]] = stats.setdefault("excluded", [])
    pairs = []
    for it in items:
        made = _build_pair(kind, it, pieces, tokenizer, filler_id, align=align, reverse=reverse,
                           term_match=term_match, source=source)
        if isinstance(made, AlignedPair):
            pairs.append(made)
        else:
            counter, record = made
            stats[counter] += 1
            excluded.append({"qid": it.qid, "doc_id": it.doc_id, **record})
    stats["built"] = len(pairs)
    return BuildResult(kind, pairs, stats)


@dataclasses.dataclass(frozen=True)
class _ItemPieces:
    """Word pieces of every text of a build, each distinct text tokenised once.

    Attributes:
        words: Queries and baseline documents with their words (token types need them).
        ids_only: Perturbed documents not among ``words`` (ids only).
        terms: The selected terms with their words.
    """

    words: dict[str, WordPieces]
    ids_only: dict[str, WordPieces]
    terms: dict[str, WordPieces]

    @classmethod
    def of(cls, items: Sequence[PerturbationItem], tokenizer, reverse: bool) -> _ItemPieces:
        # word strings are needed only on the baseline side (token types); the other side needs ids only
        b_texts = [it.perturbed_doc if reverse else it.baseline_doc for it in items]
        p_texts = [it.baseline_doc if reverse else it.perturbed_doc for it in items]
        wp = _tokenize_unique(tokenizer, [it.query for it in items] + b_texts)
        wp_ids = _tokenize_unique(tokenizer, [t for t in dict.fromkeys(p_texts) if t not in wp], words=False)
        terms = _tokenize_unique(tokenizer, [it.term for it in items if it.term is not None])
        return cls(wp, wp_ids, terms)

    def doc(self, text: str) -> WordPieces:
        """The pieces of a document (with words when it has them)."""
        return self.words[text] if text in self.words else self.ids_only[text]


def _build_pair(kind: str, it: PerturbationItem, pieces: _ItemPieces, tokenizer, filler_id: int, *, align: str,
                reverse: bool, term_match: str, source: str) -> AlignedPair | tuple[str, dict[str, Any]]:
    """One item's pair, or ``(the stats counter, the exclusion record)`` when it is left out."""
    q = pieces.words[it.query]
    if not q.ids:
        raise DataError(source, f"qid {it.qid}", f"the query {it.query!r} is empty (no word pieces)")
    b_text, p_text = it.baseline_doc, it.perturbed_doc
    if reverse:
        b_text, p_text = p_text, b_text
    b, p = pieces.words[b_text], pieces.doc(p_text)
    if b.ids == p.ids:
        return "excluded_identical", {"reason": "identical", **_short(it.meta)}
    made = _align(b, p, align, filler_id)
    if made is None:
        return "excluded_not_aligned", {"reason": f"not an {align} extension"}
    b_doc, p_doc, pmap_doc, pad_b, pad_p = made
    b_ids, b_tt = tokenizer.pair_ids(q.ids, b_doc.ids)
    p_ids, p_tt = tokenizer.pair_ids(q.ids, p_doc.ids)
    longest = max(len(b_ids), len(p_ids))
    if longest > tokenizer.max_length:
        return "excluded_too_long", {"reason": "too_long", "length": longest, **_short(it.meta)}
    fmt = tokenizer.format  # [CLS] q [SEP] d [SEP] or <s> q </s></s> d </s>
    off = len(fmt.prefix) + len(q.ids) + len(fmt.middle)
    pmap = list(range(off)) + [j + off if j >= 0 else -1 for j in pmap_doc]
    pmap += [len(p_ids) - len(fmt.suffix) + i for i in range(len(fmt.suffix))]
    # Dinj: positions without a counterpart, with a different token, or facing / being an added filler
    # (an added sentence may contain the filler word itself)
    changed = [j for j, m in enumerate(pmap_doc)
               if m < 0 or p_doc.ids[m] != b_doc.ids[j] or j in pad_b or m in pad_p]
    term_w = pieces.terms[it.term].words if it.term is not None else None
    types = assign_token_types(q, b_doc, term_w, changed, term_match=term_match)
    types = _expand_special_types(types, len(q.ids), fmt)
    meta = {**it.meta, "alignment": align, "fillers": len(pad_b) + len(pad_p)}
    return AlignedPair(b_ids, b_tt, p_ids, p_tt, pmap, kind=kind, qid=it.qid, doc_id=it.doc_id, query=it.query,
                       baseline_doc=b_text, perturbed_doc=p_text, token_types=types, term=it.term, meta=meta)


def _expand_special_types(types: list[str], n_query: int, fmt) -> list[str]:
    """Paper token types (one CLS, SEP1, SEP2) spread over the tokenizer's special tokens (RoBERTa's
    ``</s></s>`` between query and document are both SEP1)."""
    q, d = types[1: 1 + n_query], types[2 + n_query: -1]
    return ["CLS"] * len(fmt.prefix) + q + ["SEP1"] * len(fmt.middle) + d + ["SEP2"] * len(fmt.suffix)


def _short(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if isinstance(v, int | str) and k in ("k", "tf", "n_sentences")}


def _pad_range(n_short: int, n: int, at_start: bool) -> set[int]:
    return set(range(n)) if at_start else set(range(n_short, n_short + n))


def _align(b: WordPieces, p: WordPieces, mode: str, filler_id: int):
    """(baseline doc, perturbed doc, doc-level map, added-filler indices in each) or None if not aligned."""
    if mode in ("append", "prepend"):
        ext = is_suffix_extension if mode == "append" else is_prefix_extension
        short, long_ = (b, p) if len(b) <= len(p) else (p, b)
        if not ext(short.ids, long_.ids):
            return None
        n = len(long_) - len(short)
        padded = short.with_fillers(filler_id, n, FILLER, at_start=mode == "prepend")
        b2, p2 = (padded, p) if short is b else (b, padded)
        pads = _pad_range(len(short), n, mode == "prepend")
        return b2, p2, list(range(len(b2))), *((pads, set()) if short is b else (set(), pads))
    if mode == "diff":
        return b, p, diff_alignment(b.ids, p.ids), set(), set()
    # paper: fillers at the end of the shorter sequence, identity map
    nb, npert = max(0, len(p) - len(b)), max(0, len(b) - len(p))
    b2, p2 = b.with_fillers(filler_id, nb, FILLER), p.with_fillers(filler_id, npert, FILLER)
    return b2, p2, list(range(len(b2))), _pad_range(len(b), nb, False), _pad_range(len(p), npert, False)


__all__ = ["ALIGN_MODES", "BuildResult", "PerturbationItem", "build_pairs"]
