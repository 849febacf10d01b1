"""A judged view of a run: one dataset, more pairs flagged, a robust statistic over pairs, merged word pieces.

`PairView` wraps any `ResultsSource` and is one itself, so every figure and verdict reads it unchanged. It
recomputes nothing from the model: the stored per-pair normalized effects ``(patched - baseline) /
(perturbed - baseline)`` are kept or left out per pair, and aggregated by the chosen statistic.

* ``dataset``: only that dataset's pairs (TFC1 and STMC1 are different experiments; pooling them lets one
  dataset's outliers decide the other's verdict).
* ``relative_floor``: a pair is flagged when its score change ``|perturbed - baseline|`` is below this fraction
  of the **run's score spread** (the standard deviation of all its baseline and perturbed scores, every dataset
  pooled). The store's absolute floor (``min_denominator``, 1e-3) does not follow the scores' scale: a change of
  0.002 on logits spread over 5 units passes it and turns into effects of +-10.
* ``wrong_sign``: a pair is flagged when its score change has the opposite sign to its dataset's median
  change (for TFC1/STMC1: the perturbation lowered the score): its normalized effect reverses meaning.
* ``statistic``: `jaxmech.patching.summaries.STATISTICS` over the kept pairs (default the 10%-trimmed mean).
* ``merge_pieces``: `jaxmech.patching.summaries.PIECE_MERGES` for token-type means.

Flagged pairs are counted per reason (`PairView.flags`) and named on every figure (``meta["aggregate_label"]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxmech.results.source import Labeled, ResultsError, ResultsSource, coords_for

DEFAULT_STATISTIC = "trimmed"
DEFAULT_RELATIVE_FLOOR = 0.02
DEFAULT_MERGE = "max"


@dataclasses.dataclass(frozen=True)
class Flags:
    """Which pairs a view leaves out, and why.

    Attributes:
        in_view: ``[pair]`` pairs of the view's dataset.
        stored: ``[pair]`` flagged by the run itself (its absolute floor).
        small: ``[pair]`` score change below the relative floor.
        wrong_sign: ``[pair]`` score change against its dataset's direction.
        floor: The relative floor in score units (NaN when off).
        spread: The run's score spread (standard deviation of all scores).
    """

    in_view: np.ndarray
    stored: np.ndarray
    small: np.ndarray
    wrong_sign: np.ndarray
    floor: float
    spread: float

    @property
    def keep(self) -> np.ndarray:
        """``[pair]`` pairs the view aggregates."""
        return self.in_view & ~(self.stored | self.small | self.wrong_sign)

    def counts(self) -> dict[str, int]:
        """Pairs of the view by fate (a pair flagged for two reasons counts under each)."""
        v = self.in_view
        return {"pairs": int(v.sum()), "kept": int(self.keep.sum()), "flagged_stored": int((v & self.stored).sum()),
                "flagged_small_change": int((v & self.small).sum()),
                "flagged_wrong_sign": int((v & self.wrong_sign).sum())}


def pair_flags(pairs: dict, *, dataset: str | None = None, relative_floor: float | None = DEFAULT_RELATIVE_FLOOR,
               wrong_sign: bool = True) -> Flags:
    """The flags of `PairView` from a run's pair table (``score_baseline``, ``score_perturbed``, optional
    ``flagged`` and ``dataset``).

    Raises:
        ResultsError: If ``dataset`` is not in the run, or the scores are missing while a rule needs them.
    """
    b = np.asarray(pairs.get("score_baseline", []), np.float64).ravel()
    p = np.asarray(pairs.get("score_perturbed", []), np.float64).ravel()
    n = len(b)
    stored = np.asarray(pairs["flagged"], bool) if pairs.get("flagged") is not None else np.zeros(n, bool)
    if len(stored) != n:
        stored = np.zeros(n, bool)
    names = pairs.get("dataset")
    labels = np.asarray(names).astype(str) if names is not None and len(names) == n else np.full(n, "")
    if dataset is not None and dataset not in set(labels):
        raise ResultsError(f"no dataset {dataset!r} in this run (have: {sorted(set(labels))})")
    in_view = labels == dataset if dataset is not None else np.ones(n, bool)
    d = p - b
    scores = np.r_[b, p]
    spread = float(np.nanstd(scores)) if np.isfinite(scores).any() else float("nan")
    floor = float("nan")
    small = np.zeros(n, bool)
    if relative_floor is not None and np.isfinite(spread):
        floor = relative_floor * spread
        small = np.abs(d) < floor
    bad = np.zeros(n, bool)
    if wrong_sign:
        for name in set(labels):
            sel = (labels == name) & np.isfinite(d)
            if sel.any():
                direction = 1.0 if np.median(d[sel]) >= 0 else -1.0
                bad |= sel & (direction * d < 0)
    return Flags(in_view, stored, small, bad, floor, spread)


class PairView:
    """A `ResultsSource` over another, restricted to a dataset, with more pairs flagged and a chosen statistic
    (see the module docstring).

    Args:
        source: The run.
        dataset: One dataset's pairs (None: all).
        statistic: Over pairs (`jaxmech.patching.summaries.STATISTICS`).
        relative_floor: Fraction of the run's score spread (None: the stored flags only).
        wrong_sign: Flag pairs whose score change goes against their dataset's median change.
        merge_pieces: For token-type means (`jaxmech.patching.summaries.PIECE_MERGES`).
    """

    def __init__(self, source: ResultsSource, *, dataset: str | None = None, statistic: str = DEFAULT_STATISTIC,
                 relative_floor: float | None = DEFAULT_RELATIVE_FLOOR, wrong_sign: bool = True,
                 merge_pieces: str = DEFAULT_MERGE):
        from jaxmech.patching.summaries import PIECE_MERGES, STATISTIC_LABELS, STATISTICS

        if statistic not in STATISTICS:
            raise ResultsError(f"aggregate={statistic!r}: choose one of {STATISTICS}")
        if merge_pieces not in PIECE_MERGES:
            raise ResultsError(f"merge_pieces={merge_pieces!r}: choose one of {PIECE_MERGES}")
        if relative_floor is not None and not relative_floor >= 0:
            raise ResultsError(f"relative_floor={relative_floor}: must be >= 0")
        self._src = source
        self.path: Path = source.path
        self.families = list(source.families)
        self.analyses = source.analyses
        self.dataset, self.statistic, self.merge_pieces = dataset, statistic, merge_pieces
        self.flags = pair_flags(source.pairs, dataset=dataset, relative_floor=relative_floor, wrong_sign=wrong_sign)
        keep = self.flags.keep
        self.pairs = {k: _take(v, self.flags.in_view) for k, v in source.pairs.items()}
        self.pairs["flagged"] = ~keep[self.flags.in_view]
        c = self.flags.counts()
        label = (f"{STATISTIC_LABELS[statistic]} over {c['kept']} of {c['pairs']} pairs"
                 + (f" ({dataset})" if dataset else ""))
        if c["kept"] < c["pairs"]:
            label += f"; {c['pairs'] - c['kept']} flagged"
        if source.pairs.get("token_types") is None:
            label += "; token-type panels: the file's stored means"
        self.meta = {**source.meta, "aggregate": statistic, "aggregate_label": label,
                     "merge_pieces": merge_pieces, "view_flags": c, "view_dataset": dataset}

    def _values(self, family: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """Kept pairs' effects ``[kept, ...]`` (every kept pair in memory) and the stored axes."""
        full = self._src.array(family)
        return full.values[self.flags.keep], full.dims

    def array(self, family: str) -> Labeled:
        """The view's pairs (flagged ones NaN) ``[pair, ...]``."""
        full = self._src.array(family)
        values = full.values[self.flags.in_view].copy()
        values[~self.flags.keep[self.flags.in_view]] = np.nan
        return dataclasses.replace(full, values=values)

    def pair_mean(self, family: str) -> tuple[Labeled, int]:
        """The view's statistic over kept pairs (NaN ignored), and how many pairs."""
        from jaxmech.patching.summaries import over_pairs

        values, dims = self._values(family)
        out = over_pairs(values, self.statistic) if len(values) else np.full(values.shape[1:], np.nan)
        return Labeled(out, dims[1:], coords_for(family, dims[1:]), name=family,
                       metric=self.meta.get("metric", "normalized")), int(len(values))

    def by_token_type(self, family: str) -> Labeled | None:
        """Token-type values per kept pair (word pieces merged), then the view's statistic over pairs (a source
        without per-pair token types, a ``jaxmech patch`` ``.npz``: its stored token-type means)."""
        from jaxmech.patching.summaries import TOKEN_TYPE_ORDER, mean_by_token_type

        types = self._src.pairs.get("token_types")
        if types is None:  # a `jaxmech patch` .npz stores token-type means only: used as stored (see meta)
            return self._src.by_token_type(family)
        values, dims = self._values(family)
        if "pos" not in dims:
            return None
        kept_types = [list(t) for t, k in zip(types, self.flags.keep, strict=True) if k]
        mean, _ = mean_by_token_type(values, kept_types, pos_axis=dims.index("pos"), statistic=self.statistic,
                                     merge_pieces=self.merge_pieces)
        out_dims = tuple(d for d in dims if d not in ("pair", "pos")) + ("token_type",)
        coords = {**coords_for(family, out_dims), "token_type": TOKEN_TYPE_ORDER}
        return Labeled(mean, out_dims, coords, name=family, metric=self.meta.get("metric", "normalized"))

    def flagged_pairs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The view's flagged pairs (name, dataset, scores, change, why), at most ``limit``."""
        f, pairs = self.flags, self._src.pairs
        names = pairs.get("name")
        out = []
        for i in np.flatnonzero(f.in_view & ~f.keep)[:limit]:
            why = [w for w, m in (("stored", f.stored), ("small change", f.small), ("wrong sign", f.wrong_sign))
                   if m[i]]
            b, p = float(pairs["score_baseline"][i]), float(pairs["score_perturbed"][i])
            out.append({"pair": str(names[i]) if names is not None else str(i),
                        "dataset": str(pairs["dataset"][i]) if pairs.get("dataset") is not None else "",
                        "score_baseline": b, "score_perturbed": p, "change": p - b, "why": ", ".join(why)})
        return out


def _take(v: Any, mask: np.ndarray) -> Any:
    if v is None or isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != len(mask):
        return v
    if isinstance(v, np.ndarray):
        return v[mask]
    return [x for x, m in zip(v, mask, strict=True) if m]


def datasets_of(source: ResultsSource) -> list[str]:
    """The run's dataset names in the order they first occur (empty when the pair table has none)."""
    names = source.pairs.get("dataset")
    if names is None:
        return []
    return list(dict.fromkeys(str(x) for x in np.asarray(names).astype(str)))


__all__ = ["DEFAULT_MERGE", "DEFAULT_RELATIVE_FLOOR", "DEFAULT_STATISTIC", "Flags", "PairView", "datasets_of",
           "pair_flags"]
