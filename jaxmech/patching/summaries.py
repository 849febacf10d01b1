"""Aggregating patching results over pairs: by the paper's token types, and ranking heads.

The paper aggregates position-resolved results over its 10,000 TFC1 pairs by token type (CLS, SEP, Qplus,
Qsub, Dinj, Dplus, Dsub, Dother; notes §4), because positions differ from pair to pair while types do not.
`mean_by_token_type` does that for any result with a position axis; `top_heads` ranks heads of a
``[layer, head]`` result (e.g. ``path_to_score``) by their mean effect.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import numpy as np

TOKEN_TYPE_ORDER = ("CLS", "SEP1", "SEP2", "Qplus", "Qsub", "Dinj", "Dplus", "Dsub", "Dother")
STATISTICS = ("mean", "median", "trimmed")
"""How results are aggregated over pairs: the mean (default), the median, or the mean of the middle 80%
(`TRIM_FRACTION` of the pairs cut at each end, per entry); all ignore NaN."""
TRIM_FRACTION = 0.1
STATISTIC_LABELS = {"mean": "mean", "median": "median", "trimmed": f"{int(TRIM_FRACTION * 100)}%-trimmed mean"}
"""How each statistic is named on figures and in the report."""
TERM_TYPES = ("Qplus", "Dinj", "Dplus")
"""Token types that hold one word (an occurrence of the query term): a run of adjacent positions of one of these
types is the word pieces of one occurrence."""
PIECE_MERGES = ("mean", "sum", "max")
"""How the pieces of a split term are merged before positions are averaged: ``"mean"`` (every piece a position,
the rule before merging: a term in two pieces roughly halves its effect), ``"sum"`` or ``"max"`` (of the
pieces' effects; ``max`` is the default of the report)."""


def over_pairs(values: np.ndarray, statistic: str = "mean") -> np.ndarray:
    """Aggregates ``[pair, ...]`` over the pair axis, ignoring NaN (NaN where no pair has a value).

    Args:
        values: ``[pair, ...]``.
        statistic: One of `STATISTICS`; ``"median"`` and ``"trimmed"`` are robust to a few pairs with huge
            effects (e.g. from small normalized-effect denominators).

    Raises:
        ValueError: For an unknown statistic.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    values = np.asarray(values, np.float64)
    with _no_empty_warnings():
        if statistic == "mean":
            return np.nanmean(values, axis=0)
        if statistic == "median":
            return np.nanmedian(values, axis=0)
    ordered = np.sort(values, axis=0)  # NaN last
    n = np.isfinite(values).sum(0)
    cut = np.floor(TRIM_FRACTION * n).astype(int)
    rank = np.arange(values.shape[0]).reshape(-1, *([1] * (values.ndim - 1)))
    keep = (rank >= cut) & (rank < n - cut)
    total = np.where(keep, ordered, 0.0).sum(0)
    kept = keep.sum(0)
    with _no_empty_warnings():
        return np.where(kept > 0, total / np.maximum(kept, 1), np.nan)


def _runs(sel: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the maximal runs of adjacent True entries."""
    idx = np.flatnonzero(sel)
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if idx.size else []


def _merge_runs(chunk: np.ndarray, sel: np.ndarray, how: str) -> np.ndarray:
    """``[..., n_sel]`` -> ``[..., n_runs]``: the positions of each run of ``sel`` merged by ``how`` (NaN-aware:
    a run with no finite entry stays NaN)."""
    out = []
    for run in _runs(sel):
        block = chunk[..., np.searchsorted(np.flatnonzero(sel), run)]
        ok = np.isfinite(block)
        merged = np.where(ok, block, 0).sum(-1) if how == "sum" else np.where(ok, block, -np.inf).max(-1)
        out.append(np.where(ok.any(-1), merged, np.nan))
    return np.stack(out, -1)


def mean_by_token_type(
    values: np.ndarray,
    token_types: Sequence[Sequence[str]],
    *,
    pos_axis: int = -1,
    types: Sequence[str] = TOKEN_TYPE_ORDER,
    statistic: str = "mean",
    merge_pieces: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Averages a per-position result over the positions of each token type, then over pairs.

    Args:
        values: ``[pair, ..., pos, ...]`` effects (NaN where nothing was patched).
        token_types: Per pair, the type of each position (shorter than ``pos`` for padded pairs).
        pos_axis: The position axis of ``values``.
        types: Type names, in the order of the output's last axis.
        statistic: How pairs are aggregated (`over_pairs`; within a pair, positions are always averaged).
        merge_pieces: `PIECE_MERGES`: for `TERM_TYPES`, the adjacent positions of one occurrence (its word
            pieces) are merged by ``sum`` or ``max`` first, then occurrences averaged (``"mean"``: no merge).

    Returns:
        ``(mean, count)``: ``mean`` is ``[..., n_types]`` (position axis replaced by types, pair axis
        averaged, NaN for a type no pair has); ``count`` is ``[n_types]`` pairs that have each type.
    """
    if merge_pieces not in PIECE_MERGES:
        raise ValueError(f"merge_pieces={merge_pieces!r}; choose one of {PIECE_MERGES}")
    values = np.moveaxis(np.asarray(values, np.float64), pos_axis, -1)
    n_pairs, T = values.shape[0], values.shape[-1]
    if len(token_types) != n_pairs:
        raise ValueError(f"{len(token_types)} token-type lists for {n_pairs} pairs")
    per_pair = np.full((n_pairs, *values.shape[1:-1], len(types)), np.nan)
    for p, labels in enumerate(token_types):
        labels = np.asarray(list(labels) + [""] * (T - len(labels)))[:T]
        for t, name in enumerate(types):
            sel = labels == name
            if sel.any():
                chunk = values[p][..., sel]
                if merge_pieces != "mean" and name in TERM_TYPES:
                    chunk = _merge_runs(chunk, sel, merge_pieces)
                ok = np.isfinite(chunk)
                mean_t = np.where(ok, chunk, 0).sum(-1) / np.maximum(ok.sum(-1), 1)
                per_pair[p, ..., t] = np.where(ok.any(-1), mean_t, np.nan)
    count = np.isfinite(per_pair.reshape(n_pairs, -1, len(types))).any(1).sum(0)
    if statistic == "mean":
        with _no_empty_warnings():
            mean = np.nanmean(per_pair, axis=0)
    else:
        mean = over_pairs(per_pair, statistic)
    return mean, count


@contextlib.contextmanager
def _no_empty_warnings():
    """Silences numpy's mean-of-empty-slice warnings (types or heads never patched stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def top_heads(effect: np.ndarray, k: int = 10, *, statistic: str = "mean") -> list[tuple[str, float]]:
    """The ``k`` heads with the largest mean effect, as ``("layer.head", value)``.

    Args:
        effect: ``[layer, head]`` or ``[pair, layer, head]`` (aggregated over pairs, ignoring NaN).
        statistic: How pairs are aggregated (`over_pairs`).
    """
    effect = np.asarray(effect, np.float64)
    if effect.ndim == 3 and statistic != "mean":
        effect = over_pairs(effect, statistic)
    if effect.ndim == 3:
        with _no_empty_warnings():
            effect = np.nanmean(effect, axis=0)
    flat = np.where(np.isnan(effect), -np.inf, effect).ravel()
    order = np.argsort(flat)[::-1][:k]
    return [(f"{i // effect.shape[1]}.{i % effect.shape[1]}", float(flat[i])) for i in order]
