"""Tokenisation of query-document pairs with bucketed padding and reported (never silent) truncation.

Pairs are encoded exactly as the checkpoint's Hugging Face fast tokenizer does, in the layout its
post-processor uses (`PairFormat`, read off the tokenizer once): ``[CLS] q [SEP] d [SEP]`` with token types 0
for ``[CLS] q [SEP]`` and 1 for ``d [SEP]`` (BERT, ELECTRA word pieces), ``<s> q </s></s> d </s>`` with every
token type 0 (RoBERTa byte-level BPE, XLM-R SentencePiece). Queries and documents are encoded separately,
which is what the post-processors do too. `PairTokenizer.filler_id` is the tokenizer's own piece for the
paper's filler word ``"a"`` in running text (``a``, RoBERTa's ``Ġa``, XLM-R's ``▁a``).

Batches are padded to the smallest of a few length buckets that fits, so a jitted function compiles once per
bucket rather than once per length.

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


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def has_tokenizer_files(folder: Path) -> bool:
    """Whether a folder holds the files of a Hugging Face tokenizer (fast ``tokenizer.json`` or the slow
    vocabularies that ``transformers`` converts: WordPiece, byte-level BPE, SentencePiece)."""
    return any((Path(folder) / f).exists() for f in _TOKENIZER_FILES)


@dataclasses.dataclass(frozen=True)
class PairFormat:
    """Where a tokenizer's post-processor puts special tokens and token types.

    A pair is ``prefix q middle d suffix`` and a single text ``single_prefix t single_suffix``; each region
    has one token type.

    Attributes:
        prefix: Ids before the query (``[CLS]``, ``<s>``).
        middle: Ids between query and document (``[SEP]``, ``</s></s>``).
        suffix: Ids after the document (``[SEP]``, ``</s>``).
        single_prefix: Ids before a single text.
        single_suffix: Ids after a single text.
        types: Token type of ``(prefix, q, middle, d, suffix)``.
    """

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    single_prefix: tuple[int, ...]
    single_suffix: tuple[int, ...]
    types: tuple[int, int, int, int, int]

    @property
    def n_special(self) -> int:
        """Special tokens in a pair."""
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def pair(self, q_ids: Sequence[int], d_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Ids and token types of a pair from its query and document pieces."""
        regions = (self.prefix, q_ids, self.middle, d_ids, self.suffix)
        ids = [i for region in regions for i in region]
        types = [t for region, t in zip(regions, self.types, strict=True) for _ in region]
        return ids, types

    def single(self, ids: Sequence[int]) -> list[int]:
        """Ids of a single text from its pieces (token types are all 0)."""
        return [*self.single_prefix, *ids, *self.single_suffix]

    def split(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Query and document pieces of an unpadded pair (inverse of `pair`).

        Raises:
            ValueError: If ``ids`` does not have this format's special tokens where they belong.
        """
        ids = list(ids)
        n_pre, n_mid, n_suf = len(self.prefix), len(self.middle), len(self.suffix)
        if tuple(ids[:n_pre]) != self.prefix or tuple(ids[len(ids) - n_suf:]) != self.suffix:
            raise ValueError(f"ids do not start with {list(self.prefix)} and end with {list(self.suffix)}")
        body = ids[n_pre: len(ids) - n_suf]
        for start in range(len(body) - n_mid + 1):
            if tuple(body[start: start + n_mid]) == self.middle:
                return body[:start], body[start + n_mid:]
        raise ValueError(f"ids have no separator {list(self.middle)} between query and document")

    @classmethod
    def detect(cls, hf_tokenizer, *, query: str = "what query", doc: str = "some document text") -> PairFormat:
        """Reads the layout off a tokenizer by encoding a probe pair with and without special tokens.

        Raises:
            ValueError: If the probe's pieces do not appear in order in the encoded pair, special tokens appear
                inside a region, or a region has mixed token types.
        """
        name = type(hf_tokenizer).__name__
        q, d = hf_tokenizer([query, doc], add_special_tokens=False)["input_ids"]
        enc = hf_tokenizer(query, doc, return_token_type_ids=True)
        ids, tts = enc["input_ids"], enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        found = None
        for i in range(len(ids) - len(q) + 1):
            if ids[i: i + len(q)] != q:
                continue
            for j in range(i + len(q), len(ids) - len(d) + 1):
                if ids[j: j + len(d)] == d:
                    found = (i, j)
                    break
            if found:
                break
        if not q or not d or found is None:
            raise ValueError(f"{name}: cannot find the probe's query {q} and document {d} pieces in its pair "
                             f"encoding {ids}; unsupported pair post-processor")
        i, j = found
        bounds = [(0, i), (i, i + len(q)), (i + len(q), j), (j, j + len(d)), (j + len(d), len(ids))]
        types = []
        for region, (a, b) in zip(("prefix", "query", "middle", "document", "suffix"), bounds, strict=True):
            region_types = set(tts[a:b]) or {tts[a - 1] if a else 0}
            if len(region_types) != 1:
                raise ValueError(f"{name}: mixed token types {sorted(region_types)} in the pair's {region}")
            types.append(region_types.pop())
        special = set(hf_tokenizer.all_special_ids)
        for region, (a, b) in zip(("prefix", "middle", "suffix"), (bounds[0], bounds[2], bounds[4]), strict=True):
            if not set(ids[a:b]) <= special:
                raise ValueError(f"{name}: non-special ids {ids[a:b]} in the pair's {region}")
        single = hf_tokenizer(doc)["input_ids"]
        k = next((k for k in range(len(single) - len(d) + 1) if single[k: k + len(d)] == d), None)
        if k is None:
            raise ValueError(f"{name}: cannot find the probe's pieces {d} in its single-text encoding {single}")
        return cls(tuple(ids[:i]), tuple(ids[i + len(q): j]), tuple(ids[j + len(d):]), tuple(single[:k]),
                   tuple(single[k + len(d):]), tuple(types))


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
            raise ValueError(f"{type(hf_tokenizer).__name__} has no [CLS]/<s> or [SEP]/</s> token")
        self.format = PairFormat.detect(hf_tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw) -> PairTokenizer:
        """Loads the fast tokenizer from a local model folder.

        Raises:
            FileNotFoundError: If the folder has no tokenizer files (`has_tokenizer_files`).
        """
        path = Path(path)
        if not has_tokenizer_files(path):
            raise FileNotFoundError(f"{path}: no tokenizer files (any of {list(_TOKENIZER_FILES)}); cannot build "
                                    f"the tokenizer")
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

    @property
    def filler_id(self) -> int:
        """This tokenizer's piece for the paper's filler word ``"a"`` inside running text (BERT ``a``, RoBERTa
        ``Ġa``, XLM-R ``▁a``): the second piece of ``"a a"``.

        Raises:
            KeyError: If ``"a"`` is not a single piece mid-text in this vocabulary.
        """
        pieces = self.word_pieces(["a a"])[0]
        if len(pieces) != 2 or pieces[1] == self.hf.unk_token_id:
            raise KeyError(f"the filler word 'a' is not one piece in running text for this tokenizer "
                           f"('a a' -> {self.hf.convert_ids_to_tokens(pieces)})")
        return pieces[1]

    def pair_ids(self, q_ids: Sequence[int], d_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Pair ids and token types from pieces (no truncation): ``[CLS] q [SEP] d [SEP]`` or
        ``<s> q </s></s> d </s>``, as `format` says."""
        return self.format.pair(q_ids, d_ids)

    def split_pair_ids(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Query and document pieces of an unpadded pair (inverse of `pair_ids`)."""
        return self.format.split(ids)

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
            total = len(q) + len(d) + self.format.n_special
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
                f"pair {i}: {total} tokens ({n_q} query + {n_d} document + {self.format.n_special} special) "
                f"exceed max_length={self.max_length}"
            )
        enc = self.hf(query, doc, truncation=self.truncation, max_length=self.max_length,
                      add_special_tokens=True)["input_ids"]
        q, d = self.format.split(enc)
        truncs.append(Truncation(i, n_q - len(q), n_d - len(d), total))
        return q, d

    def encode_texts(self, texts: Sequence[str], *, length: int | None = None) -> EncodedBatch:
        """Tokenises single texts as ``[CLS] t [SEP]`` (``<s> t </s>``; bi-encoders), truncating the end and
        reporting it (as ``doc_tokens_cut``).

        Raises:
            ValueError: On an empty text.
            TruncationError: If a text is too long and ``truncation="error"``.
        """
        pieces = self.word_pieces(texts)
        ids, types, truncs = [], [], []
        for i, p in enumerate(pieces):
            if not p:
                raise ValueError(f"text {i}: {texts[i]!r} is empty (no word pieces)")
            n_special = len(self.format.single_prefix) + len(self.format.single_suffix)
            if len(p) + n_special > self.max_length:
                if self.truncation == "error":
                    raise TruncationError(
                        f"text {i}: {len(p) + n_special} tokens exceed max_length={self.max_length}")
                truncs.append(Truncation(i, 0, len(p) + n_special - self.max_length, len(p) + n_special))
                p = p[: self.max_length - n_special]
            ids.append(self.format.single(p))
            types.append([0] * (len(p) + n_special))
        input_ids, tt, mask = pad_sequences(ids, types, pad_id=self.pad_id, buckets=self.buckets,
                                            max_length=self.max_length, length=length)
        return EncodedBatch(input_ids, tt, mask, mask.sum(1).astype(np.int32), np.zeros(len(texts), np.int32), truncs)
