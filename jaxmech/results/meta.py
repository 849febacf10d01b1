"""A run folder's ``meta.json``, typed: what a sweep writes first and `jaxmech.results.open` reads.

`RunMeta` is written once, by process 0, before any chunk is computed (``RunMeta.to_json``: the keys in file
order; the ``readout`` and ``background`` entries only when set, so runs of the score without a background keep
their files as before). `check_resume` compares a stored ``meta.json`` with the sweep about to run: a run
resumes only into results of the same result settings (the config's fingerprint), model weights, datasets and
jaxmech version.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

__all__ = ["FORMAT", "FORMAT_VERSION", "DatasetEntry", "FamilyArrays", "ModelEntry", "RunMeta", "array_name",
           "check_resume"]

FORMAT = "jaxmech.sweep"
FORMAT_VERSION = 1


def array_name(kind: str, key: str) -> str:
    """Folder name of a result array under ``arrays/`` (``effects.block_every``; family keys may hold ':')."""
    return f"{kind}.{key.replace(':', '.')}"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """``meta["model"]``: the model a run patched.

    Attributes:
        id: ``[model] path`` of the config (``"packaged-ce"``, a folder or a hub id).
        folder: The folder its weights were read from.
        kind: ``"cross"`` or ``"bi"``.
        weights_sha256: sha256 of its weight files (in `jaxmech.hf.loading.weight_files` order).
        n_layers: Layers.
        n_heads: Heads per layer.
        d_model: Width of the residual stream.
    """

    id: str
    folder: str
    kind: str
    weights_sha256: str
    n_layers: int
    n_heads: int
    d_model: int

    def to_json(self) -> dict[str, Any]:
        """The entry as stored."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One of ``meta["datasets"]``: a dataset of the run after its selections.

    Attributes:
        name: Its name (the pair table's ``dataset`` column).
        origin: ``"file:PATH"`` or ``"build:KIND:SOURCE"``.
        pairs: Pairs selected from it.
        sha256: sha256 of the selected pairs (their JSON, in dataset order).
    """

    name: str
    origin: str
    pairs: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The entry as stored."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FamilyArrays:
    """One of ``meta["families"]``: a family's result and the arrays that hold it.

    Attributes:
        key: The result's name (``block_every``, ``attribution:head_by_pos_z``, ``path_to_heads_k``).
        name: The patching family.
        method: ``"exact"`` or ``"attribution"``.
        dims: Axis names, ``pair`` first.
        shape: Sizes of the axes after ``pair``.
        effects: Array of the metric values.
        raw: Array of the patched scores.
        verify: Attribution with ``verify_top_k``: arrays of the exact checks (``index``, ``estimated``,
            ``exact``).
        verify_shape: With ``verify``: ``components``, ``k`` and ``index_axes`` of those arrays.
    """

    key: str
    name: str
    method: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    effects: str
    raw: str
    verify: dict[str, str] | None = None
    verify_shape: dict[str, Any] | None = None

    def array_names(self) -> list[str]:
        """Every array of the family: effects, raw, then the verification arrays."""
        return [self.effects, self.raw, *(self.verify or {}).values()]

    def to_json(self) -> dict[str, Any]:
        """The entry as stored (``verify`` and ``verify_shape`` only when verified)."""
        out: dict[str, Any] = {"key": self.key, "name": self.name, "method": self.method, "dims": list(self.dims),
                               "shape": list(self.shape), "effects": self.effects, "raw": self.raw}
        if self.verify is not None:
            out["verify"] = self.verify
            out["verify_shape"] = self.verify_shape
        return out


@dataclasses.dataclass(frozen=True)
class RunMeta:
    """A run folder's ``meta.json`` (see the module docstring).

    Attributes:
        fingerprint: Hash of the config's result settings (`jaxmech.sweeps.config.SweepConfig.fingerprint`).
        config: The config as its TOML tables.
        config_file: The file it was read from.
        result_settings: The settings that change results (what ``fingerprint`` hashes).
        model: The model.
        datasets: The datasets, in config order.
        n_pairs: Pairs in the run.
        T_max: The longest length bucket (the stored ``pos`` axis).
        pairs_per_chunk: Pairs per stored chunk.
        n_chunks: Stored chunks.
        families: The results, in config order.
        metric: ``[patching] metric``.
        direction: ``[patching] direction``.
        readout: ``[patching] readout`` (``""``: the score, not stored).
        precision: Matmul precision.
        jaxmech_version: The version that wrote the run.
        device: `jaxmech.runtime.describe_device` of process 0.
        processes: Processes that share the run.
        created: UTC time the meta was made (``2026-01-02T03:04:05Z``).
        background: What `jaxmech.patching.background` ablated in every run (None: nothing).
    """

    fingerprint: str
    config: dict[str, Any]
    config_file: str
    result_settings: dict[str, Any]
    model: ModelEntry
    datasets: tuple[DatasetEntry, ...]
    n_pairs: int
    T_max: int
    pairs_per_chunk: int
    n_chunks: int
    families: tuple[FamilyArrays, ...]
    metric: str
    direction: str
    readout: str
    precision: str
    jaxmech_version: str
    device: dict[str, Any]
    processes: int
    created: str
    background: dict[str, Any] | None = None

    @property
    def dataset_sha256(self) -> str:
        """sha256 over the datasets' hashes, in order."""
        return hashlib.sha256("".join(d.sha256 for d in self.datasets).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """``meta.json`` as a dict, keys in file order (see the module docstring)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "config_file": self.config_file,
            "result_settings": self.result_settings,
            "model": self.model.to_json(),
            "datasets": [d.to_json() for d in self.datasets],
            "dataset_sha256": self.dataset_sha256,
            "n_pairs": self.n_pairs,
            "T_max": self.T_max,
            "pairs_per_chunk": self.pairs_per_chunk,
            "n_chunks": self.n_chunks,
            "families": [f.to_json() for f in self.families],
            "metric": self.metric,
            "direction": self.direction,
            **({"readout": self.readout} if self.readout else {}),
            "precision": self.precision,
            "jaxmech_version": self.jaxmech_version,
            "device": self.device,
            "processes": self.processes,
            "created": self.created,
        }
        if self.background is not None:
            out["background"] = self.background
        return out


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _diff(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def check_resume(old: dict, new: dict) -> list[str]:
    """What differs between a run folder's ``meta.json`` and the sweep about to run (`RunMeta.to_json`; empty =
    may resume)."""
    changes = []
    if old.get("format") != FORMAT or old.get("version") != FORMAT_VERSION:
        return [f"format {old.get('format')!r} v{old.get('version')} (this jaxmech writes {FORMAT} v{FORMAT_VERSION})"]
    if old["fingerprint"] != new["fingerprint"]:
        changes += ["config " + d for d in _diff(old["result_settings"], new["result_settings"])]
    if old["model"]["weights_sha256"] != new["model"]["weights_sha256"]:
        changes.append(
            f"model weights: sha256 {old['model']['weights_sha256'][:12]} -> "
            f"{new['model']['weights_sha256'][:12]} ({new['model']['folder']})"
        )
    old_ds = {d["name"]: d for d in old["datasets"]}
    for d in new["datasets"]:
        o = old_ds.get(d["name"])
        if o is not None and o["sha256"] != d["sha256"]:
            changes.append(
                f"dataset {d['name']}: its pairs changed (sha256 {o['sha256'][:12]} -> "
                f"{d['sha256'][:12]}, {o['pairs']} -> {d['pairs']} pairs)"
            )
    if old["jaxmech_version"] != new["jaxmech_version"]:
        changes.append(f"jaxmech version {old['jaxmech_version']} -> {new['jaxmech_version']}")
    return changes
