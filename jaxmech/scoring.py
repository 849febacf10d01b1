"""Scoring documents for a query with a loaded model: what ``jaxmech score`` prints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float


def score_texts(lm, query: str, docs: Sequence[str]) -> tuple[Float[np.ndarray, " doc"], list]:
    """Scores of ``docs`` for ``query``: raw logits of a cross-encoder, similarities of a bi-encoder.

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel`.
        query: The query.
        docs: The documents.

    Returns:
        ``(scores, truncations)``: ``[doc]`` scores and the tokenizer's truncation records.

    Raises:
        ValueError: If a bi-encoder's query alone is longer than the maximum length.
    """
    import jax.numpy as jnp

    tok, model = lm.tokenizer, lm.model
    if model.pair_input:
        enc = tok.encode_pairs([query] * len(docs), list(docs))
        return np.asarray(model.relevance(model(*map(jnp.asarray, enc.arrays)))), enc.truncations
    q = tok.encode_texts([query])
    if q.truncations:
        raise ValueError(f"the query has {q.truncations[0].original_length} tokens, more than max_length="
                         f"{tok.max_length}")
    d = tok.encode_texts(list(docs))
    qe = model(*map(jnp.asarray, q.arrays)).embedding
    return np.asarray(model.relevance(model(*map(jnp.asarray, d.arrays)), qe)), d.truncations


def score(model: str | os.PathLike, query: str, docs: Sequence[str], *, kind: str = "auto",
          init_head_seed: int | None = None, max_length: int | None = None,
          truncation: str = "longest_first") -> dict[str, Any]:
    """Loads a model and scores documents: ``jaxmech score`` in one call.

    Args:
        model: A local folder, a hub id, or ``"packaged"``.
        query: The query.
        docs: The documents.
        kind: ``"auto"``, ``"cross"`` or ``"bi"``.
        init_head_seed: Seed of a fresh classifier head (``kind="cross"`` on an encoder-only checkpoint).
        max_length: Tokenizer maximum length.
        truncation: ``"longest_first"``, ``"only_first"``, ``"only_second"`` or ``"error"``.

    Returns:
        ``{"model", "kind", "score", "scores", "truncated"[, "initialized"]}`` (JSON-ready).
    """
    from jaxmech.hf.loading import load_model

    lm = load_model(model, kind=kind, init_missing_head_seed=init_head_seed, max_length=max_length,
                    truncation=truncation, require_tokenizer=True)
    scores, truncs = score_texts(lm, query, docs)
    out = {
        "model": str(lm.folder),
        "kind": lm.kind,
        "score": lm.model.score_name,
        "scores": [float(s) for s in scores],
        "truncated": [{"doc": t.index, "query_tokens_cut": t.query_tokens_cut, "doc_tokens_cut": t.doc_tokens_cut,
                       "original_length": t.original_length} for t in truncs],
    }
    if lm.report.initialized:
        out["initialized"] = lm.report.initialized
    return out
