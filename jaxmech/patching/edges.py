"""Exact edge patching on post-LayerNorm encoders (the edge is defined in `jaxmech.patching.edge_graph`).

**The engine.** `edge_forward` runs one example through the model with every LayerNorm scale frozen at the
baseline's and carries, beside the residual stream ``x``, a stack ``D[sender, pos, d_model]``: sender ``s``'s
perturbed-minus-current output ``o_s' - o_s`` as the frozen LayerNorms have carried it to the current point
(``T_{s->.}(o_s' - o_s)``). Receiver ``r``'s input is ``x + sum_s alpha[r, s] D[s]``: ``alpha = 0`` is the
baseline run (exactly), a one-hot ``alpha`` patches one edge, ``1 - circuit`` runs a circuit with every other
edge patched, and derivatives in ``alpha`` are the edge attributions (`jaxmech.patching.edge_attribution`).
With ``fixed_delta`` the stack carries ``o_s' - o_s`` of the baseline run instead of the current one (the same
values at ``alpha = 0``; EAP-IG over inputs multiplies gradients by these).

**Exact single edges.** `exact_edge_scores` does not run the stack per edge: one stack run per pair records
each edge's input change ``T_{s->r}(o_s' - o_s)`` at every receiver, then each edge is a frozen-scale forward
restarted at its receiver's layer from the baseline's residual with that change added to the one receiver
input (heads: projected by the head's ``W_Q``/``W_K``/``W_V``; MLPs: added to the MLP's input; the score: to
the final hidden state). Edges are vmapped in chunks per receiver layer; when the readout reads [CLS] alone
the last layer runs the [CLS] row only (queries, residual, MLP).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxmech import runtime
from jaxmech.models.bert import NO_HOOKS, HookedEncoder
from jaxmech.patching.caches import prepare
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.engines import engine_of
from jaxmech.patching.inputs import PairBatch


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EdgeData:
    """Per-pair arrays of the edge engine (leading ``pair`` axis; `edge_forward` takes one pair's slice).

    Attributes:
        ids: ``[pair, pos]`` baseline token ids. tt: segment ids. mask: attention mask.
        patchable: ``[pair, pos]`` 1 where a perturbed value may replace the baseline's.
        ln1: ``[pair, layer, pos, 1]`` baseline ``ln1_scale``. ln2: ``ln2_scale``.
        resid_pre: ``[pair, layer + 1, pos, d_model]`` baseline residual (index ``L``: final hidden state).
        emb_base: ``[pair, pos, d_model]`` embeddings' output (``resid_pre[0]``). emb_pert: perturbed run's.
        res_base: ``[pair, layer, pos, head_index, d_model]`` per-head ``result``. res_pert: perturbed run's.
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


def check_edge_model(model) -> EdgeGraph:
    """The graph of ``model``; one-line error for models the post-LN edge definition does not cover."""
    engine_of(model).require("edges")
    if getattr(model.cfg, "has_embed_proj", False):
        raise ValueError("edge patching: models with an embedding projection (ELECTRA-small) are not supported")
    return EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)


@runtime.with_precision
def edge_data(model: HookedEncoder, batch: PairBatch, *, reverse: bool = False, query_embedding=None,
              spans=None) -> EdgeData:
    """Runs the baseline and perturbed inputs once (two forwards) and gathers what the edge engine reads.

    Args:
        model: A post-LN encoder.
        batch: Aligned pairs.
        reverse: Swap baseline and perturbed roles.
        query_embedding: For bi-encoders.
        spans: ``[pair, group, pos]`` 0/1 position groups for span-aware edges (default: one group, every
            position).
    """
    check_edge_model(model)
    prep = prepare(model, batch, base_sites=("result", "mlp_out", "ln1_scale", "ln2_scale"),
                   source_sites=("result", "mlp_out", "resid_pre"), reverse=reverse, query_embedding=query_embedding)
    b = prep.batch
    pm = jnp.asarray(b.patchable, jnp.float32)

    def keep(pert, base, pos_axis):  # the perturbed value where patchable, the baseline's elsewhere
        w = pm.reshape(pm.shape[:1] + (1,) * (pos_axis - 1) + pm.shape[1:] + (1,) * (base.ndim - pos_axis - 1))
        return w * pert + (1 - w) * base

    c = prep.cache
    emb_base = c.resid_pre[:, 0]
    return EdgeData(
        *(jnp.asarray(a) for a in b.baseline), pm, c.sites["ln1_scale"], c.sites["ln2_scale"], c.resid_pre,
        emb_base, keep(prep.source("resid_pre")[:, 0], emb_base, 1),
        c.sites["result"], keep(prep.source("result"), c.sites["result"], 2),
        c.sites["mlp_out"], keep(prep.source("mlp_out"), c.sites["mlp_out"], 2),
        prep.query_embedding, prep.baseline_score, prep.perturbed_score,
        jnp.ones((b.n_pairs, 1, b.n_pos), jnp.float32) if spans is None else jnp.asarray(spans, jnp.float32))


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


# -- the frozen-scale forward ------------------------------------------------------------------------------------


def frozen_ln(ln, y: Float[Array, "... pos d"], scale: Float[Array, "pos 1"], *, bias: bool = True):
    """LayerNorm ``ln`` with its scale frozen: affine (``bias=False``: its linear part, for stacks)."""
    out = (y - y.mean(-1, keepdims=True)) / scale * ln.w[...]
    return out + ln.b[...] if bias else out


def project_qkv(block, ins: Float[Array, "3 head_index pos d_model"]):
    """``q``, ``k``, ``v`` ``[pos, head_index, d_head]`` of per-head inputs (bias included)."""
    a = block.attn
    return tuple(jnp.einsum("hpd,hde->phe", ins[i], W[...]) + b[...]
                 for i, (W, b) in enumerate(((a.W_Q, a.b_Q), (a.W_K, a.b_K), (a.W_V, a.b_V))))


def attend(block, q, k, v, key_mask) -> Float[Array, "pos head_index d_model"]:
    """Per-head ``result`` from queries, keys and values."""
    pattern = jax.nn.softmax(block.attn.scores(q, k, key_mask), axis=-1)
    return block.attn.result(block.attn.mix(pattern, v))


def combine(a, D: Float[Array, "sender pos d"], spans: Float[Array, "group pos"] | None):
    """``sum_s a[..., s] D[s]`` (``spans`` None, ``a [..., sender]``), or with span groups
    ``sum_{s,g} a[..., s, g] spans[g] D[s]`` (``a [..., sender, group]``)."""
    if spans is None:
        return jnp.einsum("...s,spd->...pd", a, D)
    return jnp.einsum("...sg,gp,spd->...pd", a, spans, D)


def _stack_layer(ex: EdgeData, fixed: bool, H: int, carry, xs):
    """One block of `edge_forward` (scan body): receivers read ``x + alpha D``, then the stack takes the
    layer's heads and MLP and passes the frozen LayerNorms."""
    x, D = carry
    block, layer, a_att, a_mlp, s1, s2, rb, rp, mb, mp = xs
    pm, key_mask = ex.patchable, ex.mask.astype(bool)
    spans = ex.spans if a_mlp.ndim == 2 else None
    d_in = D
    ins = x[None] + combine(a_att, D, spans)
    res = attend(block, *project_qkv(block, ins.reshape(3, H, *x.shape)), key_mask)
    new = ((rp - (rb if fixed else res)) * pm[:, None, None]).transpose(1, 0, 2)
    D = jax.lax.dynamic_update_slice(D, new, (1 + layer * (H + 1), 0, 0))
    x = frozen_ln(block.ln1, x + res.sum(1) + block.attn.b_O[...], s1)
    D = frozen_ln(block.ln1, D, s1, bias=False)
    d_mlp = D
    mo = block.mlp(x + combine(a_mlp, D, spans), NO_HOOKS)
    D = jax.lax.dynamic_update_slice(D, ((mp - (mb if fixed else mo)) * pm[:, None])[None],
                                     (1 + layer * (H + 1) + H, 0, 0))
    x = frozen_ln(block.ln2, x + mo, s2)
    return (x, frozen_ln(block.ln2, D, s2, bias=False)), (d_in, d_mlp)


def _stack_run(model, ex: EdgeData, alpha, emb_t, fixed: bool):
    """``(final x, final D, (D at each layer's attention input, at its MLP input))`` of `edge_forward`."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    L, H, S = graph.n_layers, graph.n_heads, graph.n_senders
    d_emb = ex.emb_pert - ex.emb_base
    x = ex.emb_base + emb_t * d_emb
    D = jnp.zeros((S, *x.shape), x.dtype).at[0].set(d_emb if fixed else ex.emb_pert - x)
    per_layer = alpha[:-1].reshape(L, 3 * H + 1, *alpha.shape[1:])
    xs = (model.blocks, jnp.arange(L), per_layer[:, :3 * H], per_layer[:, 3 * H], ex.ln1, ex.ln2, ex.res_base,
          ex.res_pert, ex.mlp_base, ex.mlp_pert)
    (x, D), stacks = jax.lax.scan(functools.partial(_stack_layer, ex, fixed, H), (x, D), xs)
    return x, D, stacks


def edge_forward(model: HookedEncoder, ex: EdgeData, alpha: Float[Array, "receiver sender"], *,
                 emb_t: Float[Array, ""] | float = 0.0, fixed_delta: bool = False) -> Float[Array, ""]:
    """The score of one example (``ex`` without the pair axis) with edge coefficients ``alpha``.

    Receiver ``r``'s input is its frozen-scale input plus ``sum_s alpha[r, s] (T_{s->r} o_s' - T_{s->r} o_s)``:
    0 keeps an edge, 1 patches it to its perturbed value. ``emb_t`` moves the embeddings' output toward the
    perturbed one (EAP-IG over inputs). Not jitted itself (callers jit/vmap/grad it).

    Args:
        model: A post-LN encoder.
        ex: One pair's `EdgeData`.
        alpha: ``[receiver, sender]`` (`EdgeGraph` layout; entries that are not edges have no effect), or
            ``[receiver, sender, group]`` for span-aware edges (``ex.spans`` groups the positions).
        emb_t: Interpolation of the embeddings' output.
        fixed_delta: Carry the baseline's ``o_s' - o_s`` instead of the current run's (see the module docstring).
    """
    x, D, _ = _stack_run(model, ex, alpha, emb_t, fixed_delta)
    hidden = x + combine(alpha[-1], D, ex.spans if alpha.ndim == 3 else None)
    return model.score_hidden(hidden, ex.mask, ex.q_emb)


def _alpha_of(graph: EdgeGraph, edge_values: Float[Array, "... edge"]) -> Float[Array, "... receiver sender"]:
    """Per-edge coefficients as the dense ``alpha`` (jax; zeros off the edges)."""
    idx = jnp.asarray(graph.edges[:, 0] * graph.n_senders + graph.edges[:, 1])
    flat = jnp.zeros((*edge_values.shape[:-1], graph.n_receivers * graph.n_senders), edge_values.dtype)
    return flat.at[..., idx].set(edge_values).reshape(*edge_values.shape[:-1], graph.n_receivers, graph.n_senders)


@functools.partial(jax.jit, static_argnames=("fixed_delta",))
def edges_patched_scores(model: HookedEncoder, data: EdgeData, keep: Float[Array, "pair edge"], *,
                         fixed_delta: bool = False) -> Float[Array, " pair"]:
    """Scores with every edge whose ``keep`` is 0 patched (``1 - keep`` is its coefficient), per pair, vmapped
    over pairs (one program per shape; a circuit is ``keep`` = its edge mask)."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    alpha = _alpha_of(graph, 1.0 - keep)
    return jax.vmap(lambda ex, a: edge_forward(model, ex, a, fixed_delta=fixed_delta))(data, alpha)


# -- exact single edges ------------------------------------------------------------------------------------------


@jax.jit
def edge_input_changes(model: HookedEncoder, ex: EdgeData):
    """Every edge's input change of one pair: ``(D at each layer's attention input [layer, sender, pos, d],
    at each MLP input [layer, sender, pos, d], at the score's input [sender, pos, d])`` (one program per shape)."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    alpha = jnp.zeros((graph.n_receivers, graph.n_senders), jnp.float32)
    _, D, (d_att, d_mlp) = _stack_run(model, ex, alpha, 0.0, True)
    return d_att, d_mlp, D


def _frozen_block(block, x, key_mask, s1, s2, qkv_add=(0.0, 0.0, 0.0), mlp_add=0.0, *, cls_only: bool = False):
    """One block with frozen LayerNorm scales and additive changes to its q/k/v and MLP input; ``cls_only``:
    only row 0 continues (queries, residual and MLP), enough for a readout that reads [CLS] alone."""
    H = block.attn.W_Q.shape[0]
    q, k, v = (t + a for t, a in zip(project_qkv(block, jnp.broadcast_to(x, (3, H, *x.shape))), qkv_add,
                                     strict=True))
    if cls_only:
        q, x, s1, s2 = q[:1], x[:1], s1[:1], s2[:1]
        mlp_add = mlp_add[:1] if jnp.ndim(mlp_add) else mlp_add
    x = frozen_ln(block.ln1, x + attend(block, q, k, v, key_mask).sum(1) + block.attn.b_O[...], s1)
    return frozen_ln(block.ln2, x + block.mlp(x + mlp_add, NO_HOOKS), s2)


def _span_mask(ex: EdgeData, group):
    """``[pos, 1]``: the positions of span ``group`` (every position for ``group < 0``)."""
    return jnp.where(group < 0, 1.0, ex.spans[jnp.maximum(group, 0)])[:, None]


def _restart_item(model, ex: EdgeData, layer: int, d_att, d_mlp, kind, head, sender, group):
    """Score of one edge into layer ``layer``: input ``kind`` (0-2 q/k/v, 3 the MLP) of ``head``, at the
    positions of span ``group`` (all for -1)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cls = bool(model.readout_uses_cls_only)
    block_at = lambda i: jax.tree.map(lambda p: p[i], model.blocks)
    key_mask = ex.mask.astype(bool)
    a = block_at(layer).attn
    W = jnp.stack([a.W_Q[...], a.W_K[...], a.W_V[...]])[jnp.minimum(kind, 2), head]
    span = _span_mask(ex, group)
    add = ((d_att[sender] * span) @ W)[:, None, :] * jax.nn.one_hot(head, H)[None, :, None]
    x = _frozen_block(block_at(layer), ex.resid_pre[layer], key_mask, ex.ln1[layer], ex.ln2[layer],
                      tuple(add * (kind == c) for c in range(3)), d_mlp[sender] * span * (kind == 3),
                      cls_only=cls and layer == L - 1)
    if layer < L - 1:
        def body(x, xs):
            blk, s1, s2 = xs
            return _frozen_block(blk, x, key_mask, s1, s2), None

        mid = jax.tree.map(lambda p: p[layer + 1:L - 1], model.blocks)
        x, _ = jax.lax.scan(body, x, (mid, ex.ln1[layer + 1:L - 1], ex.ln2[layer + 1:L - 1]))
        x = _frozen_block(block_at(L - 1), x, key_mask, ex.ln1[L - 1], ex.ln2[L - 1], cls_only=cls)
    hidden = ex.resid_pre[-1].at[:1].set(x) if cls else x  # rows past [CLS] are not read when cls
    return model.score_hidden(hidden, ex.mask, ex.q_emb)


@functools.partial(jax.jit, static_argnames=("layer",))
def _layer_edge_scores(model, ex: EdgeData, d_att, d_mlp, kinds, heads, senders, groups, *, layer: int):
    return jax.vmap(lambda k, h, s, g: _restart_item(model, ex, layer, d_att[layer], d_mlp[layer], k, h, s, g))(
        kinds, heads, senders, groups)


@jax.jit
def _score_edge_scores(model, ex: EdgeData, d_final, senders, groups):
    return jax.vmap(lambda s, g: model.score_hidden(ex.resid_pre[-1] + d_final[s] * _span_mask(ex, g), ex.mask,
                                                    ex.q_emb))(senders, groups)


def _chunks(n: int, size: int):
    return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]


@runtime.with_precision
def exact_edge_scores(model: HookedEncoder, data: EdgeData, edges=None, *, groups=None,
                      chunk_size: int = 64) -> np.ndarray:
    """Exact edge-patched scores ``[pair, edge]`` (one edge patched at a time).

    Programs per shape: `edge_input_changes` once, one restarted program per receiver layer holding a
    requested edge (at most ``L``, each compiled for the chunk shape; the last chunk of a layer is padded to it),
    and one for the score's edges.

    Args:
        model: A post-LN encoder.
        data: `edge_data` of the pairs.
        edges: Indices into ``EdgeGraph.edges`` (default: all).
        groups: Per requested edge, the span group of ``data.spans`` it is patched at (default: every
            position; -1 also means every position).
        chunk_size: Edges per vmapped call.
    """
    graph = check_edge_model(model)
    edges = np.arange(graph.n_edges) if edges is None else np.asarray(edges, np.int64)
    r, s = graph.edges[edges, 0], graph.edges[edges, 1]
    layer = graph.receiver_layer(r)
    j = r - layer * (3 * graph.n_heads + 1)
    kinds, heads = np.where(j == 3 * graph.n_heads, 3, j // graph.n_heads), j % graph.n_heads
    groups = np.full(len(edges), -1, np.int32) if groups is None else np.asarray(groups, np.int32)
    n_pairs = data.ids.shape[0]
    out = np.zeros((n_pairs, len(edges)), np.float32)
    for p in range(n_pairs):
        ex = data.pair(p)
        d_att, d_mlp, d_final = edge_input_changes(model, ex)
        for lyr in np.unique(layer):
            sel = np.flatnonzero(layer == lyr)
            if lyr == graph.n_layers:
                out[p, sel] = np.asarray(_score_edge_scores(model, ex, d_final, jnp.asarray(s[sel]),
                                                            jnp.asarray(groups[sel])))
                continue
            for chunk in _chunks(len(sel), chunk_size):
                idx = sel[np.pad(chunk, (0, chunk_size - len(chunk)), mode="edge")] if len(sel) > chunk_size \
                    else sel[chunk]
                vals = _layer_edge_scores(model, ex, d_att, d_mlp, jnp.asarray(kinds[idx]), jnp.asarray(heads[idx]),
                                          jnp.asarray(s[idx]), jnp.asarray(groups[idx]), layer=int(lyr))
                out[p, sel[chunk]] = np.asarray(vals)[:len(chunk)]
    return out


__all__ = ["EdgeData", "attend", "check_edge_model", "edge_data", "edge_forward", "edge_input_changes",
           "edges_patched_scores", "exact_edge_scores", "frozen_ln", "mean_ablated", "project_qkv", "combine"]
