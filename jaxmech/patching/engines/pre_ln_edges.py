"""The pre-LayerNorm edge engine (ModernBERT): the registry's ``"pre_ln"`` `jaxmech.patching.edge_data.EdgeOps`;
users call `jaxmech.patching.edges`.

**The edge.** A pre-LN block reads ``LN(x)`` of the running sum ``x = resid_pre[0] + sum of earlier outputs``,
so every receiver's input *sum* is exactly ``bias + sum_s o_s`` over its senders (no LayerNorm sits between
components) and edge ``s -> r`` is the term ``o_s`` in ``r``'s sum. Patching it replaces ``o_s`` by ``o_s'`` (the
sender's output in the perturbed run, at patchable positions) in that one sum; the receiver then applies its own
LayerNorm **live** to its changed sum (``attn_norm`` for a head's query, key or value, the identity at layer 0;
``mlp_norm`` for an MLP; ``final_norm`` for the score), and everything after it is recomputed. Nothing is frozen:
patching every edge is the perturbed run itself, patching none the baseline. Senders: the embeddings' output
(``resid_pre[0]``, after the embedding LayerNorm), each head's ``z_h @ W_O[h]`` (the attention's bias ``b_O``
belongs to no head and stays), each MLP's output.

**The engine.** `forward` runs one example and carries, beside the running sum ``x``, a stack
``D[sender, pos, d_model]`` of each sender's perturbed-minus-current output ``o_s' - o_s`` (unchanged once the
sender has run: there is nothing to carry it through). Receiver ``r``'s input sum is ``x + sum_s alpha[r, s] D[s]``,
normalised by its own LayerNorm: the ``3 H`` head inputs of a layer are ``3 H`` LayerNorms of ``3 H`` sums, each
head projected from its own. With ``fixed_delta`` the stack is the baseline's ``o_s' - o_s``, known before the run
(`input_changes`): it is not carried at all, so a backward through the layer scan keeps one stack, not one per
layer (EAP and EAP-IG over inputs; for gte-reranker-modernbert-base shapes, 287 senders x 128 tokens x 768, a
stack is 113 MB).

**Exact single edges.** ``D`` of the baseline is just the two runs' outputs' differences (`input_changes`); an edge
into block ``l`` restarts from the baseline's ``resid_pre[l]``, recomputes the one head's query, key or value from
``LN1(resid_pre[l] + D[s]) - LN1(resid_pre[l])`` (or adds ``D[s]`` to the MLP's input sum), runs the rest of the
block and every later block (rotary positions, local / global windows, GeGLU, as the model does), then the final
LayerNorm and head. Every restarted block runs every row (the post-LN engine's [CLS]-only last block is not done).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxmech import runtime
from jaxmech.patching.edge_data import EdgeData, EdgeOps, blend_patchable, combine, span_mask
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.engines.pre_ln import prepare
from jaxmech.patching.inputs import PairBatch


def check(model) -> None:
    """Every ModernBERT configuration is covered (nothing to refuse)."""


def _per_head_result(model, z: Float[Array, "pair layer pos head_index d_head"]):
    """``z_h @ W_O[h]`` per head: ``[pair, layer, pos, head_index, d_model]``."""
    return jnp.einsum("nlphe,lhed->nlphd", z, model.blocks.W_O[...])


@runtime.with_precision
def edge_data(model, batch: PairBatch, *, reverse: bool = False, query_embedding=None, spans=None) -> EdgeData:
    """The baseline and perturbed runs (two forwards, `jaxmech.patching.engines.pre_ln.prepare`) gathered for the
    edge engine. ``resid_pre`` holds ``L + 1`` entries, the last the final ``resid_post`` (before the final
    LayerNorm); ``ln1`` / ``ln2`` are the baseline's live scales (reported, never frozen). ``query_embedding`` is
    not used (the model reads the query)."""
    prep = prepare(model, batch, base_sites=("z", "mlp_out", "ln1_scale", "ln2_scale", "resid_post"),
                   source_sites=("z", "mlp_out", "resid_pre"), reverse=reverse)
    b, c = prep.batch, prep.cache
    pm = jnp.asarray(b.patchable, jnp.float32)
    emb_base, res_base = c.resid_pre[:, 0], _per_head_result(model, c.sites["z"])
    return EdgeData(
        *(jnp.asarray(a) for a in b.baseline), pm, c.sites["ln1_scale"], c.sites["ln2_scale"],
        jnp.concatenate([c.resid_pre, c.sites["resid_post"][:, -1:]], 1),
        emb_base, blend_patchable(pm, prep.source("resid_pre")[:, 0], emb_base, 1),
        res_base, blend_patchable(pm, _per_head_result(model, prep.source("z")), res_base, 2),
        c.sites["mlp_out"], blend_patchable(pm, prep.source("mlp_out"), c.sites["mlp_out"], 2),
        prep.query_embedding, prep.baseline_score, prep.perturbed_score,
        jnp.ones((b.n_pairs, 1, b.n_pos), jnp.float32) if spans is None else jnp.asarray(spans, jnp.float32))


def _heads(model, block, layer, normed: Float[Array, "3 head_index pos d_model"], key_mask,
           qkv_add=(0.0, 0.0, 0.0)) -> Float[Array, "pos head_index d_model"]:
    """Per-head ``z_h @ W_O[h]`` of block ``layer`` from per-head normalised inputs (q, k, v of head ``h`` from
    ``normed[c, h]``), ``qkv_add`` added to the projected q, k, v."""
    q, k, v = (jnp.einsum("hpd,hde->phe", normed[i], W[...]) + b[...] + a for i, (W, b, a) in
               enumerate(((block.W_Q, block.b_Q, qkv_add[0]), (block.W_K, block.b_K, qkv_add[1]),
                          (block.W_V, block.b_V, qkv_add[2]))))
    z = block.attend(q, k, v, key_mask, *model.attention_args(layer))
    return jnp.einsum("phe,hed->phd", z, block.W_O[...])


def _block(model, ex: EdgeData, block, layer, a_att, a_mlp, inj, x, D, add_heads):
    """One block of `forward`: each receiver normalises its ``x + alpha D`` (plus its ``inj``, if given: ``(q/k/v
    [3 H, pos, d], MLP [pos, d])``) itself. ``add_heads(D, res)`` puts the layer's heads into the stack before the
    MLP reads it (the identity for a fixed stack). Returns ``(x after the block, D, the MLP's output)``."""
    H, key_mask = model.cfg.n_heads, ex.mask.astype(bool)
    spans = ex.spans if a_mlp.ndim == 2 else None
    ins = x[None] + combine(a_att, D, spans)
    ins = (ins if inj is None else ins + inj[0]).reshape(3, H, *x.shape)
    res = _heads(model, block, layer, block.norm1(ins, layer), key_mask)
    D = add_heads(D, res)
    x = x + res.sum(1) + block.b_O[...]
    mlp_in = x + combine(a_mlp, D, spans)
    mo = block.mlp(block.ln2(mlp_in if inj is None else mlp_in + inj[1]), model.cfg.act_fn)
    return x + mo, D, mo


def _current_layer(model, ex: EdgeData, carry, xs):
    """Scan body of the current-run stack: the layer's heads and MLP join ``D`` as ``o' - o(current)``."""
    x, D = carry
    block, layer, a_att, a_mlp, inj, rp, mp = xs
    H, pm = model.cfg.n_heads, ex.patchable
    start = 1 + layer * (H + 1)
    heads = lambda D, res: jax.lax.dynamic_update_slice(
        D, ((rp - res) * pm[:, None, None]).transpose(1, 0, 2), (start, 0, 0))
    x, D, mo = _block(model, ex, block, layer, a_att, a_mlp, inj, x, D, heads)
    return (x, jax.lax.dynamic_update_slice(D, ((mp - mo) * pm[:, None])[None], (start + H, 0, 0))), None


def _masked(graph: EdgeGraph, alpha):
    valid = jnp.asarray(graph.valid, alpha.dtype)
    return alpha * (valid[..., None] if alpha.ndim == 3 else valid)


def _run(model, ex: EdgeData, alpha, inj, emb_t, fixed_delta: bool):
    """``(score, final stack)`` with edge coefficients ``alpha`` (valid entries only) and, if ``inj`` is given,
    ``inj[r]`` ``[receiver, pos, d_model]`` added to every receiver's input sum."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    L, H = graph.n_layers, graph.n_heads
    x = ex.emb_base + emb_t * (ex.emb_pert - ex.emb_base)
    per_layer = alpha[:-1].reshape(L, 3 * H + 1, *alpha.shape[1:])
    inj_layers = None
    if inj is not None:
        per = inj[:-1].reshape(L, 3 * H + 1, *inj.shape[1:])
        inj_layers = (per[:, :3 * H], per[:, 3 * H])
    xs = (model.blocks, jnp.arange(L), per_layer[:, :3 * H], per_layer[:, 3 * H], inj_layers)
    if fixed_delta:
        D = input_changes(model, ex)
        x, _ = jax.lax.scan(lambda x, s: (_block(model, ex, *s, x, D, lambda D, res: D)[0], None), x, xs)
    else:
        D = jnp.zeros((graph.n_senders, *x.shape), x.dtype).at[0].set(ex.emb_pert - x)
        (x, D), _ = jax.lax.scan(lambda c, s: _current_layer(model, ex, c, s), (x, D),
                                 (*xs, ex.res_pert, ex.mlp_pert))
    hidden = x + combine(alpha[-1], D, ex.spans if alpha.ndim == 3 else None)
    return model.score_hidden(hidden if inj is None else hidden + inj[-1], ex.mask), D


def forward(model, ex: EdgeData, alpha, *, emb_t=0.0, fixed_delta: bool = False) -> Float[Array, ""]:
    """One pair's score with edge coefficients ``alpha`` (`jaxmech.patching.edges.edge_forward`). Entries of
    ``alpha`` that are not edges are zeroed first. With ``fixed_delta`` the stack is the baseline's
    (`input_changes`), a constant of the layer scan."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    return _run(model, ex, _masked(graph, alpha), None, emb_t, fixed_delta)[0]


def alpha_gradient(model, ex: EdgeData, alpha, *, emb_t=0.0, fixed_delta: bool = False):
    """``d forward / d alpha`` at ``alpha`` (``[receiver, sender(, group)]``; zero off the edges) without keeping a
    stack per layer: ``alpha`` enters only receiver ``r``'s input, as ``alpha[r, s] D[s]``, so the derivative is
    ``<G_r, D[s]>`` with ``G_r`` the gradient in an addition to ``r``'s input sum (one backward, ``alpha`` held
    constant: no stack is needed to differentiate it) and ``D[s]`` the final stack (a sender's row is final once
    it has run, before any receiver reads it). For gte-reranker-modernbert-base shapes, EAP-IG over activations
    keeps 1.55 GiB a pair instead of 5.9. A fixed stack (``fixed_delta``) is a constant of the scan already: there
    ``jax.grad`` of `forward` is used, which keeps less (1.05 GiB a pair: no ``G`` of every receiver, which would
    add 0.3 GiB).

    Args:
        model: A ModernBERT cross-encoder.
        ex: One pair's `EdgeData`.
        alpha: ``[receiver, sender]`` or ``[receiver, sender, group]`` (span groups of ``ex.spans``).
        emb_t: Interpolation of the embeddings' output toward the perturbed one.
        fixed_delta: Differentiate with the baseline's stack.
    """
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    if fixed_delta:
        return jax.grad(lambda a: forward(model, ex, a, emb_t=emb_t, fixed_delta=True))(alpha)
    alpha = jax.lax.stop_gradient(_masked(graph, alpha))
    zero = jnp.zeros((graph.n_receivers, *ex.emb_base.shape), ex.emb_base.dtype)
    g, D = jax.grad(lambda inj: _run(model, ex, alpha, inj, emb_t, fixed_delta), has_aux=True)(zero)
    spans = jnp.einsum("rpd,gp,spd->rsg", g, ex.spans, D) if alpha.ndim == 3 else None
    return _masked(graph, jnp.einsum("rpd,spd->rs", g, D) if spans is None else spans)


def input_changes(model, ex: EdgeData) -> Float[Array, "sender pos d_model"]:
    """Each sender's ``o' - o`` in the baseline run (zero where not patchable), in `EdgeGraph` sender order: what
    every edge from it adds to its receiver's input sum."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = (ex.res_pert - ex.res_base).transpose(0, 2, 1, 3)  # [layer, head, pos, d]
    senders = jnp.concatenate([heads, (ex.mlp_pert - ex.mlp_base)[:, None]], 1)
    return jnp.concatenate([(ex.emb_pert - ex.emb_base)[None], senders.reshape(L * (H + 1), *senders.shape[2:])])


def _block_at(model, layer: int):
    return jax.tree.map(lambda p: p[layer], model.blocks)


def restart_item(model, ex: EdgeData, changes, layer: int, kind, head, sender, group) -> Float[Array, ""]:
    """Score of edge ``sender ->`` input ``kind`` (0-2 q/k/v, 3 the MLP) of ``head`` in block ``layer``, patched
    alone at the positions of span ``group`` (all for -1), restarted from the baseline's ``resid_pre[layer]``."""
    H = model.cfg.n_heads
    blk, x, key_mask = _block_at(model, layer), ex.resid_pre[layer], ex.mask.astype(bool)
    delta = changes[sender] * span_mask(ex, group)
    normed = blk.norm1(x, layer)
    W = jnp.stack([blk.W_Q[...], blk.W_K[...], blk.W_V[...]])[jnp.minimum(kind, 2), head]
    change = ((blk.norm1(x + delta, layer) - normed) @ W)[:, None, :] * jax.nn.one_hot(head, H)[None, :, None]
    res = _heads(model, blk, layer, jnp.broadcast_to(normed, (3, H, *x.shape)), key_mask,
                 tuple(change * (kind == c) for c in range(3)))
    x = x + res.sum(1) + blk.b_O[...]
    x = x + blk.mlp(blk.ln2(x + delta * (kind == 3)), model.cfg.act_fn)
    return model.score_hidden(model.run_from(x, ex.mask, layer + 1), ex.mask)  # blocks after ``layer``


def score_item(model, ex: EdgeData, changes, sender, group) -> Float[Array, ""]:
    """Score of edge ``sender -> logits`` alone: ``o' - o`` added to the final sum, normalised live."""
    return model.score_hidden(ex.resid_pre[-1] + changes[sender] * span_mask(ex, group), ex.mask)


OPS = EdgeOps(check, edge_data, forward, input_changes, restart_item, score_item, alpha_gradient)
"""The pre-LN engine's edge functions (`jaxmech.patching.engines.ENGINES`)."""

__all__ = ["OPS", "alpha_gradient", "edge_data", "forward", "input_changes", "restart_item", "score_item"]
