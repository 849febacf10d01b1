"""What ``jaxmech patch`` does, as library calls.

* `run_patching` runs families over any number of aligned pairs (bucketed by length, one compiled program per
  bucket and family), applies the metric, and returns a `jaxmech.patching.results.PatchingResult` with named
  axes, a per-pair table, per-token-type means and metadata. One request runs all its families on each chunk
  (the batch, a bi-encoder's query encoding and the readout's binding are made once per chunk); a
  `FamilyRequest` gives a family its own method, receivers and groups (`run_values` is the step before the
  run's flags and summaries, which a sweep's chunk calls).
* `patch` is the one call behind the command: load the model, read the pairs, run, save. Everything the
  command writes is ``patch(...)``'s result saved with ``PatchingResult.save``.

Example (the README's main job)::

    from jaxmech.patching.run import patch

    res = patch("packaged", ["block_every", "head_all_pos_v", "path_to_score"], dataset="tfc1_demo.jsonl",
                limit=16, out="tfc1_demo_patching.npz")
    res.effects["path_to_score"]   # [pair, layer, head] normalized effects
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmech import runtime
from jaxmech.data.records import AlignedPair
from jaxmech.patching.families import Family, get_family
from jaxmech.patching.metrics import apply_metric
from jaxmech.patching.receivers import check_groups, check_receivers, head_names
from jaxmech.patching.results import PatchingResult, pair_table
from jaxmech.patching.summaries import STATISTICS, TOKEN_TYPE_ORDER, mean_by_token_type, top_heads

METHODS = ("exact", "attribution")
RUN_METRICS = ("normalized", "difference", "raw")


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a `run_patching` progress callback receives after each chunk of pairs.

    Attributes:
        pairs_done: Pairs finished so far.
        pairs_total: All pairs of the run.
        chunks_done: Chunks finished so far.
        chunks_total: All chunks (a chunk is up to ``pairs_per_chunk`` pairs of one length bucket).
        bucket_length: Padded length of the chunk just finished.
        seconds: Time since the run started.
    """

    pairs_done: int
    pairs_total: int
    chunks_done: int
    chunks_total: int
    bucket_length: int
    seconds: float


class PatchInterrupted(Exception):
    """A run stopped by SIGINT (Ctrl-C) between chunks; nothing was saved.

    Attributes:
        progress: The last `Progress` reported (None if no chunk finished).
    """

    def __init__(self, progress: Progress | None):
        done = f"{progress.pairs_done}/{progress.pairs_total} pairs" if progress else "no chunk"
        super().__init__(f"interrupted after {done} finished; nothing was saved")
        self.progress = progress


class InterruptibleProgress:
    """A `run_patching` progress callback that shows a bar and stops the run on SIGINT.

    Use as a context manager: it installs a SIGINT handler for its duration only (in the main thread; elsewhere
    none), which sets ``interrupted``; the callback then returns False so `run_patching` stops after the chunk
    in progress. A second SIGINT raises `KeyboardInterrupt` at once. The previous handler is restored on exit.
    With a bar, a heartbeat line names what is being computed (chunk, bucket, family: `step`, given to
    `run_patching` as ``on_step``) every ``heartbeat`` seconds, so a long chunk does not look like a hang.

    Args:
        inner: Another callback, called first (its falsy non-None answer also stops the run).
        bar: Show progress (pairs done, ETA) on stderr with `jaxmech.progress.Progress`: a tqdm bar on a
            terminal, else one line per chunk.
        prefix: The bar's label.
        sigint: Install the SIGINT handler (False: a progress bar only).
        heartbeat: Seconds between heartbeat lines (0: none).
    """

    def __init__(self, inner: Callable[[Progress], bool | None] | None = None, *, bar: bool = False,
                 prefix: str = "patch", sigint: bool = True, heartbeat: float = 60.0):
        self.inner, self.show, self.prefix, self.sigint = inner, bar, prefix, sigint
        self.interrupted = False
        self.last: Progress | None = None
        self._bar = None
        self._previous = None
        self.heartbeat = heartbeat
        self._step: tuple[str, float] | None = None
        self._beat = None

    def step(self, description: str) -> None:
        """`run_patching`'s ``on_step``: remembers what is being computed, for the heartbeat."""
        import time

        self._step = (description, time.perf_counter())

    def _heartbeat(self, stop) -> None:
        """With a bar: every ``heartbeat`` seconds, one line saying what is being computed and for how long."""
        import sys
        import time

        while not stop.wait(self.heartbeat):
            if self._step is None:
                continue
            what, since = self._step
            line = f"{self.prefix}: computing {what}, {time.perf_counter() - since:.0f}s so far"
            if self._bar is not None and self._bar.bar is not None:
                self._bar.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def _on_sigint(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True

    def __enter__(self) -> InterruptibleProgress:
        import signal
        import threading

        if self.sigint and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        if self.show and self.heartbeat:
            stop = threading.Event()
            self._beat = (stop, threading.Thread(target=self._heartbeat, args=(stop,), daemon=True))
            self._beat[1].start()
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self._beat is not None:
            self._beat[0].set()
            self._beat[1].join()
            self._beat = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, event: Progress) -> bool | None:
        if self.show:
            import sys

            from jaxmech.progress import Progress as Bar

            if self._bar is None:
                self._bar = Bar(event.pairs_total, event.pairs_total, quiet=not sys.stderr.isatty(),
                                prefix=self.prefix, log_every=0.0, unit="pair")
                self._bar.started_earlier(event.seconds)  # the rate and ETA count the first chunk's time
            done = self.last.pairs_done if self.last else 0
            self._bar.update(event.pairs_done - done, event.pairs_done - done)
        self.last = event
        answer = self.inner(event) if self.inner is not None else None
        if self.interrupted:
            return False
        return answer


@dataclasses.dataclass(frozen=True)
class FamilyRequest:
    """One family of a run with its own options (a run may hold several of one family, with different keys).

    Attributes:
        family: The family.
        method: ``"exact"`` or ``"attribution"``.
        receivers: Receiver heads ``((layer, head), ...)`` of path families that read them (else empty).
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        groups: Head groups ``(((layer, head), ...), ...)`` of group families (else empty).
        key: The result's name (default: the family's name).
    """

    family: Family
    method: str = "exact"
    receivers: tuple[tuple[int, int], ...] = ()
    receiver_input: str = "k"
    groups: tuple[tuple[tuple[int, int], ...], ...] = ()
    key: str = ""

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.family.name)

    def check(self, model_shape: tuple[int, int] | None = None) -> FamilyRequest:
        """This request with its method checked and its receivers and groups parsed and checked (against
        ``(n_layers, n_heads)`` when given).

        Raises:
            ValueError: For a method the family does not support, missing receivers or groups, or a malformed
                or out-of-range head.
        """
        fam, shape = self.family, model_shape or (None, None)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.method not in fam.methods:
            raise ValueError(f"--method {self.method} is not available for {fam.name}; use --method exact")
        if fam.needs_receivers and not self.receivers:
            raise ValueError(f"{fam.name} needs --receiver LAYER.HEAD (e.g. --receiver 4.1)")
        receivers = check_receivers(self.receivers, self.receiver_input, *shape) if fam.needs_receivers else ()
        groups = check_groups(self.groups, *shape) if fam.needs_groups else ()
        return dataclasses.replace(self, receivers=receivers, groups=groups)

    def options(self) -> dict[str, Any]:
        """The runner's options of this request (see `jaxmech.patching.runners.run_family`)."""
        return dict(method=self.method, receivers=list(self.receivers), receiver_input=self.receiver_input,
                    groups=self.groups or None)


def check_request(families: Sequence[str | Family | FamilyRequest], *, method: str = "exact",
                  metric: str = "normalized", receivers: Sequence[str] | None = None, receiver_input: str = "k",
                  model_shape: tuple[int, int] | None = None, precision: str | None = None,
                  groups: Sequence[Sequence[str]] | None = None) -> list[FamilyRequest]:
    """Checks a run's families and options without a model (cheap, before loading anything).

    Args:
        families: Family names, families or `FamilyRequest` s (which keep their own options; the options
            below apply to the others).
        method: ``"exact"`` or ``"attribution"``.
        metric: A metric of `RUN_METRICS`.
        receivers: Receiver heads ``"LAYER.HEAD"``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        model_shape: ``(n_layers, n_heads)`` to check receivers against, if known.
        precision: A matmul precision of `jaxmech.runtime.PRECISIONS` (None: the one in effect).
        groups: Head groups of ``heads_joint`` (``[["9.1", "9.2"], ...]``).

    Returns:
        One checked `FamilyRequest` per family (receivers and groups parsed).

    Raises:
        UnknownFamilyError: For an unknown family name.
        ValueError: For an unknown method, metric or receiver input, a method a family does not support, a
            path family without receivers, a malformed or out-of-range receiver, or two results of one key.
    """
    if precision is not None:
        runtime.check_precision(precision, where="--precision")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if metric not in RUN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {RUN_METRICS}")
    requests = [f if isinstance(f, FamilyRequest) else
                FamilyRequest(get_family(f), method, tuple(receivers or ()), receiver_input, tuple(groups or ()))
                for f in families]
    if not requests:
        raise ValueError("no patching family given")
    checked = [r.check(model_shape) for r in requests]
    keys = [r.key for r in checked]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two results of one name in {keys}: give the requests distinct keys")
    return checked


def check_output(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Checks that ``out`` can be written as a file (before any computation).

    Raises:
        ValueError: If ``out`` is a directory, lies under a regular file, or its folder is not writable.
        FileExistsError: If ``out`` exists and ``overwrite`` is False.
    """
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path}: is a directory; give a file name such as {path / 'result.npz'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--out {path} exists; pass --overwrite to replace it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: the folder {parent} is not writable")
    return path


def local_model_shape(model: str | os.PathLike) -> tuple[int, int] | None:
    """``(n_layers, n_heads)`` from a local model folder's ``config.json`` (None for hub ids or no config)."""
    import json

    from jaxmech.files import resolve_model_path

    try:
        config = Path(resolve_model_path(model)) / "config.json"
        if config.is_file():
            cfg = json.loads(config.read_text())
            return int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _chunks(idx: list[int], size: int | None) -> list[list[int]]:
    if not size:
        return [idx]
    return [idx[i:i + size] for i in range(0, len(idx), size)]


@dataclasses.dataclass
class RunValues:
    """What the families of a run computed, before the run's flags and summaries (`run_values`).

    Attributes:
        requests: The families, as run.
        effects: ``key -> [pair, ...]`` metric values, position axes padded with NaN to ``T_max``; NaN for pairs
            not run.
        raw: ``key -> [pair, ...]`` patched values (attribution: baseline + estimate).
        flagged: ``key -> [pair]`` near-zero denominators of the normalized metric (by that family's values).
        score_baseline: ``[pair]`` the unpatched runs' values (of the last family run on each pair).
        score_perturbed: ``[pair]`` same for the run the activations came from.
        done: ``[pair]`` pairs run (False after a stop).
        stopped: Whether ``progress`` stopped the run.
        seconds: Time the families took.
        meta: What the run's result records of its background.
        readout: The readout, parsed.
    """

    requests: list[FamilyRequest]
    effects: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    flagged: dict[str, np.ndarray]
    score_baseline: np.ndarray
    score_perturbed: np.ndarray
    done: np.ndarray
    stopped: bool
    seconds: float
    meta: dict[str, Any]
    readout: Any = None


@dataclasses.dataclass
class _Setup:
    """A run ready to go: the model (background folded in), the bound-once readout, and the chunks."""

    model: Any
    tokenizer: Any
    readout: Any
    interventions: list
    chunks: list[tuple[int, list[int]]]
    T_max: int
    meta: dict[str, Any]


def _setup(lm, pairs: Sequence[AlignedPair], requests: Sequence[FamilyRequest], *, readout, background,
           pairs_per_chunk: int | None) -> _Setup:
    """Checks the readout, the vocabulary and the background against the model and the pairs (before anything
    is computed), folds head ablations into the model and groups the pairs into chunks of one length bucket."""
    from jaxmech.hf.tokenizer import bucket_length
    from jaxmech.patching.background import with_background
    from jaxmech.patching.engines.full_forward import check_supported, describe, split_background
    from jaxmech.patching.inputs import check_vocabulary
    from jaxmech.patching.readouts import bind, check_readout, parse_readout

    if not pairs:
        raise ValueError("no pairs to patch")
    model, tok = lm.model, lm.tokenizer
    readout = parse_readout(readout) if readout is None or isinstance(readout, str) else readout
    for method in dict.fromkeys(r.method for r in requests):
        check_readout(readout, model, method=method)
    bind(readout, pairs, max(max(len(p.baseline_ids), len(p.perturbed_ids)) for p in pairs))  # every pair's positions
    vocab_size = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if vocab_size is not None:  # before computing anything: JAX would clamp out-of-range ids silently
        check_vocabulary(pairs, vocab_size)
    background, interventions = split_background(background)  # head ablations, other interventions
    lm, resolved = with_background(lm, pairs, background)  # the model with the ablations folded in
    for r in requests if interventions else ():
        check_supported(lm.model, r.family, r.method)
    if interventions and readout.spec() != "score":
        raise ValueError(f"readout {readout.spec()!r}: background interventions (PatchSpec) support the score only")
    meta: dict[str, Any] = {}
    if resolved is not None:
        meta["background"] = resolved.describe()
    if interventions:
        meta.setdefault("background", {}).update(describe(interventions))
    buckets: dict[int, list[int]] = {}  # one compiled program per bucket
    for i, p in enumerate(pairs):
        n = max(len(p.baseline_ids), len(p.perturbed_ids))
        buckets.setdefault(bucket_length(n, tok.buckets, tok.max_length), []).append(i)
    chunks = [(T, c) for T, idx in sorted(buckets.items()) for c in _chunks(idx, pairs_per_chunk)]
    return _Setup(lm.model, tok, readout, interventions, chunks, max(buckets), meta)


def _store(store: dict[str, np.ndarray], key: str, layout: str, values: np.ndarray, idx: list[int], n_pairs: int,
           T_max: int) -> None:
    """Writes a chunk's ``[n, ...]`` values into the run's ``[pair, ...]`` array (made on first use, NaN)."""
    if key not in store:
        shape = [T_max if c == "p" else s for c, s in zip(layout, values.shape[1:], strict=True)]
        store[key] = np.full((n_pairs, *shape), np.nan, np.float32)
    sl = tuple(slice(0, s) for s in values.shape[1:])
    store[key][(np.asarray(idx), *sl)] = values


@runtime.with_precision
def run_values(lm, pairs: Sequence[AlignedPair], requests: Sequence[FamilyRequest], *, metric: str = "normalized",
               reverse: bool = False, chunk_size: int | None = None, min_denominator: float = 1e-3,
               pairs_per_chunk: int | None = None, steps_per_call: int | None = None,
               progress: Callable[[Progress], bool | None] | None = None,
               on_step: Callable[[str], None] | None = None, mesh=None, background=None, readout=None) -> RunValues:
    """Runs every family of a request on each chunk of pairs: one batch, one query encoding and one readout
    binding per chunk serve all families. The step of `run_patching` before its flags and summaries (a sweep's
    chunk calls it directly, `jaxmech.sweeps.compute.compute_chunk`).

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel`.
        pairs: Aligned pairs.
        requests: Checked `FamilyRequest` s (`check_request`).
        metric, reverse, chunk_size, min_denominator, pairs_per_chunk, steps_per_call, progress, on_step,
        mesh, background, readout: As in `run_patching`.

    Returns:
        The `RunValues`.
    """
    from jaxmech.patching.caches import query_embeddings
    from jaxmech.patching.inputs import batch_pairs
    from jaxmech.patching.readouts import bind

    run = _setup(lm, pairs, requests, readout=readout, background=background, pairs_per_chunk=pairs_per_chunk)
    n_all = len(pairs)
    out = RunValues(list(requests), {}, {}, {}, np.zeros(n_all, np.float32), np.zeros(n_all, np.float32),
                    np.zeros(n_all, bool), False, 0.0, run.meta, run.readout)
    shared = dict(reverse=reverse, chunk_size=chunk_size, mesh=mesh, steps_per_call=steps_per_call)
    metric_kw = {"min_denominator": min_denominator} if metric == "normalized" else {}
    t0 = time.perf_counter()
    for k, (T, idx) in enumerate(run.chunks):
        tok, model = run.tokenizer, run.model
        batch = batch_pairs([pairs[i] for i in idx], pad_id=tok.pad_id, max_length=tok.max_length, length=T,
                            n_pairs=pairs_per_chunk, vocab_size=getattr(getattr(model, "cfg", None), "d_vocab", None))
        qe = None
        if not model.pair_input:  # the patched run is the document's; the score compares with the query's
            qe = query_embeddings(model, tok, [pairs[i].query for i in idx], batch.n_pairs)
        bound = bind(run.readout, [pairs[i] for i in idx], T, batch.n_pairs)
        for f, request in enumerate(requests):
            if on_step is not None:
                on_step(f"chunk {k + 1}/{len(run.chunks)} ({len(idx)} pairs of length {T}): family {request.key} "
                        f"({f + 1}/{len(requests)})")
            res = _run_one(run, request, batch, qe, bound, shared)
            n = len(idx)
            patched, base, pert = res.patched[:n], res.baseline_score[:n], res.perturbed_score[:n]
            values = apply_metric(metric, patched, base, pert, **metric_kw)
            layout = request.family.full_layout
            _store(out.effects, request.key, layout, values.values, idx, n_all, run.T_max)
            _store(out.raw, request.key, layout, patched, idx, n_all, run.T_max)
            out.score_baseline[idx], out.score_perturbed[idx] = base, pert
            out.flagged.setdefault(request.key, np.zeros(n_all, bool))[idx] |= values.flagged
        out.done[idx] = True
        if progress is not None:
            event = Progress(int(out.done.sum()), n_all, k + 1, len(run.chunks), T, time.perf_counter() - t0)
            answer = progress(event)
            if answer is not None and not answer and k + 1 < len(run.chunks):
                out.stopped = True
                break
    out.seconds = time.perf_counter() - t0
    return out


def _run_one(run: _Setup, request: FamilyRequest, batch, query_embedding, bound, shared: dict):
    """One family on one batch: by full forwards with background interventions (the restarted engine runs blocks
    without hooks), else by the family's runner."""
    if run.interventions:
        from jaxmech.patching.engines.full_forward import full_forward_patch

        return full_forward_patch(run.model, batch, request.family, run.interventions, **shared)
    from jaxmech.patching.runners import run_family

    return run_family(request.family, run.model, batch, query_embedding=query_embedding, readout=bound,
                      **shared, **request.options())


def no_result_pairs(pairs: Sequence[AlignedPair], effects: Sequence[np.ndarray]) -> np.ndarray:
    """``[pair]`` pairs with nothing to patch (no aligned position) or no defined value in any of ``effects``
    (``[pair, ...]`` arrays)."""
    empty = np.array([not any(m >= 0 for m in p.position_map) for p in pairs])
    all_nan = np.all([np.isnan(a.reshape(len(pairs), -1)).all(1) for a in effects], axis=0)
    return empty | all_nan


@runtime.with_precision
def run_patching(lm, pairs: Sequence[AlignedPair], families: Sequence[str | Family | FamilyRequest], *,
                 method: str = "exact", metric: str = "normalized", reverse: bool = False,
                 receivers: Sequence[str] | None = None, receiver_input: str = "k", chunk_size: int | None = None,
                 min_denominator: float = 1e-3, relative_min_denominator: float | None = None,
                 aggregate: str = "mean", pairs_per_chunk: int | None = None, steps_per_call: int | None = None,
                 progress: Callable[[Progress], bool | None] | None = None,
                 on_step: Callable[[str], None] | None = None, mesh=None, background=None,
                 groups: Sequence[Sequence[str]] | None = None, readout=None) -> PatchingResult:
    """Runs patching families over aligned pairs: what ``jaxmech patch`` computes.

    Pairs are grouped by length bucket (one compiled program per bucket and family) and, with
    ``pairs_per_chunk``, split into chunks; between chunks ``progress`` is called, and a falsy return other
    than None stops the run (the result then has ``pairs["done"]`` False and NaN for the pairs not run, and
    ``meta["stopped"]`` True).

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel` (model and tokenizer).
        pairs: Aligned pairs as the model reads them (see `jaxmech.patching.inputs.read_pairs`; for a
            bi-encoder document-only pairs with ``query`` set).
        families: Family names from `jaxmech.patching.families.REGISTRY`, or `FamilyRequest` s with their own
            method, receivers and groups (the options below apply to names); all run on each chunk in turn.
        method: ``"exact"`` or ``"attribution"`` (activation families only).
        metric: ``"normalized"`` (the paper's), ``"difference"`` or ``"raw"``.
        reverse: Patch baseline activations into the perturbed run.
        receivers: Receiver heads ``"LAYER.HEAD"`` for path families that need them.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        chunk_size: Sites per vmapped step (default: from free device memory).
        min_denominator: Normalized metric: flag pairs with ``|perturbed - baseline|`` below this (absolute).
        relative_min_denominator: Normalized metric, scale-aware: also flag pairs with ``|perturbed - baseline|``
            below this fraction of its median over the pairs run (e.g. 0.1; the threshold is in ``meta``; see
            `jaxmech.patching.metrics.relative_denominator_flags`). None: only the absolute rule.
        aggregate: How ``by_type`` aggregates pairs: ``"mean"`` (default), ``"median"`` or ``"trimmed"`` (see
            `jaxmech.patching.summaries.over_pairs`); `summarize` ranks ``top_heads`` the same way.
        precision: Matmul precision, a name of `jaxmech.runtime.PRECISIONS` (keyword; default ``"fp32"``, or an
            enclosing call's); checked before anything runs and recorded in ``meta["precision"]``.
        pairs_per_chunk: Pairs per chunk within a length bucket (default: the whole bucket). Every chunk of a
            bucket then has exactly this many pairs (the last filled with inert pairs that run nothing), so with
            ``steps_per_call`` each family compiles once per bucket (last bits may differ with the chunk size).
        steps_per_call: Run sites in calls of a fixed ``steps_per_call x chunk_size`` (see
            `jaxmech.patching.program.run_kernel`).
        progress: Called with a `Progress` after each chunk.
        on_step: Called with a description (chunk, bucket, family) before each family of each chunk runs (what
            a heartbeat names while a long chunk computes).
        mesh: Devices to shard sites over (default: every local device).
        background: Heads ablated in both runs (and so in every patched run): an `Ablation`, a list of them,
            or a resolved background; means are computed over ``pairs`` first (`jaxmech.patching.background`);
            recorded in ``meta["background"]``. Interventions (any `jaxmech.interventions.PatchSpec`) may be given
            too: the families then run by full forwards (`jaxmech.patching.engines.full_forward`: exact, slower;
            activation families of cross-encoders only).
        groups: Head groups for ``heads_joint`` (``[["9.1", "9.2"], ["10.1"]]``; recorded in ``meta["groups"]``).
        readout: What each patched run measures: None or ``"score"`` (the model's score), a readout of
            `jaxmech.patching.readouts` or its string form (``"attn:10.7:CLS->Qplus"``). The metric then
            applies to the readout's values, ``pairs["score_baseline"]``/``["score_perturbed"]`` hold the
            unpatched runs' readout values, and ``meta["readout"]`` names it (absent for the score).

    Returns:
        A `PatchingResult`: ``effects[family]`` and ``raw[family]`` ``[pair, ...]`` with position axes padded
        with NaN to the longest pair's length bucket.

    Raises:
        UnknownFamilyError, ValueError: See `check_request`; `AlignmentError` for pairs that cannot be patched.
    """
    requests = check_request(families, method=method, metric=metric, receivers=receivers,
                             receiver_input=receiver_input, groups=groups)
    _check_run_options(pairs, aggregate, relative_min_denominator)
    values = run_values(lm, pairs, requests, metric=metric, reverse=reverse, chunk_size=chunk_size,
                        min_denominator=min_denominator, pairs_per_chunk=pairs_per_chunk,
                        steps_per_call=steps_per_call, progress=progress, on_step=on_step, mesh=mesh,
                        background=background, readout=readout)
    flagged, no_result, relative_threshold = _run_flags(values, pairs, metric, relative_min_denominator)
    table = pair_table([p.name for p in pairs], [len(p.baseline_ids) for p in pairs], values.score_baseline,
                       values.score_perturbed, flagged, _token_types(pairs), pairs=pairs)
    table["done"] = values.done
    table["no_result"] = no_result
    by_type, counts = _by_token_type(values, pairs, aggregate)
    meta = _run_meta(lm, values, metric=metric, method=method, reverse=reverse, receivers=receivers,
                     receiver_input=receiver_input, min_denominator=min_denominator, aggregate=aggregate,
                     relative=(relative_min_denominator, relative_threshold))
    return PatchingResult(values.effects, values.raw, {r.key: ("pair", *r.family.axes) for r in requests}, table,
                          meta, by_type, TOKEN_TYPE_ORDER if by_type else (), counts)


def _check_run_options(pairs, aggregate: str, relative_min_denominator: float | None) -> None:
    if not pairs:
        raise ValueError("no pairs to patch")
    if aggregate not in STATISTICS:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {STATISTICS}")
    if relative_min_denominator is not None and not relative_min_denominator >= 0:
        raise ValueError(f"--relative-min-denominator must be >= 0, got {relative_min_denominator}")


def _run_meta(lm, values: RunValues, *, metric, method, reverse, receivers, receiver_input, min_denominator,
              aggregate, relative) -> dict[str, Any]:
    """A run's ``meta``: what ran, how, on what device; background, groups, the relative rule, the statistic
    and the readout only where they are not the defaults (results of the defaults are unchanged)."""
    meta: dict[str, Any] = {
        "model": str(lm.folder), "kind": lm.kind, "metric": metric, "method": method, "reverse": reverse,
        "receivers": list(receivers or []), "receiver_input": receiver_input,
        "families": [r.key for r in values.requests], "min_denominator": min_denominator,
        "seconds": values.seconds, "stopped": values.stopped, "precision": runtime.resolve_precision(None),
        "device": runtime.describe_device(), "compilation_cache": runtime.compilation_cache_status(),
        **values.meta,
    }
    grouped = [r.groups for r in values.requests if r.family.needs_groups]
    if grouped:
        meta["groups"] = [head_names(g) for g in grouped[0]]
    relative_min_denominator, relative_threshold = relative
    if relative_threshold is not None:
        meta["relative_min_denominator"] = relative_min_denominator
        meta["relative_denominator_threshold"] = _finite_or_none(relative_threshold)
    if aggregate != "mean":
        meta["aggregate"] = aggregate
    if values.readout.spec() != "score":
        meta["readout"] = values.readout.spec()
    return meta


def _token_types(pairs: Sequence[AlignedPair]) -> list | None:
    """Every pair's token types, or None when a pair has none."""
    token_types = [p.token_types for p in pairs]
    return token_types if all(t is not None for t in token_types) else None


def _run_flags(values: RunValues, pairs: Sequence[AlignedPair], metric: str,
               relative_min_denominator: float | None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """``(flagged, no_result, relative threshold)`` of a run: near-zero denominators of any family, the relative
    rule (it needs every pair's denominator), and pairs with no result in any family; the effects of flagged
    pairs are set to NaN (in place)."""
    from jaxmech.patching.metrics import relative_denominator_flags

    done = values.done
    flagged = np.zeros(len(pairs), bool)
    for f in values.flagged.values():
        flagged |= f
    relative_threshold = None
    if metric == "normalized" and relative_min_denominator is not None:  # needs every pair's denominator
        small, relative_threshold = relative_denominator_flags(values.score_baseline, values.score_perturbed,
                                                               relative_min_denominator, among=done)
        small &= done & ~flagged
        for a in values.effects.values():
            a[small] = np.nan
        flagged |= small
    # Pairs with nothing to patch (no aligned position), or no defined result in any family: flagged and NaN.
    no_result = no_result_pairs(pairs, list(values.effects.values())) & done & ~flagged
    for a in values.effects.values():
        a[no_result] = np.nan
    return flagged | no_result, no_result, relative_threshold


def _by_token_type(values: RunValues, pairs: Sequence[AlignedPair], aggregate: str):
    """``(family -> [pair-statistic per token type, ...], counts)`` of the families with a position axis (empty
    without token types)."""
    token_types = _token_types(pairs)
    by_type: dict[str, np.ndarray] = {}
    counts = None
    if token_types is None:
        return by_type, counts
    for r in values.requests:
        layout = r.family.full_layout
        if "p" in layout:
            mean, counts = mean_by_token_type(values.effects[r.key], token_types, pos_axis=1 + layout.index("p"),
                                              statistic=aggregate)
            by_type[r.key] = mean.astype(np.float32)
    return by_type, counts


METRIC_DEFINITIONS = {
    "normalized": "normalized effect (patched - baseline) / (perturbed - baseline): 0 = no effect, 1 = the patch "
                  "restores the perturbed score",
    "difference": "patched - baseline score",
    "raw": "patched score",
}


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarize(res: PatchingResult, *, top_k: int = 5, aggregate: str | None = None) -> dict[str, Any]:
    """The summary ``jaxmech patch`` prints (strict JSON: non-finite numbers are ``null``).

    Pairs, the metric, result shapes and axes, the first scores, flagged pairs, seconds, and for
    ``[layer, head]`` families the ``top_k`` heads by their mean effect over unflagged pairs (or the
    ``aggregate`` statistic, default ``meta["aggregate"]`` or ``"mean"``; see
    `jaxmech.patching.summaries.over_pairs`); ``warnings`` when no pair gave a result.
    """
    statistic = aggregate or res.meta.get("aggregate", "mean")
    arrays = res.arrays()
    flagged, no_result = res.pairs["flagged"], res.pairs.get("no_result", np.zeros(res.n_pairs, bool))
    summary: dict[str, Any] = {
        "pairs": res.n_pairs,
        "families": {f: list(arrays[f].shape) for f in res.families},
        "score_baseline": [_finite_or_none(s) for s in res.pairs["score_baseline"][:5]],
        "score_perturbed": [_finite_or_none(s) for s in res.pairs["score_perturbed"][:5]],
        "flagged_near_zero_denominator": int((flagged & ~no_result).sum()),
        "seconds": round(res.meta["seconds"], 2),
    }
    if "device" in res.meta:
        summary["device"] = runtime.device_line(res.meta["device"])
        summary["precision"] = res.meta.get("precision")
    for fam in res.families:
        if res.axes[fam][1:] == ("layer", "head"):  # rank heads by their mean effect over pairs
            summary.setdefault("top_heads", {})[fam] = [
                [name, None if not np.isfinite(v) else round(v, 4)]
                for name, v in top_heads(res.effects[fam], top_k, statistic=statistic)]
    summary.update(
        kind=res.meta["kind"],
        metric={"name": res.meta["metric"], "definition": METRIC_DEFINITIONS[res.meta["metric"]]},
        **({"readout": res.meta["readout"]} if res.meta.get("readout") else {}),
        axes={f: list(res.axes[f]) for f in res.families},
        flagged_no_result=[n for n, x in zip(res.pairs["name"], no_result, strict=True) if x][:10],
    )
    if "top_heads" in summary:
        stat = {"mean": "mean", "median": "median", "trimmed": "10%-trimmed mean"}[statistic]
        summary["top_heads_statistic"] = (f"top {top_k} heads by the {stat} {res.meta['metric']} effect over "
                                          "unflagged pairs (null: no pair gave a value)")
    if res.meta["kind"] == "bi":
        summary["note"] = ("bi-encoder: the patched run is the document alone ([CLS] d [SEP]); query positions are "
                           "not patched and the score is the similarity to the query's embedding")
    warnings = []
    if res.n_pairs and flagged.all():
        warnings.append(f"every pair is flagged (no defined {res.meta['metric']} effect): rankings and means are "
                        "empty")
    if warnings:
        summary["warnings"] = warnings
    return summary



def _inputs_meta(lm, *, dataset, triples, max_length, init_head_seed) -> dict[str, Any]:
    """What `patch` read, so a saved result describes itself: the jaxmech version, the input file and its
    sha256, the tokenizer's maximum length, the head seed and the conversion report's freshly initialised
    parameters (non-empty means part of the model was not in the checkpoint)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        jaxmech_version = version("jaxmech")
    except PackageNotFoundError:
        jaxmech_version = None
    source = dataset if dataset is not None else triples
    sha = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source is not None else None
    report = getattr(lm, "report", None)
    return {
        "jaxmech_version": jaxmech_version,
        "input": None if source is None else str(source),
        "input_sha256": sha,
        "max_length": getattr(lm.tokenizer, "max_length", max_length),
        "init_head_seed": init_head_seed,
        "initialized": list(getattr(report, "initialized", []) or []),
    }


def patch(
    model: str | os.PathLike,
    families: Sequence[str],
    *,
    dataset: str | os.PathLike | None = None,
    triples: str | os.PathLike | None = None,
    query: str | None = None,
    baseline_doc: str | None = None,
    perturbed_doc: str | None = None,
    limit: int | None = None,
    kind: str = "auto",
    init_head_seed: int | None = None,
    max_length: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
    stop_on_sigint: bool = False,
    **options,
) -> PatchingResult:
    """Loads a model, reads pairs, runs `run_patching` and saves the result: ``jaxmech patch`` in one call.

    Args:
        model: A local folder, a hub id, or ``"packaged"`` (see `jaxmech.files`).
        families: Family names.
        dataset: A file from ``jaxmech dataset build``.
        triples: A TSV/JSONL file of (query, baseline_doc, perturbed_doc) triples.
        query: With ``baseline_doc`` and ``perturbed_doc``, one triple.
        baseline_doc: See ``query``.
        perturbed_doc: See ``query``.
        limit: Use only the first ``limit`` pairs.
        kind: ``"auto"``, ``"cross"`` or ``"bi"``.
        init_head_seed: Seed of a fresh classifier head for ``kind="cross"`` on an encoder-only checkpoint.
        max_length: Tokenizer maximum length.
        out: Where to save the ``.npz`` (not saved if None); checked before the model is loaded.
        overwrite: Replace an existing ``out`` (else an existing file is refused, and a file another process
            writes meanwhile is kept and this result saved next to it).
        show_progress: Show progress per chunk (pairs done, ETA) on stderr (`InterruptibleProgress`).
        stop_on_sigint: While the pairs run, SIGINT (Ctrl-C) stops the run after the chunk in progress, saves
            nothing and raises `PatchInterrupted`.
        **options: Passed to `run_patching` (``method``, ``metric``, ``reverse``, ``receivers``, ...).

    Returns:
        The `PatchingResult` (``meta["out"]`` names the file written).

    Raises:
        ValueError, FileNotFoundError, FileExistsError, UnknownFamilyError: Bad arguments, before the model
            is loaded (see `check_request`, `check_output`).
        PatchInterrupted: With ``stop_on_sigint``, after a SIGINT (nothing saved).
    """
    _check_patch(model, families, limit=limit, out=out, overwrite=overwrite, dataset=dataset, triples=triples,
                 options=options)
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.inputs import read_pairs

    lm = load_model(model, kind=kind, init_missing_head_seed=init_head_seed, max_length=max_length,
                    require_tokenizer=True)
    pairs = read_pairs(lm.tokenizer, pair_input=lm.model.pair_input, dataset=dataset, triples=triples, query=query,
                       baseline_doc=baseline_doc, perturbed_doc=perturbed_doc, limit=limit,
                       vocab_size=getattr(getattr(lm.model, "cfg", None), "d_vocab", None))
    if show_progress or stop_on_sigint:
        tracker = InterruptibleProgress(options.pop("progress", None), bar=show_progress, sigint=stop_on_sigint)
        with tracker:
            res = run_patching(lm, pairs, families, progress=tracker, on_step=tracker.step, **options)
        if tracker.interrupted:
            raise PatchInterrupted(tracker.last)
    else:
        res = run_patching(lm, pairs, families, **options)
    res.meta.update(_inputs_meta(lm, dataset=dataset, triples=triples, max_length=max_length,
                                 init_head_seed=init_head_seed))
    if out is not None:
        _save(res, Path(out), overwrite)
    return res


def _check_patch(model, families, *, limit, out, overwrite, dataset, triples, options: dict) -> None:
    """`patch` 's checks before the model is loaded (a readout string in ``options`` is parsed in place)."""
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number of pairs, got {limit}")
    if options.get("pairs_per_chunk") is not None and options["pairs_per_chunk"] <= 0:
        raise ValueError(f"--pairs-per-chunk must be a positive number of pairs, got {options['pairs_per_chunk']}")
    if isinstance(options.get("readout"), str):  # a malformed spec is refused before the model is loaded
        from jaxmech.patching.readouts import check_readout, parse_readout

        options["readout"] = parse_readout(options["readout"])
        check_readout(options["readout"], method=options.get("method", "exact"))
    shape = local_model_shape(model)
    check_request(families, model_shape=shape,
                  **{k: options[k] for k in ("method", "metric", "receivers", "receiver_input", "precision", "groups")
                     if k in options})
    if options.get("background") is not None:  # head ablations only here (the CLI's): PatchSpecs are refused
        from jaxmech.patching.background import as_ablations

        for ablation in as_ablations(options["background"]):
            if shape is not None:
                ablation.check(*shape)
    if out is not None:
        check_output(out, overwrite=overwrite)
    for what, path in (("dataset", dataset), ("triples", triples)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: {what} file not found")


def _save(res: PatchingResult, out: Path, overwrite: bool) -> None:
    """Saves ``res`` to ``out`` (``meta["out"]`` names the file); if another process wrote ``out`` meanwhile, this
    result is kept next to it and `FileExistsError` raised."""
    try:
        res.meta["out"] = str(res.save(out, overwrite=overwrite))
    except FileExistsError:  # another process wrote ``out`` meanwhile: keep this result next to it
        kept = out.with_name(f"{out.stem}.{os.getpid()}{out.suffix}")
        res.save(kept, overwrite=False)
        raise FileExistsError(f"--out {out} was written by another process while this one ran; this result "
                              f"was saved to {kept} instead") from None
