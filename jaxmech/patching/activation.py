"""Exact activation patching of one family over a batch of aligned pairs.

Each work item patches one site at one layer (and one head and/or position) from the perturbed run into the
baseline, restarted at its layer (`jaxmech.patching.engines.post_ln.patched_hidden`); `jaxmech.patching.program` runs
every item at every layer as one compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxmech import runtime
from jaxmech.interventions import PatchSpec, one_hot
from jaxmech.models.bert import HookedEncoder
from jaxmech.patching.caches import RESTART_SITES, SweepData, prepare
from jaxmech.patching.engines import engine_of
from jaxmech.patching.engines.post_ln import layer_view, patched_hidden
from jaxmech.patching.families import Family, get_family
from jaxmech.patching.inputs import PairBatch, require_identity_alignment
from jaxmech.patching.program import Kernel, run_kernel
from jaxmech.patching.reading import finish_result, layer_value, with_weights
from jaxmech.patching.readouts import SCORE, Readout, as_bound, check_readout, score_only
from jaxmech.patching.results import SweepResult, canonical_to_layout


@dataclasses.dataclass(frozen=True)
class ActivationKernel(Kernel):
    """One activation patch per item, restarted at its layer.

    Attributes:
        site: The patched site.
        per_pos: One position per item (else every patchable position).
        per_head: One head per item (else every head).
        readout: What each patched run measures (`jaxmech.patching.readouts`; default the score).
    """

    site: str
    per_pos: bool
    per_head: bool
    readout: Readout = SCORE

    @property
    def extras(self) -> tuple[str, ...]:
        """Cached sites the entry block reads besides the restart sites."""
        return () if self.site in RESTART_SITES else (self.site,)

    def prepare(self, model, data: SweepData, layer):
        """Baseline views at ``layer`` and ``layer + 1``, and this layer's sources."""
        views = jax.vmap(layer_view, in_axes=(0, None, None))
        return views(data.cache, layer, self.extras), views(data.cache, layer + 1, ()), data.source[:, layer]

    def item(self, model, data: SweepData, prepared, layer, pair, head, pos):
        """The score with the site patched at ``layer`` (at ``head``/``pos`` where per head/position)."""
        here_all, after_all, src_all = prepared
        take = lambda a: a[pair]
        here, after = jax.tree.map(take, here_all), jax.tree.map(take, after_all)
        mask = data.attention_mask[pair]
        T, H = mask.shape[0], model.cfg.n_heads
        spec = PatchSpec(
            self.site,
            source=src_all[pair][None],
            pos_mask=one_hot(pos, T) if self.per_pos else data.patchable[pair].astype(jnp.float32),
            head_mask=one_hot(head, H) if self.per_head else None,
        )
        # One position per item: restart on that row (dirty rows for resid_pre); k and v reach every row.
        rows = pos[None] if self.per_pos and self.site not in ("k", "v") else None
        if self.readout.layer is not None:  # stop after the readout's layer, every row; read its block
            resid = lambda: patched_hidden(model, mask.astype(bool), layer, here, after, spec, rows,
                                           stop_layer=self.readout.layer)
            return layer_value(model, self.readout, data, pair, layer, mask.astype(bool), resid, spec=spec)
        hidden = patched_hidden(model, mask.astype(bool), layer, here, after, spec, rows)
        return self.readout.final_value(model, hidden, mask, data.query_embedding[pair])


@runtime.with_precision
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
    steps_per_call: int | None = None,
    readout=None,
) -> SweepResult:
    """Exact activation patching of one family over a batch of aligned pairs.

    By default the baseline input is run and the perturbed run's activations are patched in (the paper's
    direction); ``reverse=True`` patches baseline activations into the perturbed run.

    Args:
        model: A `CrossEncoder` (or a `BiEncoder`, with ``query_embedding``).
        batch: Pairs from `jaxmech.patching.inputs.batch_pairs`.
        family: An activation family name from `jaxmech.patching.families.FAMILIES`.
        reverse: Swap the roles of baseline and perturbed.
        chunk_size: Items per vmapped step (default: from free device memory).
        mesh: Devices to shard items over (default: every local device).
        query_embedding: ``[pair, d_model]`` query embeddings for bi-encoders (the patched run is the
            document's).
        positions: For per-position families, patch only these positions (others stay NaN).
        steps_per_call: Fixed-shape calls (see `jaxmech.patching.program.run_kernel`).
        readout: What to measure: None (the score), a `jaxmech.patching.readouts` readout that reads no
            positions, or a `jaxmech.patching.readouts.BoundReadout`; the result's baseline and perturbed
            values are then the readout's.

    Returns:
        A `SweepResult` with TransformerLens-shaped results per pair.

    Raises:
        AlignmentError: If a pattern family is asked for pairs that do not align one to one.
    """
    engine = engine_of(model)
    if engine.patch is not None:  # an engine that runs whole families itself (pre-LN blocks)
        score_only(readout, engine.label)
        return engine.patch(model, batch, family, reverse=reverse, chunk_size=chunk_size, mesh=mesh,
                            positions=positions, steps_per_call=steps_per_call)
    fam = get_family(family)
    bound = as_bound(readout)
    check_readout(bound.readout, model)
    row_sites = [s for s in fam.sites if s not in RESTART_SITES]
    prep = prepare(model, batch, base_sites=row_sites, source_sites=fam.sites, reverse=reverse,
                   query_embedding=query_embedding)
    if fam.needs_identity_alignment:
        require_identity_alignment(fam.name, prep.batch)
    comps = []
    for site in fam.sites:
        kernel = ActivationKernel(site, fam.per_pos, fam.per_head, bound.readout)
        data = with_weights(prep.data(site), bound, reverse)
        canonical = run_kernel(kernel, model, prep, data, per_pos=fam.per_pos, per_head=fam.per_head,
                               chunk_size=chunk_size, mesh=mesh, positions=positions, steps_per_call=steps_per_call)
        comps.append(canonical_to_layout(canonical, fam.layout))
    patched = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return finish_result(SweepResult.from_prepared(fam.name, patched, prep), model, prep, bound, reverse)
