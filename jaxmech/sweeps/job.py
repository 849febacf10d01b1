"""A sweep as a job: plan, store, resume, compute chunk by chunk, finish.

`run_sweep` is what ``jaxmech sweep CONFIG`` does:

1. **Plan** (`jaxmech.sweeps.plan`). Load the model, build or read the datasets, sample them (seeded), align
   pairs and sort them by length bucket (longest first, stable), so that every chunk of ``pairs_per_chunk``
   consecutive pairs is one stored zarr chunk and each bucket compiles once. The run's pair axis is this order;
   ``run.pairs["index"]`` is each pair's index in its dataset.
2. **Store.** Process 0 creates the run folder (arrays, pair table, then ``meta.json`` last: a
   `jaxmech.results.meta.RunMeta`) or checks that an existing one holds the same sweep: same result settings
   (config fingerprint), model weights, datasets and jaxmech version. Anything else refuses to resume and lists
   what changed (``fresh=True`` starts over).
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

import numpy as np

from jaxmech import runtime
from jaxmech.progress import CompileMeter, Progress, StopOnSigint
from jaxmech.results.integrity import check_run, chunk_files
from jaxmech.results.meta import FamilyArrays, ModelEntry, RunMeta, check_resume
from jaxmech.results.store import SweepStore, atomic_savez, atomic_write_json
from jaxmech.sweeps.config import SweepConfig, load_sweep_config
from jaxmech.sweeps.distributed import Processes
from jaxmech.sweeps.lock import LOCK_NAME, RunLock
from jaxmech.sweeps.plan import Plan, family_arrays, plan_sweep, runs_per_pair
from jaxmech.sweeps.precheck import check_against_model


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

def precision_context(name: str):
    """The matmul precision of a sweep (`jaxmech.runtime.precision`)."""
    return runtime.precision(name)


def enable_compilation_cache() -> Path | None:
    """Turns on JAX's persistent compilation cache (`jaxmech.runtime.enable_compilation_cache`, under
    ``$JAXMECH_CACHE/xla``). Every program is cached, however fast it compiled, so that a rerun or a resume
    compiles nothing. ``JAXMECH_COMPILATION_CACHE=0`` turns it off."""
    if os.environ.get("JAXMECH_COMPILATION_CACHE", "1") == "0":
        return None
    import jax

    path = runtime.enable_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(path) if path else None


# --------------------------------------------------------------------------------------------------------------
# Store layout
# --------------------------------------------------------------------------------------------------------------


def _create_arrays(store: SweepStore, families: tuple[FamilyArrays, ...], n: int, C: int) -> None:
    """Every result array of a run of ``n`` pairs, empty, chunked by ``C`` pairs."""
    for e in families:
        for name in (e.effects, e.raw):
            store.create_array(name, [n, *e.shape], e.dims, chunk_pairs=C)
        if e.verify is not None:
            v = e.verify_shape
            nc, k, nd = len(v["components"]), v["k"], len(v["index_axes"])
            store.create_array(
                e.verify["index"],
                [n, nc, k, nd],
                ["pair", "component", "rank", "axis"],
                dtype="int32",
                chunk_pairs=C,
                fill=-1,
            )
            for part in ("estimated", "exact"):
                store.create_array(e.verify[part], [n, nc, k], ["pair", "component", "rank"], chunk_pairs=C)
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
    return roofline(model_cfg, families, [plan.pairs[i] for i in idx], plan.table["bucket"][idx], runs_per_pair,
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


@dataclasses.dataclass(frozen=True)
class ChunkShare:
    """This process's part of a run's chunks.

    Attributes:
        chunks: ``(start, end)`` pairs of every chunk of the run.
        runs: Patched runs of every chunk.
        mine: This process's chunks.
        todo: Those of ``mine`` without a completion marker (computed now; the others are resumed).
    """

    chunks: list[tuple[int, int]]
    runs: list[int]
    mine: list[int]
    todo: list[int]

    @classmethod
    def of(cls, plan: Plan, pairs_per_chunk: int, procs: Processes, done: set[int]) -> ChunkShare:
        """The share of process ``procs.index`` given the chunks already ``done``."""
        chunks = plan.chunks(pairs_per_chunk)
        runs = plan.table["runs"]
        mine = procs.share(list(range(len(chunks))))
        return cls(chunks, [int(runs[s:e].sum()) for s, e in chunks], mine, [k for k in mine if k not in done])

    def pairs(self, k: int) -> int:
        """Pairs of chunk ``k``."""
        s, e = self.chunks[k]
        return e - s

    def progress(self, quiet: bool, prefix: str) -> Progress:
        """The progress bar over this process's chunks, the resumed ones counted as done."""
        resumed = [k for k in self.mine if k not in self.todo]
        return Progress(sum(self.runs[k] for k in self.mine), sum(self.pairs(k) for k in self.mine),
                        done_runs=sum(self.runs[k] for k in resumed), done_pairs=sum(self.pairs(k) for k in resumed),
                        quiet=quiet, prefix=prefix)


def _run_sweep(cfg: SweepConfig, out: Path, fresh: bool, quiet: bool, procs: Processes, log, stop) -> SweepSummary:
    """`run_sweep` once its checks have passed and it holds the lock: plan, set up the run folder, compute this
    process's chunks, finish."""
    t_start = time.perf_counter()
    cache_dir = enable_compilation_cache()
    meter = CompileMeter()
    with precision_context(cfg.patching.precision):
        lm, cfg, plan, background = _plan_run(cfg, out, fresh, procs, log)
        t_plan = time.perf_counter() - t_start
        meta = _run_meta(cfg, lm, plan, background, procs)
        store = SweepStore(out)
        _set_up_folder(store, out, meta, plan, fresh, procs, log)
        share = ChunkShare.of(plan, meta.pairs_per_chunk, procs, store.done_chunks())
        t_compute = time.perf_counter()
        chunk_seconds = _compute_chunks(lm, cfg, plan, meta, share, store, out, procs, quiet, stop)
        t_end = time.perf_counter()
        timings = _timings((t_start, t_plan, t_compute, t_end), meter, share, chunk_seconds, cache_dir)
        timings.update(_roofline(lm.model.cfg, cfg.families, plan, share.chunks, share.todo, t_end - t_compute))
        atomic_write_json(out / "processes" / f"{procs.index}.json", timings)
        procs.publish(f"finished/{procs.index}", "ok")
        complete, steps = _finish(cfg, out, store, len(share.chunks), timings, procs, log)
    patched = "cross-encoder" if lm.kind == "cross" else "bi-encoder: document side patched, query fixed"
    return SweepSummary(out, plan.n_pairs, [f.key for f in meta.families], len(share.todo),
                        len(share.mine) - len(share.todo), complete, timings, steps,
                        model=f"{cfg.model.path} ({patched})")


def _plan_run(cfg: SweepConfig, out: Path, fresh: bool, procs: Processes, log):
    """Loads the model, plans the pairs, folds the ``[background]`` in and sizes the chunks: ``(lm, cfg with
    pairs_per_chunk set, plan, the resolved background or None)``."""
    from jaxmech.patching.background import with_background

    lm = _load_model(cfg)
    plan = plan_sweep(cfg, lm)
    # [background]: the model with the ablated heads folded in (means over all of the sweep's pairs, once).
    lm, background = with_background(lm, plan.pairs, cfg.background.to_ablation())
    cfg = _sized(cfg, lm.model, plan.T_max, procs, log, out / "meta.json" if not fresh else None)
    return lm, cfg, plan, background


def _run_meta(cfg: SweepConfig, lm, plan: Plan, background, procs: Processes) -> RunMeta:
    """The run's ``meta.json`` (see `jaxmech.results.meta.RunMeta`)."""
    from jaxmech import __version__

    mc, C = lm.model.cfg, cfg.chunking.pairs_per_chunk
    model = ModelEntry(id=cfg.model.path, folder=str(lm.folder), kind=lm.kind,
                       weights_sha256=_weights_sha256(lm.folder), n_layers=mc.n_layers, n_heads=mc.n_heads,
                       d_model=mc.d_model)
    return RunMeta(
        fingerprint=cfg.fingerprint(), config=cfg.to_dict(), config_file=cfg.source,
        result_settings=cfg.result_settings(), model=model, datasets=tuple(plan.datasets), n_pairs=plan.n_pairs,
        T_max=plan.T_max, pairs_per_chunk=C, n_chunks=len(plan.chunks(C)),
        families=tuple(family_arrays(cfg, mc, plan.T_max).values()), metric=cfg.patching.metric,
        direction=cfg.patching.direction, readout=cfg.patching.readout, precision=cfg.patching.precision,
        jaxmech_version=__version__, device=runtime.describe_device(), processes=procs.count,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        background=None if background is None else background.describe(),
    )


def _set_up_folder(store: SweepStore, out: Path, meta: RunMeta, plan: Plan, fresh: bool, procs: Processes,
                   log) -> None:
    """Process 0 creates or checks the run folder (`_prepare_folder`) and tells the others, which wait for it."""
    if procs.index == 0:
        try:
            _prepare_folder(store, out, meta, plan, fresh, log)
        except BaseException as err:
            procs.publish("init", f"error: {err}")
            raise
        procs.publish("init", "ok")
    else:
        status = procs.wait_for("init")
        if status != "ok":
            raise ResumeError(f"process 0 could not set up {out}: {status[len('error: ') :]}")


def _chunk_values(res, families: tuple[FamilyArrays, ...]) -> dict[str, np.ndarray]:
    """A computed chunk (`jaxmech.sweeps.compute.ChunkResult`) by stored array name."""
    values = {
        "pairs.score_baseline": res.score_baseline,
        "pairs.score_perturbed": res.score_perturbed,
        "pairs.flagged": res.flagged,
    }
    for f in families:
        values[f.effects] = res.effects[f.key]
        values[f.raw] = res.raw[f.key]
        for part, name in (f.verify or {}).items():
            values[name] = res.verify[f.key][part]
    return values


def _compute_chunks(lm, cfg: SweepConfig, plan: Plan, meta: RunMeta, share: ChunkShare, store: SweepStore, out: Path,
                    procs: Processes, quiet: bool, stop) -> list[float]:
    """Computes, writes and marks complete every chunk of ``share.todo``, in order; returns each one's seconds.

    Raises:
        SweepInterrupted: After a Ctrl-C, before the next chunk.
    """
    from jaxmech.sweeps.compute import compute_chunk

    bar = share.progress(quiet, "sweep" if procs.count == 1 else f"sweep[{procs.index}/{procs.count}]")
    seconds = []
    try:
        for k in share.todo:
            if stop.requested:  # Ctrl-C while loading, planning or computing the previous chunk
                raise SweepInterrupted(out, store)
            s, e = share.chunks[k]
            t0 = time.perf_counter()
            res = compute_chunk(lm, plan.pairs[s:e], cfg.families, cfg.patching, cfg.chunking, plan.T_max)
            store.write_rows(_chunk_values(res, meta.families), s)
            dt = time.perf_counter() - t0
            store.mark_done(k, {"process": procs.index, "seconds": round(dt, 3), "peak_rss_mb": _peak_rss_mb(),
                                "files": chunk_files(out, s, e)})
            seconds.append(dt)
            bar.update(share.runs[k], share.pairs(k))
    finally:
        bar.close()
    return seconds


def _timings(t: tuple[float, float, float, float], meter: CompileMeter, share: ChunkShare, chunk_seconds: list[float],
             cache_dir: Path | None) -> dict:
    """This process's ``timings`` (``processes/<i>.json``) from ``t = (start, plan seconds, compute start, end)``."""
    import jax

    t_start, t_plan, t_compute, t_end = t
    runs = sum(share.runs[k] for k in share.todo)
    return {
        "total_seconds": round(t_end - t_start, 3),
        "plan_seconds": round(t_plan, 3),
        "compute_seconds": round(t_end - t_compute, 3),
        **meter.as_dict(),
        "chunks_computed": len(share.todo),
        "chunks_resumed": len(share.mine) - len(share.todo),
        "patched_runs": int(runs),
        "patched_runs_per_second": round(runs / max(t_end - t_compute, 1e-9), 2),
        "chunk_seconds_mean": round(float(np.mean(chunk_seconds)), 3) if chunk_seconds else None,
        "compilation_cache": str(cache_dir) if cache_dir else None,
        "peak_rss_mb": _peak_rss_mb(),
        "device": jax.devices()[0].device_kind,
    }


def _finish(cfg: SweepConfig, out: Path, store: SweepStore, n_chunks: int, timings: dict, procs: Processes,
            log) -> tuple[bool, dict]:
    """Whether every chunk is complete, and the steps' outputs: process 0 waits for the others and, when the run
    is complete, writes ``complete.json`` and runs the configured steps."""
    if procs.index != 0:
        return not (set(range(n_chunks)) - store.done_chunks()), {}
    for i in range(1, procs.count):
        procs.wait_for(f"finished/{i}")
    if set(range(n_chunks)) - store.done_chunks():
        return False, {}
    per_process = {p.stem: json.loads(p.read_text()) for p in sorted((out / "processes").glob("*.json"))}
    atomic_write_json(
        out / "complete.json",
        {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "timings": timings, "processes": per_process},
    )
    return True, run_steps(cfg, out, log)


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


def _prepare_folder(store: SweepStore, out: Path, meta: RunMeta, plan: Plan, fresh: bool, log) -> None:
    """Creates the run folder (arrays, pair table, ``meta.json`` last), or checks that it holds this sweep and
    drops the markers of chunks whose files fail the check (so they are recomputed).

    Raises:
        ResumeError: If ``out`` holds another sweep, or something that is not a sweep's.
    """
    meta_path = out / "meta.json"
    new = meta.to_json()
    if fresh:
        _clear_run(out)
    elif meta_path.exists():
        old = json.loads(meta_path.read_text())
        changes = check_resume(old, new)
        if changes:
            raise ResumeError(
                f"{out} holds results of another sweep, so it will not resume into them; changed: "
                + "; ".join(changes)
                + ". Rerun with --fresh to start over, or choose another --out."
            )
        _drop_failing_chunks(store, out, log)
        n_done = len(store.done_chunks())
        log(f"sweep: resuming {out}: {n_done}/{meta.n_chunks} chunks complete")
        return
    elif _has_files(out) and not (out / "arrays").exists():
        raise ResumeError(f"{out}: exists, is not empty and is not a sweep folder (choose another --out)")
    # A folder without meta.json holds no complete chunk (meta.json is written before any): start clean.
    store.clear_done()
    _create_arrays(store, meta.families, plan.n_pairs, meta.pairs_per_chunk)
    atomic_savez(out / "pairs.npz", plan.table)
    atomic_write_json(meta_path, new)


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
