"""The compiled sweep program: every work item at every layer, as one jitted ``lax.scan``.

The program is a ``lax.scan`` over layers (so the layer is a traced scalar that is not batched, and
`jaxmech.patching.engines.post_ln` can restart there) and over chunks of items (`jaxmech.patching.schedule`), with
``jax.vmap`` over the items of a chunk. One compile serves every layer; per-pair data is gathered by index,
so pairs of one length bucket share the program; the host synchronises once per sweep, not per site. With
several local devices the item axis is sharded over them (``jax.sharding``), which shards sites and pairs
alike.

What one item computes is a `Kernel`: per layer it prepares slices of the per-pair data once
(``prepare``), then maps one item ``(pair, head, pos)`` to a patched score (``item``).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from jaxmech.interventions import PatchSpec, one_hot
from jaxmech.models.base import Encoder
from jaxmech.patching.caches import PreparedBatch, SweepData
from jaxmech.patching.schedule import ItemIndex, auto_chunk_size, enumerate_items, local_mesh


class Kernel(abc.ABC):
    """What a sweep computes per work item. Kernels are static arguments of the compiled program, so they
    must be hashable (frozen dataclasses); the per-pair arrays come in `SweepData`."""

    @abc.abstractmethod
    def prepare(self, model: Encoder, data: SweepData, layer: Int[Array, ""]):
        """Per-layer slices of the per-pair data (a pytree), computed once per layer."""

    @abc.abstractmethod
    def item(self, model: Encoder, data: SweepData, prepared, layer: Int[Array, ""], pair: Int[Array, ""],
             head: Int[Array, ""], pos: Int[Array, ""]) -> Float[Array, ""]:
        """The patched score of one item at ``layer``."""


@dataclasses.dataclass(frozen=True)
class SpecKernel(Kernel):
    """A kernel whose item patches ``site`` through a `PatchSpec` (engines that run the model's own forward
    with interventions rather than the restart engine's row-local blocks).

    Attributes:
        site: The patched site.
        per_pos: One position per item (else every patchable position of the pair).
        per_head: One head per item (else every head).
    """

    site: str
    per_pos: bool
    per_head: bool

    def item_spec(self, model: Encoder, data, layer: Int[Array, ""], pair: Int[Array, ""],
                  head: Int[Array, ""], pos: Int[Array, ""]) -> PatchSpec:
        """The item's patch: ``data.source[pair]`` at ``layer`` (and ``head``/``pos`` where per-item).

        ``data`` needs ``attention_mask``, ``source`` and ``patchable``, each indexed by pair first.
        """
        T = data.attention_mask.shape[-1]
        return PatchSpec(
            self.site,
            source=data.source[pair],
            layer_mask=one_hot(layer, model.cfg.n_layers),
            pos_mask=one_hot(pos, T) if self.per_pos else data.patchable[pair].astype(jnp.float32),
            head_mask=one_hot(head, model.cfg.n_heads) if self.per_head else None,
        )


def scan_items(kernel: Kernel, model: Encoder, data: SweepData, items: ItemIndex,
               layers: Sequence[int] | None = None) -> Float[Array, "layer chunks chunk_size"]:
    """Runs ``kernel`` on every item at every layer (or ``layers``): ``[layer, chunks, chunk_size]`` outputs."""
    layers = np.arange(model.cfg.n_layers, dtype=np.int32) if layers is None else np.asarray(layers, np.int32)
    return _scan_items(model, data, items, layers, kernel=kernel)


@functools.partial(jax.jit, static_argnames=("kernel",))
def _scan_items(model, data, items, layers, *, kernel):
    def per_layer(_, layer):
        prepared = kernel.prepare(model, data, layer)

        def per_chunk(_, chunk):
            fn = lambda pair, head, pos: kernel.item(model, data, prepared, layer, pair, head, pos)
            return None, jax.vmap(fn)(chunk.pair, chunk.head, chunk.pos)

        return None, jax.lax.scan(per_chunk, None, items)[1]

    return jax.lax.scan(per_layer, None, layers)[1]


def _fixed_calls(kernel, model, data, items, layers, *, steps: int, step: int, mesh: Mesh) -> np.ndarray:
    """Runs the valid items in calls of exactly ``[steps, step]`` items (the last padded with invalid ones),
    so every call of a bucket has the same shapes: ``[layer, n_valid]`` outputs."""
    v = items.valid.ravel()
    flat = [a.ravel()[v] for a in (items.index.pair, items.index.head, items.index.pos)]
    n, per_call = len(flat[0]), steps * step
    outs = []
    for start in range(0, n, per_call):
        m = min(per_call, n - start)

        def fill(a, start=start, m=m):
            out = np.zeros(per_call, np.int32)
            out[:m] = a[start:start + m]
            return out.reshape(steps, step)

        index = ItemIndex(*(fill(a) for a in flat))
        if mesh.devices.size > 1:
            index = jax.device_put(index, NamedSharding(mesh, P(None, "items")))
        outs.append(np.asarray(scan_items(kernel, model, data, index, layers)).reshape(len(layers), -1)[:, :m])
    return np.concatenate(outs, 1) if outs else np.zeros((len(layers), 0), np.float32)


def run_kernel(kernel: Kernel, model: Encoder, prep: PreparedBatch, data: SweepData, *, per_pos: bool,
               per_head: bool, layers: Sequence[int] | None = None, chunk_size: int | None = None,
               mesh: Mesh | None = None, positions: Sequence[int] | None = None,
               steps_per_call: int | None = None) -> Float[np.ndarray, "pair layer pos_or_1 head_or_1"]:
    """Runs a kernel over all items of a prepared batch and scatters the outputs to the canonical
    ``[pair, layer, pos|1, head|1]`` (NaN where no item ran).

    Args:
        kernel: What each item computes.
        model: The encoder.
        prep: The prepared batch.
        data: The kernel's per-pair data.
        per_pos: One item per patchable position.
        per_head: One item per head.
        layers: Layers to run (default: all).
        chunk_size: Items per vmapped step (default: from free device memory).
        mesh: Devices to shard items over (default: every local device).
        positions: Run only these positions (per-position kernels).
        steps_per_call: Run the items in calls of a fixed ``steps_per_call x chunk_size`` (chunk size sized
            for the batch's most items), so batches of one bucket reuse one compiled program whatever their
            pairs' lengths; default: one call of all items in balanced chunks.
    """
    mesh = mesh or local_mesh()
    n_dev = mesh.devices.size
    batch = prep.batch
    cfg = model.cfg
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    if steps_per_call:
        worst = batch.n_pairs * (batch.n_pos if per_pos else 1) * (cfg.n_heads if per_head else 1)
        step = min(chunk_size or auto_chunk_size(model, batch.n_pos, worst, n_dev), worst)
        step = -(-step // n_dev) * n_dev
        items = enumerate_items(batch, per_pos, per_head, model, step, n_dev, positions)
        res = _fixed_calls(kernel, model, data, items, layers, steps=min(steps_per_call, -(-worst // step)),
                           step=step, mesh=mesh)
    else:
        items = enumerate_items(batch, per_pos, per_head, model, chunk_size, n_dev, positions)
        index = items.index
        if n_dev > 1:
            index = jax.device_put(index, NamedSharding(mesh, P(None, "items")))
        out = np.asarray(scan_items(kernel, model, data, index, layers))
        res = out.reshape(len(layers), -1)[:, items.valid.ravel()]
    canonical = np.full((batch.n_pairs, cfg.n_layers, batch.n_pos if per_pos else 1,
                         cfg.n_heads if per_head else 1), np.nan, np.float32)
    v = items.valid.ravel()
    pair, head, pos = items.index.pair.ravel()[v], items.index.head.ravel()[v], items.index.pos.ravel()[v]
    for i, layer in enumerate(layers):
        canonical[pair, layer, pos if per_pos else 0, head if per_head else 0] = res[i]
    return canonical
