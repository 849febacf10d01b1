"""Activation patching by full forwards, for backgrounds that are general interventions.

A background given as interventions (any `jaxmech.interventions.PatchSpec`, or another
`jaxmech.interventions.Intervention`) acts inside blocks that the restarted engine
(`jaxmech.patching.engines.post_ln`) runs without hooks, so it cannot be folded into a model copy as head ablations
are (`jaxmech.patching.background`). Such families run here instead: every work item is one full forward
(`jaxmech.models.bert.HookedEncoder.forward_one`) with the background interventions followed by the item's patch,
vmapped over a chunk of items and jitted (the same `jaxmech.patching.program.run_kernel` chunking as the
restarted engine). The baseline and perturbed runs, and so the patch sources and both scores, carry the
background too. Slower than the restarted engine (every item reruns every layer) but exact by construction.

The background is shared by every input of a run: a `PatchSpec` source with a position axis must have the
padded length of the pairs' bucket (``batch.n_pos``). Only activation families of pair-input (cross-encoder,
BERT-style) models run here; path families, attribution, bi-encoders and ModernBERT are refused by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from jaxmech import runtime
from jaxmech.data.align import AlignmentError
from jaxmech.models.bert import HookedEncoder
from jaxmech.patching.caches import PreparedBatch
from jaxmech.patching.engines import engine_of
from jaxmech.patching.families import Family, get_family
from jaxmech.patching.inputs import PairBatch, require_identity_alignment, reverse_batch
from jaxmech.patching.program import SpecKernel, run_kernel
from jaxmech.patching.results import SweepResult, canonical_to_layout

METHOD = "full forward per patched item (background interventions + the patch; vmapped, jitted, chunked)"
"""How families with an intervention background run (recorded in results' ``meta["background"]``)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class FullForwardData:
    """Per-pair arrays of a full-forward sweep (gathered by pair index inside the compiled program).

    Attributes:
        input_ids: ``[pair, pos]`` baseline (patched-run) ids.
        token_type_ids: ``[pair, pos]``.
        attention_mask: ``[pair, pos]``.
        patchable: ``[pair, pos]`` positions that may be patched.
        source: ``[pair, layer, *site_dims]`` perturbed activations (with the background) at baseline positions.
        query_embedding: ``[pair, d_model]`` (zeros: pair-input models only).
        background: The background interventions (shared by every item).
    """

    input_ids: Int[Array, "pair pos"]
    token_type_ids: Int[Array, "pair pos"]
    attention_mask: Int[Array, "pair pos"]
    patchable: Array
    source: Array
    query_embedding: Float[Array, "pair d_model"]
    background: tuple


@dataclasses.dataclass(frozen=True)
class FullForwardKernel(SpecKernel):
    """One full forward per item: the background, then the site patched at one layer (head/position)
    (fields: `SpecKernel`'s)."""

    def prepare(self, model, data: FullForwardData, layer):
        """Nothing per layer (every item runs the whole model)."""
        return None

    def item(self, model, data: FullForwardData, prepared, layer, pair, head, pos):
        """The score of the baseline input with the background and the site patched at ``layer``."""
        spec = self.item_spec(model, data, layer, pair, head, pos)
        out = model.forward_one(data.input_ids[pair], data.token_type_ids[pair], data.attention_mask[pair],
                                interventions=[*data.background, spec])
        return model.relevance(out, data.query_embedding[pair])


def check_supported(model, family: Family, method: str = "exact") -> None:
    """Raises ValueError naming what a background of interventions cannot run with."""
    engine_of(model).require("backgrounds")
    if not model.pair_input:
        raise ValueError("background interventions (PatchSpec) need a pair-input (cross-encoder) model; give "
                         "head ablations (Ablation) for bi-encoders")
    if family.is_path or family.needs_groups:
        raise ValueError(f"family {family.name}: background interventions (PatchSpec) run activation families "
                         "only (full forwards); give head ablations (Ablation) for path and group families")
    if method != "exact":
        raise ValueError(f"method {method!r}: background interventions (PatchSpec) support exact patching only")


@runtime.with_precision
def full_forward_patch(
    model: HookedEncoder,
    batch: PairBatch,
    family: str | Family,
    background: Sequence,
    *,
    reverse: bool = False,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    steps_per_call: int | None = None,
) -> SweepResult:
    """Exact activation patching of one family with background interventions, by full forwards.

    Args:
        model: A pair-input `HookedEncoder` (cross-encoder).
        batch: Pairs from `jaxmech.patching.inputs.batch_pairs`.
        family: An activation family name.
        background: Interventions applied (in order, before the patch) in the baseline, perturbed and every
            patched run.
        reverse: Swap the roles of baseline and perturbed.
        chunk_size: Items per vmapped step (default: from free device memory).
        mesh: Devices to shard items over (default: every local device).
        steps_per_call: Fixed-shape calls (see `jaxmech.patching.program.run_kernel`).

    Returns:
        A `SweepResult` (scores of the baseline and perturbed runs with the background).

    Raises:
        ValueError: See `check_supported`; AlignmentError for pattern families on pairs that do not align
            one to one, or a batch longer than the model's context.
    """
    fam = get_family(family)
    check_supported(model, fam)
    if batch.n_pos > model.cfg.n_ctx:
        raise AlignmentError(f"pairs are padded to {batch.n_pos} positions but the model has n_ctx={model.cfg.n_ctx}")
    if reverse:
        batch = reverse_batch(batch)
    if fam.needs_identity_alignment:
        require_identity_alignment(fam.name, batch)
    background = tuple(background)
    base = tuple(map(jnp.asarray, batch.baseline))
    base_out = _run(model, *base, background, capture=frozenset())
    src_out = _run(model, *map(jnp.asarray, batch.perturbed), background, capture=frozenset(fam.sites))
    qe = jnp.zeros((batch.n_pairs, model.cfg.d_model), jnp.float32)
    prep = PreparedBatch(batch, model.relevance(base_out, qe), model.relevance(src_out, qe), None,
                         dict(src_out.cache), qe)
    comps = []
    for site in fam.sites:
        data = FullForwardData(*base, jnp.asarray(batch.patchable), prep.source(site), qe, background)
        canonical = run_kernel(FullForwardKernel(site, fam.per_pos, fam.per_head), model, prep, data,
                               per_pos=fam.per_pos, per_head=fam.per_head, chunk_size=chunk_size, mesh=mesh,
                               steps_per_call=steps_per_call)
        comps.append(canonical_to_layout(canonical, fam.layout))
    patched = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return SweepResult.from_prepared(fam.name, patched, prep)


@functools.partial(jax.jit, static_argnames=("capture",))
def _run(model, ids, tt, mask, background, *, capture: frozenset):
    """Batched forward with the background (jitted; ``capture`` static)."""
    return model(ids, tt, mask, capture=capture, interventions=list(background))


def split_background(background) -> tuple:
    """``(ablations, interventions)``: a background split into what
    `jaxmech.patching.background.with_background` folds (None, `Ablation` s or a resolved background) and other
    interventions (anything with a ``site`` and ``apply``, e.g. a `PatchSpec`, run by full forwards here).

    Raises:
        TypeError: For an item that is neither.
    """
    from jaxmech.patching.background import Ablation, ResolvedBackground

    if background is None or isinstance(background, ResolvedBackground):
        return background, []
    items = [background] if isinstance(background, Ablation) or hasattr(background, "apply") else list(background)
    ablations, other = [], []
    for item in items:
        if isinstance(item, Ablation):
            ablations.append(item)
        elif isinstance(getattr(item, "site", None), str) and callable(getattr(item, "apply", None)):
            other.append(item)
        else:
            raise TypeError(f"background: {type(item).__name__} is neither an Ablation nor an intervention "
                            "(PatchSpec)")
    return (ablations or None), other


def describe(interventions: Sequence) -> dict:
    """For results' metadata: the background interventions (type and site) and how families ran."""
    return {"interventions": [{"type": type(iv).__name__, "site": iv.site} for iv in interventions],
            "interventions_method": METHOD}
