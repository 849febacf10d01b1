"""Exact edge patching, vmapped and jitted, on every encoder whose engine defines edges (the edges and their
definitions: `jaxmech.patching.edge_graph`).

This is the front users call; the model's engine (`jaxmech.patching.engines.engine_of`) provides the edge
functions (`jaxmech.patching.edge_data.EdgeOps`): post-LN encoders freeze their LayerNorm scales
(`jaxmech.patching.engines.post_ln_edges`), pre-LN ModernBERT applies each receiver's LayerNorm live
(`jaxmech.patching.engines.pre_ln_edges`).

* `edge_data`: the baseline and perturbed runs of a batch (two forwards), gathered into `EdgeData`.
* `edge_forward`: one pair's score with edge coefficients ``alpha`` ``[receiver, sender]`` (0 keeps an edge, 1
  patches it; derivatives in ``alpha`` are the edge attributions, `jaxmech.patching.edge_attribution`).
* `edge_alpha_gradient`: ``d edge_forward / d alpha`` (the engine's own where it has a cheaper one than
  ``jax.grad``; `jaxmech.patching.edge_attribution` builds EAP / EAP-IG on it).
* `edges_patched_scores`: scores with a set of edges patched (a circuit: every edge outside it patched).
* `exact_edge_scores`: each edge patched alone. One input-change run per pair records what every edge changes at
  its receiver, then each edge is a forward restarted at its receiver's layer from the baseline's residual with
  that change at the one receiver input. Edges are vmapped in chunks per receiver layer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxmech import runtime
from jaxmech.patching.edge_data import EdgeData, EdgeOps, combine, mean_ablated
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.engines import engine_of
from jaxmech.patching.inputs import PairBatch


def _ops(model) -> EdgeOps:
    engine = engine_of(model)
    engine.require("edges")
    if engine.edges is None:
        raise ValueError(f"edge patching: the {engine.name} engine ({engine.label}) defines no edges")
    return engine.edges


def check_edge_model(model) -> EdgeGraph:
    """The graph of ``model``; one-line ValueError for models whose engine defines no edges, or a variant the
    definition does not cover."""
    _ops(model).check(model)
    return EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)


def edge_data(model, batch: PairBatch, *, reverse: bool = False, query_embedding=None, spans=None) -> EdgeData:
    """Runs the baseline and perturbed inputs once (two forwards) and gathers what the edge engine reads.

    Args:
        model: An encoder whose engine defines edges (`check_edge_model`).
        batch: Aligned pairs.
        reverse: Swap baseline and perturbed roles.
        query_embedding: For bi-encoders.
        spans: ``[pair, group, pos]`` 0/1 position groups for span-aware edges (default: one group, every
            position).
    """
    check_edge_model(model)
    return _ops(model).data(model, batch, reverse=reverse, query_embedding=query_embedding, spans=spans)


def edge_forward(model, ex: EdgeData, alpha: Float[Array, "receiver sender"], *,
                 emb_t: Float[Array, ""] | float = 0.0, fixed_delta: bool = False) -> Float[Array, ""]:
    """The score of one example (``ex`` without the pair axis) with edge coefficients ``alpha``.

    Receiver ``r``'s input is its input plus ``sum_s alpha[r, s]`` times sender ``s``'s perturbed-minus-current
    output as it reaches ``r`` (post-LN: carried by the frozen LayerNorms): 0 keeps an edge, 1 patches it to its
    perturbed value. ``emb_t`` moves the embeddings' output toward the perturbed one (EAP-IG over inputs). Not
    jitted itself (callers jit/vmap/grad it).

    Args:
        model: An encoder whose engine defines edges.
        ex: One pair's `EdgeData`.
        alpha: ``[receiver, sender]`` (`EdgeGraph` layout; entries that are not edges have no effect), or
            ``[receiver, sender, group]`` for span-aware edges (``ex.spans`` groups the positions).
        emb_t: Interpolation of the embeddings' output.
        fixed_delta: Carry the baseline's ``o_s' - o_s`` instead of the current run's (the same values at
            ``alpha = 0``; EAP-IG over inputs multiplies gradients by these).
    """
    return _ops(model).forward(model, ex, alpha, emb_t=emb_t, fixed_delta=fixed_delta)


def edge_alpha_gradient(model, ex: EdgeData, alpha, *, emb_t: Float[Array, ""] | float = 0.0,
                        fixed_delta: bool = False):
    """``d edge_forward / d alpha`` at ``alpha`` (the edge attributions' derivative; not jitted itself): the
    engine's own (`jaxmech.patching.edge_data.EdgeOps.alpha_gradient`) where it has one, else ``jax.grad``."""
    ops = _ops(model)
    if ops.alpha_gradient is not None:
        return ops.alpha_gradient(model, ex, alpha, emb_t=emb_t, fixed_delta=fixed_delta)
    return jax.grad(lambda a: ops.forward(model, ex, a, emb_t=emb_t, fixed_delta=fixed_delta))(alpha)


def _alpha_of(graph: EdgeGraph, edge_values: Float[Array, "... edge"]) -> Float[Array, "... receiver sender"]:
    """Per-edge coefficients as the dense ``alpha`` (jax; zeros off the edges)."""
    idx = jnp.asarray(graph.edges[:, 0] * graph.n_senders + graph.edges[:, 1])
    flat = jnp.zeros((*edge_values.shape[:-1], graph.n_receivers * graph.n_senders), edge_values.dtype)
    return flat.at[..., idx].set(edge_values).reshape(*edge_values.shape[:-1], graph.n_receivers, graph.n_senders)


@functools.partial(jax.jit, static_argnames=("fixed_delta",))
def edges_patched_scores(model, data: EdgeData, keep: Float[Array, "pair edge"], *,
                         fixed_delta: bool = False) -> Float[Array, " pair"]:
    """Scores with every edge whose ``keep`` is 0 patched (``1 - keep`` is its coefficient), per pair, vmapped
    over pairs (one program per shape; a circuit is ``keep`` = its edge mask)."""
    graph = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    alpha = _alpha_of(graph, 1.0 - keep)
    return jax.vmap(lambda ex, a: edge_forward(model, ex, a, fixed_delta=fixed_delta))(data, alpha)


# -- exact single edges ------------------------------------------------------------------------------------------


@jax.jit
def edge_input_changes(model, ex: EdgeData):
    """What every single edge of one pair changes at its receiver (the engine's pytree, read by the restarted
    runs; post-LN: ``(D at each attention input [layer, sender, pos, d], at each MLP input, at the score's input
    [sender, pos, d])``; pre-LN: the senders' ``o' - o`` ``[sender, pos, d]``). One program per shape."""
    return _ops(model).input_changes(model, ex)


@functools.partial(jax.jit, static_argnames=("layer",))
def _layer_edge_scores(model, ex: EdgeData, changes, kinds, heads, senders, groups, *, layer: int):
    item = _ops(model).restart_item
    return jax.vmap(lambda k, h, s, g: item(model, ex, changes, layer, k, h, s, g))(kinds, heads, senders, groups)


@jax.jit
def _score_edge_scores(model, ex: EdgeData, changes, senders, groups):
    item = _ops(model).score_item
    return jax.vmap(lambda s, g: item(model, ex, changes, s, g))(senders, groups)


def _chunks(n: int, size: int):
    return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]


def _receiver_parts(graph: EdgeGraph, edges: np.ndarray):
    """``(sender, receiver layer, kind 0-3, head)`` of each edge (kind 3: the MLP; the score: layer ``L``)."""
    r, s = graph.edges[edges, 0], graph.edges[edges, 1]
    layer = graph.receiver_layer(r)
    j = r - layer * (3 * graph.n_heads + 1)
    return s, layer, np.where(j == 3 * graph.n_heads, 3, j // graph.n_heads), j % graph.n_heads


@runtime.with_precision
def exact_edge_scores(model, data: EdgeData, edges=None, *, groups=None, chunk_size: int = 64) -> np.ndarray:
    """Exact edge-patched scores ``[pair, edge]`` (one edge patched at a time).

    Programs per shape: `edge_input_changes` once, one restarted program per receiver layer holding a
    requested edge (at most ``L``, each compiled for the chunk shape; the last chunk of a layer is padded to it),
    and one for the score's edges.

    Args:
        model: An encoder whose engine defines edges.
        data: `edge_data` of the pairs.
        edges: Indices into ``EdgeGraph.edges`` (default: all).
        groups: Per requested edge, the span group of ``data.spans`` it is patched at (default: every
            position; -1 also means every position).
        chunk_size: Edges per vmapped call.
    """
    graph = check_edge_model(model)
    edges = np.arange(graph.n_edges) if edges is None else np.asarray(edges, np.int64)
    s, layer, kinds, heads = _receiver_parts(graph, edges)
    groups = np.full(len(edges), -1, np.int32) if groups is None else np.asarray(groups, np.int32)
    n_pairs = data.ids.shape[0]
    out = np.zeros((n_pairs, len(edges)), np.float32)
    for p in range(n_pairs):
        ex = data.pair(p)
        changes = edge_input_changes(model, ex)
        for lyr in np.unique(layer):
            sel = np.flatnonzero(layer == lyr)
            if lyr == graph.n_layers:
                out[p, sel] = np.asarray(_score_edge_scores(model, ex, changes, jnp.asarray(s[sel]),
                                                            jnp.asarray(groups[sel])))
                continue
            for chunk in _chunks(len(sel), chunk_size):
                idx = sel[np.pad(chunk, (0, chunk_size - len(chunk)), mode="edge")] if len(sel) > chunk_size \
                    else sel[chunk]
                vals = _layer_edge_scores(model, ex, changes, jnp.asarray(kinds[idx]), jnp.asarray(heads[idx]),
                                          jnp.asarray(s[idx]), jnp.asarray(groups[idx]), layer=int(lyr))
                out[p, sel[chunk]] = np.asarray(vals)[:len(chunk)]
    return out


__all__ = ["EdgeData", "check_edge_model", "combine", "edge_alpha_gradient", "edge_data", "edge_forward",
           "edge_input_changes", "edges_patched_scores", "exact_edge_scores", "mean_ablated"]
