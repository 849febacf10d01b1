"""Exact activation-patching sweeps over every layer, head and position of many pairs, as one jitted program.

A sweep is a set of *work items* ``(pair, head, position)`` — only patchable positions, never padding —
evaluated for every layer. The program is a ``lax.scan`` over layers (so the layer is a traced scalar that is
not batched, and `jaxmech.patching.engine` can restart there) and over chunks of items, with ``jax.vmap`` over
the items of a chunk. One compile serves every layer; per-pair data is gathered by index, so pairs of one
length bucket share the program; the host synchronises once per sweep, not per site. With several local
devices the item axis is sharded over them (``jax.sharding``), which shards sites and pairs alike.

Chunk size (items per step) is chosen from the device's free memory, or given.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmech.model import BiEncoder, HookedEncoder
from jaxmech.patching.engine import _NO_HOOKS, layer_view, patched_hidden
from jaxmech.patching.families import Family, get_family
from jaxmech.patching.pairs import AlignmentError, PairBatch
from jaxmech.patching.spec import PatchSpec, one_hot
from jaxmech.sites import get_site

# --------------------------------------------------------------------------------------------------------------
# Forward passes with caches
# --------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("capture",))
def run_cached(model: HookedEncoder, input_ids, token_type_ids, attention_mask, *, capture: frozenset):
    """Batched forward returning ``(score_or_embedding, cache)`` (jitted; ``capture`` static)."""
    out = model(input_ids, token_type_ids, attention_mask, capture=capture)
    return (out.score if out.score is not None else out.embedding), out.cache


def readout_score(model: HookedEncoder, hidden, attention_mask, query_embedding=None):
    """The scalar score from a final hidden state: the logit (cross-encoders) or the similarity to
    ``query_embedding`` (bi-encoders, where the patched run is the document's)."""
    out = model.readout(hidden, attention_mask, _NO_HOOKS)
    if isinstance(model, BiEncoder):
        return model.similarity(query_embedding, out.embedding)
    return out.score


def baseline_cache(model: HookedEncoder, inputs, extra_sites: Sequence[str] = ()):
    """Baseline scores and the cache a restarted sweep reads: ``resid_pre`` with the final hidden state
    appended (``[pair, layer + 1, pos, d_model]``), ``q``, ``k``, ``v`` and ``extra_sites``."""
    capture = frozenset({"resid_pre", "normalized_resid_post", "q", "k", "v", *extra_sites})
    score, cache = run_cached(model, *map(jnp.asarray, inputs), capture=capture)
    cache = dict(cache)
    final = cache["normalized_resid_post"][:, -1:]
    cache["resid_pre"] = jnp.concatenate([cache["resid_pre"], final], axis=1)
    if "normalized_resid_post" not in extra_sites:
        del cache["normalized_resid_post"]
    return score, cache


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


# --------------------------------------------------------------------------------------------------------------
# Work items, chunking, sharding
# --------------------------------------------------------------------------------------------------------------


def local_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all local devices, axis ``"items"``."""
    return Mesh(np.array(devices or jax.local_devices()), ("items",))


def _memory_budget() -> int:
    env = os.environ.get("JAXMECH_MEMORY_BUDGET_MB")
    if env:
        return int(float(env) * 2**20)
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.4 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    # CPU: measured on 2 cores with MiniLM at 128 tokens, steps of 8-16 items (~64 MiB of activations) run
    # 1.4-2x faster per site than steps of 24-128 items, whose working set falls out of cache.
    return 64 << 20


def auto_chunk_size(model: HookedEncoder, n_pos: int, n_items: int, n_devices: int = 1) -> int:
    """Items per step that fit the memory budget: about one block's activations plus the gathered cache
    rows per item, a multiple of the device count, at most the number of items."""
    c = model.cfg
    per_item = 4 * (n_pos * (8 * c.d_model + 2 * c.d_mlp) + 3 * c.n_heads * n_pos * n_pos)
    b = max(1, min(_memory_budget() // per_item, n_items, 4096))
    return max(n_devices, (b // n_devices) * n_devices)


@dataclasses.dataclass
class Items:
    """Work items of one sweep, padded to ``[chunks, chunk_size]``."""

    pair: np.ndarray
    head: np.ndarray
    pos: np.ndarray
    valid: np.ndarray

    def arrays(self):
        return {"pair": self.pair, "head": self.head, "pos": self.pos}


def enumerate_items(batch: PairBatch, per_pos: bool, per_head: bool, model: HookedEncoder,
                    chunk_size: int | None = None, n_devices: int = 1, positions=None) -> Items:
    """All ``(pair, head, position)`` items of a sweep; positions only where patchable (never padding), and
    only among ``positions`` if given."""
    heads = np.arange(model.cfg.n_heads) if per_head else np.zeros(1, np.int64)
    allowed = np.ones(batch.n_pos, bool)
    if positions is not None:
        allowed[:] = False
        allowed[np.asarray(positions, int)] = True
    rows = []
    for p in range(batch.n_pairs):
        positions_p = np.nonzero(batch.patchable[p] & allowed)[0] if per_pos else np.zeros(1, np.int64)
        pp, hh = np.meshgrid(positions_p, heads, indexing="ij")
        rows.append(np.stack([np.full(pp.size, p), hh.ravel(), pp.ravel()], 1))
    flat = np.concatenate(rows).astype(np.int32)
    n = len(flat)
    b = chunk_size or auto_chunk_size(model, batch.n_pos, n, n_devices)
    n_chunks = -(-n // b)
    if chunk_size is None:  # balance the chunks so that the last one is not mostly padding
        b = -(-n // n_chunks)
    b = max(n_devices, -(-b // n_devices) * n_devices)
    n_chunks = -(-n // b)
    padded = np.zeros((n_chunks * b, 3), np.int32)
    padded[:n] = flat
    valid = np.zeros(n_chunks * b, bool)
    valid[:n] = True
    shape = (n_chunks, b)
    return Items(padded[:, 0].reshape(shape), padded[:, 1].reshape(shape), padded[:, 2].reshape(shape),
                 valid.reshape(shape))


# --------------------------------------------------------------------------------------------------------------
# The sweep program
# --------------------------------------------------------------------------------------------------------------


def scan_items(kernel, model: HookedEncoder, data: dict, items: dict, layers: Sequence[int] | None = None):
    """Runs ``kernel`` on every item at every layer (or ``layers``): ``[layer, chunks, chunk_size]`` outputs.

    ``kernel`` is a hashable (static) object with ``prepare(model, data, layer)`` (per-layer slices of the
    per-pair data, computed once per layer) and ``item(model, data, prepared, layer, pair, head, pos)``.
    """
    layers = jnp.arange(model.cfg.n_layers) if layers is None else jnp.asarray(layers, jnp.int32)
    return _scan_items(model, data, items, layers, kernel=kernel)


@functools.partial(jax.jit, static_argnames=("kernel",))
def _scan_items(model, data, items, layers, *, kernel):
    def per_layer(_, layer):
        prepared = kernel.prepare(model, data, layer)

        def per_chunk(_, chunk):
            fn = lambda pair, head, pos: kernel.item(model, data, prepared, layer, pair, head, pos)
            return None, jax.vmap(fn)(chunk["pair"], chunk["head"], chunk["pos"])

        return None, jax.lax.scan(per_chunk, None, items)[1]

    return jax.lax.scan(per_layer, None, layers)[1]


@dataclasses.dataclass(frozen=True)
class ActivationKernel:
    """One activation patch per item, restarted at its layer (`jaxmech.patching.engine.patched_hidden`).

    ``data``: ``cache`` (baseline, see `baseline_cache`), ``source`` (``[pair, layer, *site_dims]`` aligned),
    ``attention_mask``, ``patchable`` (``[pair, pos]``), ``query_embedding``.
    """

    site: str
    per_pos: bool
    per_head: bool

    @property
    def extras(self) -> tuple[str, ...]:
        return () if self.site in ("resid_pre", "q", "k", "v") else (self.site,)

    def prepare(self, model, data, layer):
        views = jax.vmap(layer_view, in_axes=(0, None, None))
        return views(data["cache"], layer, self.extras), views(data["cache"], layer + 1, ()), data["source"][:, layer]

    def item(self, model, data, prepared, layer, pair, head, pos):
        here_all, after_all, src_all = prepared
        take = lambda a: a[pair]
        here, after = jax.tree.map(take, here_all), jax.tree.map(take, after_all)
        mask = data["attention_mask"][pair]
        T, H = mask.shape[0], model.cfg.n_heads
        spec = PatchSpec(
            self.site,
            source=src_all[pair][None],
            pos_mask=one_hot(pos, T) if self.per_pos else data["patchable"][pair].astype(jnp.float32),
            head_mask=one_hot(head, H) if self.per_head else None,
        )
        # One position per item: restart on that row (dirty rows for resid_pre); k and v reach every row.
        rows = pos[None] if self.per_pos and self.site not in ("k", "v") else None
        hidden = patched_hidden(model, mask.astype(bool), layer, here, after, spec, rows)
        return readout_score(model, hidden, mask, data["query_embedding"][pair])


@dataclasses.dataclass
class SweepResult:
    """Patched scores of one family over a batch of pairs.

    Attributes:
        family: Family name.
        patched: ``[pair, *family_shape]`` patched scores; NaN where nothing was patched (padding,
            unaligned positions).
        baseline_score: ``[pair]`` score of the run that was patched.
        perturbed_score: ``[pair]`` score of the run the activations came from.
        names: Pair labels.
        lengths: ``[pair]`` real lengths (trim ``pos`` axes to these for one pair).
    """

    family: str
    patched: np.ndarray
    baseline_score: np.ndarray
    perturbed_score: np.ndarray
    names: list[str]
    lengths: np.ndarray

    def effect(self, metric: str = "normalized", **kw):
        """Applies a metric from `jaxmech.patching.metrics` (``"normalized"``, ``"difference"``, ``"raw"``)."""
        from jaxmech.patching.metrics import apply_metric

        return apply_metric(metric, self.patched, self.baseline_score, self.perturbed_score, **kw)


def _canonical_to_layout(out: np.ndarray, layout: str) -> np.ndarray:
    """``[pair, layer, pos, head]`` (size-1 axes for unused ones) to the family layout."""
    axes = {"l": 1, "p": 2, "h": 3}
    keep = [0] + [axes[c] for c in layout]
    drop = tuple(a for a in (1, 2, 3) if a not in keep)
    return out.transpose(*keep, *drop).reshape(out.shape[0], *[out.shape[axes[c]] for c in layout])


@dataclasses.dataclass
class PreparedBatch:
    """Baseline and perturbed runs of a batch, and the per-pair data kernels read."""

    batch: PairBatch
    baseline_score: jax.Array
    perturbed_score: jax.Array
    cache: dict[str, jax.Array]
    source_cache: dict[str, jax.Array]
    query_embedding: jax.Array

    def data(self, **extra) -> dict:
        return {"cache": self.cache, "attention_mask": jnp.asarray(self.batch.baseline[2]),
                "patchable": jnp.asarray(self.batch.patchable), "query_embedding": self.query_embedding, **extra}

    def source(self, site: str) -> jax.Array:
        return align_source(self.source_cache[site], site, self.batch.position_map)


def prepare(model: HookedEncoder, batch: PairBatch, *, base_sites: Sequence[str] = (),
            source_sites: Sequence[str] = (), reverse: bool = False, query_embedding=None) -> PreparedBatch:
    """Runs the baseline (with the restart cache plus ``base_sites``) and the perturbed input (capturing
    ``source_sites``); swaps their roles first if ``reverse``."""
    if batch.n_pos > model.cfg.n_ctx:
        raise AlignmentError(f"pairs are padded to {batch.n_pos} positions but the model has n_ctx={model.cfg.n_ctx}")
    if reverse:
        batch = reverse_batch(batch)
    base_score, cache = baseline_cache(model, batch.baseline, base_sites)
    src_score, src_cache = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset(source_sites))
    if isinstance(model, BiEncoder):
        if query_embedding is None:
            raise ValueError("bi-encoder patching needs query_embedding [pair, d_model] (the patched run is the "
                             "document's)")
        query_embedding = jnp.asarray(query_embedding)
        base_score = model.similarity(query_embedding, base_score)
        src_score = model.similarity(query_embedding, src_score)
    elif query_embedding is None:
        query_embedding = jnp.zeros((batch.n_pairs, model.cfg.d_model), jnp.float32)
    return PreparedBatch(batch, base_score, src_score, dict(cache), dict(src_cache), query_embedding)


def run_kernel(kernel, model: HookedEncoder, prep: PreparedBatch, data: dict, *, per_pos: bool, per_head: bool,
               layers: Sequence[int] | None = None, chunk_size: int | None = None,
               mesh: Mesh | None = None, positions: Sequence[int] | None = None) -> np.ndarray:
    """Runs a kernel over all items and scatters the outputs to ``[pair, layer, pos|1, head|1]`` (NaN where
    no item ran)."""
    mesh = mesh or local_mesh()
    n_dev = mesh.devices.size
    batch = prep.batch
    items = enumerate_items(batch, per_pos, per_head, model, chunk_size, n_dev, positions)
    arrays = items.arrays()
    if n_dev > 1:
        arrays = jax.device_put(arrays, NamedSharding(mesh, P(None, "items")))
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    out = np.asarray(scan_items(kernel, model, data, arrays, layers))
    canonical = np.full((batch.n_pairs, model.cfg.n_layers, batch.n_pos if per_pos else 1,
                         model.cfg.n_heads if per_head else 1), np.nan, np.float32)
    v = items.valid.ravel()
    pair, head, pos = items.pair.ravel()[v], items.head.ravel()[v], items.pos.ravel()[v]
    res = out.reshape(len(layers), -1)[:, v]
    for i, layer in enumerate(layers):
        canonical[pair, layer, pos if per_pos else 0, head if per_head else 0] = res[i]
    return canonical


def activation_patch(
    model: HookedEncoder,
    batch: PairBatch,
    family: str | Family,
    *,
    reverse: bool = False,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    query_embedding=None,
    positions: Sequence[int] | None = None,
) -> SweepResult:
    """Exact activation patching of one family over a batch of aligned pairs.

    By default the baseline input is run and the perturbed run's activations are patched in (the paper's
    direction); ``reverse=True`` patches baseline activations into the perturbed run.

    Args:
        model: A `CrossEncoder` (or a `BiEncoder`, with ``query_embedding``).
        batch: Pairs from `jaxmech.patching.pairs.batch_pairs`.
        family: A name from `jaxmech.patching.families.FAMILIES`.
        reverse: Swap the roles of baseline and perturbed.
        chunk_size: Items per vmapped step (default: from free device memory).
        mesh: Devices to shard items over (default: every local device).
        query_embedding: ``[pair, d_model]`` query embeddings for bi-encoders (the patched run is the
            document's).
        positions: For per-position families, patch only these positions (others stay NaN).

    Returns:
        A `SweepResult` with TransformerLens-shaped results per pair.

    Raises:
        AlignmentError: If a pattern family is asked for pairs that do not align one to one.
    """
    fam = get_family(family) if isinstance(family, str) else family
    row_sites = [s for s in fam.sites if s not in ("resid_pre", "q", "k", "v")]
    prep = prepare(model, batch, base_sites=row_sites, source_sites=fam.sites, reverse=reverse,
                   query_embedding=query_embedding)
    if fam.needs_identity_alignment and not prep.batch.identity.all():
        bad = [prep.batch.names[i] or str(i) for i in np.nonzero(~prep.batch.identity)[0][:5]]
        raise AlignmentError(f"family {fam.name} patches attention patterns, which needs one-to-one aligned "
                             f"pairs of equal length; pairs {bad} are not (use filler alignment)")
    comps = []
    for site in fam.sites:
        data = prep.data(source=prep.source(site))
        kernel = ActivationKernel(site, fam.per_pos, fam.per_head)
        canonical = run_kernel(kernel, model, prep, data, per_pos=fam.per_pos, per_head=fam.per_head,
                               chunk_size=chunk_size, mesh=mesh, positions=positions)
        comps.append(_canonical_to_layout(canonical, fam.layout))
    patched = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return SweepResult(fam.name, patched, np.asarray(prep.baseline_score), np.asarray(prep.perturbed_score),
                       list(prep.batch.names), prep.batch.lengths.copy())


def reverse_batch(batch: PairBatch) -> PairBatch:
    """Swaps baseline and perturbed (inverting the position map)."""
    inv = np.full_like(batch.position_map, -1)
    for p in range(batch.n_pairs):
        m = batch.position_map[p]
        ok = m >= 0
        inv[p, m[ok]] = np.nonzero(ok)[0]
    lengths = batch.perturbed[2].sum(1).astype(np.int32)
    return PairBatch(batch.perturbed, batch.baseline, inv, lengths, batch.identity.copy(), list(batch.names))
