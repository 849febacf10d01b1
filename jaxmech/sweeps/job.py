"""A sweep as a job: plan, store, resume, compute chunk by chunk, finish.

`run_sweep` is what ``jaxmech sweep CONFIG`` does:

1. **Plan.** Load the model, build or read the datasets, sample them (seeded), align pairs and sort them by
   length bucket (longest first, stable), so that every chunk of ``pairs_per_chunk`` consecutive pairs is one
   stored zarr chunk and each bucket compiles once. The run's pair axis is this order; ``run.pairs["index"]``
   is each pair's index in its dataset.
2. **Store.** Process 0 creates the run folder (arrays, pair table, then ``meta.json`` last) or checks that an
   existing one holds the same sweep: same result settings (config fingerprint), model weights, datasets
   and jaxmech version. Anything else refuses to resume and lists what changed (``fresh=True`` starts over).
3. **Compute.** Each process takes its share of the chunks that have no completion marker, computes each with
   `jaxmech.sweeps.compute.compute_chunk`, writes it, then marks it complete (atomically). Killed at any
   moment, a rerun recomputes only unmarked chunks, and the result is bit-identical to an uninterrupted run.
4. **Finish.** Process 0 waits for every process, writes ``complete.json`` with the timings, and runs the
   configured steps (analyses, report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxmech.progress import CompileMeter, Progress, StopOnSigint
from jaxmech.results.integrity import check_run, chunk_files
from jaxmech.results.store import SweepStore, atomic_savez, atomic_write_json
from jaxmech.sweeps.config import FamilySection, SweepConfig, load_sweep_config
from jaxmech.sweeps.distributed import Processes
from jaxmech.sweeps.lock import LOCK_NAME, RunLock
from jaxmech.sweeps.precheck import check_against_model

FORMAT = "jaxmech.sweep"
FORMAT_VERSION = 1
DIM_NAMES = {"c": "component", "l": "layer", "p": "pos", "h": "head", "g": "group"}


class ResumeError(RuntimeError):
    """An existing run folder holds another sweep; the message says what changed."""


class SweepInterrupted(Exception):
    """A sweep stopped by SIGINT (Ctrl-C); the message says which chunks are kept and how to resume.

    Args:
        out: The run folder.
        store: Its store (to count the completed chunks).
        dropped: Whether a chunk in progress was dropped (a second Ctrl-C, or one outside the chunk loop).
    """

    def __init__(self, out: Path, store: SweepStore, dropped: bool = False):
        n_done = len(store.done_chunks())
        try:
            n = json.loads((Path(out) / "meta.json").read_text())["n_chunks"]
        except (OSError, ValueError, KeyError):
            n = None
        if n is None:
            what = "interrupted before any chunk was computed; nothing was kept"
        else:
            when = "at once (the chunk in progress was dropped)" if dropped else "after the chunk in progress"
            what = (f"interrupted {when}: {n_done}/{n} chunks complete and kept in {out}; "
                    f"rerun the same command to resume")
        super().__init__(what)


# --------------------------------------------------------------------------------------------------------------
# Runtime settings (precision, persistent compilation cache)
# --------------------------------------------------------------------------------------------------------------

_JAX_PRECISION = {"fp32": "highest", "tf32": "tensorfloat32", "bf16x3": "bfloat16_3x", "bf16": "bfloat16"}


def precision_context(name: str):
    """The matmul precision of a sweep (`jaxmech.runtime.precision` when available)."""
    try:
        from jaxmech.runtime import precision
    except ImportError:
        import jax

        return jax.default_matmul_precision(_JAX_PRECISION[name])
    return precision(name)


def enable_compilation_cache() -> Path | None:
    """Turns on JAX's persistent compilation cache (`jaxmech.runtime.enable_compilation_cache` when available,
    else under ``$JAXMECH_CACHE/xla``). Every program is cached, however fast it compiled, so that a rerun
    or a resume compiles nothing. ``JAXMECH_COMPILATION_CACHE=0`` turns it off."""
    if os.environ.get("JAXMECH_COMPILATION_CACHE", "1") == "0":
        return None
    import jax

    try:
        from jaxmech.runtime import enable_compilation_cache as enable
    except ImportError:
        from jaxmech.hf.loading import cache_root

        path = cache_root() / "xla"
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
    else:
        path = enable()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(path) if path else None


# --------------------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------------------


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
    datasets: list[dict]

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def chunks(self, size: int) -> list[tuple[int, int]]:
        return [(s, min(s + size, self.n_pairs)) for s in range(0, self.n_pairs, size)]


def _select(records: list, ds, where: str) -> list[int]:
    """Indices kept by a dataset's qids / per_query / sample settings (seeded; in dataset order)."""
    idx = np.arange(len(records))
    rng = np.random.default_rng(ds.seed)
    if ds.qids:
        try:
            wanted = {line.strip() for line in Path(ds.qids).read_text().splitlines() if line.strip()}
        except OSError as err:
            raise FileNotFoundError(f"{where} qids: cannot read {ds.qids!r} ({err.strerror})") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{where} qids: {ds.qids}: not UTF-8 text ({err.reason} at byte {err.start})") from None
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


def _runs_per_pair(fam: FamilySection, n_patchable: int, cfg) -> int:
    """Exact patched forward passes of one pair (attribution: the verification patches)."""
    from jaxmech.patching.families import get_family, parse_heads

    L, H = cfg.n_layers, cfg.n_heads
    if fam.method == "attribution":
        return len(get_family(fam.name).sites) * fam.verify_top_k
    if fam.name == "path_to_score":
        return L * H
    if fam.groups:
        return len(fam.groups)
    if fam.name in ("path_to_heads", "path_components_to_heads"):
        r_max = max(r for r, _ in parse_heads([str(r) for r in fam.receivers]))
        return r_max * H if fam.name == "path_to_heads" else 3 * r_max * n_patchable
    f = get_family(fam.name)
    return len(f.sites) * L * (n_patchable if f.per_pos else 1) * (H if f.per_head else 1)


def plan_sweep(cfg: SweepConfig, lm) -> Plan:
    """Reads/builds, samples and aligns every dataset of a config, in run order (see the module docstring).

    Raises:
        FileNotFoundError, ValueError: Naming the config file and the dataset entry.
    """
    from jaxmech.data.records import TOKEN_TYPES, pair_to_json
    from jaxmech.hf.tokenizer import bucket_length
    from jaxmech.patching.inputs import model_pairs

    tok = lm.tokenizer
    code = {t: i for i, t in enumerate(TOKEN_TYPES)}
    rows: list[dict] = []
    datasets = []
    for d, ds in enumerate(cfg.datasets):
        where = f"{cfg.source}: [[datasets]][{d}] ({ds.name})"
        records, origin = _load_records(ds, lm, where)
        if not records:
            raise ValueError(f"{where}: the dataset has no pairs")
        keep = _select(records, ds, where)
        h = hashlib.sha256()
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
            rows.append(
                {
                    "pair": p,
                    "types": list(p.token_types),
                    "dataset": ds.name,
                    "qid": r.qid,
                    "doc_id": r.doc_id,
                    "kind": r.kind,
                    "index": i,
                }
            )
        datasets.append({"name": ds.name, "origin": origin, "pairs": len(keep), "sha256": h.hexdigest()})
    for row in rows:
        p = row["pair"]
        row["length"] = len(p.baseline_ids)
        row["bucket"] = bucket_length(max(len(p.baseline_ids), len(p.perturbed_ids)), tok.buckets, tok.max_length)
        row["patchable"] = int(sum(m >= 0 for m in p.position_map))
    # Longest bucket first (stable: dataset order within a bucket): the peak memory and the slowest chunks come
    # in the first minutes, so an out-of-memory or a bad chunk size shows at once, not hours in.
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["bucket"], i))
    rows = [rows[i] for i in order]
    T_max = max(r["bucket"] for r in rows)
    codes = np.full((len(rows), T_max), -1, np.int8)
    for i, r in enumerate(rows):
        codes[i, : len(r["types"])] = [code[t] for t in r["types"]]
    runs = np.array(
        [sum(_runs_per_pair(f, r["patchable"], lm.model.cfg) for f in cfg.families) for r in rows], np.int64
    )
    table = {
        "name": np.array([r["pair"].name for r in rows]),
        "dataset": np.array([r["dataset"] for r in rows]),
        "qid": np.array([r["qid"] for r in rows]),
        "doc_id": np.array([r["doc_id"] for r in rows]),
        "kind": np.array([r["kind"] for r in rows]),
        "index": np.array([r["index"] for r in rows], np.int64),
        "length": np.array([r["length"] for r in rows], np.int32),
        "bucket": np.array([r["bucket"] for r in rows], np.int32),
        "token_type_codes": codes,
        "token_type_names": np.array(TOKEN_TYPES),
        "runs": runs,
    }
    return Plan([r["pair"] for r in rows], table, T_max, datasets)


# --------------------------------------------------------------------------------------------------------------
# Store layout
# --------------------------------------------------------------------------------------------------------------


def array_name(kind: str, key: str) -> str:
    """Folder name of a result array (family keys may hold ':')."""
    return f"{kind}.{key.replace(':', '.')}"


def family_shapes(cfg: SweepConfig, model_cfg, T_max: int) -> dict[str, dict]:
    """Per family key: dims and shape after ``pair``, and its array names."""
    from jaxmech.patching.families import get_family, parse_heads

    out = {}
    L, H = model_cfg.n_layers, model_cfg.n_heads
    for fam in cfg.families:
        r_max = max((r for r, _ in parse_heads([str(r) for r in fam.receivers])), default=L)
        sizes = {
            "c": 3 if fam.name == "path_components_to_heads" else None,
            "l": r_max if fam.receivers else L,
            "p": T_max,
            "h": H,
            "g": len(fam.groups),
        }
        if fam.name not in ("path_to_score", "path_to_heads", "path_components_to_heads"):
            sizes["c"] = len(get_family(fam.name).sites)
        shape = [sizes[c] for c in fam.layout]
        entry = {
            "key": fam.key,
            "name": fam.name,
            "method": fam.method,
            "dims": ["pair"] + [DIM_NAMES[c] for c in fam.layout],
            "shape": shape,
            "effects": array_name("effects", fam.key),
            "raw": array_name("raw", fam.key),
        }
        if fam.verify_top_k:
            f = get_family(fam.name)
            entry["verify"] = {part: array_name(f"verify.{part}", fam.key) for part in ("index", "estimated", "exact")}
            entry["verify_shape"] = {
                "components": list(f.sites),
                "k": fam.verify_top_k,
                "index_axes": [DIM_NAMES[c] for c in f.layout],
            }
        out[fam.key] = entry
    return out


def _create_arrays(store: SweepStore, cfg: SweepConfig, fams: dict, n: int) -> None:
    C = cfg.chunking.pairs_per_chunk
    for fam in cfg.families:
        e = fams[fam.key]
        for kind in ("effects", "raw"):
            store.create_array(e[kind], [n, *e["shape"]], e["dims"], chunk_pairs=C)
        if fam.verify_top_k:
            v = e["verify_shape"]
            nc, k, nd = len(v["components"]), v["k"], len(v["index_axes"])
            store.create_array(
                e["verify"]["index"],
                [n, nc, k, nd],
                ["pair", "component", "rank", "axis"],
                dtype="int32",
                chunk_pairs=C,
                fill=-1,
            )
            for part in ("estimated", "exact"):
                store.create_array(e["verify"][part], [n, nc, k], ["pair", "component", "rank"], chunk_pairs=C)
    store.create_array("pairs.score_baseline", [n], ["pair"], chunk_pairs=C)
    store.create_array("pairs.score_perturbed", [n], ["pair"], chunk_pairs=C)
    store.create_array("pairs.flagged", [n], ["pair"], dtype="bool", chunk_pairs=C, fill=False)


def _weights_sha256(folder: Path) -> str:
    from jaxmech.hf.loading import weight_files

    h = hashlib.sha256()
    for f in weight_files(folder):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


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
    """What differs between a run folder's ``meta.json`` and the sweep about to run (empty = may resume)."""
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


_RUN_FILES = ("meta.json", "pairs.npz", "complete.json", "steps.json")
_RUN_DIRS = ("arrays", "done", "processes", "analyses", "report")


def _has_files(out: Path) -> bool:
    """Whether a folder exists and holds anything but the sweep's lock."""
    return out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())


def _clear_run(out: Path) -> None:
    """Removes a previous sweep's files (only a sweep's: never an unrelated folder's contents)."""
    if _has_files(out) and not (out / "meta.json").exists() and not (out / "arrays").exists():
        raise ResumeError(
            f"{out}: exists and is not a sweep folder; refusing to delete it for --fresh (choose another --out)"
        )
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in _RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepSummary:
    """What a finished (or partial) sweep did.

    Attributes:
        out: The run folder.
        pairs: Pairs in the run.
        families: Family keys.
        chunks_computed: Chunks this process computed now.
        chunks_resumed: Chunks already complete when it started.
        complete: Whether every chunk of the run is complete.
        timings: Seconds (total, plan, compute, compile, ...) and counts.
        steps: Outputs of the analysis/report steps.
        model: The model and what was patched (a bi-encoder's document side only), for the summary line.
    """

    out: Path
    pairs: int
    families: list[str]
    chunks_computed: int
    chunks_resumed: int
    complete: bool
    timings: dict
    steps: dict = dataclasses.field(default_factory=dict)
    model: str = ""

    def line(self) -> str:
        """The one-line summary printed at the end."""
        t = self.timings
        state = "complete" if self.complete else "this process's share done"
        return (
            f"sweep {state}: {self.pairs} pairs x {len(self.families)} families "
            f"({self.chunks_computed} chunks computed, {self.chunks_resumed} resumed) in {t['total_seconds']:.1f}s "
            f"({t.get('patched_runs_per_second', 0):.0f} patched runs/s, compile {t['compile_seconds']:.1f}s, "
            f"{t['xla_compiles']} XLA compiles{_roofline_text(t)}) "
            + (f"on {self.model}, {t.get('device', '?')} " if self.model else "")
            + f"-> {self.out}"
        )


def _roofline_text(t: dict) -> str:
    """``, 0.91 GFLOP per patched run, 52 GFLOP/s = 19% of the measured matmul rate`` (empty when unknown)."""
    if t.get("fraction_of_matmul_rate") is None:
        return ""
    return (f", {t['flops_per_patched_run'] / 1e9:.3g} GFLOP per patched run, {t['achieved_flops'] / 1e9:.3g} "
            f"GFLOP/s = {t['fraction_of_matmul_rate']:.0%} of the measured matmul rate")


def _roofline(model_cfg, families, plan: Plan, chunks, todo, seconds: float) -> dict:
    """FLOPs per patched run, achieved FLOP/s and the fraction of a matmul rate measured now
    (`jaxmech.sweeps.roofline`), over the chunks this process computed."""
    from jaxmech.sweeps.roofline import roofline

    idx = [i for k in todo for i in range(*chunks[k])]
    return roofline(model_cfg, families, [plan.pairs[i] for i in idx], plan.table["bucket"][idx], _runs_per_pair,
                    seconds)


def _load_model(cfg: SweepConfig):
    from jaxmech.hf.loading import load_model

    m = cfg.model
    return load_model(
        m.path, kind=m.kind, init_missing_head_seed=m.init_head_seed, max_length=m.max_length, require_tokenizer=True
    )


def run_sweep(
    config: SweepConfig | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    fresh: bool = False,
    quiet: bool = False,
    processes: Processes | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Runs (or resumes) a sweep; see the module docstring.

    Before anything is loaded or written, the config is checked against the model's ``config.json``
    (`jaxmech.sweeps.precheck`), and process 0 takes the run folder's lock (`jaxmech.sweeps.lock`; this also
    checks that ``out`` can be written). The first Ctrl-C stops the sweep after the chunk in progress (a
    second one at once, dropping that chunk); completed chunks are kept for a rerun to resume from.

    Args:
        config: A `SweepConfig` or the path of its TOML file.
        out: Run folder (default: the config's ``run.out_dir`` or ``runs/<name>``).
        fresh: Delete a previous sweep's results in ``out`` and start over.
        quiet: No progress bar: a log line a minute.
        processes: This process among several (`jaxmech.sweeps.distributed.initialize`); default alone.
        log: Where status lines go (default: stderr).

    Returns:
        A `SweepSummary`.

    Raises:
        ConfigError: On a bad config (before anything is computed).
        ValueError: If the config does not fit the model (before anything is written).
        RunLockedError: If another sweep is writing ``out`` (naming its host and pid).
        OSError: If ``out`` cannot be created or written (before anything is computed).
        ResumeError: If ``out`` holds another sweep's results (listing what changed) and not ``fresh``.
        SweepInterrupted: After a Ctrl-C (SIGINT), saying what is kept.
    """
    import sys

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = config if isinstance(config, SweepConfig) else load_sweep_config(config)
    procs = processes or Processes()
    out = Path(out) if out is not None else cfg.out_dir
    check_against_model(cfg)
    existed = out.exists()
    lock = None
    if procs.index == 0:
        try:
            lock = RunLock(out).acquire(log)
        except BaseException as err:
            procs.publish("init", f"error: {err}")
            raise
    try:
        with StopOnSigint() as stop:
            return _run_sweep(cfg, out, fresh, quiet, procs, log, stop)
    except KeyboardInterrupt:
        raise SweepInterrupted(out, SweepStore(out), dropped=True) from None
    finally:
        if lock is not None:
            lock.release()
        if not existed:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a sweep stopped before it wrote anything leaves nothing behind


def _run_sweep(cfg: SweepConfig, out: Path, fresh: bool, quiet: bool, procs: Processes, log, stop) -> SweepSummary:
    """`run_sweep` once its checks have passed and it holds the lock."""
    import jax

    from jaxmech import __version__
    from jaxmech.sweeps.compute import compute_chunk

    t_start = time.perf_counter()
    cache_dir = enable_compilation_cache()
    meter = CompileMeter()
    with precision_context(cfg.patching.precision):
        lm = _load_model(cfg)
        plan = plan_sweep(cfg, lm)
        from jaxmech.patching.background import with_background

        # [background]: the model with the ablated heads folded in (means over all of the sweep's pairs, once).
        lm, background = with_background(lm, plan.pairs, cfg.background.to_ablation())
        cfg = _sized(cfg, lm.model, plan.T_max, procs, log, out / "meta.json" if not fresh else None)
        t_plan = time.perf_counter() - t_start
        fams = family_shapes(cfg, lm.model.cfg, plan.T_max)
        C = cfg.chunking.pairs_per_chunk
        chunks = plan.chunks(C)
        try:
            from jaxmech.runtime import describe_device
        except ImportError:
            from jaxmech.device import describe_device
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fingerprint": cfg.fingerprint(),
            "config": cfg.to_dict(),
            "config_file": cfg.source,
            "result_settings": cfg.result_settings(),
            "model": {
                "id": cfg.model.path,
                "folder": str(lm.folder),
                "kind": lm.kind,
                "weights_sha256": _weights_sha256(lm.folder),
                "n_layers": lm.model.cfg.n_layers,
                "n_heads": lm.model.cfg.n_heads,
                "d_model": lm.model.cfg.d_model,
            },
            "datasets": plan.datasets,
            "dataset_sha256": hashlib.sha256("".join(d["sha256"] for d in plan.datasets).encode()).hexdigest(),
            "n_pairs": plan.n_pairs,
            "T_max": plan.T_max,
            "pairs_per_chunk": C,
            "n_chunks": len(chunks),
            "families": list(fams.values()),
            "metric": cfg.patching.metric,
            "direction": cfg.patching.direction,
            **({"readout": cfg.patching.readout} if cfg.patching.readout else {}),
            "precision": cfg.patching.precision,
            "jaxmech_version": __version__,
            "device": describe_device(),
            "processes": procs.count,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if background is not None:
            meta["background"] = background.describe()
        store = SweepStore(out)
        if procs.index == 0:
            try:
                _prepare_folder(store, out, cfg, meta, plan, fams, fresh, log)
            except BaseException as err:
                procs.publish("init", f"error: {err}")
                raise
            procs.publish("init", "ok")
        else:
            status = procs.wait_for("init")
            if status != "ok":
                raise ResumeError(f"process 0 could not set up {out}: {status[len('error: ') :]}")
        done = store.done_chunks()
        mine = procs.share(list(range(len(chunks))))
        todo = [k for k in mine if k not in done]
        runs = plan.table["runs"]
        chunk_runs = [int(runs[s:e].sum()) for s, e in chunks]
        chunk_pairs = [e - s for s, e in chunks]
        prefix = "sweep" if procs.count == 1 else f"sweep[{procs.index}/{procs.count}]"
        bar = Progress(
            sum(chunk_runs[k] for k in mine),
            sum(chunk_pairs[k] for k in mine),
            done_runs=sum(chunk_runs[k] for k in mine if k in done),
            done_pairs=sum(chunk_pairs[k] for k in mine if k in done),
            quiet=quiet,
            prefix=prefix,
        )
        t_compute = time.perf_counter()
        chunk_seconds = []
        try:
            for k in todo:
                if stop.requested:  # Ctrl-C while loading, planning or computing the previous chunk
                    raise SweepInterrupted(out, store)
                s, e = chunks[k]
                t0 = time.perf_counter()
                res = compute_chunk(lm, plan.pairs[s:e], cfg.families, cfg.patching, cfg.chunking, plan.T_max)
                values = {
                    "pairs.score_baseline": res.score_baseline,
                    "pairs.score_perturbed": res.score_perturbed,
                    "pairs.flagged": res.flagged,
                }
                for key, e_ in fams.items():
                    values[e_["effects"]] = res.effects[key]
                    values[e_["raw"]] = res.raw[key]
                    for part, name in e_.get("verify", {}).items():
                        values[name] = res.verify[key][part]
                store.write_rows(values, s)
                dt = time.perf_counter() - t0
                store.mark_done(k, {"process": procs.index, "seconds": round(dt, 3), "peak_rss_mb": _peak_rss_mb(),
                                    "files": chunk_files(out, s, e)})
                chunk_seconds.append(dt)
                bar.update(chunk_runs[k], chunk_pairs[k])
        finally:
            bar.close()
        t_end = time.perf_counter()
        timings = {
            "total_seconds": round(t_end - t_start, 3),
            "plan_seconds": round(t_plan, 3),
            "compute_seconds": round(t_end - t_compute, 3),
            **meter.as_dict(),
            "chunks_computed": len(todo),
            "chunks_resumed": len(mine) - len(todo),
            "patched_runs": int(sum(chunk_runs[k] for k in todo)),
            "patched_runs_per_second": round(sum(chunk_runs[k] for k in todo) / max(t_end - t_compute, 1e-9), 2),
            "chunk_seconds_mean": round(float(np.mean(chunk_seconds)), 3) if chunk_seconds else None,
            "compilation_cache": str(cache_dir) if cache_dir else None,
            "peak_rss_mb": _peak_rss_mb(),
            "device": jax.devices()[0].device_kind,
        }
        timings.update(_roofline(lm.model.cfg, cfg.families, plan, chunks, todo, t_end - t_compute))
        atomic_write_json(out / "processes" / f"{procs.index}.json", timings)
        procs.publish(f"finished/{procs.index}", "ok")
        complete = False
        steps: dict = {}
        if procs.index == 0:
            for i in range(1, procs.count):
                procs.wait_for(f"finished/{i}")
            missing = sorted(set(range(len(chunks))) - store.done_chunks())
            complete = not missing
            if complete:
                per_process = {p.stem: json.loads(p.read_text()) for p in sorted((out / "processes").glob("*.json"))}
                atomic_write_json(
                    out / "complete.json",
                    {
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "timings": timings,
                        "processes": per_process,
                    },
                )
                steps = run_steps(cfg, out, log)
        else:
            complete = not (set(range(len(chunks))) - store.done_chunks())
    patched = "cross-encoder" if lm.kind == "cross" else "bi-encoder: document side patched, query fixed"
    return SweepSummary(out, plan.n_pairs, list(fams), len(todo), len(mine) - len(todo), complete, timings, steps,
                        model=f"{cfg.model.path} ({patched})")


def _sized(cfg: SweepConfig, model, T_max: int, procs, log, previous: Path | None) -> SweepConfig:
    """``cfg`` with ``pairs_per_chunk`` chosen from compiled memory (`jaxmech.sweeps.sizing`), checked either way.
    Unset, it is the ``previous`` run's (``meta.json``, when resuming: free memory may have changed since), or 16
    with several processes (every process must cut the same chunks)."""
    from jaxmech.sweeps.sizing import resolve_chunking

    if not cfg.chunking.pairs_per_chunk:
        chosen = 16 if procs.count > 1 else 0
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):  # no run there: check_resume says
            chosen = int(json.loads(previous.read_text()).get("pairs_per_chunk", chosen)) if previous else chosen
        cfg = dataclasses.replace(cfg, chunking=dataclasses.replace(cfg.chunking, pairs_per_chunk=chosen))
    return dataclasses.replace(cfg, chunking=resolve_chunking(cfg, model, T_max, log))


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _prepare_folder(
    store: SweepStore, out: Path, cfg: SweepConfig, meta: dict, plan: Plan, fams: dict, fresh: bool, log
) -> None:
    meta_path = out / "meta.json"
    if fresh:
        _clear_run(out)
    elif meta_path.exists():
        old = json.loads(meta_path.read_text())
        changes = check_resume(old, meta)
        if changes:
            raise ResumeError(
                f"{out} holds results of another sweep, so it will not resume into them; changed: "
                + "; ".join(changes)
                + ". Rerun with --fresh to start over, or choose another --out."
            )
        _drop_failing_chunks(store, out, log)
        n_done = len(store.done_chunks())
        log(f"sweep: resuming {out}: {n_done}/{meta['n_chunks']} chunks complete")
        return
    elif _has_files(out) and not (out / "arrays").exists():
        raise ResumeError(f"{out}: exists, is not empty and is not a sweep folder (choose another --out)")
    # A folder without meta.json holds no complete chunk (meta.json is written before any): start clean.
    store.clear_done()
    _create_arrays(store, cfg, fams, plan.n_pairs)
    atomic_savez(out / "pairs.npz", plan.table)
    atomic_write_json(meta_path, meta)


def _drop_failing_chunks(store: SweepStore, out: Path, log) -> None:
    """Removes the markers of chunks whose stored files are missing or have the wrong size (so they are
    recomputed), saying which; the run is then not complete until they are."""
    check = check_run(out)
    if check.folder:
        raise ResumeError(f"{out}: {'; '.join(check.folder)}, so it cannot be resumed; rerun with --fresh")
    if check.bad:
        log(f"sweep: {out}: {check.describe()}; recomputing them")
        for k in check.bad:
            store.unmark(k)
        (out / "complete.json").unlink(missing_ok=True)


def run_steps(cfg: SweepConfig, out: Path, log) -> dict:
    """Runs the configured analysis steps, then the report, on a complete run (a step whose inputs did not
    change since its last run is skipped: `jaxmech.sweeps.steps.run_steps_once`)."""
    from jaxmech.sweeps.steps import run_steps_once

    todo = [(s.name, s.options) for s in cfg.analyses]
    if cfg.report.enabled:
        todo.append(("report", cfg.report.options))
    return run_steps_once(out, todo, log)
