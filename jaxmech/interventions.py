"""Interventions as data: what a forward applies at a hook point.

An intervention is any object with a static ``site`` name and ``apply(x, layer) -> x`` (the `Intervention`
protocol); `jaxmech.models.base.HookPoints` applies those whose site matches, in order. Three are defined here, all
registered dataclass pytrees so that they pass through ``jit``, ``vmap`` and ``grad``: `PatchSpec` (a masked
blend toward a source), `AdditiveDelta` (for gradients) and `HeadReplacement` (replace some heads of one
layer, used by path patching's second stage).

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
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxmech.sites import get_site


@runtime_checkable
class Intervention(Protocol):
    """What a hook point applies: a static ``site`` name and a function of the activation there."""

    site: str

    def apply(self, x: Array, layer) -> Array:
        """The intervened activation at ``layer`` (a traced scalar for per-layer sites, else None)."""
        ...


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

    def weight(self, shape: tuple[int, ...], layer) -> Array:
        """The blend weight for an activation of ``shape`` at ``layer``."""
        w = _site_weight(self.site, shape, self.pos_mask, self.head_mask) * self.alpha
        if get_site(self.site).per_layer and self.layer_mask is not None:
            w = w * self.layer_mask[layer]
        return w

    def source_at(self, layer) -> Array:
        """Source activation at ``layer``."""
        return self.source[layer] if get_site(self.site).per_layer else self.source

    def apply(self, x: Array, layer) -> Array:
        """The blended activation (see the module docstring)."""
        w = self.weight(x.shape, layer)
        return (1 - w) * x + w * self.source_at(layer).astype(x.dtype)

    def at_rows(self, rows: Int[Array, " r"]) -> PatchSpec:
        """The same patch for an activation holding only the positions ``rows`` (the restarted engine runs a
        block on the patched rows alone)."""
        site = get_site(self.site)
        axis = site.pos_axis + (1 if site.per_layer else 0)
        return dataclasses.replace(self, source=jnp.take(self.source, rows, axis=axis),
                                   pos_mask=None if self.pos_mask is None else self.pos_mask[rows])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AdditiveDelta:
    """Add ``delta[layer]`` (per-layer sites) or ``delta`` at a site; with a zero delta, ``jax.grad`` with
    respect to ``delta`` is the gradient of the output with respect to that activation."""

    site: str = dataclasses.field(metadata=dict(static=True))
    delta: Array

    def apply(self, x: Array, layer) -> Array:
        """``x + delta`` (at ``layer`` for per-layer sites)."""
        return x + (self.delta[layer] if get_site(self.site).per_layer else self.delta)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HeadReplacement:
    """Replaces ``site`` (a head site such as ``q``, ``k``, ``v``) at one layer, for the heads in
    ``head_mask``, by ``value`` at every position.

    Attributes:
        site: Site name (static).
        layer: The layer (static).
        head_mask: ``[head_index]`` 1 for replaced heads.
        value: ``[pos, head_index, d_head]`` replacement.
    """

    site: str = dataclasses.field(metadata=dict(static=True))
    layer: int = dataclasses.field(metadata=dict(static=True))
    head_mask: Float[Array, " head_index"]
    value: Array

    def apply(self, x: Array, layer) -> Array:
        """Blends toward ``value`` where ``layer == self.layer`` and the head is selected."""
        w = (layer == self.layer) * self.head_mask[None, :, None]
        return (1 - w) * x + w * self.value


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
