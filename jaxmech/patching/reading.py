"""How kernels compute a readout (`jaxmech.patching.readouts`): its weights in the sweep data, the readout's
block run with a layer-local patch, and the unpatched runs' values.

A layer readout at layer ``L`` needs the patched run's ``resid_pre[L]`` at every row, then block ``L`` itself with
the patch applied when the patch is at ``L`` (`read_block`, `layer_value`); `finish_result` replaces a result's
baseline and perturbed scores by the readout's values of the unpatched runs (`run_values`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxmech.models.bert import Hooks, layer_slice
from jaxmech.patching.caches import SweepData
from jaxmech.patching.readouts import BoundReadout, Readout


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ReadoutData(SweepData):
    """`SweepData` with the patched run's readout weights.

    Attributes:
        read_weights: ``[pair, 2, pos]`` (see `BoundReadout`).
    """

    read_weights: Array = None


def with_weights(data: SweepData, bound: BoundReadout, reverse: bool) -> SweepData:
    """``data`` with the patched run's readout weights when the readout reads positions (else unchanged)."""
    if bound.readout.layer is None:
        return data
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(SweepData)}
    return ReadoutData(**fields, read_weights=jnp.asarray(bound.oriented(reverse)[0]))


class ReadHooks(Hooks):
    """Block hooks that apply a layer-local patch (when ``active``), optionally freeze ``z`` to a cached value,
    and record the readout's site.

    Args:
        read_site: The site to record.
        spec: A layer-local `jaxmech.interventions.PatchSpec` (source with a length-1 layer axis), or None.
        active: Traced bool: whether the patch is at this layer.
        frozen_z: Cached ``z`` of this layer to freeze every head to (the sender's patch then applies on it).
    """

    def __init__(self, read_site: str, spec=None, active=False, frozen_z=None):
        self.read_site, self.spec, self.active, self.frozen_z = read_site, spec, active, frozen_z
        self.value = None

    def wants(self, name: str) -> bool:
        """The read site, the patched site and a frozen ``z``."""
        return name == self.read_site or (self.spec is not None and name == self.spec.site) or (
            name == "z" and self.frozen_z is not None)

    def __call__(self, name: str, x: Array) -> Array:
        """Freeze, patch, record."""
        if name == "z" and self.frozen_z is not None:
            x = self.frozen_z
        if self.spec is not None and name == self.spec.site:
            x = jnp.where(self.active, self.spec.apply(x, 0), x)
        if name == self.read_site:
            self.value = x
        return x


def read_block(model, readout, x: Float[Array, "pos d_model"], key_mask, weights, *, spec=None, active=False,
               frozen_z=None) -> Float[Array, ""]:
    """Runs block ``readout.layer`` on ``x = resid_pre[layer]`` (every row) and reduces its read site.

    Args:
        model: The encoder.
        readout: A layer readout.
        x: The run's ``resid_pre`` at the readout's layer.
        key_mask: ``[pos]`` real tokens.
        weights: ``[2, pos]`` the run's readout weights.
        spec: A layer-local patch applied in this block when ``active``.
        active: Traced bool (the patch is at the readout's layer).
        frozen_z: Freeze this block's ``z`` (frozen-attention path patching).
    """
    hooks = ReadHooks(readout.site, spec, active, frozen_z)
    layer_slice(model.blocks, readout.layer)(x, key_mask, hooks)
    return readout.site_value(hooks.value, weights)


def layer_value(model, readout, data: SweepData, pair, layer, key_mask, patched_resid, *, spec=None,
                frozen_z=None) -> Float[Array, ""]:
    """A layer readout of a run patched at ``layer``: ``patched_resid()`` gives ``resid_pre[readout.layer]``
    when the patch is below the readout's layer (it is not computed otherwise: the baseline's is read)."""
    L = readout.layer
    x = jax.lax.cond(layer < L, patched_resid, lambda: data.cache.resid_pre[pair, L])
    return read_block(model, readout, x, key_mask, data.read_weights[pair], spec=spec, active=layer == L,
                      frozen_z=frozen_z)


# -- the unpatched runs' values ----------------------------------------------------------------------------------


def run_values(model, inputs, readout: Readout, weights: np.ndarray | None, query_embedding) -> np.ndarray:
    """``[pair]`` readout values of unpatched runs (a full forward capturing the readout's site).

    Args:
        model: The encoder.
        inputs: ``(input_ids, token_type_ids, attention_mask)`` ``[pair, pos]``.
        readout: The readout.
        weights: ``[pair, 2, pos]`` the run's readout weights (layer readouts).
        query_embedding: ``[pair, d_model]`` (bi-encoders' score).
    """
    from jaxmech.patching.caches import run_cached

    capture = frozenset() if readout.layer is None else frozenset({readout.site})
    out, cache = run_cached(model, *map(jnp.asarray, inputs), capture=capture)
    return readout.run_value(model, out, cache, weights, query_embedding)


def finish_result(result, model, prep, bound: BoundReadout, reverse: bool):
    """A `jaxmech.patching.results.SweepResult` whose baseline and perturbed values are the readout's (the
    unpatched runs of ``prep``, already swapped when ``reverse``); unchanged for the score."""
    if bound.readout.is_score:
        return result
    w_patched, w_source = bound.oriented(reverse)
    base = run_values(model, prep.batch.baseline, bound.readout, w_patched, prep.query_embedding)
    pert = run_values(model, prep.batch.perturbed, bound.readout, w_source, prep.query_embedding)
    return dataclasses.replace(result, baseline_score=base.astype(np.float32), perturbed_score=pert.astype(np.float32))
