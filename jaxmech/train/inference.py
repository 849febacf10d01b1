"""Batched, jitted inference for training and evaluation: cross-encoder scores of a pair table, bi-encoder
embeddings of texts.

Rows are run in order of length so that each batch is cut to a small tokenizer bucket, and the last batch is
padded to the batch size, so a model compiles once per bucket. The model is passed to ``jax.jit`` as a pytree
(Flax NNX tree mode); the readout has no dropout, so inference is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jaxtyping import Float

from jaxmech.hf.tokenizer import PairTokenizer, bucket_length
from jaxmech.models.bert import BiEncoder, CrossEncoder

_score = jax.jit(lambda m, ids, tt, mask: m(ids, tt, mask).score)
_embed = jax.jit(lambda m, ids, tt, mask: m(ids, tt, mask).embedding)


def _run_sorted(fn, model, ids, tt, mask, lengths, buckets, max_length, batch_size) -> np.ndarray:
    n = ids.shape[0]
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        pad = batch_size - len(rows)
        rows_p = np.concatenate([rows, np.repeat(rows[:1], pad)]) if pad else rows
        T = bucket_length(int(lengths[rows].max()), buckets, max_length)
        res = np.asarray(fn(model, ids[rows_p, :T], tt[rows_p, :T], mask[rows_p, :T]))[: len(rows)]
        if out is None:
            out = np.zeros((n, *res.shape[1:]), np.float32)
        out[rows] = res
    return out if out is not None else np.zeros((0,), np.float32)


def score_batch(model: CrossEncoder, input_ids, token_type_ids, attention_mask) -> Float[np.ndarray, " batch"]:
    """Cross-encoder scores (raw logits) of one padded batch."""
    return np.asarray(_score(model, input_ids, token_type_ids, attention_mask))


def score_table(model: CrossEncoder, table, *, batch_size: int = 64) -> Float[np.ndarray, " rows"]:
    """Cross-encoder scores (raw logits) of every row of a `jaxmech.train.data.PairTable`."""
    return _run_sorted(
        _score,
        model,
        table.input_ids,
        table.token_type_ids,
        table.attention_mask,
        table.lengths,
        table.buckets,
        table.max_length,
        batch_size,
    )


def embed_texts(
    model: BiEncoder, tokenizer: PairTokenizer, texts: Sequence[str], *, batch_size: int = 64
) -> Float[np.ndarray, "texts d_model"]:
    """Bi-encoder embeddings (pooled, normalised as configured) of texts."""
    enc = tokenizer.encode_texts(list(texts), length=tokenizer.max_length)
    return _run_sorted(
        _embed,
        model,
        enc.input_ids,
        enc.token_type_ids,
        enc.attention_mask,
        enc.lengths,
        tokenizer.buckets,
        tokenizer.max_length,
        batch_size,
    )
