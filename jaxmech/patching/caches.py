"""The forwards a sweep starts from: the baseline with its restart cache, the perturbed run's sources.

`prepare` runs both inputs of a `jaxmech.patching.inputs.PairBatch` once (swapping them first for
``reverse``) and returns a `PreparedBatch`: scores, the `RestartCache` of the baseline (what
`jaxmech.patching.engines.post_ln` restarts from), the perturbed run's activations moved to baseline positions
(`align_source`), and the per-pair `SweepData` that kernels read inside the compiled program.

**One compiled forward for both runs.** The two runs differ only in what they capture, and a forward that
captures other sites is another XLA program. When the captures that one run does not need are small
(`SHARED_FORWARD_MAX_BYTES`), both runs capture the union, so one compiled forward serves both and the unneeded
arrays are dropped at once (the two forwards were 21-56% of a family's XLA compile time on CPU;
`benchmarks/results/bench_compile_cpu.json`). Above it (large batches, where compile time is amortised) each
run captures only its own sites, keeping peak memory.

**One forward for every family of a sweep.** Inside `shared_forward` (``sites``), every `prepare` captures the
sites of all the sweep's families (within the same byte limit), so the families of one length bucket share
the compiled forward and the compiled `finish_prepare` instead of compiling their own. What follows the forward
(the restart cache's final state, aligning the perturbed activations to baseline positions, the scores) runs
inside `finish_prepare`, not as eager operations (each of which was a program of its own, per shape).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxmech.data.align import AlignmentError
from jaxmech.models.base import Encoder, Output
from jaxmech.models.bert import HookedEncoder
from jaxmech.patching.inputs import PairBatch, reverse_batch
from jaxmech.sites import dim_sizes, get_site

RESTART_SITES = ("resid_pre", "q", "k", "v")
"""Sites every restart cache holds."""

SHARED_FORWARD_MAX_BYTES = 256 * 2**20
"""Largest size of the captures one run would add for the other's sake (both runs together) for which the
baseline and perturbed runs share one compiled forward (see the module docstring)."""


_SWEEP_SITES: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("jaxmech_sweep_sites",
                                                                            default=frozenset())


@contextlib.contextmanager
def shared_forward(sites: Sequence[str]) -> Iterator[None]:
    """Within the block, every `prepare` also captures ``sites`` in both runs (when the extra captures stay
    within `SHARED_FORWARD_MAX_BYTES`), so that families that read different sites share one compiled forward
    and one compiled `finish_prepare` per batch shape. Results are unchanged: each family still gets only the
    sites it asks for.

    Args:
        sites: The sites every family of the sweep reads (patched sites and the cached sites its kernels read).
    """
    token = _SWEEP_SITES.set(frozenset(sites))
    try:
        yield
    finally:
        _SWEEP_SITES.reset(token)


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
def run_cached(model: Encoder, input_ids, token_type_ids, attention_mask, *,
               capture: frozenset) -> tuple[Output, dict[str, Array]]:
    """Batched forward returning ``(output, cache)``, the cache holding the ``capture`` sites (jitted;
    ``capture`` static)."""
    out = model(input_ids, token_type_ids, attention_mask, capture=capture)
    return out, out.cache


@jax.jit
def embed_texts(model: HookedEncoder, input_ids: Int[Array, "batch pos"], token_type_ids: Int[Array, "batch pos"],
                attention_mask: Int[Array, "batch pos"]) -> Float[Array, "batch d_model"]:
    """The pooled embeddings of tokenised texts (a bi-encoder's query side): one compiled program per input shape
    (an eager forward compiled its layer scan anew at every call)."""
    return model(input_ids, token_type_ids, attention_mask).embedding


def query_embeddings(model: Encoder, tokenizer, queries: Sequence[str], n_pairs: int) -> jax.Array | None:
    """``[n_pairs, d_model]`` embeddings of ``queries``, the first query repeated to ``n_pairs`` rows (inert pairs),
    for a model that scores by comparing embeddings; None for a model that reads the query itself
    (``pair_input``), whose patched runs need no query embedding.

    Args:
        model: The encoder.
        tokenizer: Its tokenizer.
        queries: One query per real pair.
        n_pairs: Rows of the batch (at least ``len(queries)``).
    """
    if model.pair_input:
        return None
    queries = list(queries)
    enc = tokenizer.encode_texts(queries + queries[:1] * (n_pairs - len(queries)))
    return embed_texts(model, *enc.arrays)


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
    own. Inside `shared_forward`, the union with the sweep's sites first (same limit)."""
    sweep = _SWEEP_SITES.get()
    if sweep:  # every family of the sweep: one compiled forward, whatever this family reads
        union = base | source | restart_capture(sweep)
        if capture_bytes(model, batch.n_pairs, batch.n_pos, (union - base) | (union - source),
                         site_table) <= SHARED_FORWARD_MAX_BYTES:
            return union, union
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
        sources: Perturbed activations by site (at perturbed positions, or at baseline positions if ``aligned``).
        query_embedding: ``[pair, d_model]``.
        aligned: Whether ``sources`` are already at baseline positions.
    """

    batch: PairBatch
    baseline_score: jax.Array
    perturbed_score: jax.Array
    cache: RestartCache
    sources: dict[str, jax.Array]
    query_embedding: jax.Array
    aligned: bool = False

    def source(self, site: str) -> jax.Array:
        """Perturbed activations of ``site`` at baseline positions."""
        if self.aligned:
            return self.sources[site]
        return align_source(self.sources[site], site, self.batch.position_map)

    def data(self, site: str) -> SweepData:
        """The `SweepData` for a kernel patching ``site`` (host arrays stay numpy: staging each to the device
        eagerly was a compiled program per shape)."""
        return SweepData(self.cache, self.source(site), np.asarray(self.batch.baseline[2]),
                         np.asarray(self.batch.patchable), self.query_embedding)


def _align_traced(src: jax.Array, site: str, position_map: jax.Array) -> jax.Array:
    """`align_source` inside a traced program (always gathers: an identity map gathers the same values)."""
    axis = get_site(site).pos_axis + 2
    idx = jnp.clip(position_map, 0, None)
    shape = [1] * src.ndim
    shape[0], shape[axis] = idx.shape
    return jnp.take_along_axis(src, idx.reshape(shape), axis=axis, mode="clip")


def _alignable(name: str) -> bool:
    site = get_site(name)
    return site.per_layer and site.pos_axis is not None


@jax.jit
def finish_prepare(model: HookedEncoder, base_out: Output, src_out: Output, position_map: Int[Array, "pair pos"],
                   query_embedding: Float[Array, "pair d_model"]):
    """What `prepare` computes from the two forwards, as one program (one per shapes and captured sites; inside
    `shared_forward` one per batch shape for every family): the restart cache's ``resid_pre`` with the final
    state appended, every captured per-layer site of the perturbed run at baseline positions, and both scores.

    Returns:
        ``(baseline_score, perturbed_score, resid_pre, baseline_sites, aligned_sources)``.
    """
    base = dict(base_out.cache)
    resid_pre = jnp.concatenate([base.pop("resid_pre"), base["normalized_resid_post"][:, -1:]], axis=1)
    sources = {name: _align_traced(a, name, position_map) if _alignable(name) else a
               for name, a in src_out.cache.items()}
    return (model.relevance(base_out, query_embedding), model.relevance(src_out, query_embedding), resid_pre, base,
            sources)


def _query_embedding(model: HookedEncoder, batch: PairBatch, query_embedding):
    if model.pair_input:
        return np.zeros((batch.n_pairs, model.cfg.d_model), np.float32)
    if query_embedding is None:
        raise ValueError("bi-encoder patching needs query_embedding [pair, d_model] (the patched run is the "
                         "document's)")
    return query_embedding


def prepare(model: HookedEncoder, batch: PairBatch, *, base_sites: Sequence[str] = (),
            source_sites: Sequence[str] = (), reverse: bool = False, query_embedding=None) -> PreparedBatch:
    """Runs the baseline (with the restart cache plus ``base_sites``) and the perturbed input (capturing
    ``source_sites``); swaps their roles first if ``reverse``. This is the post-LN engine's `prepare`
    (``"post_ln"`` in `jaxmech.patching.engines.ENGINES`); `jaxmech.patching.engines.prepare` prepares a batch
    for any model through its engine.

    Compiles at most three programs per batch shape: the forward (`run_cached`, one for both runs when their
    captures are shared, see `paired_captures`) and `finish_prepare`; inside `shared_forward`, families share
    them.

    Raises:
        AlignmentError: If the batch is longer than the model's context.
        ValueError: If the model scores by comparing embeddings and ``query_embedding`` is missing.
    """
    if batch.n_pos > model.cfg.n_ctx:
        raise AlignmentError(f"pairs are padded to {batch.n_pos} positions but the model has n_ctx={model.cfg.n_ctx}")
    if reverse:
        batch = reverse_batch(batch)
    query_embedding = _query_embedding(model, batch, query_embedding)
    needed = restart_capture(base_sites)
    base_capture, src_capture = paired_captures(model, batch, needed, frozenset(source_sites))
    base_out, _ = run_cached(model, *batch.baseline, capture=base_capture)
    src_out, _ = run_cached(model, *batch.perturbed, capture=src_capture)
    position_map = np.asarray(batch.position_map, np.int32)
    base_score, src_score, resid_pre, base, sources = finish_prepare(model, base_out, src_out, position_map,
                                                                     query_embedding)
    extra = {name: base[name] for name in needed - set(RESTART_SITES) if name != "normalized_resid_post"}
    if "normalized_resid_post" in base_sites:
        extra["normalized_resid_post"] = base["normalized_resid_post"]
    cache = RestartCache(resid_pre, base["q"], base["k"], base["v"], extra)
    return PreparedBatch(batch, base_score, src_score, cache, {name: sources[name] for name in source_sites},
                         query_embedding if isinstance(query_embedding, np.ndarray | jax.Array)
                         else np.asarray(query_embedding, np.float32), aligned=True)
