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
from jaxmech.patching.engine import GLOBAL_SITES, _NO_HOOKS, layer_view, patched_hidden
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
    return 1 << 30  # CPU: 1 GiB of live activations per step


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


def enumerate_items(batch: PairBatch, family: Family, n_heads: int, chunk_size: int | None,
                    model: HookedEncoder, n_devices: int = 1) -> Items:
    """All ``(pair, head, position)`` items of a family; positions only where patchable."""
    heads = np.arange(n_heads) if family.per_head else np.zeros(1, np.int64)
    rows = []
    for p in range(batch.n_pairs):
        positions = np.nonzero(batch.patchable[p])[0] if family.per_pos else np.zeros(1, np.int64)
        pp, hh = np.meshgrid(positions, heads, indexing="ij")
        rows.append(np.stack([np.full(pp.size, p), hh.ravel(), pp.ravel()], 1))
    flat = np.concatenate(rows).astype(np.int32)
    n = len(flat)
    b = chunk_size or auto_chunk_size(model, batch.n_pos, n, n_devices)
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


@functools.partial(jax.jit, static_argnames=("site", "per_pos", "per_head", "extras"))
def _sweep_program(model, cache, attention_mask, patchable, source, query_embedding, items, *,
                   site: str, per_pos: bool, per_head: bool, extras: tuple[str, ...]):
    """Patched scores ``[layer, chunks, chunk_size]`` for every item at every layer."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    T = attention_mask.shape[1]
    row_patch = per_pos  # one position per item: restart on that row (or as dirty rows for resid_pre)
    views = jax.vmap(layer_view, in_axes=(0, None, None))

    def per_layer(_, layer):
        here_all = views(cache, layer, extras)
        after_all = views(cache, layer + 1, ())
        src_all = source[:, layer]

        def item_score(pair, head, pos):
            take = lambda a: a[pair]
            here, after = jax.tree.map(take, here_all), jax.tree.map(take, after_all)
            key_mask = attention_mask[pair].astype(bool)
            spec = PatchSpec(
                site,
                source=src_all[pair][None],
                pos_mask=one_hot(pos, T) if per_pos else patchable[pair].astype(jnp.float32),
                head_mask=one_hot(head, H) if per_head else None,
            )
            rows = pos[None] if row_patch and site not in GLOBAL_SITES - {"resid_pre"} else None
            hidden = patched_hidden(model, key_mask, layer, here, after, spec, rows)
            return readout_score(model, hidden, attention_mask[pair], query_embedding[pair])

        def per_chunk(_, chunk):
            return None, jax.vmap(item_score)(chunk["pair"], chunk["head"], chunk["pos"])

        return None, jax.lax.scan(per_chunk, None, items)[1]

    return jax.lax.scan(per_layer, None, jnp.arange(L))[1]


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


def activation_patch(
    model: HookedEncoder,
    batch: PairBatch,
    family: str | Family,
    *,
    reverse: bool = False,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    query_embedding=None,
) -> SweepResult:
    """Exact activation patching of one family over a batch of aligned pairs.

    By default the baseline input is run and the perturbed run's activations are patched in (the paper's
    direction, `reverse=False`); ``reverse=True`` patches baseline activations into the perturbed run.

    Args:
        model: A `CrossEncoder` (or a `BiEncoder`, with ``query_embedding``).
        batch: Pairs from `jaxmech.patching.pairs.batch_pairs`.
        family: A name from `jaxmech.patching.families.FAMILIES`.
        reverse: Swap the roles of baseline and perturbed.
        chunk_size: Items per vmapped step (default: from free device memory).
        mesh: Devices to shard items over (default: every local device).
        query_embedding: ``[pair, d_model]`` query embeddings for bi-encoders (the patched run is the
            document's).

    Returns:
        A `SweepResult` with TransformerLens-shaped results per pair.

    Raises:
        AlignmentError: If a pattern family is asked for pairs that do not align one to one.
    """
    fam = get_family(family) if isinstance(family, str) else family
    if reverse:
        batch = reverse_batch(batch)
    if fam.needs_identity_alignment and not batch.identity.all():
        bad = [batch.names[i] or str(i) for i in np.nonzero(~batch.identity)[0][:5]]
        raise AlignmentError(f"family {fam.name} patches attention patterns, which needs one-to-one aligned "
                             f"pairs of equal length; pairs {bad} are not (use filler alignment)")
    mesh = mesh or local_mesh()
    n_dev = mesh.devices.size
    cfg = model.cfg
    row_sites = [s for s in fam.sites if s not in ("resid_pre", "q", "k", "v")]
    base_score, cache = baseline_cache(model, batch.baseline, row_sites)
    src_score, src_cache = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset(fam.sites))
    if query_embedding is None:
        query_embedding = jnp.zeros((batch.n_pairs, cfg.d_model), jnp.float32)
        if isinstance(model, BiEncoder):
            raise ValueError("bi-encoder patching needs query_embedding [pair, d_model]")
    else:
        base_score = model.similarity(query_embedding, base_score)
        src_score = model.similarity(query_embedding, src_score)
    items = enumerate_items(batch, fam, cfg.n_heads, chunk_size, model, n_dev)
    item_arrays = items.arrays()
    if n_dev > 1:
        sharding = NamedSharding(mesh, P(None, "items"))
        item_arrays = jax.device_put(item_arrays, sharding)

    T = batch.n_pos
    shape_c = (batch.n_pairs, cfg.n_layers, T if fam.per_pos else 1, cfg.n_heads if fam.per_head else 1)
    outs = []
    patchable = jnp.asarray(batch.patchable)
    mask = jnp.asarray(batch.baseline[2])
    for site in fam.sites:
        source = align_source(src_cache[site], site, batch.position_map)
        extras = (site,) if site not in ("resid_pre", "q", "k", "v") else ()
        out = _sweep_program(model, cache, mask, patchable, source, query_embedding, item_arrays,
                             site=site, per_pos=fam.per_pos, per_head=fam.per_head, extras=extras)
        outs.append(out)
    canonical = np.full((len(fam.sites), *shape_c), np.nan, np.float32)
    v = items.valid.ravel()
    pair, head, pos = items.pair.ravel()[v], items.head.ravel()[v], items.pos.ravel()[v]
    for c, out in enumerate(outs):
        res = np.asarray(out).reshape(cfg.n_layers, -1)[:, v]  # [layer, n_items]
        for layer in range(cfg.n_layers):
            canonical[c, pair, layer, pos if fam.per_pos else 0, head if fam.per_head else 0] = res[layer]
    comps = [_canonical_to_layout(canonical[c], fam.layout) for c in range(len(fam.sites))]
    patched = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return SweepResult(fam.name, patched, np.asarray(base_score), np.asarray(src_score), list(batch.names),
                       batch.lengths.copy())


def reverse_batch(batch: PairBatch) -> PairBatch:
    """Swaps baseline and perturbed (inverting the position map)."""
    inv = np.full_like(batch.position_map, -1)
    for p in range(batch.n_pairs):
        m = batch.position_map[p]
        ok = m >= 0
        inv[p, m[ok]] = np.nonzero(ok)[0]
    lengths = batch.perturbed[2].sum(1).astype(np.int32)
    return PairBatch(batch.perturbed, batch.baseline, inv, lengths, batch.identity.copy(), list(batch.names))
