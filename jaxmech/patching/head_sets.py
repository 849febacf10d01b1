"""Interventions on sets of heads (any layers at once), as registered dataclass pytrees: `HeadAblation` (the
definition of a background ablation, `jaxmech.patching.background`) and `HeadSetPatch` (the patch of
``heads_joint``, `jaxmech.patching.joint`). Both take a ``[layer, head_index]`` mask, which a `PatchSpec`
(a product of a layer mask and a head mask) cannot express for heads of several layers."""

from __future__ import annotations

import dataclasses

import jax
from jaxtyping import Array, Float


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HeadAblation:
    """Sets chosen heads' activation at a head site to a fixed value at every position (the definition of a
    background ablation; `ResolvedBackground.fold` computes the same function).

    Attributes:
        site: ``"z"`` or ``"result"`` (static).
        mask: ``[layer, head_index]`` 1 for ablated heads.
        value: ``[layer, head_index, d]`` the value they take (``d = d_head`` for ``z``, ``d_model`` for
            ``result``).
    """

    site: str = dataclasses.field(metadata=dict(static=True))
    mask: Float[Array, "layer head_index"]
    value: Float[Array, "layer head_index d"]

    def apply(self, x: Array, layer) -> Array:
        """``x`` ``[pos, head_index, d]`` with the ablated heads of ``layer`` replaced."""
        w = self.mask[layer][None, :, None]
        return (1 - w) * x + w * self.value[layer][None].astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HeadSetPatch:
    """Replaces a set of heads' activation at a head site by a source, at the positions of ``pos_mask``.

    Attributes:
        site: A head site with a leading position axis (``"z"``, ``"q"``, ``"k"``, ``"v"``, ``"result"``;
            static).
        mask: ``[layer, head_index]`` 1 for the patched heads.
        source: ``[layer, pos, head_index, d]`` source activations.
        pos_mask: ``[pos]`` patched positions.
    """

    site: str = dataclasses.field(metadata=dict(static=True))
    mask: Float[Array, "layer head_index"]
    source: Float[Array, "layer pos head_index d"]
    pos_mask: Float[Array, " pos"]

    def apply(self, x: Array, layer) -> Array:
        """The blend ``(1 - w) x + w source[layer]`` with ``w = mask[layer, head] * pos_mask[pos]``."""
        w = self.mask[layer][None, :, None] * self.pos_mask[:, None, None]
        return (1 - w) * x + w * self.source[layer].astype(x.dtype)
