"""Attribution patching: a first-order estimate of every site's patching effect from one forward and one
backward pass.

The blend ``x' = (1 - w) x + w s`` of `jaxmech.interventions.PatchSpec` has ``d score / d w = <grad_x score, s - x>`` at
``w = 0``. With a zero `AdditiveDelta` at each site of a family, ``jax.grad`` gives ``grad_x score`` at every
layer, position and head at once; the estimate for one patch (one layer, head and/or position) is the sum of
``grad * (source - baseline)`` over that patch's elements. The estimated patched score is
``baseline + estimate``, so the same metrics apply as for exact patching.

This is exact for a patch whose effect is linear in its activation and approximate otherwise (it misses
saturation, e.g. through softmax or LayerNorm). `verify_top_k` runs the exact patches of the sites the
estimate ranks highest, and `jaxmech bench` reports the correlation of estimate and exact over all sites.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxmech import runtime
from jaxmech.interventions import AdditiveDelta, PatchSpec, one_hot
from jaxmech.models.base import Encoder
from jaxmech.patching.engines import prepare
from jaxmech.patching.families import Family, get_family
from jaxmech.patching.inputs import PairBatch
from jaxmech.patching.results import SweepResult, canonical_to_layout
from jaxmech.sites import get_site


def _score_one(model, deltas, ids, tt, mask, q_emb):
    ivs = [AdditiveDelta(site, d) for site, d in deltas.items()]
    return model.relevance(model.forward_one(ids, tt, mask, interventions=ivs), q_emb)


@jax.jit
def activation_gradients(model: Encoder, ids, tt, mask, zero_deltas: dict, query_embedding):
    """``d score / d activation`` at every site in ``zero_deltas`` (per pair, all layers): one forward and one
    backward per pair, vmapped over pairs."""
    grad = jax.grad(_score_one, argnums=1)
    return jax.vmap(grad, in_axes=(None, None, 0, 0, 0, 0))(model, zero_deltas, ids, tt, mask, query_embedding)


def _reduce(effect: np.ndarray, site: str, per_pos: bool, per_head: bool) -> np.ndarray:
    """``[pair, layer, *site_dims]`` contributions to canonical ``[pair, layer, pos|1, head|1]``."""
    s = get_site(site)
    if s.head_axis is None:
        x = np.moveaxis(effect, s.pos_axis + 2, 2)[:, :, :, None]
    else:
        x = np.moveaxis(effect, [s.pos_axis + 2, s.head_axis + 2], [2, 3])
    x = x.reshape(*x.shape[:4], -1).sum(-1)
    if not per_pos:
        x = x.sum(2, keepdims=True)
    if not per_head:
        x = x.sum(3, keepdims=True)
    return x


@runtime.with_precision
def attribution_patch(model: Encoder, batch: PairBatch, family: str | Family, *, reverse: bool = False,
                      query_embedding=None) -> SweepResult:
    """Attribution-patching estimate of a family, shaped like `jaxmech.patching.activation.activation_patch`.

    ``patched`` holds ``baseline_score + estimate`` (NaN at positions that are never patched).
    """
    fam = get_family(family)
    prep = prepare(model, batch, base_sites=fam.sites, source_sites=fam.sites, reverse=reverse,
                   query_embedding=query_embedding)
    b = prep.batch
    L = model.cfg.n_layers
    # On the host: the restart cache's resid_pre has L + 1 layers (eager slices were programs of their own).
    base = {s: np.asarray(prep.cache.site(s))[:, :L] for s in set(fam.sites)}
    zeros = {s: np.zeros(a.shape[1:], np.float32) for s, a in base.items()}
    grads = activation_gradients(model, *b.baseline, zeros, prep.query_embedding)
    patchable = b.patchable.astype(np.float32)
    comps = []
    for site in fam.sites:
        diff = np.asarray(prep.source(site)) - np.asarray(base[site])
        s = get_site(site)
        shape = [1] * diff.ndim
        shape[0], shape[s.pos_axis + 2] = patchable.shape
        effect = np.asarray(grads[site]) * diff * patchable.reshape(shape)
        canonical = _reduce(effect, site, fam.per_pos, fam.per_head)
        canonical = canonical + np.asarray(prep.baseline_score)[:, None, None, None]
        if fam.per_pos:
            canonical = np.where(b.patchable[:, None, :, None], canonical, np.nan)
        comps.append(canonical_to_layout(canonical.astype(np.float32), fam.layout))
    patched = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return SweepResult.from_prepared(f"attribution:{fam.name}", patched, prep)


@functools.partial(jax.jit, static_argnames=("site",))
def _exact_sites(model, ids, tt, mask, source, q_emb, pair, layers, heads, pos_masks, *, site):
    """Exact patched scores of pair ``pair`` (a traced index into the batch arrays) at ``k`` sites: one program
    per batch shape, ``k`` and site (indexing the batch inside, not eagerly, keeps it one)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ids, tt, mask, source, q_emb = (a[pair] for a in (ids, tt, mask, source, q_emb))

    def one(layer, head, pos_mask):
        spec = PatchSpec(site, source, one_hot(layer, L), pos_mask, one_hot(head, H) if heads is not None else None)
        return model.relevance(model.forward_one(ids, tt, mask, interventions=[spec]), q_emb)

    return jax.vmap(one)(layers, heads if heads is not None else layers, pos_masks)


@runtime.with_precision
def verify_top_k(model: Encoder, batch: PairBatch, estimate: SweepResult, family: str | Family, k: int = 10,
                 *, reverse: bool = False, query_embedding=None) -> list[dict]:
    """Runs exact patches for the ``k`` sites with the largest estimated effect, per pair.

    Args:
        estimate: Output of `attribution_patch` for the same batch and family.
        k: Sites to verify per pair (and component).

    Returns:
        One dict per pair and component: ``{"pair", "component", "index": [k, ndim] indices into the family
        layout, "estimated": [k], "exact": [k]}`` (patched scores).
    """
    fam = get_family(family)
    prep = prepare(model, batch, source_sites=fam.sites, reverse=reverse, query_embedding=query_embedding)
    b = prep.batch
    T = b.n_pos
    out = []
    for c, site in enumerate(fam.sites):
        for p in range(b.n_pairs):
            est = estimate.patched[p] if len(fam.sites) == 1 else estimate.patched[p, c]
            effect = np.abs(est - estimate.baseline_score[p])
            effect = np.where(np.isnan(effect), -1.0, effect)  # never-patched positions rank last
            top = np.argsort(effect.ravel())[::-1][:k]
            idx = np.stack(np.unravel_index(top, effect.shape), 1)
            get = {ch: idx[:, i] for i, ch in enumerate(fam.layout)}
            layers = get["l"]
            heads = get.get("h")
            if "p" in get:
                pos_masks = np.eye(T, dtype=np.float32)[get["p"]]
            else:
                pos_masks = np.repeat(b.patchable[p][None].astype(np.float32), len(top), 0)
            exact = _exact_sites(model, *b.baseline, prep.source(site), prep.query_embedding, np.int32(p),
                                 layers.astype(np.int32), None if heads is None else heads.astype(np.int32),
                                 pos_masks, site=site)
            out.append({"pair": p, "component": site, "index": idx, "estimated": est.ravel()[top],
                        "exact": np.asarray(exact)})
    return out
