"""Inverse document frequency: formulas, word and word-piece tables from a corpus, TSV files, vocab vectors.

**Formulas** (``N`` documents, ``df`` of them containing the term):

===============  ========================================  ============================================
``"lucene"``     ``log(1 + (N - df + 0.5) / (df + 0.5))``  Lucene / Elasticsearch / bm25s default; >= 0
``"robertson"``  ``log((N - df + 0.5) / (df + 0.5))``      Robertson-Sparck Jones; negative when df > N/2
``"log"``        ``log(N / df)``                            classic IDF (ATIRE's BM25)
``"smooth"``     ``log((1 + N) / (1 + df)) + 1``            scikit-learn's smoothed IDF
===============  ========================================  ============================================

The paper's MS MARCO table (``msmarco_idf.tsv``, notes §6) is not available and its formula is unknown, so
the default here is ``"lucene"``; every function takes ``formula=``.

**Tables** map a term to its IDF. Word tables use the tokenizer's words (lower-cased, accent-stripped,
punctuation split: the words of `jaxmech.data.token_types`), word-piece tables use vocabulary token strings
(``"##ing"``). Both are saved as TSV, one ``term<TAB>idf`` row per term (floats written with ``repr`` so they
round-trip exactly), no header; a header row ``term<TAB>idf`` is accepted on reading.

**The packaged table** (``"wordfreq"``, `WORDFREQ`): word IDF for ~90k English words, derived once by
``scripts/make_wordfreq_idf.py`` from the ``wordfreq`` package's English word frequencies (a document-frequency
proxy on the scale of MS MARCO: see the script) and shipped as ``jaxmech/demo/idf_wordfreq_en.tsv``
(CC BY-SA 4.0, as wordfreq's data). `load_idf_tsv` reads it by that name, so every ``idf_table`` option takes it.

**Vocab vectors** (notes §6): ``idf[i] = table.get(tokenizer.decode([i]), 0)`` for every vocabulary id; with a
word table, word pieces (``##x``), special tokens and words missing from the corpus get 0.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Float

from jaxmech.data.records import DataError, iter_tsv

IDF_FORMULAS = ("lucene", "robertson", "log", "smooth")
WORDFREQ = "wordfreq"
"""The ``idf_table`` name of the packaged word table (module docstring); a file of that name is ``./wordfreq``."""


def packaged_idf_path() -> Path:
    """Path of the packaged word IDF table (`WORDFREQ`)."""
    return Path(__file__).resolve().parent.parent / "demo" / "idf_wordfreq_en.tsv"


def idf_values(df: np.ndarray, n_docs: int, formula: str = "lucene") -> np.ndarray:
    """IDF of document frequencies ``df`` in a corpus of ``n_docs`` documents (see the module table).

    Raises:
        ValueError: On an unknown formula.
    """
    df = np.asarray(df, np.float64)
    n = float(n_docs)
    if formula == "lucene":
        return np.log1p((n - df + 0.5) / (df + 0.5))
    if formula == "robertson":
        return np.log((n - df + 0.5) / (df + 0.5))
    if formula == "log":
        with np.errstate(divide="ignore"):
            return np.log(n / df)
    if formula == "smooth":
        return np.log((1.0 + n) / (1.0 + df)) + 1.0
    raise ValueError(f"formula={formula!r}; choose one of {IDF_FORMULAS}")


def document_frequencies(docs: Iterable[Iterable[Hashable]]) -> tuple[Counter, int]:
    """``(df, n_docs)``: in how many documents each term occurs."""
    df: Counter = Counter()
    n = 0
    for d in docs:
        df.update(set(d))
        n += 1
    return df, n


def idf_table(docs: Iterable[Iterable[Hashable]], *, formula: str = "lucene") -> dict:
    """IDF of every term of a tokenised corpus."""
    df, n = document_frequencies(docs)
    terms = list(df)
    vals = idf_values(np.array([df[t] for t in terms]), n, formula)
    return {t: float(v) for t, v in zip(terms, vals, strict=True)}


def word_idf(texts: Sequence[str], tokenizer, *, formula: str = "lucene") -> dict[str, float]:
    """Word-level IDF over a corpus, with the tokenizer's normalised words as terms.

    Args:
        texts: Corpus documents.
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer` (its words; see `jaxmech.data.token_types`).
        formula: IDF formula.
    """
    from jaxmech.data.token_types import word_pieces_with_words

    return idf_table((wp.words for wp in word_pieces_with_words(tokenizer, texts)), formula=formula)


def wordpiece_idf(texts: Sequence[str], tokenizer, *, formula: str = "lucene") -> dict[str, float]:
    """Word-piece IDF over a corpus, keyed by vocabulary token string (``"play"``, ``"##ing"``)."""
    from jaxmech.data.token_types import word_piece_ids

    by_id = idf_table(word_piece_ids(tokenizer, texts), formula=formula)
    tokens = tokenizer.hf.convert_ids_to_tokens(list(by_id))
    return {tok: v for tok, v in zip(tokens, by_id.values(), strict=True)}


def save_idf_tsv(path: str | os.PathLike, table: Mapping[str, float]) -> Path:
    """Writes ``term<TAB>idf`` rows, sorted by term (atomically, `jaxmech.files.atomic_write`).

    Raises:
        ValueError: If a term is empty or contains a tab or a line break, or a value is not finite.
    """
    path = Path(path)
    lines = []
    for term in sorted(table):
        v = float(table[term])
        if not term or any(c in term for c in "\t\n\r"):
            raise ValueError(f"term {term!r} cannot be written to TSV (empty, or contains a tab/line break)")
        if not math.isfinite(v):
            raise ValueError(f"term {term!r} has a non-finite IDF {v}")
        lines.append(f"{term}\t{v!r}\n")
    from jaxmech.files import atomic_write

    return atomic_write(path, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))


def load_idf_tsv(path: str | os.PathLike) -> dict[str, float]:
    """Reads a ``term<TAB>idf`` TSV (an optional ``term<TAB>idf`` header is skipped); ``"wordfreq"`` names the
    packaged table (`WORDFREQ`).

    Raises:
        DataError: Naming the line, on a row without two columns, a non-numeric IDF or a repeated term.
    """
    path, out = (packaged_idf_path() if str(path) == WORDFREQ else Path(path)), {}
    for n, cols in iter_tsv(path, (2,), "'term<TAB>idf' columns"):
        if n == 1 and cols == ["term", "idf"]:
            continue
        try:
            v = float(cols[1])
        except ValueError:
            raise DataError(path, f"line {n}", f"IDF {cols[1]!r} is not a number") from None
        if cols[0] in out:
            raise DataError(path, f"line {n}", f"term {cols[0]!r} appears twice")
        out[cols[0]] = v
    return out


VOCAB_KEYS = ("decode", "token")


def vocab_idf_known(table: Mapping[str, float], tokenizer, *, key: str = "decode", default: float = 0.0
                    ) -> tuple[Float[np.ndarray, " vocab"], Bool[np.ndarray, " vocab"]]:
    """The one vocabulary-to-IDF mapper: the IDF of every vocabulary id and whether the table has it.

    Args:
        table: ``term -> idf`` (word or word-piece table).
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        key: ``"decode"``: look up ``tokenizer.decode([i])`` (the paper's choice, notes §6, for word tables);
            ``"token"``: look up the vocabulary string (``"##ing"``), for word-piece tables.
        default: The IDF of ids the table does not have.

    Returns:
        ``(idf, known)``: ``[vocab]`` float64 IDF (``default`` where unknown) and ``[vocab]`` bool.

    Raises:
        ValueError: On an unknown ``key``.
    """
    n = len(tokenizer.hf)
    if key == "decode":
        names = tokenizer.hf.batch_decode([[i] for i in range(n)])
    elif key == "token":
        names = tokenizer.hf.convert_ids_to_tokens(list(range(n)))
    else:
        raise ValueError(f"key={key!r}; choose one of {VOCAB_KEYS}")
    known = np.array([s in table for s in names])
    return np.array([table.get(s, default) for s in names], np.float64), known


def vocab_idf(table: Mapping[str, float], tokenizer, *, key: str = "decode") -> Float[np.ndarray, " vocab"]:
    """IDF of every vocabulary id (0 where the table has no entry), as in notes §6 (see `vocab_idf_known`).

    Args:
        table: ``term -> idf`` (word or word-piece table).
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        key: ``"decode"`` or ``"token"``.

    Returns:
        ``[vocab]`` float64 array.
    """
    return vocab_idf_known(table, tokenizer, key=key)[0]
