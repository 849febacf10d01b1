"""Progress of a sweep: a tqdm bar (patched runs done, runs/s, ETA, pairs done) or, quiet, a log line a minute;
and the compile-time accounting (from JAX's monitoring events) behind the "compile once" claim."""

from __future__ import annotations

import sys
import threading
import time

# JAX monitoring events: tracing, lowering, XLA compilation, persistent-cache hits.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"


class CompileMeter:
    """Accumulates the time JAX spends tracing, lowering and compiling (or loading from the persistent cache),
    and counts XLA compilations and persistent-cache hits, from the moment it is created.

    JAX reports a backend-compile event for every program it needs, whether compiled or loaded from the
    persistent cache; programs actually compiled are those events minus the cache hits.
    """

    _installed: CompileMeter | None = None

    def __init__(self):
        self.seconds = 0.0
        self.backend_compiles = 0
        self.cache_hits = 0
        self._lock = threading.Lock()
        if CompileMeter._installed is None:
            import jax.monitoring as mon

            mon.register_event_duration_secs_listener(_on_duration)
            mon.register_event_listener(_on_event)
        CompileMeter._installed = self

    def as_dict(self) -> dict:
        return {
            "compile_seconds": round(self.seconds, 3),
            "programs": self.backend_compiles,
            "persistent_cache_hits": self.cache_hits,
            "xla_compiles": self.backend_compiles - self.cache_hits,
        }


def _on_duration(event: str, seconds: float, **_) -> None:
    m = CompileMeter._installed
    if m is not None and event in _COMPILE_EVENTS:
        with m._lock:
            m.seconds += seconds
            m.backend_compiles += event == _BACKEND


def _on_event(event: str, **_) -> None:
    m = CompileMeter._installed
    if m is not None and event == _HIT:
        with m._lock:
            m.cache_hits += 1


class Progress:
    """Reports chunks as they finish.

    Args:
        total_runs: Patched runs of this process's share (the bar's unit; ETA follows it).
        total_pairs: Pairs of this process's share.
        done_runs / done_pairs: Already done (resumed).
        quiet: No bar; a plain line at most every ``log_every`` seconds (for logs).
        prefix: Label (e.g. the process index).
        unit: What ``total_runs`` counts (``"run"``: patched runs; ``jaxmech patch`` counts ``"pair"``s).
    """

    def __init__(
        self,
        total_runs: int,
        total_pairs: int,
        *,
        done_runs: int = 0,
        done_pairs: int = 0,
        quiet: bool = False,
        prefix: str = "sweep",
        log_every: float = 60.0,
        unit: str = "run",
    ):
        self.total_runs, self.total_pairs = total_runs, total_pairs
        self.runs, self.pairs = done_runs, done_pairs
        self.quiet, self.prefix, self.log_every, self.unit = quiet, prefix, log_every, unit
        self.t0 = time.perf_counter()
        self._start_runs = done_runs
        self._last_log = self.t0
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_runs,
                initial=done_runs,
                unit=unit,
                unit_scale=True,
                desc=prefix,
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
            )
            self.bar.set_postfix_str(self._pairs_text())

    def _pairs_text(self) -> str:
        return f"pairs {self.pairs}/{self.total_pairs}"

    def rate(self) -> float:
        """Patched runs per second since this process started (resumed runs excluded)."""
        dt = time.perf_counter() - self.t0
        return (self.runs - self._start_runs) / dt if dt > 0 else 0.0

    def update(self, runs: int, pairs: int) -> None:
        self.runs += runs
        self.pairs += pairs
        if self.bar is not None:
            self.bar.set_postfix_str(self._pairs_text(), refresh=False)
            self.bar.update(runs)
            return
        now = time.perf_counter()
        if now - self._last_log >= self.log_every or self.pairs == self.total_pairs:
            self._last_log = now
            rate = self.rate()
            left = (self.total_runs - self.runs) / rate if rate > 0 else float("nan")
            eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left == left else "?"
            what = "patched runs" if self.unit == "run" else f"{self.unit}s"
            counted = "" if self.unit == "pair" else f", {self.runs}/{self.total_runs} {what}"
            speed = f"{rate:.0f}" if self.unit == "run" else f"{rate:.3g}"
            print(
                f"{self.prefix}: {self._pairs_text()}{counted}, {speed} {self.unit}s/s, ETA {eta}",
                file=sys.stderr,
                flush=True,
            )

    def started_earlier(self, seconds: float) -> None:
        """Counts ``seconds`` before this object was made as elapsed (rate and ETA include work done before)."""
        self.t0 -= seconds
        self._last_log -= seconds
        if self.bar is not None:
            self.bar.start_t -= seconds
            self.bar.last_print_t -= seconds

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnSigint:
    """While entered (in the main thread), the first SIGINT (Ctrl-C) only sets ``requested`` and says so on
    stderr, so that a loop can stop at its next safe point; a second SIGINT raises `KeyboardInterrupt` at once.
    The previous handler is restored on exit. In other threads it installs nothing."""

    def __init__(self, message: str = "sweep: Ctrl-C: stopping after the chunk in progress (Ctrl-C again to "
                 "stop at once)"):
        self.message = message
        self.requested = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(self.message, file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnSigint:
        import signal

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
