"""The post-LayerNorm edge engine (the edge is defined in `jaxmech.patching.edge_graph`): the registry's
``"post_ln"`` `jaxmech.patching.edge_data.EdgeOps`; users call `jaxmech.patching.edges`.

**The engine.** `forward` (`jaxmech.patching.edges.edge_forward`) runs one example through the model with every
LayerNorm scale frozen at the baseline's and carries, beside the residual stream ``x``, a stack ``D[sender, pos,
d_model]``: sender ``s``'s perturbed-minus-current output ``o_s' - o_s`` as the frozen LayerNorms have carried it
to the current point (``T_{s->.}(o_s' - o_s)``). Receiver ``r``'s input is ``x + sum_s alpha[r, s] D[s]``: ``alpha
= 0`` is the baseline run (exactly), a one-hot ``alpha`` patches one edge, ``1 - circuit`` runs a circuit with
every other edge patched, and derivatives in ``alpha`` are the edge attributions
(`jaxmech.patching.edge_attribution`). With ``fixed_delta`` the stack carries ``o_s' - o_s`` of the baseline run
instead of the current one (the same values at ``alpha = 0``; EAP-IG over inputs multiplies gradients by these).

**Exact single edges.** `exact_edge_scores` does not run the stack per edge: one stack run per pair records
each edge's input change ``T_{s->r}(o_s' - o_s)`` at every receiver, then each edge is a frozen-scale forward
restarted at its receiver's layer from the baseline's residual with that change added to the one receiver
input (heads: projected by the head's ``W_Q``/``W_K``/``W_V``; MLPs: added to the MLP's input; the score: to
the final hidden state). Edges are vmapped in chunks per receiver layer; when the readout reads [CLS] alone
the last layer runs the [CLS] row only (queries, residual, MLP).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxmech import runtime
from jaxmech.models.bert import NO_HOOKS, HookedEncoder
from jaxmech.patching.caches import prepare
from jaxmech.patching.edge_data import EdgeData, EdgeOps, blend_patchable, combine, span_mask
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.inputs import PairBatch


def check(model) -> None:
    """ValueError for post-LN variants the frozen-scale definition does not cover (an embedding projection)."""
    if getattr(model.cfg, "has_embed_proj", False):
        raise ValueError("edge patching: models with an embedding projection (ELECTRA-small) are not supported")


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
    prep = prepare(model, batch, base_sites=("result", "mlp_out", "ln1_scale", "ln2_scale"),
                   source_sites=("result", "mlp_out", "resid_pre"), reverse=reverse, query_embedding=query_embedding)
    b = prep.batch
    pm = jnp.asarray(b.patchable, jnp.float32)

    keep = functools.partial(blend_patchable, pm)
    c = prep.cache
    emb_base = c.resid_pre[:, 0]
    return EdgeData(
        *(jnp.asarray(a) for a in b.baseline), pm, c.sites["ln1_scale"], c.sites["ln2_scale"], c.resid_pre,
        emb_base, keep(prep.source("resid_pre")[:, 0], emb_base, 1),
        c.sites["result"], keep(prep.source("result"), c.sites["result"], 2),
        c.sites["mlp_out"], keep(prep.source("mlp_out"), c.sites["mlp_out"], 2),
        prep.query_embedding, prep.baseline_score, prep.perturbed_score,
        jnp.ones((b.n_pairs, 1, b.n_pos), jnp.float32) if spans is None else jnp.asarray(spans, jnp.float32))


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
    """``(final x, final D, (D at each layer's attention input, at its MLP input))`` of `forward`."""
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


def forward(model: HookedEncoder, ex: EdgeData, alpha: Float[Array, "receiver sender"], *,
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


def input_changes(model: HookedEncoder, ex: EdgeData):
    """Every edge's input change of one pair: ``(D at each layer's attention input [layer, sender, pos, d],
    at each MLP input [layer, sender, pos, d], at the score's input [sender, pos, d])``."""
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


def restart_item(model, ex: EdgeData, changes, layer: int, kind, head, sender, group):
    """Score of one edge into layer ``layer``: input ``kind`` (0-2 q/k/v, 3 the MLP) of ``head``, at the
    positions of span ``group`` (all for -1); ``changes`` from `input_changes`."""
    d_att, d_mlp = changes[0][layer], changes[1][layer]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cls = bool(model.readout_uses_cls_only)
    block_at = lambda i: jax.tree.map(lambda p: p[i], model.blocks)
    key_mask = ex.mask.astype(bool)
    a = block_at(layer).attn
    W = jnp.stack([a.W_Q[...], a.W_K[...], a.W_V[...]])[jnp.minimum(kind, 2), head]
    span = span_mask(ex, group)
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


def score_item(model, ex: EdgeData, changes, sender, group):
    """Score of edge ``sender -> logits`` alone: the change at the final hidden state added to it."""
    return model.score_hidden(ex.resid_pre[-1] + changes[2][sender] * span_mask(ex, group), ex.mask, ex.q_emb)


OPS = EdgeOps(check, edge_data, forward, input_changes, restart_item, score_item)
"""The post-LN engine's edge functions (`jaxmech.patching.engines.ENGINES`)."""

__all__ = ["OPS", "attend", "check", "edge_data", "forward", "frozen_ln", "input_changes", "project_qkv",
           "restart_item", "score_item"]
