"""Patching families on ModernBERT (`jaxmech.models.modernbert.ModernBertCrossEncoder`): restarted, batched, jitted.

ModernBERT's blocks are pre-LN, so the block input ``resid_pre[l]`` is the residual stream itself (a running
sum) and nothing in block ``l`` or later depends on earlier blocks except through it. A patch at a site of
block ``l`` therefore restarts exactly from the baseline's cached ``resid_pre[l]``
(`ModernBertCrossEncoder.run_from`): blocks before ``l`` are skipped, blocks ``l`` to the end run with the
`PatchSpec` (and any frozen ``z``) as interventions, then the final LayerNorm, pooling and head give the score.
This is the same function as the full forward with those interventions (the tests check it, and check it
against transformers' ModernBERT with PyTorch hooks, `benchmarks.baselines.torch_hooks.ModernBertTorchPatcher`).

What the post-LN engine (`jaxmech.patching.engines.post_ln`) adds on top of restarting — running the patched block on
the patched rows alone, dirty rows in the next block, CLS-only last blocks, row-wise frozen attention — is not
done here: every restarted block runs on every row. Items still run as one compiled program per family
(`jaxmech.patching.program.run_kernel`: ``lax.scan`` over layers, ``vmap`` over items), and the restart skips
``l`` blocks of the ``n_layers`` for a patch at layer ``l``.

Families: every activation family whose sites ModernBERT has (not ``normalized_resid_post_*``, which pre-LN
blocks do not compute, nor ``*_result``: ModernBERT exposes no per-head output site), exactly; ``path_to_score``,
``path_to_heads`` and ``path_components_to_heads`` exactly. Attribution estimates of the activation families are
not engine-specific (`jaxmech.patching.attribution`: gradients of the full forward), and read their baseline from
`prepare` here through the engine registry (`jaxmech.patching.engines.prepare`). This module is the registry's
``"pre_ln"`` engine (`jaxmech.patching.engines.ENGINES`); models declare it with ``engine = "pre_ln"``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxmech import runtime
from jaxmech.data.align import AlignmentError
from jaxmech.interventions import HeadReplacement, PatchSpec
from jaxmech.models.modernbert import MODERNBERT_SITES
from jaxmech.patching.caches import RESTART_SITES, PreparedBatch, RestartCache, paired_captures, run_cached
from jaxmech.patching.families import Family, check_receivers, get_family
from jaxmech.patching.inputs import PairBatch, require_identity_alignment, reverse_batch
from jaxmech.patching.program import SpecKernel, run_kernel
from jaxmech.patching.results import SweepResult, canonical_to_layout

COMPONENTS = ("resid_pre", "attn_out", "mlp_out")


UNSUPPORTED = {
    "backgrounds": "background interventions (PatchSpec) are not supported for ModernBERT; give head ablations "
                   "(Ablation) instead",
}
"""What this engine lacks, with the one-line error (`jaxmech.patching.engines.Engine.unsupported`)."""

def check_family(family: str | Family, method: str = "exact") -> Family:
    """The family, if it runs on ModernBERT.

    Raises:
        ValueError: Naming the family and the sites ModernBERT lacks, or the unsupported method.
    """
    fam = get_family(family)
    missing = [s for s in fam.sites if s not in MODERNBERT_SITES]
    if missing:
        why = {"normalized_resid_post": "pre-LN blocks have no LayerNorm after the block",
               "result": "ModernBERT exposes no per-head output site"}
        raise ValueError(f"family {fam.name} patches {missing}, which ModernBERT does not have ("
                         + "; ".join(why.get(s, "not a ModernBERT site") for s in missing) + ")")
    if method not in fam.methods:
        raise ValueError(f"family {fam.name}: method={method!r} is not available (choose from {fam.methods})")
    if fam.kind == "group":
        raise ValueError(f"family {fam.name}: head-group patching is not available on ModernBERT (it folds groups "
                         "into the post-LN engine's restarted blocks)")
    if method == "attribution" and fam.is_path:
        raise ValueError(f"family {fam.name}: method='attribution' is not available on ModernBERT (path attribution "
                         "differentiates the post-LN engine's frozen run); use method='exact'")
    return fam


def prepare(model, batch: PairBatch, *, base_sites=(), source_sites=(), reverse: bool = False,
            query_embedding=None) -> PreparedBatch:
    """Baseline run (capturing ``resid_pre``, ``q``, ``k``, ``v`` and ``base_sites``) and perturbed run
    (capturing ``source_sites``) of a ModernBERT batch; roles swapped first if ``reverse``. ``query_embedding``
    is not used (the model reads the query itself); the prepared batch holds zeros. Compiles the forward
    (`jaxmech.patching.caches.run_cached`) once per batch shape when both runs capture the same sites
    (`paired_captures`), else twice.

    Raises:
        AlignmentError: If the batch is longer than the model's context.
    """
    if batch.n_pos > model.cfg.n_ctx:
        raise AlignmentError(f"pairs are padded to {batch.n_pos} positions but the model has n_ctx={model.cfg.n_ctx}")
    if reverse:
        batch = reverse_batch(batch)
    needed = frozenset({*RESTART_SITES, *base_sites})
    base_capture, src_capture = paired_captures(model, batch, needed, frozenset(source_sites), MODERNBERT_SITES)
    base_out, cache = run_cached(model, *map(jnp.asarray, batch.baseline), capture=base_capture)
    src_out, src_cache = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=src_capture)
    cache = {name: cache[name] for name in needed}
    restart = RestartCache(*(cache.pop(s) for s in RESTART_SITES), cache)
    qe = jnp.zeros((batch.n_pairs, model.cfg.d_model), jnp.float32)
    return PreparedBatch(batch, base_out.score, src_out.score, restart,
                         {name: src_cache[name] for name in source_sites}, qe)


def _restart_score(model, x, mask, layer, specs, *, stop=None):
    """Runs blocks from ``layer`` on ``x = resid_pre[layer]`` with ``specs``; a ``resid_pre`` spec is applied
    to ``x`` first (the block's own hook would apply it again, which a 0/1 blend leaves unchanged)."""
    for spec in specs:
        if spec.site == "resid_pre":
            x = spec.apply(x, layer)
    return model.run_from(x, mask, layer, interventions=specs, stop=stop)


def _freeze_z(model, data, pair, layer):
    """Every head's ``z`` in blocks after ``layer`` frozen to the baseline's."""
    L = model.cfg.n_layers
    return PatchSpec("z", source=data.cache.sites["z"][pair], layer_mask=(jnp.arange(L) > layer).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class ModernBertKernel(SpecKernel):
    """One patch per item at ``site`` of the item's layer, restarted there; optionally every later ``z``
    frozen (``path_to_score``) or read at receiver heads (path families with ``by_layer``).

    Attributes (beyond `SpecKernel`'s ``site``, ``per_pos`` and ``per_head``):
        freeze_z: Freeze every ``z`` after the patched layer to the baseline's.
        by_layer: Receiver heads by layer (path to heads): the score of a fresh baseline run whose receivers'
            ``receiver_input`` is what the patched run computes; empty: the patched run's score.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
    """

    freeze_z: bool = False
    by_layer: tuple[tuple[int, tuple[int, ...]], ...] = ()
    receiver_input: str = "k"

    def prepare(self, model, data, layer):
        """Every pair's baseline ``resid_pre`` at ``layer``."""
        return data.cache.resid_pre[:, layer]

    def item(self, model, data, prepared, layer, pair, head, pos):
        """The patched score of one item."""
        mask = data.attention_mask[pair]
        spec = self.item_spec(model, data, layer, pair, head, pos)
        specs = [spec, _freeze_z(model, data, pair, layer)] if self.freeze_z else [spec]
        x = prepared[pair]
        if not self.by_layer:
            return model.score_hidden(_restart_score(model, x, mask, layer, specs), mask)
        H, patches = model.cfg.n_heads, []
        for r, heads in self.by_layer:
            x_r = _restart_score(model, x, mask, layer, specs, stop=r)
            new = model.project(x_r, r, self.receiver_input)
            reaches = (layer < r) | ((layer == r) & (self.site == "resid_pre"))
            new = jnp.where(reaches, new, data.cache.site(self.receiver_input)[pair, r])
            patches.append(HeadReplacement(self.receiver_input, r,
                                           jnp.asarray(np.isin(np.arange(H), heads), jnp.float32), new))
        r0 = min(r for r, _ in self.by_layer)
        hidden = model.run_from(data.cache.resid_pre[pair, r0], mask, r0, interventions=patches)
        return model.score_hidden(hidden, mask)


@runtime.with_precision
def modernbert_patch(model, batch: PairBatch, family: str | Family, *, receivers=(), receiver_input: str = "k",
                     reverse: bool = False, chunk_size: int | None = None, mesh=None, positions=None,
                     steps_per_call: int | None = None) -> SweepResult:
    """Runs an activation or path family on a ModernBERT cross-encoder, exactly (see the module docstring): the
    pre-LN engine's `jaxmech.patching.engines.Engine.patch`. Compiles, per batch shape, the forwards of `prepare`
    and one scan program (`jaxmech.patching.program.run_kernel`) per site of the family (the three components of
    ``path_components_to_heads``).

    Args:
        model: A `jaxmech.models.modernbert.ModernBertCrossEncoder`.
        batch: Aligned pairs (`jaxmech.patching.inputs.batch_pairs` with the model's pad id).
        family: A family name of `jaxmech.patching.families.REGISTRY`.
        receivers: Receiver heads of ``path_to_heads`` / ``path_components_to_heads``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        reverse: Patch baseline activations into the perturbed run.
        chunk_size: Items per vmapped step.
        mesh: Devices to shard items over.
        positions: For per-position families, only these positions.
        steps_per_call: Fixed-shape calls (see `jaxmech.patching.program.run_kernel`).

    Returns:
        A `SweepResult` laid out as the family says (path families end at the last receiver layer).

    Raises:
        ValueError: For families ModernBERT cannot run (`check_family`), or bad receivers.
        AlignmentError: If a pattern family is asked for pairs that do not align one to one.
    """
    fam = check_family(family, "exact")
    run = dict(chunk_size=chunk_size, mesh=mesh, steps_per_call=steps_per_call)
    if fam.name in ("path_to_heads", "path_components_to_heads"):
        receivers = check_receivers(receivers, receiver_input, model.cfg.n_layers, model.cfg.n_heads)
        by_layer: dict[int, list[int]] = {}
        for layer, head in receivers:
            by_layer.setdefault(layer, []).append(head)
        by_layer = tuple((r, tuple(sorted(hs))) for r, hs in sorted(by_layer.items()))
        r_max = by_layer[-1][0]
        if fam.name == "path_to_heads":
            prep = prepare(model, batch, base_sites=("z",), source_sites=("z",), reverse=reverse)
            out = run_kernel(ModernBertKernel("z", False, True, True, by_layer, receiver_input), model, prep,
                             prep.data("z"), per_pos=False, per_head=True, layers=range(r_max), **run)
            return SweepResult.from_prepared(f"path_to_heads_{receiver_input}", out[:, :r_max, 0, :], prep)
        prep = prepare(model, batch, source_sites=COMPONENTS, reverse=reverse)
        comps = [run_kernel(ModernBertKernel(site, True, False, False, by_layer, receiver_input), model, prep,
                            prep.data(site), per_pos=True, per_head=False, layers=range(r_max), positions=positions,
                            **run)[:, :r_max, :, 0] for site in COMPONENTS]
        return SweepResult.from_prepared(f"path_components_to_heads_{receiver_input}", np.stack(comps, 1), prep)
    if fam.name == "path_to_score":
        prep = prepare(model, batch, base_sites=("z",), source_sites=("z",), reverse=reverse)
        out = run_kernel(ModernBertKernel("z", False, True, True), model, prep, prep.data("z"), per_pos=False,
                         per_head=True, **run)
        return SweepResult.from_prepared(fam.name, canonical_to_layout(out, fam.layout), prep)
    prep = prepare(model, batch, source_sites=fam.sites, reverse=reverse)
    if fam.needs_identity_alignment:
        require_identity_alignment(fam.name, prep.batch)
    comps = []
    for site in fam.sites:
        canonical = run_kernel(ModernBertKernel(site, fam.per_pos, fam.per_head), model, prep, prep.data(site),
                               per_pos=fam.per_pos, per_head=fam.per_head, positions=positions, **run)
        comps.append(canonical_to_layout(canonical, fam.layout))
    patched = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return SweepResult.from_prepared(fam.name, patched, prep)

