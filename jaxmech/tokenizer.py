"""Tokenisation of query-document pairs with bucketed padding and reported (never silent) truncation.

Pairs are encoded as ``[CLS] q [SEP] d [SEP]`` with token types 0 for ``[CLS] q [SEP]`` and 1 for ``d [SEP]``,
exactly as the checkpoint's Hugging Face fast tokenizer does (queries and documents are word-piece encoded
separately, which is what the BERT post-processor does too). Batches are padded to the smallest of a few
length buckets that fits, so a jitted function compiles once per bucket rather than once per length.

When a pair exceeds ``max_length`` it is truncated with the tokenizer's own strategy (``longest_first`` by
default, as ``tokenizer(q, d, truncation=True)``) and a `Truncation` record says how many query and document
tokens were cut from which pair; ``truncation="error"`` refuses instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Int

DEFAULT_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512)
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "error")


class TruncationError(ValueError):
    """A pair is longer than ``max_length`` and truncation was set to ``"error"``."""


@dataclasses.dataclass(frozen=True)
class Truncation:
    """One pair that was cut to fit ``max_length``.

    Attributes:
        index: Position of the pair in the batch.
        query_tokens_cut: Word pieces removed from the end of the query.
        doc_tokens_cut: Word pieces removed from the end of the document.
        original_length: Length of ``[CLS] q [SEP] d [SEP]`` before truncation.
    """

    index: int
    query_tokens_cut: int
    doc_tokens_cut: int
    original_length: int


@dataclasses.dataclass
class EncodedBatch:
    """A padded batch of token ids, ready for the model.

    Attributes:
        input_ids: ``[batch, pos]`` int32, padded with the pad id.
        token_type_ids: ``[batch, pos]`` int32.
        attention_mask: ``[batch, pos]`` int32, 1 on real tokens.
        lengths: ``[batch]`` real lengths.
        query_lengths: ``[batch]`` query word pieces (pairs only; 0 for single texts).
        truncations: Pairs that were truncated.
    """

    input_ids: Int[np.ndarray, "batch pos"]
    token_type_ids: Int[np.ndarray, "batch pos"]
    attention_mask: Int[np.ndarray, "batch pos"]
    lengths: Int[np.ndarray, " batch"]
    query_lengths: Int[np.ndarray, " batch"]
    truncations: list[Truncation] = dataclasses.field(default_factory=list)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, token_type_ids, attention_mask)``, the model's positional arguments."""
        return self.input_ids, self.token_type_ids, self.attention_mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def bucket_length(n: int, buckets: Sequence[int], max_length: int) -> int:
    """Smallest bucket that holds ``n`` tokens, or ``max_length`` if no bucket up to it does."""
    return next((b for b in sorted(buckets) if n <= b <= max_length), max_length)


def pad_sequences(
    ids: Sequence[Sequence[int]],
    token_types: Sequence[Sequence[int]],
    *,
    pad_id: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    max_length: int = 512,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pads pre-tokenised sequences to a common bucket length.

    Args:
        ids: Token ids per sequence.
        token_types: Token types per sequence (same lengths as ``ids``).
        pad_id: Padding token id.
        buckets: Allowed padded lengths.
        max_length: Longest allowed sequence.
        length: Pad to exactly this length instead of a bucket.

    Returns:
        ``(input_ids, token_type_ids, attention_mask)`` as int32 arrays ``[batch, pos]``.

    Raises:
        ValueError: If a sequence is longer than ``max_length`` (or ``length``), or lengths disagree.
    """
    n = max((len(s) for s in ids), default=0)
    if n > max_length:
        worst = max(range(len(ids)), key=lambda i: len(ids[i]))
        raise ValueError(f"sequence {worst} has {n} tokens, more than max_length={max_length}")
    T = length if length is not None else bucket_length(n, buckets, max_length)
    if n > T:
        raise ValueError(f"cannot pad sequences of length {n} to length {T}")
    out_ids = np.full((len(ids), T), pad_id, np.int32)
    out_tt = np.zeros((len(ids), T), np.int32)
    out_mask = np.zeros((len(ids), T), np.int32)
    for i, (s, t) in enumerate(zip(ids, token_types, strict=True)):
        if len(s) != len(t):
            raise ValueError(f"sequence {i}: {len(s)} ids but {len(t)} token types")
        out_ids[i, : len(s)] = s
        out_tt[i, : len(t)] = t
        out_mask[i, : len(s)] = 1
    return out_ids, out_tt, out_mask


class PairTokenizer:
    """Wraps a Hugging Face fast tokenizer for cross-encoder pairs and bi-encoder texts.

    Args:
        hf_tokenizer: A ``transformers`` fast tokenizer (``PreTrainedTokenizerFast``).
        max_length: Longest sequence, special tokens included (default: the tokenizer's model_max_length,
            capped at 512).
        buckets: Padded lengths to choose from.
        truncation: ``"longest_first"`` (the paper's), ``"only_first"``, ``"only_second"`` or ``"error"``.
    """

    def __init__(self, hf_tokenizer, *, max_length: int | None = None, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 truncation: str = "longest_first"):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise TypeError("PairTokenizer needs a fast (Rust) tokenizer; got a slow Python tokenizer")
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation={truncation!r}; choose one of {TRUNCATION_STRATEGIES}")
        self.hf = hf_tokenizer
        model_max = getattr(hf_tokenizer, "model_max_length", 512) or 512
        self.max_length = int(max_length or min(model_max, 512))
        self.buckets = tuple(sorted(buckets))
        self.truncation = truncation
        self.cls_id = hf_tokenizer.cls_token_id
        self.sep_id = hf_tokenizer.sep_token_id
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        if self.cls_id is None or self.sep_id is None:
            raise ValueError("tokenizer has no [CLS]/[SEP] tokens; is it a BERT tokenizer?")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw) -> PairTokenizer:
        """Loads the fast tokenizer from a local model folder.

        Raises:
            FileNotFoundError: If the folder has neither ``tokenizer.json`` nor ``vocab.txt``.
        """
        path = Path(path)
        if not (path / "tokenizer.json").exists() and not (path / "vocab.txt").exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt; cannot build the tokenizer")
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path), use_fast=True), **kw)

    # -- word pieces --------------------------------------------------------------------------------------------
    def word_pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text, without special tokens."""
        if not texts:
            return []
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]

    def token_id(self, token: str) -> int:
        """Vocabulary id of one token (e.g. the filler ``"a"``).

        Raises:
            KeyError: If the token is not in the vocabulary.
        """
        tid = self.hf.convert_tokens_to_ids(token)
        if tid is None or tid == self.hf.unk_token_id and token != self.hf.unk_token:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return tid

    def pair_ids(self, q_ids: Sequence[int], d_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """``[CLS] q [SEP] d [SEP]`` ids and token types from word pieces (no truncation)."""
        ids = [self.cls_id, *q_ids, self.sep_id, *d_ids, self.sep_id]
        types = [0] * (len(q_ids) + 2) + [1] * (len(d_ids) + 1)
        return ids, types

    # -- batches ------------------------------------------------------------------------------------------------
    def encode_pairs(self, queries: Sequence[str], docs: Sequence[str], *, length: int | None = None) -> EncodedBatch:
        """Tokenises query-document pairs, truncating (and reporting) those longer than ``max_length``.

        Args:
            queries: One query per pair.
            docs: One document per pair.
            length: Pad to exactly this length instead of the smallest fitting bucket.

        Returns:
            An `EncodedBatch`; ``truncations`` lists every pair that was cut.

        Raises:
            ValueError: On an empty query or document (named by index), or mismatched list lengths.
            TruncationError: If a pair is too long and ``truncation="error"``.
        """
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        q_pieces, d_pieces = self.word_pieces(queries), self.word_pieces(docs)
        ids, types, qlens, truncs = [], [], [], []
        for i, (q, d) in enumerate(zip(q_pieces, d_pieces, strict=True)):
            if not q:
                raise ValueError(f"pair {i}: the query {queries[i]!r} is empty (no word pieces)")
            if not d:
                raise ValueError(f"pair {i}: the document {docs[i]!r} is empty (no word pieces)")
            total = len(q) + len(d) + 3
            if total > self.max_length:
                q, d = self._truncate(i, queries[i], docs[i], len(q), len(d), total, truncs)
            pid, ptt = self.pair_ids(q, d)
            ids.append(pid)
            types.append(ptt)
            qlens.append(len(q))
        input_ids, tt, mask = pad_sequences(ids, types, pad_id=self.pad_id, buckets=self.buckets,
                                            max_length=self.max_length, length=length)
        return EncodedBatch(input_ids, tt, mask, mask.sum(1).astype(np.int32), np.asarray(qlens, np.int32), truncs)

    def _truncate(self, i, query, doc, n_q, n_d, total, truncs):
        if self.truncation == "error":
            raise TruncationError(
                f"pair {i}: {total} tokens ({n_q} query + {n_d} document + 3 special) exceed "
                f"max_length={self.max_length}"
            )
        enc = self.hf(query, doc, truncation=self.truncation, max_length=self.max_length,
                      add_special_tokens=True)["input_ids"]
        first_sep = enc.index(self.sep_id)
        q, d = enc[1:first_sep], enc[first_sep + 1 : -1]
        truncs.append(Truncation(i, n_q - len(q), n_d - len(d), total))
        return q, d

    def encode_texts(self, texts: Sequence[str], *, length: int | None = None) -> EncodedBatch:
        """Tokenises single texts as ``[CLS] t [SEP]`` (bi-encoders), truncating the end and reporting it (as
        ``doc_tokens_cut``).

        Raises:
            ValueError: On an empty text.
            TruncationError: If a text is too long and ``truncation="error"``.
        """
        pieces = self.word_pieces(texts)
        ids, types, truncs = [], [], []
        for i, p in enumerate(pieces):
            if not p:
                raise ValueError(f"text {i}: {texts[i]!r} is empty (no word pieces)")
            if len(p) + 2 > self.max_length:
                if self.truncation == "error":
                    raise TruncationError(f"text {i}: {len(p) + 2} tokens exceed max_length={self.max_length}")
                truncs.append(Truncation(i, 0, len(p) + 2 - self.max_length, len(p) + 2))
                p = p[: self.max_length - 2]
            ids.append([self.cls_id, *p, self.sep_id])
            types.append([0] * (len(p) + 2))
        input_ids, tt, mask = pad_sequences(ids, types, pad_id=self.pad_id, buckets=self.buckets,
                                            max_length=self.max_length, length=length)
        return EncodedBatch(input_ids, tt, mask, mask.sum(1).astype(np.int32), np.zeros(len(texts), np.int32), truncs)
