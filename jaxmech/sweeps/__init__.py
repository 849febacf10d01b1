"""Sweeps as jobs: declared in TOML, streamed to a chunked on-disk store, resumable, with progress, on every
device and host.

* `config`: the TOML config (`load_sweep_config`, `SweepConfig`), read strictly by `jaxmech.tomlconfig` like
  the trainer's.
* `plan`: the pairs of a run in run order and the arrays of each family, typed (`plan_sweep`, `Plan`).
* `job`: `run_sweep` (plan, store, resume, compute, finish), in short steps; the run's `meta.json` is a
  `jaxmech.results.meta.RunMeta`.
* `compute`: one chunk = one `jaxmech.patching.run.run_values` call for every family, shaped for the store
  (`compute_chunk`).
* `launch`: what ``jaxmech sweep CONFIG`` runs (`launch_sweep`: the config checked before JAX is imported).
* `sizing`: chunk sizes from the compiled programs' memory; `roofline`: FLOPs per patched run against a
  measured matmul rate; `background`: the ``[background]`` section (heads ablated in every run).
* `lock`: one writer per run folder.
* `precheck`: a config checked against its model's ``config.json`` before anything is written.
* `distributed`: several processes through ``jax.distributed``.
* `steps`: the registry of analysis and report steps run after a sweep.

Results are stored and read by `jaxmech.results` (`store`, `integrity`, ``jaxmech.results.open``); the command
is `jaxmech.cli.sweep`; progress bars are `jaxmech.progress`.
"""

from jaxmech.sweeps.config import ConfigError, SweepConfig, load_sweep_config
from jaxmech.sweeps.job import ResumeError, SweepInterrupted, SweepSummary, run_sweep

__all__ = ["ConfigError", "ResumeError", "SweepConfig", "SweepInterrupted", "SweepSummary", "load_sweep_config",
           "run_sweep"]
