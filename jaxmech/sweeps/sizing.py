"""Chunk sizes from the compiled programs' memory, chosen before a sweep computes anything.

A chunk of ``C`` pairs at the run's longest bucket ``T_max`` holds both runs' captured activations (the
forward's outputs) while its families run, and the largest program it runs needs its own temporaries.
`chunk_memory` compiles the sweep's forward (and, where the sweep runs attribution, the vmapped backward) ahead of
time for 1 and 2 pairs, reads XLA's memory analysis (``compile().memory_analysis()``) and extrapolates linearly in
``C`` (every array of these programs has a leading pair axis or none). `resolve_chunking` then picks the largest
``pairs_per_chunk`` up to `MAX_AUTO_PAIRS` whose estimate fits ``memory_fraction`` of the memory free on the
device (on a CPU, the system's available memory), or refuses an explicit value that does not fit, naming the
largest that does. The exact kernels' per-step working set is sized separately (``items_per_step``,
`jaxmech.patching.schedule.auto_chunk_size`).
"""

from __future__ import annotations

import dataclasses

from jaxmech.runtime import available_memory

MAX_AUTO_PAIRS = 32
"""Largest ``pairs_per_chunk`` chosen automatically (a chunk is also the unit of resume and of progress)."""


@dataclasses.dataclass(frozen=True)
class ChunkMemory:
    """Estimated peak bytes of a chunk: ``fixed + per_pair * C``.

    Attributes:
        fixed: Bytes that do not grow with the pairs (weights, constants).
        per_pair: Bytes per pair of the chunk.
        T: The padded length it was measured at.
    """

    fixed: int
    per_pair: int
    T: int

    def bytes(self, pairs: int) -> int:
        """Estimated peak bytes of a chunk of ``pairs`` pairs."""
        return self.fixed + self.per_pair * pairs

    def largest(self, budget: int) -> int:
        """The most pairs whose estimate fits ``budget`` bytes (0 if not even one does)."""
        if self.per_pair <= 0:
            return MAX_AUTO_PAIRS
        return max(0, (budget - self.fixed) // self.per_pair)


def _program_bytes(compiled) -> tuple[int, int]:
    """``(outputs, peak)`` bytes of a compiled program: its outputs, and arguments + outputs + temporaries."""
    m = compiled.memory_analysis()
    out = int(m.output_size_in_bytes)
    return out, int(m.argument_size_in_bytes) + out + int(m.temp_size_in_bytes) - int(m.alias_size_in_bytes)


def _pairs_bytes(model, sites, attribution_sites, T: int, C: int) -> int:
    """Peak bytes of a chunk of ``C`` pairs: both runs' captures and one aligned copy held, plus the largest
    program's peak."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmech.patching.attribution import activation_gradients
    from jaxmech.patching.caches import restart_capture, run_cached
    from jaxmech.sites import dim_sizes, get_site

    ids = jax.ShapeDtypeStruct((C, T), jnp.int32)
    out, peak = _program_bytes(run_cached.lower(model, ids, ids, ids, capture=restart_capture(sites)).compile())
    # The other run's captures are alive while the second forward runs, and finish_prepare writes the aligned
    # copies of one run's captures.
    need = 2 * out + peak
    if attribution_sites:
        L, sizes = model.cfg.n_layers, dim_sizes(model.cfg, T)
        zeros = {s: np.zeros((L, *[sizes[d] for d in get_site(s).dims]), np.float32) for s in attribution_sites}
        qe = jax.ShapeDtypeStruct((C, model.cfg.d_model), jnp.float32)
        _, grad_peak = _program_bytes(activation_gradients.lower(model, ids, ids, ids, zeros, qe).compile())
        need = max(need, 2 * out + grad_peak)
    return need


def chunk_memory(model, sites, attribution_sites, T: int) -> ChunkMemory:
    """The linear estimate of a chunk's peak bytes at length ``T`` from programs compiled for 1 and 2 pairs.

    Args:
        model: The encoder.
        sites: What the sweep's forward captures (see `jaxmech.sweeps.compute.sweep_sites`).
        attribution_sites: Sites estimated by attribution (their backward is compiled too); empty for none.
        T: Padded length (the run's longest bucket).
    """
    one, two = (_pairs_bytes(model, sites, attribution_sites, T, c) for c in (1, 2))
    return ChunkMemory(fixed=max(0, 2 * one - two), per_pair=max(two - one, 1), T=T)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def resolve_chunking(cfg, model, T_max: int, log=None):
    """``cfg.chunking`` with ``pairs_per_chunk`` chosen from compiled memory when it is 0 (unset), checked
    against it when given.

    Args:
        cfg: A `jaxmech.sweeps.config.SweepConfig`.
        model: The loaded encoder.
        T_max: The run's longest bucket.
        log: Where the choice is said (a callable taking a line; default: not said).

    Returns:
        The `jaxmech.sweeps.config.ChunkingSection` to run with.

    Raises:
        ConfigError: If the given ``pairs_per_chunk`` (or even one pair) does not fit, naming the largest that
            does; before anything is computed.
    """
    from jaxmech.patching.families import get_family
    from jaxmech.sweeps.compute import sweep_sites
    from jaxmech.sweeps.config import ConfigError

    ch = cfg.chunking
    attribution = sorted({s for f in cfg.families if f.method == "attribution" for s in get_family(f.name).sites})
    mem = chunk_memory(model, sweep_sites(cfg.families), attribution, T_max)
    free, what = available_memory()
    budget = int(ch.memory_fraction * free)
    largest = min(mem.largest(budget), 4096)
    where = f"{_gib(budget)} ({ch.memory_fraction:g} of {_gib(free)} {what}) at {T_max} tokens"
    if ch.pairs_per_chunk:
        if mem.bytes(ch.pairs_per_chunk) > budget:
            raise ConfigError(cfg.source, "[chunking] pairs_per_chunk",
                              f"{ch.pairs_per_chunk} pairs need about {_gib(mem.bytes(ch.pairs_per_chunk))}, more "
                              f"than the {where}; the largest that fits is {largest}"
                              + (" (none: lower the longest pairs or raise memory_fraction)" if not largest else ""))
        if log is not None:
            log(f"sweep: pairs_per_chunk {ch.pairs_per_chunk} (given; about {_gib(mem.bytes(ch.pairs_per_chunk))} "
                f"of {where}; up to {largest} would fit)")
        return ch
    if largest < 1:
        raise ConfigError(cfg.source, "[chunking] pairs_per_chunk",
                          f"one pair needs about {_gib(mem.bytes(1))}, more than the {where}")
    chosen = min(largest, MAX_AUTO_PAIRS)
    if log is not None:
        log(f"sweep: pairs_per_chunk {chosen} (from compiled memory: about {_gib(mem.bytes(chosen))} of {where}; "
            f"up to {largest} would fit)")
    return dataclasses.replace(ch, pairs_per_chunk=chosen)
