"""Patching metrics over patched, baseline and perturbed scores.

* ``"raw"``: the patched score itself.
* ``"difference"``: ``patched - baseline``.
* ``"normalized"``: the paper's ``(patched - baseline) / (perturbed - baseline)``: 0 = no effect, 1 = the
  patch restores the perturbed score. Pairs whose denominator is smaller than ``min_denominator`` in
  absolute value are **flagged and counted**, and their effects are NaN rather than a huge ratio. The absolute
  threshold does not follow the scores' scale (cosine similarities vs logits), so ``relative_min_denominator``
  adds a scale-aware rule: also flag pairs whose ``|perturbed - baseline|`` is below that fraction of the
  median ``|perturbed - baseline|`` over the pairs (`relative_denominator_flags`).
* ``"rank_change"``: how many places the pair's document moves within its candidate list when patched
  (positive = up), given the other candidates' unpatched scores.
* any callable ``f(patched, baseline, perturbed) -> array`` of the same shape as ``patched``.

Scores broadcast: ``patched`` is ``[pair, ...]``; ``baseline`` and ``perturbed`` are ``[pair]``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

METRICS = ("raw", "difference", "normalized", "rank_change")


@dataclasses.dataclass
class MetricResult:
    """Metric values with the pairs that could not be scored.

    Attributes:
        values: Same shape as the patched scores; NaN where undefined.
        flagged: ``[pair]`` pairs excluded (e.g. near-zero denominator).
        reason: Why pairs were flagged.
    """

    values: np.ndarray
    flagged: np.ndarray
    reason: str = ""

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def mean(self) -> np.ndarray:
        """Mean over unflagged pairs, ignoring NaN (unpatched positions)."""
        kept = self.values[~self.flagged]
        if kept.size == 0:
            return np.full(self.values.shape[1:], np.nan, np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (never-patched positions)
            return np.nanmean(kept, axis=0)


def _expand(x: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(x).reshape(-1, *([1] * (ndim - 1)))


def relative_denominator_flags(baseline, perturbed, fraction: float, *,
                               among: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The scale-aware near-zero-denominator rule.

    Args:
        baseline: ``[pair]`` baseline scores.
        perturbed: ``[pair]`` perturbed scores.
        fraction: Flag pairs whose ``|perturbed - baseline|`` is below ``fraction`` times the spread.
        among: ``[pair]`` pairs that define the spread (default: all; NaN scores are ignored).

    Returns:
        ``(flagged, threshold)``: ``flagged`` is ``[pair]``; ``threshold`` is ``fraction`` times the spread,
        the median of ``|perturbed - baseline|`` over the pairs (NaN, flagging nothing, when there are none).

    Raises:
        ValueError: If ``fraction`` is negative.
    """
    if not fraction >= 0:
        raise ValueError(f"the relative minimum denominator must be >= 0, got {fraction}")
    d = np.abs(np.asarray(perturbed, np.float64) - np.asarray(baseline, np.float64))
    ref = d if among is None else d[np.asarray(among, bool)]
    ref = ref[np.isfinite(ref)]
    threshold = fraction * float(np.median(ref)) if ref.size else float("nan")
    with np.errstate(invalid="ignore"):
        return d < threshold, threshold


def normalized_effect(patched, baseline, perturbed, *, min_denominator: float = 1e-3,
                      relative_min_denominator: float | None = None) -> MetricResult:
    """``(patched - baseline) / (perturbed - baseline)``, flagging pairs with ``|perturbed - baseline|`` below
    ``min_denominator``, and with ``relative_min_denominator`` also those below that fraction of the median
    ``|perturbed - baseline|`` of these pairs (`relative_denominator_flags`)."""
    patched = np.asarray(patched, np.float64)
    denom = np.asarray(perturbed, np.float64) - np.asarray(baseline, np.float64)
    flagged = np.abs(denom) < min_denominator
    reason = f"|perturbed - baseline| < {min_denominator}" if flagged.any() else ""
    if relative_min_denominator is not None:
        relative, threshold = relative_denominator_flags(baseline, perturbed, relative_min_denominator)
        if (relative & ~flagged).any():
            reason = f"|perturbed - baseline| < max({min_denominator}, {relative_min_denominator} x median) = " \
                     f"{max(min_denominator, threshold):.3g}"
        flagged = flagged | relative
    safe = np.where(flagged, 1.0, denom)
    values = (patched - _expand(baseline, patched.ndim)) / _expand(safe, patched.ndim)
    values[flagged] = np.nan
    return MetricResult(values.astype(np.float32), flagged, reason)


def rank_change(patched, baseline, candidate_scores) -> MetricResult:
    """Places gained in the candidate ranking when patched.

    Args:
        patched: ``[pair, ...]`` patched scores of each pair's document.
        baseline: ``[pair]`` unpatched scores of the same documents.
        candidate_scores: ``[pair, n_candidates]`` unpatched scores of the *other* candidates of each pair's
            query (NaN for missing candidates).
    """
    patched = np.asarray(patched, np.float64)
    cands = np.asarray(candidate_scores, np.float64)
    extra = (1,) * (patched.ndim - 1)
    c = cands.reshape(cands.shape[0], *extra, cands.shape[1])
    before = 1 + np.nansum(c > _expand(baseline, patched.ndim)[..., None], axis=-1)
    after = 1 + np.nansum(c > patched[..., None], axis=-1)
    values = (before - after).astype(np.float32)
    values[np.isnan(patched)] = np.nan
    return MetricResult(values, np.zeros(patched.shape[0], bool))


def apply_metric(metric: str | Callable, patched, baseline, perturbed, **kw) -> MetricResult:
    """Applies a metric by name (see the module docstring) or a callable.

    Raises:
        ValueError: For an unknown metric name, or ``rank_change`` without ``candidate_scores``.
    """
    patched = np.asarray(patched)
    no_flags = np.zeros(patched.shape[0], bool)
    if callable(metric):
        return MetricResult(np.asarray(metric(patched, np.asarray(baseline), np.asarray(perturbed))), no_flags)
    if metric == "raw":
        return MetricResult(patched.astype(np.float32), no_flags)
    if metric == "difference":
        return MetricResult((patched - _expand(baseline, patched.ndim)).astype(np.float32), no_flags)
    if metric == "normalized":
        return normalized_effect(patched, baseline, perturbed, **kw)
    if metric == "rank_change":
        if "candidate_scores" not in kw:
            raise ValueError("rank_change needs candidate_scores=[pair, n_candidates]")
        return rank_change(patched, baseline, kw["candidate_scores"])
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS} or pass a function")
