"""Joint head patching: a group of heads (any layers) patched together at every patchable position.

``heads_joint`` takes a list of head groups and returns one patched score per group (layout ``"g"``): for
group ``G``, the baseline is run with ``z`` of every head in ``G`` replaced, at every patchable position, by the
perturbed run's (moved to baseline positions). A group of one head is ``head_all_pos_z`` at that head.

Each group is one full forward with a `HeadSetPatch` (a ``[layer, head]`` mask, so groups spanning layers are one
intervention); the groups of a pair run as one ``jax.vmap`` and the pairs as another. Groups are few (a
circuit's roles, not every head), so nothing is restarted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxmech import runtime
from jaxmech.models.bert import HookedEncoder
from jaxmech.patching.caches import prepare
from jaxmech.patching.head_sets import HeadSetPatch
from jaxmech.patching.inputs import PairBatch
from jaxmech.patching.receivers import check_groups
from jaxmech.patching.results import SweepResult


def group_masks(groups, n_layers: int, n_heads: int) -> Float[np.ndarray, "group layer head_index"]:
    """``[group, layer, head]`` 0/1 masks of head groups (checked with `check_groups`)."""
    groups = check_groups(groups, n_layers, n_heads)
    masks = np.zeros((len(groups), n_layers, n_heads), np.float32)
    for g, heads in enumerate(groups):
        for layer, head in heads:
            masks[g, layer, head] = 1.0
    return masks


@functools.partial(jax.jit, static_argnames=("site",))
def joint_scores(model: HookedEncoder, ids, tt, mask, source, patchable, query_embedding, masks, *, site: str
                 ) -> Float[Array, "pair group"]:
    """Patched scores ``[pair, group]``: per pair (vmapped) and group (vmapped), one forward with the group's
    heads patched.

    Args:
        ids, tt, mask: ``[pair, pos]`` baseline inputs.
        source: ``[pair, layer, pos, head_index, d]`` perturbed activations at baseline positions.
        patchable: ``[pair, pos]`` positions that may be patched.
        query_embedding: ``[pair, d_model]``.
        masks: ``[group, layer, head_index]``.
    """
    def one_pair(ids, tt, am, src, pm, qe):
        def one_group(gm):
            patch = HeadSetPatch(site, gm, src, pm.astype(jnp.float32))
            return model.relevance(model.forward_one(ids, tt, am, interventions=[patch]), qe)

        return jax.vmap(one_group)(masks)

    return jax.vmap(one_pair)(ids, tt, mask, source, patchable, query_embedding)


@runtime.with_precision
def heads_joint(model: HookedEncoder, batch: PairBatch, groups: Sequence, *, reverse: bool = False,
                query_embedding=None, site: str = "z") -> SweepResult:
    """Joint patching of head groups over a batch of pairs. Result ``[pair, group]``.

    Args:
        model: The encoder.
        batch: Aligned pairs.
        groups: Head groups, e.g. ``[["9.1", "9.2"], ["10.1"]]``.
        reverse: Swap baseline and perturbed roles.
        query_embedding: For bi-encoders.
        site: The patched head site (``"z"``: the registry's ``heads_joint``).

    Raises:
        ValueError: On malformed, empty or out-of-range groups.
    """
    masks = group_masks(groups, model.cfg.n_layers, model.cfg.n_heads)
    prep = prepare(model, batch, source_sites=(site,), reverse=reverse, query_embedding=query_embedding)
    b = prep.batch
    out = joint_scores(model, *map(jnp.asarray, b.baseline), prep.source(site), jnp.asarray(b.patchable),
                       prep.query_embedding, jnp.asarray(masks), site=site)
    return SweepResult.from_prepared("heads_joint", np.asarray(out), prep)
