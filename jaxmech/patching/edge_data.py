"""What every edge engine shares: the per-pair arrays it reads (`EdgeData`), what an engine provides for edges
(`EdgeOps`), the edge-coefficient contraction (`combine`) and mean ablation (`mean_ablated`).

The edge definition itself is the engine's (`jaxmech.patching.edge_graph`): post-LN encoders freeze their
LayerNorm scales (`jaxmech.patching.engines.post_ln_edges`), pre-LN ModernBERT needs no freezing
(`jaxmech.patching.engines.pre_ln_edges`). The front users call is `jaxmech.patching.edges`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EdgeData:
    """Per-pair arrays of the edge engine (leading ``pair`` axis; `edge_forward` takes one pair's slice).

    Attributes:
        ids: ``[pair, pos]`` baseline token ids. tt: segment ids. mask: attention mask.
        patchable: ``[pair, pos]`` 1 where a perturbed value may replace the baseline's.
        ln1: ``[pair, layer, pos, 1]`` baseline ``ln1_scale``. ln2: ``ln2_scale`` (frozen by the post-LN engine;
            the pre-LN engine normalises live and only reports them).
        resid_pre: ``[pair, layer + 1, pos, d_model]`` baseline block inputs; index ``L``: the final hidden state
            (post-LN: normalised; pre-LN: the last ``resid_post``, before the final LayerNorm).
        emb_base: ``[pair, pos, d_model]`` embeddings' output (``resid_pre[0]``). emb_pert: perturbed run's.
        res_base: ``[pair, layer, pos, head_index, d_model]`` per-head ``result`` (``z_h W_O[h]``). res_pert:
            perturbed run's.
        mlp_base: ``[pair, layer, pos, d_model]`` ``mlp_out``. mlp_pert: perturbed run's.
        q_emb: ``[pair, d_model]`` query embedding (bi-encoders; zeros otherwise).
        baseline_score: ``[pair]``. perturbed_score: ``[pair]``.
        spans: ``[pair, group, pos]`` position groups for span-aware edges (one all-ones group by default).
    """

    ids: Int[Array, "pair pos"]
    tt: Int[Array, "pair pos"]
    mask: Int[Array, "pair pos"]
    patchable: Float[Array, "pair pos"]
    ln1: Float[Array, "pair layer pos 1"]
    ln2: Float[Array, "pair layer pos 1"]
    resid_pre: Float[Array, "pair layer_plus_1 pos d_model"]
    emb_base: Float[Array, "pair pos d_model"]
    emb_pert: Float[Array, "pair pos d_model"]
    res_base: Float[Array, "pair layer pos head_index d_model"]
    res_pert: Float[Array, "pair layer pos head_index d_model"]
    mlp_base: Float[Array, "pair layer pos d_model"]
    mlp_pert: Float[Array, "pair layer pos d_model"]
    q_emb: Float[Array, "pair d_model"]
    baseline_score: Float[Array, " pair"]
    perturbed_score: Float[Array, " pair"]
    spans: Float[Array, "pair group pos"]

    def pair(self, p) -> EdgeData:
        """One pair's slice (no pair axis)."""
        return jax.tree.map(lambda a: a[p], self)


@dataclasses.dataclass(frozen=True, eq=False)
class EdgeOps:
    """What an engine provides for edge patching (`jaxmech.patching.engines.Engine.edges`); every function is
    pure and traceable except ``data`` and ``check``.

    Attributes:
        check: ``check(model) -> None``: ValueError (one line) for a model variant the definition does not cover.
        data: ``data(model, batch, *, reverse, query_embedding, spans) -> EdgeData``: the baseline and perturbed
            runs (two forwards).
        forward: ``forward(model, ex, alpha, *, emb_t, fixed_delta) -> score``: one pair's score with edge
            coefficients ``alpha`` ``[receiver, sender(, group)]`` (`jaxmech.patching.edges.edge_forward`).
        input_changes: ``input_changes(model, ex) -> changes``: what the restarted single-edge runs read (a pytree).
        restart_item: ``restart_item(model, ex, changes, layer, kind, head, sender, group) -> score``: edge
            ``sender ->`` input ``kind`` (0-2 q/k/v, 3 the MLP) of ``head`` in block ``layer`` (a Python int),
            patched alone, at span ``group`` (-1: every position).
        score_item: ``score_item(model, ex, changes, sender, group) -> score``: edge ``sender -> logits`` alone.
        alpha_gradient: ``alpha_gradient(model, ex, alpha, *, emb_t, fixed_delta) -> d score / d alpha``, where the
            engine has a cheaper way than ``jax.grad`` of ``forward`` (None: that).
    """

    check: Callable
    data: Callable
    forward: Callable
    input_changes: Callable
    restart_item: Callable
    score_item: Callable
    alpha_gradient: Callable | None = None


def combine(a, D: Float[Array, "sender pos d"], spans: Float[Array, "group pos"] | None):
    """``sum_s a[..., s] D[s]`` (``spans`` None, ``a [..., sender]``), or with span groups
    ``sum_{s,g} a[..., s, g] spans[g] D[s]`` (``a [..., sender, group]``)."""
    if spans is None:
        return jnp.einsum("...s,spd->...pd", a, D)
    return jnp.einsum("...sg,gp,spd->...pd", a, spans, D)


def blend_patchable(pm: Float[Array, "pair pos"], pert: Array, base: Array, pos_axis: int) -> Array:
    """The perturbed value where ``pm`` (``[pair, pos]``) is 1, the baseline's elsewhere; ``pos_axis`` is the
    position axis of ``pert`` / ``base`` (their axis 0 the pairs)."""
    w = pm.reshape(pm.shape[:1] + (1,) * (pos_axis - 1) + pm.shape[1:] + (1,) * (base.ndim - pos_axis - 1))
    return w * pert + (1 - w) * base


def span_mask(ex: EdgeData, group) -> Float[Array, "pos 1"]:
    """The positions of span ``group`` of ``ex.spans`` (every position for ``group < 0``)."""
    return jnp.where(group < 0, 1.0, ex.spans[jnp.maximum(group, 0)])[:, None]


def mean_ablated(data: EdgeData) -> EdgeData:
    """``data`` with every sender's patched value its mean instead of its perturbed value (mean ablation).

    The mean of a sender's output (the embeddings' output, a head's ``result``, an MLP's output) is taken over
    every real token (``mask == 1``) of every pair's baseline run, pooled over positions (one ``[d_model]`` vector
    per sender, the same at every position: the pairs' positions do not line up across documents of different
    lengths). Every real position may be patched (``patchable = mask``); padding keeps the baseline's values.
    Every edge function takes the result in place of ``data``: a patched edge then carries ``T_{s->r}(mean_s)``
    instead of ``T_{s->r}(o_s')``, and `edges_patched_scores` with ``keep`` a circuit's mask runs the circuit with
    every other edge mean-ablated. ``perturbed_score`` becomes NaN (no input was run).
    """
    m = jnp.asarray(data.mask, jnp.float32)
    n_tokens = m.sum()

    def mean_of(base, pos_axis):  # [pair, ..., pos, ..., d]: the masked mean over pairs and positions
        w = m.reshape([m.shape[0] if i == 0 else m.shape[1] if i == pos_axis else 1 for i in range(base.ndim)])
        mean = (w * base).sum((0, pos_axis), keepdims=True) / n_tokens
        w = jnp.broadcast_to(w, base.shape)
        return jnp.where(w > 0, jnp.broadcast_to(mean, base.shape), base)

    return dataclasses.replace(
        data, patchable=m, emb_pert=mean_of(data.emb_base, 1),
        res_pert=mean_of(data.res_base, 2), mlp_pert=mean_of(data.mlp_base, 2),
        perturbed_score=jnp.full_like(data.perturbed_score, jnp.nan))


__all__ = ["EdgeData", "EdgeOps", "blend_patchable", "combine", "mean_ablated", "span_mask"]
