"""Steps that run after a sweep (the summary, the analyses, the report), resolved by name.

A step is a name and options (``[[analyses]] name = "summary"`` + ``options = {...}`` in a sweep config, or
``[report] enabled = true``). `STEPS` maps each name to a function (or a ``"module:function"`` string given to
`register_step`), and every analysis of `jaxmech.analysis.ANALYSES` is a step by its name; heavy work is
imported only when a step runs, called as ``function(run_dir, **options)``. It reads the run with
`jaxmech.results.open` and writes its output under the run folder (analyses: ``analyses/<name>.json``, read
back by ``run.analyses``). To add a step, add one line to `STEPS` (or call `register_step`).

A rerun of a finished sweep skips a step whose inputs did not change (`step_inputs`: its name and options, the
jaxmech version, ``meta.json``, the files every chunk wrote, and the other steps' outputs under
``analyses/``) and whose output still exists; ``steps.json`` in the run folder records them (delete it to
run every step again).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def register_step(name: str, target: str | Callable) -> None:
    """Adds a step (``"module:function"`` or a function)."""
    STEPS[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def resolve_step(name: str) -> Callable:
    """The function of a step.

    Raises:
        ValueError: If the name is not registered, or its module or function cannot be imported (naming
            both).
    """
    if name not in STEPS:
        from jaxmech.analysis import ANALYSES  # the paper's analyses are steps too, by their names

        if name in ANALYSES:
            from jaxmech.analysis.registry import analyze_run

            return functools.partial(analyze_run, name)
        raise ValueError(f"name={name!r} is not a step; known: {sorted(STEPS) + sorted(ANALYSES)}")
    if callable(STEPS[name]):
        return STEPS[name]
    module, _, func = STEPS[name].partition(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"step {name!r} needs {module}.{func}, which this installation does not have ({type(err).__name__}: {err})"
        ) from None
    return fn


def check_step(name: str) -> None:
    """Raises ValueError if the step cannot run (see `resolve_step`); used by config validation."""
    resolve_step(name)


def check_step_options(name: str, options: dict[str, Any]) -> None:
    """Raises ValueError naming the step and the first unknown option, before any compute (an analysis' options
    are checked by its Options class, `jaxmech.analysis.registry.check_options`; a step taking ``**options``
    accepts any). Checking the ``report`` step imports `jaxmech.report.build_report` (matplotlib, no JAX)."""
    from jaxmech.analysis import ANALYSES

    if not options or name in ANALYSES:
        return
    fn = resolve_step(name)
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first is the run folder
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"step {name!r}: unknown option {unknown[0]!r} (known: {', '.join(known)})")


def run_step(name: str, run_dir: str | Path, options: dict[str, Any] | None = None) -> Any:
    """Runs one step on a finished run."""
    return resolve_step(name)(Path(run_dir), **(options or {}))


STEPS_RECORD = "steps.json"


def step_inputs(run_dir: str | Path, name: str, options: dict[str, Any] | None = None) -> str:
    """sha256 of what a step reads from a run (see the module docstring); equal digests, equal inputs."""
    from jaxmech import __version__

    root = Path(run_dir)
    h = hashlib.sha256(json.dumps([name, options or {}, __version__], sort_keys=True, default=str).encode())
    h.update((root / "meta.json").read_bytes())
    for marker in sorted((root / "done").glob("chunk-*")):
        files = json.loads(marker.read_text() or "{}").get("files", {})  # not its timings: the data it wrote
        h.update(marker.name.encode() + json.dumps(files, sort_keys=True).encode())
    for other in sorted((root / "analyses").glob("*.json")):
        if other.stem != name:
            h.update(other.name.encode() + other.read_bytes())
    return h.hexdigest()


def run_steps_once(run_dir: str | Path, todo: list[tuple[str, dict]], log) -> dict[str, Any]:
    """Runs steps in order, skipping each whose inputs and output are as its last run left them.

    Args:
        run_dir: A finished run.
        todo: ``(name, options)`` in order.
        log: Where a line per step goes.

    Returns:
        Step name -> its output (a step skipped: the output path recorded).
    """
    root = Path(run_dir)
    record_path = root / STEPS_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    results: dict[str, Any] = {}
    for name, options in todo:
        digest = step_inputs(root, name, options)
        last = record.get(name, {})
        kept = root / last["output"] if isinstance(last.get("output"), str) else None
        if last.get("inputs") == digest and kept is not None and kept.exists():
            results[name] = kept
            log(f"sweep: step {name}: inputs unchanged since {last.get('finished', '?')}, kept -> {kept} "
                f"(delete {record_path} to rerun)")
            continue
        t0 = time.perf_counter()
        results[name] = run_step(name, root, options)
        log(f"sweep: step {name} done in {time.perf_counter() - t0:.1f}s -> {results[name]}")
        output = results[name]
        inside = isinstance(output, Path) and output.resolve().is_relative_to(root.resolve())
        record[name] = {"inputs": digest, "output": str(output.resolve().relative_to(root.resolve())) if inside
                        else None, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from jaxmech.results.store import atomic_write_json

        atomic_write_json(record_path, record)
    return results


# --------------------------------------------------------------------------------------------------------------
# Built-in step
# --------------------------------------------------------------------------------------------------------------


def summary(run_dir: Path, *, top_k: int = 10) -> Path:
    """Per family: the mean effect over unflagged pairs, the top heads of ``[layer, head]`` results and the
    mean by token type of position-resolved results; written to ``analyses/summary.json``.

    Reads one stored chunk at a time, so memory does not grow with the number of pairs.

    Args:
        run_dir: A finished run.
        top_k: Heads listed per family.

    Returns:
        The JSON file written.
    """
    from jaxmech import results
    from jaxmech.patching.summaries import TOKEN_TYPE_ORDER, mean_by_token_type, top_heads
    from jaxmech.results.store import atomic_write_text

    run = results.open(run_dir)
    pairs = run.pairs
    keep = ~pairs["flagged"]
    out: dict[str, Any] = {
        "analysis": "summary",
        "model": run.meta["model"]["id"],
        "pairs": int(len(keep)),
        "flagged": int((~keep).sum()),
        "families": {},
    }
    for fam in run.families:
        arr = run[fam]
        step = arr.chunk_pairs
        total = np.zeros(arr.shape[1:])
        count = np.zeros(arr.shape[1:])
        by_type = np.zeros(
            (*[s for d, s in zip(arr.dims[1:], arr.shape[1:], strict=True) if d != "pos"], len(TOKEN_TYPE_ORDER))
        )
        type_count = np.zeros(len(TOKEN_TYPE_ORDER))
        for start in range(0, arr.shape[0], step):
            sl = slice(start, min(start + step, arr.shape[0]))
            x = np.asarray(arr[sl], np.float64)[keep[sl]]
            ok = np.isfinite(x)
            total += np.where(ok, x, 0).sum(0)
            count += ok.sum(0)
            if "pos" in arr.dims and len(x):
                types = [t for t, k in zip(pairs["token_types"][sl], keep[sl], strict=True) if k]
                m, c = mean_by_token_type(x, types, pos_axis=arr.dims.index("pos"))
                by_type += np.nan_to_num(m) * c
                type_count += c
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = total / count
        entry: dict[str, Any] = {"dims": list(arr.dims[1:]), "shape": list(arr.shape[1:])}
        if arr.dims[1:] == ("layer", "head"):
            entry["mean"] = np.where(np.isfinite(mean), mean, None).tolist()
            entry["top_heads"] = [[h, round(v, 6)] for h, v in top_heads(mean, top_k)]
        if "pos" in arr.dims:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                m = by_type / type_count
            entry["by_token_type"] = {
                "types": list(TOKEN_TYPE_ORDER),
                "pair_counts": type_count.tolist(),
                "mean": np.where(np.isfinite(m), m, None).tolist(),
            }
        out["families"][fam] = entry
    path = Path(run_dir) / "analyses" / "summary.json"
    atomic_write_text(path, json.dumps(out, indent=1))
    return path


# name -> a function or "module:function" (`register_step`); called as function(run_dir, **options).
STEPS: dict[str, str | Callable] = {
    "summary": summary,
    "report": "jaxmech.report:build_report",  # imported when a config names it (it loads matplotlib)
}
