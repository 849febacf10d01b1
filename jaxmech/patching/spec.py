"""Patch specs: interventions as data.

A `PatchSpec` is a pytree: the site name is static; the layer, position and head masks, the interpolation
weight ``alpha`` and the source activations are arrays. At its site the forward replaces the activation by
the masked blend::

    w = alpha * layer_mask[layer] * pos_mask[pos] * head_mask[head]     (broadcast over the site's axes)
    x' = (1 - w) * x + w * source[layer]

so a zero mask is the identity (bit for bit), ``w = 1`` is a full replacement (exactly ``source``),
``alpha`` in (0, 1) interpolates, and ``d x'/d alpha = mask * (source - x)`` is what attribution patching
linearises. Because masks are arrays, ``jax.vmap`` over a batch of specs runs many patched forwards in one
program; the source can be shared across that batch (``in_axes=None``) so it is stored once.

`AdditiveDelta` (``x' = x + delta[layer]``) is the other intervention; gradients with respect to a zero delta
are the activation gradients that attribution patching needs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxmech.sites import get_site


def _site_weight(site_name: str, shape: tuple[int, ...], w_pos, w_head):
    """Broadcasts per-position and per-head weights to an activation of ``shape`` at ``site_name``."""
    site = get_site(site_name)
    w = jnp.ones((), jnp.float32)
    if w_pos is not None and site.pos_axis is not None:
        idx = [None] * len(shape)
        idx[site.pos_axis] = slice(None)
        w = w * w_pos[tuple(idx)]
    if w_head is not None and site.head_axis is not None:
        idx = [None] * len(shape)
        idx[site.head_axis] = slice(None)
        w = w * w_head[tuple(idx)]
    return w


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PatchSpec:
    """Blend an activation toward a source, under masks.

    Attributes:
        site: Site name (static), e.g. ``"z"``, ``"resid_pre"``; see `jaxmech.sites`.
        source: Source activations for one example: ``[layer, *site_dims]`` for per-layer sites, else
            ``[*site_dims]``.
        layer_mask: ``[layer]`` weights (per-layer sites; None = every layer).
        pos_mask: ``[pos]`` weights on the site's position axis (query position for attention patterns;
            None = every position).
        head_mask: ``[head_index]`` weights (head sites; None = every head).
        alpha: Interpolation weight, scalar.
    """

    site: str = dataclasses.field(metadata=dict(static=True))
    source: Array
    layer_mask: Float[Array, " layer"] | None = None
    pos_mask: Float[Array, " pos"] | None = None
    head_mask: Float[Array, " head_index"] | None = None
    alpha: Float[Array, ""] | float = 1.0

    def __post_init__(self):
        get_site(self.site)  # fail early with the known names

    def weight(self, shape: tuple[int, ...], layer, rows=None):
        """The blend weight for an activation of ``shape`` at ``layer`` (optionally only at ``rows``)."""
        pos = self.pos_mask if rows is None or self.pos_mask is None else self.pos_mask[rows]
        w = _site_weight(self.site, shape, pos, self.head_mask) * self.alpha
        if get_site(self.site).per_layer and self.layer_mask is not None:
            w = w * self.layer_mask[layer]
        return w

    def source_at(self, layer, rows=None):
        """Source activation at ``layer`` (and only ``rows`` of the position axis, if given)."""
        src = self.source[layer] if get_site(self.site).per_layer else self.source
        if rows is not None:
            src = jnp.take(src, rows, axis=get_site(self.site).pos_axis)
        return src

    def apply(self, x: Array, layer, rows=None) -> Array:
        """The blended activation (see the module docstring)."""
        w = self.weight(x.shape, layer, rows)
        return (1 - w) * x + w * self.source_at(layer, rows).astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AdditiveDelta:
    """Add ``delta[layer]`` (per-layer sites) or ``delta`` at a site; with a zero delta, ``jax.grad`` with
    respect to ``delta`` is the gradient of the output with respect to that activation."""

    site: str = dataclasses.field(metadata=dict(static=True))
    delta: Array

    def apply(self, x: Array, layer, rows=None) -> Array:
        d = self.delta[layer] if get_site(self.site).per_layer else self.delta
        if rows is not None:
            d = jnp.take(d, rows, axis=get_site(self.site).pos_axis)
        return x + d


def spec_in_axes(spec: PatchSpec, *, shared_source: bool = True) -> PatchSpec:
    """``in_axes`` for ``jax.vmap`` over a batch of specs: masks and alpha batched on axis 0, the source
    shared (None) unless ``shared_source=False``."""
    ax = lambda v: None if v is None else 0
    return PatchSpec(
        site=spec.site,
        source=None if shared_source else 0,
        layer_mask=ax(spec.layer_mask),
        pos_mask=ax(spec.pos_mask),
        head_mask=ax(spec.head_mask),
        alpha=0 if isinstance(spec.alpha, jax.Array) and spec.alpha.ndim else None,
    )


def one_hot(index, n: int) -> Float[Array, " n"]:
    """A float one-hot vector (works on traced indices)."""
    return (jnp.arange(n) == index).astype(jnp.float32)
