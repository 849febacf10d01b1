"""Typed patching results: one family on one batch (`SweepResult`), and a whole run (`PatchingResult`).

A `SweepResult` is what a family's runner returns for one batch of pairs (one length bucket): patched scores
in the family's layout, with the baseline and perturbed scores; it is built in one place,
`SweepResult.from_prepared`. A `PatchingResult` is what `jaxmech.patching.run.run_patching` (and so
``jaxmech patch``) returns for any number of pairs and families: metric values and raw scores per family with
named axes, a per-pair table and the run's metadata; ``save`` writes the ``.npz`` file of ``jaxmech patch``
and ``load`` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from jaxmech.patching.families import get_family

# The keys of the `meta` JSON stored in an .npz file, in file order (the next five only when set: a scale-aware
# denominator rule, a robust aggregate, a background or head groups, see `jaxmech.patching.run.run_patching`; the
# next six from `jaxmech.patching.run.patch`: what was read, so a file describes itself; ``readout`` only for a
# readout other than the score).
FILE_META_KEYS = ("model", "kind", "metric", "method", "reverse", "receivers", "receiver_input", "precision", "device",
                  "relative_min_denominator", "relative_denominator_threshold", "aggregate", "background", "groups",
                  "jaxmech_version", "input", "input_sha256", "max_length", "init_head_seed", "initialized",
                  "readout")


def canonical_to_layout(out: Float[np.ndarray, "pair layer pos head"], layout: str) -> np.ndarray:
    """``[pair, layer, pos, head]`` (size-1 axes for unused ones) to a family layout (``"lph"``, ``"lh"``...)."""
    axes = {"l": 1, "p": 2, "h": 3}
    keep = [0] + [axes[c] for c in layout]
    drop = tuple(a for a in (1, 2, 3) if a not in keep)
    return out.transpose(*keep, *drop).reshape(out.shape[0], *[out.shape[axes[c]] for c in layout])


@dataclasses.dataclass
class SweepResult:
    """Patched scores of one family over a batch of pairs.

    Attributes:
        family: Family name (``attribution:<name>`` for estimates, ``<name>_<input>`` for path families
            with receivers).
        patched: ``[pair, *family_shape]`` patched scores; NaN where nothing was patched (padding,
            unaligned positions).
        baseline_score: ``[pair]`` score of the run that was patched.
        perturbed_score: ``[pair]`` score of the run the activations came from.
        names: Pair labels.
        lengths: ``[pair]`` real lengths (trim ``pos`` axes to these for one pair).
    """

    family: str
    patched: np.ndarray
    baseline_score: np.ndarray
    perturbed_score: np.ndarray
    names: list[str]
    lengths: np.ndarray

    @classmethod
    def from_prepared(cls, family: str, patched: np.ndarray, prep) -> SweepResult:
        """The result of a sweep over ``prep`` (a `jaxmech.patching.caches.PreparedBatch`)."""
        return cls(family, patched, np.asarray(prep.baseline_score), np.asarray(prep.perturbed_score),
                   list(prep.batch.names), prep.batch.lengths.copy())

    def effect(self, metric: str = "normalized", **kw):
        """Applies a metric from `jaxmech.patching.metrics` (``"normalized"``, ``"difference"``, ``"raw"``)."""
        from jaxmech.patching.metrics import apply_metric

        return apply_metric(metric, self.patched, self.baseline_score, self.perturbed_score, **kw)


@dataclasses.dataclass
class PatchingResult:
    """Everything one patching run produced.

    Attributes:
        effects: Per family, ``[pair, ...]`` metric values (the family's axes; position axes padded with NaN
            to the batch length of the longest pair's length bucket; NaN for flagged pairs).
        raw: Per family, the patched scores, same shapes.
        axes: Per family, axis names, e.g. ``("pair", "layer", "pos", "head")``.
        pairs: Per-pair columns: ``name``, ``qid``, ``doc_id``, ``length`` (baseline tokens),
            ``score_baseline``, ``score_perturbed``, ``flagged`` (metric undefined, e.g. near-zero
            denominator), ``done`` (computed; False after a stop between chunks), ``token_types`` (list per
            pair, or None when unknown).
        meta: ``model``, ``kind``, ``metric``, ``method``, ``reverse``, ``receivers``, ``receiver_input``,
            ``families``, ``min_denominator``, ``seconds``, ``stopped``; with the options,
            ``relative_min_denominator``, ``relative_denominator_threshold``, ``aggregate``.
        by_type: Per position-resolved family with token types: ``[..., n_types]`` mean effect by token type.
        token_type_names: The type names of ``by_type``'s last axis.
        token_type_pair_counts: ``[n_types]`` pairs that have each type (of the last such family).
    """

    effects: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    axes: dict[str, tuple[str, ...]]
    pairs: dict[str, Any]
    meta: dict[str, Any]
    by_type: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    token_type_names: tuple[str, ...] = ()
    token_type_pair_counts: np.ndarray | None = None

    @property
    def families(self) -> list[str]:
        """Family names, in request order."""
        return list(self.effects)

    @property
    def n_pairs(self) -> int:
        """Number of pairs."""
        return len(self.pairs["name"])

    def _file_array(self, a: np.ndarray, family: str) -> np.ndarray:
        """One pair: TransformerLens shapes, trimmed to its length; else unchanged."""
        if self.n_pairs != 1:
            return a
        n = int(self.pairs["length"][0])
        return a[0][tuple(slice(0, n) if ax == "pos" else slice(None) for ax in self.axes[family][1:])]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the ``.npz`` file, by key (see `save`)."""
        single = self.n_pairs == 1
        out: dict[str, np.ndarray] = {}
        for fam in self.families:
            out[fam] = self._file_array(self.effects[fam], fam)
            out[f"raw:{fam}"] = self._file_array(self.raw[fam], fam)
        sb, sp = self.pairs["score_baseline"], self.pairs["score_perturbed"]
        out.update(score_baseline=sb[0] if single else sb, score_perturbed=sp[0] if single else sp,
                   lengths=self.pairs["length"], names=np.array(self.pairs["name"]), flagged=self.pairs["flagged"],
                   meta=np.array(json.dumps({k: self.meta[k] for k in FILE_META_KEYS if k in self.meta})))
        for fam, mean in self.by_type.items():
            out[f"by_type:{fam}"] = mean
            out["token_type_names"] = np.array(self.token_type_names)
            out["token_type_pair_counts"] = self.token_type_pair_counts
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Writes the ``.npz`` file of ``jaxmech patch``, atomically.

        Keys: each family's effects under its name and patched scores under ``raw:<family>`` (for a single
        pair without the pair axis, trimmed to its length), ``score_baseline``, ``score_perturbed``,
        ``lengths``, ``names``, ``flagged``, ``meta`` (JSON), and for datasets with token types
        ``by_type:<family>``, ``token_type_names``, ``token_type_pair_counts``.

        Raises:
            FileExistsError: If ``overwrite`` is False and the file exists (or appears meanwhile).
        """
        from jaxmech.files import atomic_write

        arrays = self.arrays()
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatchingResult:
        """Reads a file written by `save` (token types per pair are not stored; ``done`` is all True)."""
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
        meta = json.loads(str(data.pop("meta")))
        names = [str(n) for n in data.pop("names")]
        lengths = data.pop("lengths")
        single = len(names) == 1
        grow = (lambda a: a[None]) if single else (lambda a: a)
        sb, sp = grow(data.pop("score_baseline")), grow(data.pop("score_perturbed"))
        flagged = data.pop("flagged")
        type_names = tuple(str(t) for t in data.pop("token_type_names", ()))
        counts = data.pop("token_type_pair_counts", None)
        effects, raw, axes, by_type = {}, {}, {}, {}
        for key, a in data.items():
            if key.startswith("raw:"):
                raw[key[4:]] = grow(a)
            elif key.startswith("by_type:"):
                by_type[key[8:]] = a
            else:
                effects[key] = grow(a)
                axes[key] = ("pair", *get_family(key).axes)
        pairs = pair_table(names, lengths, sb, sp, flagged, None)
        return cls(effects, raw, axes, pairs, {**meta, "families": list(effects)}, by_type, type_names, counts)


def pair_table(names, lengths, score_baseline, score_perturbed, flagged, token_types, pairs=None) -> dict[str, Any]:
    """The per-pair columns of a `PatchingResult` (``qid``/``doc_id`` from the pairs, or parsed from
    ``"qid/doc_id"`` names)."""
    if pairs is not None:
        qids, docs = [p.qid for p in pairs], [p.doc_id for p in pairs]
    else:
        split = [n.split("/", 1) if "/" in n else ["", ""] for n in names]
        qids, docs = [s[0] for s in split], [s[1] for s in split]
    return {"name": list(names), "qid": qids, "doc_id": docs, "length": np.asarray(lengths, np.int32),
            "score_baseline": np.asarray(score_baseline, np.float32),
            "score_perturbed": np.asarray(score_perturbed, np.float32), "flagged": np.asarray(flagged, bool),
            "done": np.ones(len(names), bool), "token_types": token_types}
