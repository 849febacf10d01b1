"""The paper's token types, computed on words made by merging word pieces.

Every position of ``[CLS] q [SEP] d [SEP]`` gets one type (paper-notes §4, ``get_type_pos_dict``):

=========  ====================================================================================
``CLS``    position 0
``SEP1``   the [SEP] after the query
``SEP2``   the final [SEP]
``Qplus``  word pieces of query words equal to the selected term
``Qsub``   the other query word pieces
``Dinj``   document positions the perturbation acts on: the injected term's slots (the baseline's
           fillers in TFC1 append/prepend and STMC1), the pronouns that TFC2 turns back into the term,
           the fillers facing LNC1's added sentences, the removed term in reverse axioms
``Dplus``  other document words equal to the term
``Dsub``   document words equal to one of the other query words
``Dother`` everything else
=========  ====================================================================================

Words are the tokenizer's pre-tokenised words (whitespace and punctuation split, lower-cased and accent
stripped by the BERT normaliser): word pieces are merged by the fast tokenizer's ``word_ids``, which is the
same as merging ``##`` continuations. Each filler is its own word.

**Terms that the tokenizer splits** (``"fletcher,nc"`` becomes the three words ``fletcher , nc``): with
``term_match="word"`` (the default, the paper's behaviour) no single word equals the term, so ``Qplus`` and
``Dplus`` are empty for such a term. ``term_match="span"`` instead marks every run of consecutive words that
spells the term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from jaxmech.data.align import FILLER
from jaxmech.data.records import TOKEN_TYPES

TERM_MATCH_MODES = ("word", "span")


@dataclasses.dataclass
class WordPieces:
    """Word pieces of one text and the word each belongs to.

    Attributes:
        ids: Word-piece ids (no special tokens).
        word_index: For each piece, the index of its word in ``words``.
        words: Normalised word strings (pieces joined, ``##`` removed).
    """

    ids: list[int]
    word_index: list[int]
    words: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def with_fillers(self, filler_id: int, n: int, filler: str = FILLER, *,
                     at_start: bool = False) -> WordPieces:
        """A copy with ``n`` filler pieces (each its own word) appended, or prepended if ``at_start``."""
        if n == 0:
            return dataclasses.replace(self, ids=list(self.ids), word_index=list(self.word_index),
                                       words=list(self.words))
        if at_start:
            return WordPieces([filler_id] * n + self.ids, list(range(n)) + [w + n for w in self.word_index],
                              [filler] * n + self.words)
        w0 = len(self.words)
        return WordPieces(self.ids + [filler_id] * n, self.word_index + list(range(w0, w0 + n)),
                          self.words + [filler] * n)

    def concat(self, other: WordPieces) -> WordPieces:
        """This text followed by ``other`` as separate words."""
        w0 = len(self.words)
        return WordPieces(self.ids + other.ids, self.word_index + [w + w0 for w in other.word_index],
                          self.words + other.words)


def _encode(tokenizer, texts: list[str]):
    """Fast-tokenizer encodings without special tokens, truncation or padding."""
    backend = getattr(tokenizer.hf, "backend_tokenizer", None)
    if backend is None:
        return tokenizer.hf(texts, add_special_tokens=False).encodings
    # transformers leaves the last call's truncation/padding switched on in the shared backend; switch it off
    # (it re-applies its own settings on every call, so this does not change later tokenizer calls)
    backend.no_truncation()
    backend.no_padding()
    return backend.encode_batch(texts, add_special_tokens=False)


def word_piece_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Word-piece ids of each text (no special tokens), like ``PairTokenizer.word_pieces`` but faster."""
    return [enc.ids for enc in _encode(tokenizer, list(texts))] if texts else []


def word_pieces_with_words(tokenizer, texts: Sequence[str]) -> list[WordPieces]:
    """Batch-tokenises texts into `WordPieces` with the fast tokenizer's word ids.

    Args:
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        texts: Texts to tokenise.
    """
    if not texts:
        return []
    out = []
    for enc in _encode(tokenizer, list(texts)):
        words: list[str] = []
        index: list[int] = []
        last = -1
        for w, tok in zip(enc.word_ids, enc.tokens, strict=True):
            if w != last:  # a word's first piece; BPE / SentencePiece mark the space before it (Ġ, ▁)
                words.append(tok[1:] if tok[:1] in ("Ġ", "▁") else tok)
                last = w
            else:
                words[-1] += tok[2:] if tok[:2] == "##" else tok
            index.append(len(words) - 1)
        out.append(WordPieces(enc.ids, index, words))
    return out


def term_words(tokenizer, term: str) -> list[str]:
    """The normalised words the tokenizer makes of ``term`` (one word unless punctuation splits it)."""
    return word_pieces_with_words(tokenizer, [term])[0].words


def _matching_words(words: Sequence[str], target: Sequence[str], mode: str) -> set[int]:
    if not target:
        return set()
    if len(target) == 1:
        return {i for i, w in enumerate(words) if w == target[0]}
    if mode == "word":
        return set()
    n = len(target)
    hits: set[int] = set()
    for i in range(len(words) - n + 1):
        if list(words[i : i + n]) == list(target):
            hits.update(range(i, i + n))
    return hits


def assign_token_types(query: WordPieces, doc: WordPieces, term: Sequence[str] | None,
                       changed_doc: Iterable[int] = (), *, term_match: str = "word") -> list[str]:
    """Paper token types of every position of ``[CLS] q [SEP] d [SEP]``.

    Args:
        query: The query's word pieces.
        doc: The document's word pieces as they appear in the sequence (fillers included).
        term: Normalised words of the selected term (`term_words`), or ``None`` for no term (every query
            word is then ``Qsub`` and no document word is ``Dplus``).
        changed_doc: Indices *into the document* (0 = first document piece) that the perturbation acts on;
            they are ``Dinj``.
        term_match: ``"word"`` (paper) or ``"span"``; see the module docstring.

    Returns:
        One entry of `jaxmech.data.records.TOKEN_TYPES` per position, ``len(query) + len(doc) + 3`` in all.
    """
    if term_match not in TERM_MATCH_MODES:
        raise ValueError(f"term_match={term_match!r}; choose one of {TERM_MATCH_MODES}")
    target = list(term) if term else []
    q_plus_words = _matching_words(query.words, target, term_match)
    q_other = {w for i, w in enumerate(query.words) if i not in q_plus_words}
    d_plus_words = _matching_words(doc.words, target, term_match)
    changed = set(changed_doc)

    types = ["CLS"]
    types += ["Qplus" if w in q_plus_words else "Qsub" for w in query.word_index]
    types.append("SEP1")
    for j, w in enumerate(doc.word_index):
        if j in changed:
            types.append("Dinj")
        elif w in d_plus_words:
            types.append("Dplus")
        elif doc.words[w] in q_other:
            types.append("Dsub")
        else:
            types.append("Dother")
    types.append("SEP2")
    assert all(t in TOKEN_TYPES for t in types)
    return types
