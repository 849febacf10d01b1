"""Sweeps as jobs: declared in TOML, streamed to a chunked on-disk store, resumable, with progress, on every
device and host.

* `config`: the TOML config (`load_sweep_config`, `SweepConfig`), strict like the trainer's.
* `job`: `run_sweep` (plan, store, resume, compute, finish).
* `compute`: one chunk = `jaxmech.patching.run.run_patching` per family, shaped for the store (`compute_chunk`).
* `store`: zarr v3 arrays through tensorstore, completion markers, atomic writes.
* `integrity`: what each chunk wrote (sizes, sha256), checked on opening, on resuming and by ``jaxmech verify``.
* `lock`: one writer per run folder.
* `precheck`: a config checked against its model's ``config.json`` before anything is written.
* `progress`: the progress bar / log lines and the compile-time meter.
* `distributed`: several processes through ``jax.distributed``.
* `steps`: the registry of analysis and report steps run after a sweep.
* `cli`: ``jaxmech sweep``.

Results are read with `jaxmech.results.open`.
"""

from jaxmech.sweeps.config import ConfigError, SweepConfig, load_sweep_config
from jaxmech.sweeps.job import ResumeError, SweepInterrupted, SweepSummary, run_sweep

__all__ = ["ConfigError", "ResumeError", "SweepConfig", "SweepInterrupted", "SweepSummary", "load_sweep_config",
           "run_sweep"]
