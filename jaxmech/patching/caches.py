"""The forwards a sweep starts from: the baseline with its restart cache, the perturbed run's sources.

`prepare` runs both inputs of a `jaxmech.patching.inputs.PairBatch` once (swapping them first for
``reverse``) and returns a `PreparedBatch`: scores, the `RestartCache` of the baseline (what
`jaxmech.patching.engine` restarts from), the perturbed run's activations moved to baseline positions
(`align_source`), and the per-pair `SweepData` that kernels read inside the compiled program.

**One compiled forward for both runs.** The two runs differ only in what they capture, and a forward that
captures other sites is another XLA program. When the captures that one run does not need are small
(`SHARED_FORWARD_MAX_BYTES`), both runs capture the union, so one compiled forward serves both and the unneeded
arrays are dropped at once (the two forwards were 21-56% of a family's XLA compile time on CPU;
`benchmarks/results/bench_compile_cpu.json`). Above it (large batches, where compile time is amortised) each
run captures only its own sites, keeping peak memory.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxmech.data.align import AlignmentError
from jaxmech.model import HookedEncoder, Output
from jaxmech.patching.inputs import PairBatch, reverse_batch
from jaxmech.sites import dim_sizes, get_site

RESTART_SITES = ("resid_pre", "q", "k", "v")
"""Sites every restart cache holds."""

SHARED_FORWARD_MAX_BYTES = 256 * 2**20
"""Largest size of the captures one run would add for the other's sake (both runs together) for which the
baseline and perturbed runs share one compiled forward (see the module docstring)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RestartCache:
    """Baseline activations a restarted sweep reads, for a batch of pairs.

    Attributes:
        resid_pre: ``[pair, layer + 1, pos, d_model]``; index ``n_layers`` is the final hidden state.
        q: ``[pair, layer, pos, head_index, d_head]``.
        k: Same as ``q``.
        v: Same as ``q``.
        sites: Other captured sites (``z``, ``attn_out``, ...), per-layer, by site name.
    """

    resid_pre: Float[Array, "pair layer_plus_1 pos d_model"]
    q: Float[Array, "pair layer pos head_index d_head"]
    k: Float[Array, "pair layer pos head_index d_head"]
    v: Float[Array, "pair layer pos head_index d_head"]
    sites: dict[str, Array]

    def site(self, name: str) -> Array:
        """The cached activation of ``name`` (``resid_pre`` with its final-state entry)."""
        return getattr(self, name) if name in RESTART_SITES else self.sites[name]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SweepData:
    """Per-pair arrays a kernel reads inside the compiled sweep (gathered by pair index).

    Attributes:
        cache: The baseline's `RestartCache`.
        source: ``[pair, layer, *site_dims]`` perturbed activations at baseline positions.
        attention_mask: ``[pair, pos]``.
        patchable: ``[pair, pos]`` positions that may be patched.
        query_embedding: ``[pair, d_model]`` (zeros for models that read the query themselves).
    """

    cache: RestartCache
    source: Array
    attention_mask: Int[Array, "pair pos"]
    patchable: Bool[Array, "pair pos"]
    query_embedding: Float[Array, "pair d_model"]


@functools.partial(jax.jit, static_argnames=("capture",))
def run_cached(model: HookedEncoder, input_ids, token_type_ids, attention_mask, *,
               capture: frozenset) -> tuple[Output, dict[str, Array]]:
    """Batched forward returning ``(output, cache)``, the cache holding the ``capture`` sites (jitted;
    ``capture`` static)."""
    out = model(input_ids, token_type_ids, attention_mask, capture=capture)
    return out, out.cache


def restart_capture(extra_sites: Sequence[str] = ()) -> frozenset[str]:
    """What the baseline run captures for its `RestartCache` with ``extra_sites``."""
    return frozenset({"resid_pre", "normalized_resid_post", "q", "k", "v", *extra_sites})


def capture_bytes(model, n_pairs: int, n_pos: int, sites, site_table=None) -> int:
    """Bytes (fp32) of capturing ``sites`` for ``n_pairs`` inputs of ``n_pos`` tokens.

    Args:
        model: The encoder (its ``cfg`` gives the widths).
        n_pairs: Inputs in the batch.
        n_pos: Padded length.
        sites: Site names.
        site_table: ``{name: Site}`` (default `jaxmech.sites.get_site`'s table).
    """
    sizes, total = dim_sizes(model.cfg, n_pos), 0
    for name in sites:
        site = site_table[name] if site_table is not None else get_site(name)
        total += int(np.prod([sizes[d] for d in site.dims])) * (model.cfg.n_layers if site.per_layer else 1)
    return 4 * n_pairs * total


def paired_captures(model, batch: PairBatch, base: frozenset[str], source: frozenset[str],
                    site_table=None) -> tuple[frozenset[str], frozenset[str]]:
    """The captures of the baseline and perturbed runs: both the union (one compiled forward serves both runs)
    when what the two would add for each other is at most `SHARED_FORWARD_MAX_BYTES` together, else each its
    own."""
    extra = capture_bytes(model, batch.n_pairs, batch.n_pos, (base - source) | (source - base), site_table)
    if extra <= SHARED_FORWARD_MAX_BYTES:
        return base | source, base | source
    return base, source


def baseline_cache(model: HookedEncoder, inputs, extra_sites: Sequence[str] = (), *,
                   capture: frozenset[str] | None = None) -> tuple[Output, RestartCache]:
    """The baseline run and its `RestartCache` (``resid_pre`` with the final hidden state appended, ``q``,
    ``k``, ``v`` and ``extra_sites``).

    Args:
        model: The encoder.
        inputs: ``(input_ids, token_type_ids, attention_mask)``.
        extra_sites: Sites the cache keeps beside the restart sites.
        capture: What the forward captures, a superset of `restart_capture` (``extra_sites``) (default: that);
            sites beyond it are dropped (see `paired_captures`).
    """
    needed = restart_capture(extra_sites)
    capture = needed if capture is None else capture
    out, cache = run_cached(model, *map(jnp.asarray, inputs), capture=capture)
    cache = {name: cache[name] for name in needed}
    final = cache["normalized_resid_post"][:, -1:]
    resid_pre = jnp.concatenate([cache.pop("resid_pre"), final], axis=1)
    if "normalized_resid_post" not in extra_sites:
        del cache["normalized_resid_post"]
    q, k, v = (cache.pop(s) for s in ("q", "k", "v"))
    return out, RestartCache(resid_pre, q, k, v, cache)


def align_source(src: jax.Array, site: str, position_map: np.ndarray) -> jax.Array:
    """Moves perturbed activations ``[pair, layer, *dims]`` to baseline positions via the position map.

    Unaligned (-1) positions get an arbitrary finite value; they are never patched.
    """
    if np.array_equal(position_map, np.broadcast_to(np.arange(position_map.shape[1]), position_map.shape)):
        return src
    axis = get_site(site).pos_axis + 2
    idx = np.clip(position_map, 0, None)
    shape = [1] * src.ndim
    shape[0], shape[axis] = idx.shape
    return jnp.take_along_axis(src, jnp.asarray(idx.reshape(shape)), axis=axis, mode="clip")


@dataclasses.dataclass
class PreparedBatch:
    """Baseline and perturbed runs of a batch, and the per-pair data kernels read.

    Attributes:
        batch: The pairs (already swapped when reversed).
        baseline_score: ``[pair]`` score of the run that gets patched.
        perturbed_score: ``[pair]`` score of the run the activations come from.
        cache: The baseline's `RestartCache`.
        sources: Perturbed activations by site (perturbed positions).
        query_embedding: ``[pair, d_model]``.
    """

    batch: PairBatch
    baseline_score: jax.Array
    perturbed_score: jax.Array
    cache: RestartCache
    sources: dict[str, jax.Array]
    query_embedding: jax.Array

    def source(self, site: str) -> jax.Array:
        """Perturbed activations of ``site`` at baseline positions."""
        return align_source(self.sources[site], site, self.batch.position_map)

    def data(self, site: str) -> SweepData:
        """The `SweepData` for a kernel patching ``site``."""
        return SweepData(self.cache, self.source(site), jnp.asarray(self.batch.baseline[2]),
                         jnp.asarray(self.batch.patchable), self.query_embedding)


def prepare(model: HookedEncoder, batch: PairBatch, *, base_sites: Sequence[str] = (),
            source_sites: Sequence[str] = (), reverse: bool = False, query_embedding=None) -> PreparedBatch:
    """Runs the baseline (with the restart cache plus ``base_sites``) and the perturbed input (capturing
    ``source_sites``); swaps their roles first if ``reverse``.

    Raises:
        AlignmentError: If the batch is longer than the model's context.
        ValueError: If the model scores by comparing embeddings and ``query_embedding`` is missing.
    """
    if getattr(model.cfg, "model_type", None) == "modernbert":  # pre-LN blocks: their own restart cache
        from jaxmech.patching.modernbert import prepare as prepare_modernbert

        return prepare_modernbert(model, batch, base_sites=base_sites, source_sites=source_sites, reverse=reverse)
    if batch.n_pos > model.cfg.n_ctx:
        raise AlignmentError(f"pairs are padded to {batch.n_pos} positions but the model has n_ctx={model.cfg.n_ctx}")
    if reverse:
        batch = reverse_batch(batch)
    base_capture, src_capture = paired_captures(model, batch, restart_capture(base_sites), frozenset(source_sites))
    base_out, cache = baseline_cache(model, batch.baseline, base_sites, capture=base_capture)
    src_out, src_cache = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=src_capture)
    src_cache = {name: src_cache[name] for name in source_sites}
    if model.pair_input:
        query_embedding = jnp.zeros((batch.n_pairs, model.cfg.d_model), jnp.float32)
    elif query_embedding is None:
        raise ValueError("bi-encoder patching needs query_embedding [pair, d_model] (the patched run is the "
                         "document's)")
    else:
        query_embedding = jnp.asarray(query_embedding)
    base_score = model.relevance(base_out, query_embedding)
    src_score = model.relevance(src_out, query_embedding)
    return PreparedBatch(batch, base_score, src_score, cache, src_cache, query_embedding)
