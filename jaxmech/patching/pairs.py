"""Baseline/perturbed input pairs, aligned position by position.

Patching replaces an activation at position ``i`` of the baseline run by the perturbed run's activation at
the *same* position, so the two inputs must correspond token by token. Two ways are supported:

* **The paper's filler alignment** (`align_with_filler`): when the documents tokenize to different lengths,
  the shorter input gets copies of the filler token ``"a"`` (id 1037 in BERT's vocabulary) just before its
  final ``[SEP]`` (attention mask 1, token type 1), so both have the same length and the map is the
  identity. (The paper pads the baseline, which is the shorter one in every experiment.)
* **An explicit position map**: ``position_map[i]`` is the perturbed position matching baseline position
  ``i``, or -1 if there is none (that position is never patched; all-position patches leave it at its
  baseline value).

Padding positions are never patched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jaxtyping import Int

from jaxmech.tokenize import DEFAULT_BUCKETS, PairTokenizer, bucket_length

FILLER_TOKEN = "a"


class AlignmentError(ValueError):
    """Two inputs cannot be aligned for patching."""


@dataclasses.dataclass
class Pair:
    """One aligned (baseline, perturbed) pair, unpadded.

    Attributes:
        baseline_ids / baseline_token_type_ids: The run that gets patched (with the default direction).
        perturbed_ids / perturbed_token_type_ids: The run whose activations are patched in.
        position_map: ``[len(baseline_ids)]`` perturbed position for each baseline position, -1 = none.
        name: Label for error messages and outputs.
    """

    baseline_ids: list[int]
    baseline_token_type_ids: list[int]
    perturbed_ids: list[int]
    perturbed_token_type_ids: list[int]
    position_map: list[int]
    name: str = ""

    def __post_init__(self):
        nb, npert = len(self.baseline_ids), len(self.perturbed_ids)
        where = f"pair {self.name!r}: " if self.name else ""
        if len(self.baseline_token_type_ids) != nb or len(self.perturbed_token_type_ids) != npert:
            raise AlignmentError(f"{where}ids and token types differ in length")
        if len(self.position_map) != nb:
            raise AlignmentError(f"{where}position_map has {len(self.position_map)} entries for {nb} baseline tokens")
        bad = [m for m in self.position_map if m < -1 or m >= npert]
        if bad:
            raise AlignmentError(f"{where}position_map entries {bad[:5]} are outside [-1, {npert})")

    @property
    def is_identity(self) -> bool:
        """Whether the inputs have equal length and align one to one."""
        return len(self.baseline_ids) == len(self.perturbed_ids) and all(
            m == i for i, m in enumerate(self.position_map))


def align_with_filler(
    tokenizer: PairTokenizer, query: str, baseline_doc: str, perturbed_doc: str, *, name: str = ""
) -> Pair:
    """Tokenises a (query, baseline, perturbed) triple and equalises lengths with filler tokens.

    Raises:
        AlignmentError: If the query or a document is empty, or the aligned pair would exceed the
            tokenizer's ``max_length`` (never truncated: a truncated perturbation is not the perturbation).
    """
    where = f"pair {name!r}: " if name else ""
    q, b, p = tokenizer.word_pieces([query, baseline_doc, perturbed_doc])
    for text, pieces, what in ((query, q, "query"), (baseline_doc, b, "baseline document"),
                               (perturbed_doc, p, "perturbed document")):
        if not pieces:
            raise AlignmentError(f"{where}the {what} {text!r} is empty (no word pieces)")
    filler = tokenizer.token_id(FILLER_TOKEN)
    n = max(len(b), len(p))
    total = len(q) + n + 3
    if total > tokenizer.max_length:
        raise AlignmentError(
            f"{where}{total} tokens after alignment exceed max_length={tokenizer.max_length}; the perturbation "
            f"would be truncated, so the pair cannot be patched (shorten the document)"
        )
    b_ids, b_tt = tokenizer.pair_ids(q, b + [filler] * (n - len(b)))
    p_ids, p_tt = tokenizer.pair_ids(q, p + [filler] * (n - len(p)))
    return Pair(b_ids, b_tt, p_ids, p_tt, list(range(len(b_ids))), name)


@dataclasses.dataclass
class PairBatch:
    """Pairs padded to one length bucket, as numpy arrays.

    Attributes:
        baseline: ``(input_ids, token_type_ids, attention_mask)``, each ``[pair, pos]``.
        perturbed: Same for the perturbed inputs (same ``pos``).
        position_map: ``[pair, pos]``; -1 for unaligned and padding positions.
        lengths: ``[pair]`` baseline lengths.
        identity: ``[pair]`` whether each pair aligns one to one.
        names: Pair labels.
    """

    baseline: tuple[np.ndarray, np.ndarray, np.ndarray]
    perturbed: tuple[np.ndarray, np.ndarray, np.ndarray]
    position_map: Int[np.ndarray, "pair pos"]
    lengths: Int[np.ndarray, " pair"]
    identity: np.ndarray
    names: list[str]

    @property
    def n_pairs(self) -> int:
        return self.position_map.shape[0]

    @property
    def n_pos(self) -> int:
        return self.position_map.shape[1]

    @property
    def patchable(self) -> np.ndarray:
        """``[pair, pos]`` positions that may be patched (real and aligned)."""
        return self.position_map >= 0


def batch_pairs(pairs: Sequence[Pair], *, pad_id: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS,
                max_length: int = 512, length: int | None = None) -> PairBatch:
    """Pads pairs (baseline and perturbed alike) to one bucket length."""
    if not pairs:
        raise ValueError("no pairs to batch")
    n = max(max(len(p.baseline_ids), len(p.perturbed_ids)) for p in pairs)
    T = length or bucket_length(n, buckets, max_length)
    if n > T:
        raise AlignmentError(f"a pair has {n} tokens, more than the batch length {T}")

    def pad(seqs, fill):
        out = np.full((len(seqs), T), fill, np.int32)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return out

    def side(ids, tts):
        ids_a = pad(ids, pad_id)
        mask = pad([[1] * len(s) for s in ids], 0)
        return ids_a, pad(tts, 0), mask

    baseline = side([p.baseline_ids for p in pairs], [p.baseline_token_type_ids for p in pairs])
    perturbed = side([p.perturbed_ids for p in pairs], [p.perturbed_token_type_ids for p in pairs])
    pos_map = pad([p.position_map for p in pairs], -1)
    return PairBatch(baseline, perturbed, pos_map, np.array([len(p.baseline_ids) for p in pairs], np.int32),
                     np.array([p.is_identity for p in pairs]), [p.name for p in pairs])


def align_texts_with_filler(tokenizer: PairTokenizer, baseline_doc: str, perturbed_doc: str, *,
                            name: str = "") -> Pair:
    """Bi-encoder version of `align_with_filler`: ``[CLS] d [SEP]`` inputs, the shorter padded with fillers
    before ``[SEP]``.

    Raises:
        AlignmentError: On an empty document or a pair longer than ``max_length``.
    """
    where = f"pair {name!r}: " if name else ""
    b, p = tokenizer.word_pieces([baseline_doc, perturbed_doc])
    for text, pieces, what in ((baseline_doc, b, "baseline"), (perturbed_doc, p, "perturbed")):
        if not pieces:
            raise AlignmentError(f"{where}the {what} document {text!r} is empty (no word pieces)")
    n = max(len(b), len(p))
    if n + 2 > tokenizer.max_length:
        raise AlignmentError(f"{where}{n + 2} tokens exceed max_length={tokenizer.max_length}; the perturbation "
                             f"would be truncated")
    filler = tokenizer.token_id(FILLER_TOKEN)
    wrap = lambda d: [tokenizer.cls_id, *d, *[filler] * (n - len(d)), tokenizer.sep_id]
    b_ids, p_ids = wrap(b), wrap(p)
    return Pair(b_ids, [0] * len(b_ids), p_ids, [0] * len(p_ids), list(range(len(b_ids))), name)


def document_only(pair: Pair, sep_id: int) -> Pair:
    """Turns a cross-encoder pair (``[CLS] q [SEP] d [SEP]``) into a bi-encoder document pair
    (``[CLS] d [SEP]``), keeping the position map of the document tokens."""

    def split(ids):
        first = ids.index(sep_id)
        return first, [ids[0], *ids[first + 1:]]

    fb, b_ids = split(pair.baseline_ids)
    fp, p_ids = split(pair.perturbed_ids)
    pmap = [0 if pair.position_map[0] == 0 else -1]
    for i in range(fb + 1, len(pair.baseline_ids)):
        m = pair.position_map[i]
        pmap.append(m - fp if m > fp else -1)
    return Pair(b_ids, [0] * len(b_ids), p_ids, [0] * len(p_ids), pmap, pair.name)
