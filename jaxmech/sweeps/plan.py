"""A sweep's plan: every pair it computes, in run order, and the arrays that will hold the results.

`plan_sweep` loads the model's datasets (built, or read from ``jaxmech dataset build`` files), selects pairs
(seeded; never "the first N"), aligns them as the model reads them (a bi-encoder's document side only) and sorts
them by length bucket, longest first and stable, so that every chunk of ``pairs_per_chunk`` consecutive pairs is
one stored chunk and each bucket compiles once. `family_arrays` lays out each family's stored arrays. Both are
typed: a `Plan` of `PlannedPair` s, and `jaxmech.results.meta.FamilyArrays` entries of the run's ``meta.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxmech.results.meta import DatasetEntry, FamilyArrays, array_name
from jaxmech.sweeps.config import FamilySection, SweepConfig

__all__ = ["DIM_NAMES", "Plan", "PlannedPair", "family_arrays", "plan_sweep", "runs_per_pair", "select_indices"]

DIM_NAMES = {"c": "component", "l": "layer", "p": "pos", "h": "head", "g": "group"}


@dataclasses.dataclass(frozen=True)
class PlannedPair:
    """One pair of the run and its pair-table columns.

    Attributes:
        pair: The `jaxmech.data.records.AlignedPair` as the model reads it, named ``dataset/qid/doc_id``.
        dataset: Its dataset's name.
        qid: Query id.
        doc_id: Document id.
        kind: The dataset kind of the pair.
        index: Its index in its dataset.
        bucket: Its padded length (length bucket of the longer input).
        patchable: Baseline positions with a perturbed counterpart.
    """

    pair: Any
    dataset: str
    qid: str
    doc_id: str
    kind: str
    index: int
    bucket: int
    patchable: int

    @property
    def length(self) -> int:
        """Baseline tokens."""
        return len(self.pair.baseline_ids)


@dataclasses.dataclass
class Plan:
    """Everything a sweep computes, in run order.

    Attributes:
        pairs: `jaxmech.data.records.AlignedPair` s as the model reads them (bi-encoders: document-only).
        table: The static per-pair columns (``dataset``, ``qid``, ``doc_id``, ``kind``, ``index``, ``length``,
            ``bucket``, ``token_type_codes``, ``runs``).
        T_max: Longest bucket (the stored position axis).
        datasets: Per dataset: name, pairs, sha256 of its selected pairs, and where it came from.
    """

    pairs: list
    table: dict[str, np.ndarray]
    T_max: int
    datasets: list[DatasetEntry]

    @property
    def n_pairs(self) -> int:
        """Pairs in the run."""
        return len(self.pairs)

    def chunks(self, size: int) -> list[tuple[int, int]]:
        """``(start, end)`` of each chunk of ``size`` pairs."""
        return [(s, min(s + size, self.n_pairs)) for s in range(0, self.n_pairs, size)]


def _read_qids(ds, where: str) -> set[str]:
    try:
        return {line.strip() for line in Path(ds.qids).read_text().splitlines() if line.strip()}
    except OSError as err:
        raise FileNotFoundError(f"{where} qids: cannot read {ds.qids!r} ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} qids: {ds.qids}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def select_indices(records: list, ds, where: str) -> list[int]:
    """Indices kept by a dataset's qids / per_query / sample settings (seeded; in dataset order).

    Raises:
        FileNotFoundError, ValueError: Naming ``where`` (the config file and dataset entry).
    """
    idx = np.arange(len(records))
    rng = np.random.default_rng(ds.seed)
    if ds.qids:
        wanted = _read_qids(ds, where)
        idx = np.array([i for i in idx if records[i].qid in wanted], int)
        if not len(idx):
            raise ValueError(f"{where} qids: none of the {len(wanted)} qids in {ds.qids} is in the dataset")
    if ds.per_query:
        by_q: dict[str, list[int]] = {}
        for i in idx:
            by_q.setdefault(records[i].qid, []).append(int(i))
        kept = []
        for q in by_q:  # dataset order of queries
            members = np.array(by_q[q])
            kept.extend(members if len(members) <= ds.per_query else rng.choice(members, ds.per_query, replace=False))
        idx = np.array(sorted(kept), int)
    if ds.sample:
        if ds.sample > len(idx):
            raise ValueError(
                f"{where} sample={ds.sample} but the dataset has only {len(idx)} pairs after the other selections"
            )
        idx = np.sort(rng.choice(idx, ds.sample, replace=False))
    return [int(i) for i in idx]


def _load_records(ds, lm, where: str) -> tuple[list, str]:
    from jaxmech.data import build, read_dataset

    if ds.file:
        if not Path(ds.file).is_file():
            raise FileNotFoundError(f"{where} file: {ds.file!r} does not exist")
        _, records = read_dataset(ds.file)
        return records, f"file:{ds.file}"
    from jaxmech.data.loaders import load_source

    source = load_source(ds.source, seed=ds.seed)
    result = build(ds.kind, source, lm.tokenizer, seed=ds.seed, **ds.options)
    return result.pairs, f"build:{ds.kind}:{ds.source}"


def runs_per_pair(fam: FamilySection, n_patchable: int, cfg) -> int:
    """Exact patched forward passes of one pair (attribution: the verification patches).

    Args:
        fam: The family.
        n_patchable: The pair's patchable positions.
        cfg: The model's config (``n_layers``, ``n_heads``).
    """
    from jaxmech.patching.families import get_family

    L, H = cfg.n_layers, cfg.n_heads
    if fam.method == "attribution":
        return len(get_family(fam.name).sites) * fam.verify_top_k
    if fam.name == "path_to_score":
        return L * H
    if fam.groups:
        return len(fam.groups)
    if fam.name in ("path_to_heads", "path_components_to_heads"):
        r_max = fam.max_receiver_layer
        return r_max * H if fam.name == "path_to_heads" else 3 * r_max * n_patchable
    f = get_family(fam.name)
    return len(f.sites) * L * (n_patchable if f.per_pos else 1) * (H if f.per_head else 1)


def _plan_dataset(cfg: SweepConfig, d: int, lm) -> tuple[list[PlannedPair], DatasetEntry]:
    """One ``[[datasets]]`` entry: its selected pairs as the model reads them, and its meta entry."""
    from jaxmech.data.records import pair_to_json
    from jaxmech.hf.tokenizer import bucket_length
    from jaxmech.patching.inputs import model_pairs

    ds, tok = cfg.datasets[d], lm.tokenizer
    where = f"{cfg.source}: [[datasets]][{d}] ({ds.name})"
    records, origin = _load_records(ds, lm, where)
    if not records:
        raise ValueError(f"{where}: the dataset has no pairs")
    keep = select_indices(records, ds, where)
    h = hashlib.sha256()
    rows = []
    for i in keep:
        r = records[i]
        h.update(json.dumps(pair_to_json(r), sort_keys=True, ensure_ascii=False).encode())
        n = max(len(r.baseline_ids), len(r.perturbed_ids))
        if n > tok.max_length or n > lm.model.cfg.n_ctx:
            raise ValueError(
                f"{where}: pair {i} (qid {r.qid}, doc {r.doc_id}) has {n} tokens, more than the "
                f"model's max_length={min(tok.max_length, lm.model.cfg.n_ctx)}"
            )
        named = dataclasses.replace(r, name=f"{ds.name}/{r.qid}/{r.doc_id}")
        p = model_pairs([named], tok, pair_input=lm.model.pair_input)[0]  # bi-encoders: [CLS] d [SEP]
        bucket = bucket_length(max(len(p.baseline_ids), len(p.perturbed_ids)), tok.buckets, tok.max_length)
        rows.append(PlannedPair(p, ds.name, r.qid, r.doc_id, r.kind, i, bucket,
                                int(sum(m >= 0 for m in p.position_map))))
    return rows, DatasetEntry(ds.name, origin, len(keep), h.hexdigest())


def _pair_table(rows: list[PlannedPair], T_max: int, families, model_cfg) -> dict[str, np.ndarray]:
    """The static per-pair columns of ``pairs.npz``."""
    from jaxmech.data.records import TOKEN_TYPES

    code = {t: i for i, t in enumerate(TOKEN_TYPES)}
    codes = np.full((len(rows), T_max), -1, np.int8)
    for i, r in enumerate(rows):
        types = list(r.pair.token_types)
        codes[i, : len(types)] = [code[t] for t in types]
    runs = np.array([sum(runs_per_pair(f, r.patchable, model_cfg) for f in families) for r in rows], np.int64)
    return {
        "name": np.array([r.pair.name for r in rows]),
        "dataset": np.array([r.dataset for r in rows]),
        "qid": np.array([r.qid for r in rows]),
        "doc_id": np.array([r.doc_id for r in rows]),
        "kind": np.array([r.kind for r in rows]),
        "index": np.array([r.index for r in rows], np.int64),
        "length": np.array([r.length for r in rows], np.int32),
        "bucket": np.array([r.bucket for r in rows], np.int32),
        "token_type_codes": codes,
        "token_type_names": np.array(TOKEN_TYPES),
        "runs": runs,
    }


def plan_sweep(cfg: SweepConfig, lm) -> Plan:
    """Reads/builds, samples and aligns every dataset of a config, in run order (see the module docstring).

    Raises:
        FileNotFoundError, ValueError: Naming the config file and the dataset entry.
    """
    rows: list[PlannedPair] = []
    datasets = []
    for d in range(len(cfg.datasets)):
        planned, entry = _plan_dataset(cfg, d, lm)
        rows += planned
        datasets.append(entry)
    # Longest bucket first (stable: dataset order within a bucket): the peak memory and the slowest chunks come
    # in the first minutes, so an out-of-memory or a bad chunk size shows at once, not hours in.
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].bucket, i))
    rows = [rows[i] for i in order]
    T_max = max(r.bucket for r in rows)
    table = _pair_table(rows, T_max, cfg.families, lm.model.cfg)
    return Plan([r.pair for r in rows], table, T_max, datasets)


def family_arrays(cfg: SweepConfig, model_cfg, T_max: int) -> dict[str, FamilyArrays]:
    """Per family key: its axes after ``pair``, their sizes and its array names (in config order)."""
    from jaxmech.patching.families import get_family

    out = {}
    L, H = model_cfg.n_layers, model_cfg.n_heads
    for fam in cfg.families:
        f = get_family(fam.name)
        sizes = {"c": 3 if fam.name == "path_components_to_heads" else None,
                 "l": fam.max_receiver_layer if fam.receivers else L, "p": T_max, "h": H, "g": len(fam.groups)}
        if f.kind != "path":
            sizes["c"] = len(f.sites)
        verify = verify_shape = None
        if fam.verify_top_k:
            verify = {part: array_name(f"verify.{part}", fam.key) for part in ("index", "estimated", "exact")}
            verify_shape = {"components": list(f.sites), "k": fam.verify_top_k,
                            "index_axes": [DIM_NAMES[c] for c in f.layout]}
        out[fam.key] = FamilyArrays(
            key=fam.key, name=fam.name, method=fam.method, dims=("pair", *(DIM_NAMES[c] for c in fam.layout)),
            shape=tuple(sizes[c] for c in fam.layout), effects=array_name("effects", fam.key),
            raw=array_name("raw", fam.key), verify=verify, verify_shape=verify_shape,
        )
    return out
