"""Attribution variants of the path families ``path_to_score`` (E4) and ``path_to_heads`` (E5), and the exact
verification of the senders they rank highest.

**Estimate.** Path patching runs the baseline with every head's ``z`` frozen to its baseline value except one
sender's. Writing the frozen run as ``z' = freeze(z) + delta`` (a full `PatchSpec` toward the baseline ``z``,
then an `AdditiveDelta`) gives a function of ``delta`` whose value at 0 is the baseline score and whose gradient
at 0 is the derivative of the path-patched score with respect to every sender's ``z`` at once (the freeze blocks
every path through later attention). The estimate for sender ``(l, h)`` is
``sum_{pos, d} grad[l, pos, h, d] * (z_perturbed - z_baseline)[l, pos, h, d]`` over the patchable positions:
one forward and one backward per pair for all senders.

* ``path_to_score``: the score of the frozen run.
* ``path_to_heads``: the frozen run's receiver inputs (``q``/``k``/``v`` at the receiver layers) are written into
  a second, unfrozen baseline run in which only those inputs are replaced (stage 2), and its score is
  differentiated through both runs. Senders at or above a receiver's layer do not reach it (zero gradient), as in
  the exact family.

The estimate is exact where the path-patched score is linear in the sender's ``z`` and approximate otherwise
(LayerNorm, MLPs, and for E5 the receivers' softmax). `path_verify_top_k` runs the exact path patches (full
forwards with the frozen ``z`` as one `PatchSpec`) of the ``k`` senders the estimate ranks highest per pair;
`jaxmech.analysis.circuit` can use it to find scoring and upstream heads without the exhaustive loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmech import runtime
from jaxmech.interventions import AdditiveDelta, HeadReplacement, PatchSpec, one_hot
from jaxmech.models.bert import HookedEncoder
from jaxmech.patching.caches import prepare
from jaxmech.patching.engines import engine_of
from jaxmech.patching.families import REGISTRY, Family, get_family
from jaxmech.patching.inputs import PairBatch
from jaxmech.patching.receivers import ReceiversByLayer, check_receivers, receivers_by_layer
from jaxmech.patching.results import SweepResult

Receivers = ReceiversByLayer


def _stage2_score(model, ids, tt, mask, q_emb, inputs, by_layer: Receivers, receiver_input: str):
    """The baseline's score with only the receivers' inputs replaced by ``inputs[layer]``."""
    H = model.cfg.n_heads
    patches = [HeadReplacement(receiver_input, r, jnp.asarray(np.isin(np.arange(H), heads), jnp.float32), inputs[r])
               for r, heads in by_layer]
    return model.relevance(model.forward_one(ids, tt, mask, interventions=patches), q_emb)


def _frozen_readout(model, ids, tt, mask, q_emb, z_frozen, delta, by_layer: Receivers | None, receiver_input: str):
    """The path-patched score of a run with every ``z`` set to ``z_frozen + delta`` (to the score when
    ``by_layer`` is None, else through the receivers' inputs)."""
    ivs = [PatchSpec("z", z_frozen), AdditiveDelta("z", delta)]
    if by_layer is None:
        return model.relevance(model.forward_one(ids, tt, mask, interventions=ivs), q_emb)
    out = model.forward_one(ids, tt, mask, interventions=ivs, capture=frozenset({receiver_input}))
    return _stage2_score(model, ids, tt, mask, q_emb, out.cache[receiver_input], by_layer, receiver_input)


ATTRIBUTION_FAMILIES = tuple(n for n, f in REGISTRY.items() if f.is_path and "attribution" in f.methods)
"""The path families with an attribution variant here (``path_to_score``, ``path_to_heads``)."""


@functools.partial(jax.jit, static_argnames=("by_layer", "receiver_input"))
def path_gradients(model: HookedEncoder, ids, tt, mask, z_base, q_emb, *, by_layer: Receivers | None = None,
                   receiver_input: str = "k"):
    """``d path-patched score / d z_sender`` for every sender at once ``[pair, layer, pos, head, d_head]``, and
    the frozen runs' scores ``[pair]`` (equal to the baseline's): one forward and backward per pair, vmapped."""
    def one(ids, tt, mask, z, qe):
        f = lambda delta: _frozen_readout(model, ids, tt, mask, qe, z, delta, by_layer, receiver_input)
        value, grad = jax.value_and_grad(f)(jnp.zeros_like(z))
        return grad, value

    grads, values = jax.vmap(one)(ids, tt, mask, z_base, q_emb)
    return grads, values


def _setup(model, family: str | Family, receivers, receiver_input: str):
    fam = get_family(family)
    if not (fam.is_path and "attribution" in fam.methods):
        raise ValueError(f"no attribution variant for {fam.name}; available: {', '.join(ATTRIBUTION_FAMILIES)}")
    if not fam.needs_receivers:  # to the score
        return fam, None, model.cfg.n_layers
    by_layer = receivers_by_layer(check_receivers(receivers, receiver_input, model.cfg.n_layers, model.cfg.n_heads))
    return fam, by_layer, max(r for r, _ in by_layer)


@runtime.with_precision
def path_attribution_patch(model: HookedEncoder, batch: PairBatch, family: str | Family = "path_to_score", *,
                           receivers=(), receiver_input: str = "k", reverse: bool = False,
                           query_embedding=None) -> SweepResult:
    """Attribution estimate of ``path_to_score`` or ``path_to_heads``, shaped like the exact family:
    ``patched`` ``[pair, layer, head]`` (``path_to_heads``: layers below the last receiver) holds
    ``baseline_score + estimate``.

    Args:
        model: The encoder.
        batch: Aligned pairs.
        family: ``"path_to_score"`` or ``"path_to_heads"``.
        receivers: Receiver heads of ``path_to_heads``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        reverse: Swap baseline and perturbed roles.
        query_embedding: For bi-encoders.

    Raises:
        ValueError: For another family, or bad receivers.
    """
    engine_of(model).check_family(family, "attribution")  # refused by name: the gradients below are post-LN's
    fam, by_layer, r_max = _setup(model, family, receivers, receiver_input)
    prep = prepare(model, batch, base_sites=("z",), source_sites=("z",), reverse=reverse,
                   query_embedding=query_embedding)
    b = prep.batch
    z_base = prep.cache.site("z")
    grads, _ = path_gradients(model, *map(jnp.asarray, b.baseline), z_base, prep.query_embedding,
                              by_layer=by_layer, receiver_input=receiver_input)
    diff = (np.asarray(prep.source("z")) - np.asarray(z_base)) * b.patchable[:, None, :, None, None]
    estimate = np.einsum("blphd,blphd->blh", np.asarray(grads, np.float64), diff.astype(np.float64))
    patched = (estimate[:, :r_max] + np.asarray(prep.baseline_score)[:, None, None]).astype(np.float32)
    name = fam.name if by_layer is None else f"{fam.name}_{receiver_input}"
    return SweepResult.from_prepared(f"attribution:{name}", patched, prep)


@functools.partial(jax.jit, static_argnames=("by_layer", "receiver_input"))
def exact_path_scores(model: HookedEncoder, ids, tt, mask, z_base, z_source, patchable, q_emb, layers, heads, *,
                      by_layer: Receivers | None = None, receiver_input: str = "k"):
    """Exact path-patched scores of one pair for senders ``(layers[i], heads[i])`` (vmapped over senders): full
    forwards with every ``z`` frozen to the baseline's but the sender's, taken from ``z_source`` at the
    ``patchable`` positions."""
    L, H = z_base.shape[0], z_base.shape[2]

    def one(layer, head):
        w = one_hot(layer, L)[:, None, None, None] * patchable.astype(jnp.float32)[None, :, None, None] \
            * one_hot(head, H)[None, None, :, None]
        z = (1 - w) * z_base + w * z_source
        return _frozen_readout(model, ids, tt, mask, q_emb, z, jnp.zeros_like(z), by_layer, receiver_input)

    return jax.vmap(one)(layers, heads)


@runtime.with_precision
def path_verify_top_k(model: HookedEncoder, batch: PairBatch, estimate: SweepResult, family: str | Family,
                      k: int = 10, *, receivers=(), receiver_input: str = "k", reverse: bool = False,
                      query_embedding=None) -> list[dict]:
    """Exact path patches of the ``k`` senders with the largest estimated effect, per pair (the format of
    `jaxmech.patching.attribution.verify_top_k`).

    Args:
        estimate: `path_attribution_patch` 's result for the same batch, family and receivers.
        k: Senders to verify per pair.

    Returns:
        One dict per pair: ``{"pair", "component": "z", "index": [k, 2] (layer, head), "estimated": [k],
        "exact": [k]}`` (patched scores).
    """
    fam, by_layer, _ = _setup(model, family, receivers, receiver_input)
    prep = prepare(model, batch, base_sites=("z",), source_sites=("z",), reverse=reverse,
                   query_embedding=query_embedding)
    b = prep.batch
    z_base, z_src = prep.cache.site("z"), prep.source("z")
    out = []
    for p in range(b.n_pairs):
        est = estimate.patched[p]
        effect = np.abs(est - estimate.baseline_score[p])
        effect = np.where(np.isnan(effect), -1.0, effect)
        top = np.argsort(effect.ravel(), kind="stable")[::-1][:k]
        idx = np.stack(np.unravel_index(top, effect.shape), 1).astype(np.int32)
        exact = exact_path_scores(model, *(jnp.asarray(a[p]) for a in b.baseline), z_base[p], z_src[p],
                                  jnp.asarray(b.patchable[p]), prep.query_embedding[p], jnp.asarray(idx[:, 0]),
                                  jnp.asarray(idx[:, 1]), by_layer=by_layer, receiver_input=receiver_input)
        out.append({"pair": p, "component": "z", "index": idx, "estimated": est.ravel()[top],
                    "exact": np.asarray(exact)})
    return out


@runtime.with_precision
def verified_path_patch(model: HookedEncoder, batch: PairBatch, family: str | Family = "path_to_score", *,
                        k: int = 10, receivers=(), receiver_input: str = "k", reverse: bool = False,
                        query_embedding=None) -> tuple[SweepResult, list[tuple[int, int]]]:
    """Fast path patching for circuit discovery: attribution estimates for every sender, then exact path patches
    of the ``k`` senders with the largest mean estimated effect over the pairs, for every pair.

    Args:
        model: The encoder.
        batch: Aligned pairs.
        family: ``"path_to_score"`` or ``"path_to_heads"``.
        k: Senders verified exactly (0: estimates only).
        receivers: Receiver heads of ``path_to_heads``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        reverse: Swap baseline and perturbed roles.
        query_embedding: For bi-encoders.

    Returns:
        ``(result, verified)``: ``result.patched`` ``[pair, layer, head]`` holds exact path-patched scores at the
        verified senders and ``baseline + estimate`` elsewhere; ``verified`` lists the ``(layer, head)`` verified.
    """
    est = path_attribution_patch(model, batch, family, receivers=receivers, receiver_input=receiver_input,
                                 reverse=reverse, query_embedding=query_embedding)
    if k <= 0:
        return est, []
    _, by_layer, _ = _setup(model, family, receivers, receiver_input)
    effect = np.nanmean(np.abs(est.patched - est.baseline_score[:, None, None]), axis=0)
    top = np.argsort(np.where(np.isnan(effect), -1.0, effect).ravel(), kind="stable")[::-1][:k]
    idx = np.stack(np.unravel_index(top, effect.shape), 1).astype(np.int32)
    prep = prepare(model, batch, base_sites=("z",), source_sites=("z",), reverse=reverse,
                   query_embedding=query_embedding)
    b = prep.batch
    z_base, z_src = prep.cache.site("z"), prep.source("z")
    patched = est.patched.copy()
    for p in range(b.n_pairs):
        exact = exact_path_scores(model, *(jnp.asarray(a[p]) for a in b.baseline), z_base[p], z_src[p],
                                  jnp.asarray(b.patchable[p]), prep.query_embedding[p], jnp.asarray(idx[:, 0]),
                                  jnp.asarray(idx[:, 1]), by_layer=by_layer, receiver_input=receiver_input)
        patched[p, idx[:, 0], idx[:, 1]] = np.asarray(exact)
    return SweepResult(est.family, patched, est.baseline_score, est.perturbed_score, est.names, est.lengths), \
        [(int(layer), int(head)) for layer, head in idx]
