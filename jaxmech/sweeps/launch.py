"""A sweep config file run as ``jaxmech sweep CONFIG`` runs it (`launch_sweep`).

The config is read and checked against the model's ``config.json`` before JAX is imported (so a bad config is
reported at once, on every host), then the processes join (`jaxmech.sweeps.distributed`) and the sweep runs.
"""

from __future__ import annotations

import os

from jaxmech.sweeps.config import load_sweep_config  # none of these imports JAX
from jaxmech.sweeps.distributed import initialize
from jaxmech.sweeps.job import SweepSummary, run_sweep
from jaxmech.sweeps.precheck import check_against_model


def launch_sweep(
    config: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    fresh: bool = False,
    quiet: bool = False,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    distributed: bool = False,
) -> SweepSummary:
    """Runs (or resumes) the sweep a TOML config declares (`jaxmech.sweeps.job.run_sweep`).

    Args:
        config: The sweep config (TOML).
        out: Run folder (default: ``[run] out_dir`` or ``runs/<name>``).
        fresh: Delete this sweep's previous results in the folder and start over.
        quiet: No progress bar: a log line a minute.
        coordinator: ``HOST:PORT`` of process 0 (several processes).
        num_processes: Number of processes.
        process_id: This process's index.
        distributed: Let ``jax.distributed`` detect the cluster (TPU pod slice, SLURM, Open MPI).

    Returns:
        The sweep's summary (``.line()``: where the results are).

    Raises:
        ConfigError: For a bad config (naming the file and key), before JAX is imported.
        ValueError: For a config that does not fit its model (naming the file and value), before JAX is imported.
        ResumeError, RunLockedError, SweepInterrupted: As `jaxmech.sweeps.job.run_sweep`.
    """
    cfg = load_sweep_config(config)
    check_against_model(cfg)
    procs = initialize(coordinator, num_processes, process_id, auto=distributed)
    return run_sweep(cfg, out=out, fresh=fresh, quiet=quiet, processes=procs)
