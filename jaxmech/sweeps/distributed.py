"""Several processes (hosts) on one sweep, through ``jax.distributed``.

Each process takes the chunks ``k`` with ``k % process_count == process_index`` and writes them (disjoint
zarr chunks and completion markers) into the shared run folder. Process 0 initialises the folder first and
finishes it last; the others wait on the coordination service's key-value store (no collective on the
accelerators is needed, so this works on CPU too). Errors of process 0 during set-up reach the others as a
message instead of a hang.
"""

from __future__ import annotations

import dataclasses

_TIMEOUT_MS = 24 * 3600 * 1000


@dataclasses.dataclass(frozen=True)
class Processes:
    """Where this process stands among the sweep's processes.

    Attributes:
        index: This process (0 = the coordinator of the run folder).
        count: Number of processes.
    """

    index: int = 0
    count: int = 1

    def share(self, chunks: list[int]) -> list[int]:
        """This process's chunks (round robin, so every process gets every length bucket)."""
        return [k for k in chunks if k % self.count == self.index]

    def _client(self):
        from jax._src import distributed

        return distributed.global_state.client

    def publish(self, key: str, value: str) -> None:
        """Sets a value every process can read (no-op alone)."""
        if self.count > 1:
            self._client().key_value_set(f"jaxmech_sweep/{key}", value)

    def wait_for(self, key: str, timeout_ms: int = _TIMEOUT_MS) -> str:
        """Blocks until a value is published."""
        return self._client().blocking_key_value_get(f"jaxmech_sweep/{key}", timeout_ms)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> Processes:
    """Joins a multi-process run (or stays alone).

    Args:
        coordinator: ``HOST:PORT`` of process 0's coordination service.
        num_processes: Number of processes.
        process_id: This process's index.
        auto: Let ``jax.distributed.initialize()`` detect the cluster (TPU pod slices, SLURM, Open MPI).

    Returns:
        This process's `Processes`.
    """
    import jax

    if coordinator or auto:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return Processes(jax.process_index(), jax.process_count())
