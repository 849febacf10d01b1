"""Patching inputs: aligned pairs read from files or text, and pairs padded to one length bucket.

Patching replaces an activation at position ``i`` of the baseline run by the perturbed run's activation at
``position_map[i]``, so every pair is an `jaxmech.data.records.AlignedPair` (the one pair type, shared with
the dataset builders; alignment lives in `jaxmech.data.align`). `read_pairs` turns what ``jaxmech patch``
accepts (a dataset file, a triples file or one triple) into pairs the model reads: for a bi-encoder, the
document-only ``[CLS] d [SEP]`` inputs. `batch_pairs` pads pairs to one bucket length (one compiled program
per bucket); padding positions are never patched.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Int

from jaxmech.data.align import AlignmentError, align_texts_with_filler, align_with_filler, document_only
from jaxmech.data.records import AlignedPair, DataError, iter_jsonl, utf8_file
from jaxmech.hf.tokenizer import DEFAULT_BUCKETS, bucket_length


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
        inert: ``[pair]`` padding pairs that only fill a batch to a fixed size: no work items run on them and
            their results are meaningless (None: no padding pairs).
    """

    baseline: tuple[np.ndarray, np.ndarray, np.ndarray]
    perturbed: tuple[np.ndarray, np.ndarray, np.ndarray]
    position_map: Int[np.ndarray, "pair pos"]
    lengths: Int[np.ndarray, " pair"]
    identity: np.ndarray
    names: list[str]
    inert: Bool[np.ndarray, " pair"] | None = None

    @property
    def n_pairs(self) -> int:
        """Number of pairs."""
        return self.position_map.shape[0]

    @property
    def n_pos(self) -> int:
        """Padded length."""
        return self.position_map.shape[1]

    @property
    def patchable(self) -> np.ndarray:
        """``[pair, pos]`` positions that may be patched (real and aligned)."""
        return self.position_map >= 0


def check_pair(pair: AlignedPair) -> None:
    """Raises `AlignmentError` naming the pair if its ids, segment ids and position map disagree."""
    problems = [p for p in pair.problems() if not p.startswith(("token_types", "unknown token types"))]
    if problems:
        where = f"pair {pair.name!r}: " if pair.name else ""
        raise AlignmentError(where + "; ".join(problems))


def check_vocabulary(pairs: Sequence[AlignedPair], vocab_size: int) -> None:
    """Refuses token ids outside ``[0, vocab_size)`` (JAX would silently clamp them to the last embedding).

    Raises:
        ValueError: Naming the first such pair, the id and the vocabulary size.
    """
    for p in pairs:
        for side, ids in (("baseline", p.baseline_ids), ("perturbed", p.perturbed_ids)):
            bad = [int(i) for i in ids if not 0 <= int(i) < vocab_size]
            if bad:
                raise ValueError(f"pair {p.name!r}: {side} token id {bad[0]} is outside the model's vocabulary "
                                 f"of {vocab_size} ids (was the dataset built with another tokenizer?)")


def _tokenizer_names(name: str) -> set[str]:
    """Names a tokenizer may be recorded under: the name itself, its resolved path, and its last part."""
    name = str(name).rstrip("/")
    names = {name, Path(name).name}
    if Path(name).exists():
        names.add(str(Path(name).resolve()))
    return {n for n in names if n}


def check_dataset_tokenizer(header: dict, tokenizer, *, source: str | Path = "dataset") -> None:
    """Refuses a dataset whose header names a tokenizer other than the model's.

    The header's ``tokenizer`` is the ``name_or_path`` of the tokenizer the dataset was built with
    (`jaxmech.data.pairs.BuildResult.header`). It matches the model's when the two names are equal, resolve to
    the same folder, or end in the same folder / hub name; a header without a tokenizer is accepted.

    Raises:
        ValueError: Naming both tokenizers.
    """
    recorded = header.get("tokenizer")
    mine = str(getattr(getattr(tokenizer, "hf", None), "name_or_path", "") or "")
    if not recorded or not mine:
        return
    if _tokenizer_names(recorded) & _tokenizer_names(mine):
        return
    raise ValueError(f"{source}: built with the tokenizer {recorded!r}, but the model's tokenizer is {mine!r}; "
                     "rebuild the dataset with `jaxmech dataset build --model` set to this model")


def batch_pairs(pairs: Sequence[AlignedPair], *, pad_id: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS,
                max_length: int = 512, length: int | None = None, n_pairs: int | None = None,
                vocab_size: int | None = None) -> PairBatch:
    """Pads pairs (baseline and perturbed alike) to one bucket length.

    Args:
        pairs: Aligned pairs.
        pad_id: Padding token id.
        buckets: Allowed padded lengths.
        max_length: Longest allowed length.
        length: Pad to exactly this length instead of the bucket.
        n_pairs: Fill the batch to this many pairs with inert copies of the first pair (fixed program
            shapes for chunks of a bucket).
        vocab_size: The model's vocabulary size: token ids outside it are refused (see `check_vocabulary`).

    Returns:
        A `PairBatch`.

    Raises:
        AlignmentError: On an inconsistent pair or one longer than the batch length.
        ValueError: On a token id outside ``vocab_size``.
    """
    if not pairs:
        raise ValueError("no pairs to batch")
    for p in pairs:
        check_pair(p)
    if vocab_size is not None:
        check_vocabulary(pairs, vocab_size)
    n_real = len(pairs)
    if n_pairs is not None and n_pairs > n_real:
        filler = dataclasses.replace(pairs[0], position_map=[-1] * len(pairs[0].baseline_ids), name="<inert>")
        pairs = [*pairs, *[filler] * (n_pairs - n_real)]
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
    inert = None if len(pairs) == n_real else np.arange(len(pairs)) >= n_real
    return PairBatch(baseline, perturbed, pos_map, np.array([len(p.baseline_ids) for p in pairs], np.int32),
                     np.array([p.is_identity for p in pairs]), [p.name for p in pairs], inert)


def reverse_batch(batch: PairBatch) -> PairBatch:
    """Swaps baseline and perturbed (inverting the position map)."""
    inv = np.full_like(batch.position_map, -1)
    for p in range(batch.n_pairs):
        m = batch.position_map[p]
        ok = m >= 0
        inv[p, m[ok]] = np.nonzero(ok)[0]
    lengths = batch.perturbed[2].sum(1).astype(np.int32)
    return PairBatch(batch.perturbed, batch.baseline, inv, lengths, batch.identity.copy(), list(batch.names),
                     batch.inert)


# --------------------------------------------------------------------------------------------------------------
# Reading pairs
# --------------------------------------------------------------------------------------------------------------

_TRIPLE_COLUMNS = ["query", "baseline_doc", "perturbed_doc"]


def read_triples(path: str | Path) -> list[tuple[str, str, str, str]]:
    """``(name, query, baseline_doc, perturbed_doc)`` rows from a TSV (with or without a header) or JSONL file.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: Naming the line, on a malformed row, or when the file holds no triples.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: triples file not found")
    rows = []
    if path.suffix == ".jsonl":
        for i, obj in iter_jsonl(path):
            try:
                rows.append((str(obj.get("name", i)), *(obj[c] for c in _TRIPLE_COLUMNS)))
            except KeyError as err:
                raise DataError(path, f"line {i}", f"expected a JSON object with query, baseline_doc, "
                                f"perturbed_doc (missing {err})") from None
    else:
        with utf8_file(path), path.open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.reader(f, delimiter="\t"), 1):
                if i == 1 and [c.strip().lower() for c in row[:3]] == _TRIPLE_COLUMNS:
                    continue
                if not row:
                    continue
                if len(row) != 3:
                    raise ValueError(f"{path}:{i}: expected 3 tab-separated columns (query, baseline_doc, "
                                     f"perturbed_doc), got {len(row)}")
                rows.append((str(i), *row))
    if not rows:
        raise ValueError(f"{path}: no triples")
    return rows


def model_pairs(pairs: Sequence[AlignedPair], tokenizer, *, pair_input: bool) -> list[AlignedPair]:
    """Pairs as the model reads them: unchanged for a cross-encoder (``pair_input``), document-only
    (``[CLS] d [SEP]``, ``<s> d </s>``) for a bi-encoder."""
    return list(pairs) if pair_input else [document_only(p, tokenizer) for p in pairs]


def read_pairs(tokenizer, *, pair_input: bool = True, dataset: str | Path | None = None,
               triples: str | Path | None = None, query: str | None = None, baseline_doc: str | None = None,
               perturbed_doc: str | None = None, limit: int | None = None,
               vocab_size: int | None = None) -> list[AlignedPair]:
    """Aligned pairs from one of: a dataset file, a triples file, or one (query, baseline, perturbed) triple.

    Args:
        tokenizer: The model's `jaxmech.hf.tokenizer.PairTokenizer`.
        pair_input: The model reads ``[CLS] q [SEP] d [SEP]`` (a cross-encoder); False for a bi-encoder, whose
            pairs are document-only (the query is kept on each pair and embedded separately).
        dataset: A file from ``jaxmech dataset build`` (pairs with token types).
        triples: A TSV (``query, baseline_doc, perturbed_doc``, optional header) or JSONL file of triples,
            aligned with the paper's filler scheme.
        query: With ``baseline_doc`` and ``perturbed_doc``: a single triple.
        baseline_doc: See ``query``.
        perturbed_doc: See ``query``.
        limit: Use only the first ``limit`` pairs.
        vocab_size: The model's vocabulary size: pairs with token ids outside it are refused.

    Returns:
        The pairs, in input order.

    Raises:
        ValueError: If none or an incomplete triple is given, or ``limit`` < 1; `AlignmentError` for a pair
            that cannot be aligned; `jaxmech.data.records.DataError` for a malformed file; ValueError for a
            dataset built with another tokenizer (`check_dataset_tokenizer`) or a token id outside ``vocab_size``.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number of pairs, got {limit}")
    if dataset:
        from jaxmech.data.records import read_dataset

        header, records = read_dataset(dataset)
        check_dataset_tokenizer(header, tokenizer, source=dataset)
        if vocab_size is not None:
            check_vocabulary(records[:limit], vocab_size)
        return model_pairs(records[:limit], tokenizer, pair_input=pair_input)
    if triples:
        rows = read_triples(triples)[:limit]
    else:
        given = {"query": query, "baseline_doc": baseline_doc, "perturbed_doc": perturbed_doc}
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError("give --query, --baseline-doc and --perturbed-doc, or --triples FILE, or --dataset "
                             f"FILE (missing: {', '.join('--' + m.replace('_', '-') for m in missing)})")
        rows = [("0", query, baseline_doc, perturbed_doc)]
    if pair_input:
        return [align_with_filler(tokenizer, q, b, p, name=name) for name, q, b, p in rows]
    return [align_texts_with_filler(tokenizer, b, p, name=name, query=q) for name, q, b, p in rows]


__all__ = ["PairBatch", "batch_pairs", "check_dataset_tokenizer", "check_pair", "check_vocabulary", "model_pairs",
           "read_pairs",
           "read_triples", "reverse_batch"]


def require_identity_alignment(family: str, batch: PairBatch) -> None:
    """Refuses a batch for a family that patches attention patterns unless every pair is aligned one-to-one.

    Raises:
        AlignmentError: Naming the family and up to five pairs that are not.
    """
    if not batch.identity.all():
        bad = [batch.names[i] or str(i) for i in np.nonzero(~batch.identity)[0][:5]]
        raise AlignmentError(f"family {family} patches attention patterns, which needs one-to-one aligned "
                             f"pairs of equal length; pairs {bad} are not (use filler alignment)")
