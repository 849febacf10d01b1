"""Circuits as EAP-IG graph JSON, and which named heads a circuit connects.

`to_eap_ig_json` writes the object ``Graph.to_json`` of hannamw/EAP-IG writes (and ``Graph.from_json`` reads):
``{"cfg": {n_layers, n_heads, parallel_attn_mlp, d_model}, "nodes": {name: {"in_graph"}}, "edges":
{"a0.h1->m2": {"score", "in_graph"}, ...}}``. jaxmech's graph has EAP-IG's nodes, edges, names and index layout
(`jaxmech.patching.edge_graph.EdgeGraph`), so the file loads there unchanged; the scores are jaxmech's (mean
``patched - baseline`` over the pairs, the baseline being the run patched).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxmech.patching.edge_graph import EdgeGraph


def to_eap_ig_json(graph: EdgeGraph, scores, in_graph, *, d_model: int) -> dict:
    """The EAP-IG graph JSON object of per-edge ``scores`` ``[edge]`` and the circuit mask ``in_graph``."""
    in_graph = np.asarray(in_graph, bool)
    senders_in = set()
    edges = {}
    for e in range(graph.n_edges):
        edges[graph.edge_name(e)] = {"score": float(scores[e]), "in_graph": bool(in_graph[e])}
        if in_graph[e]:
            senders_in.add(graph.sender_name(int(graph.edges[e, 1])))
    names = [graph.sender_name(s) for s in range(graph.n_senders)] + ["logits"]
    nodes = {n: {"in_graph": n == "logits" or n in senders_in} for n in names}
    cfg = {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": False, "d_model": d_model}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def _node(name: str) -> str:
    """``"2.9"`` -> ``"a2.h9"``; node names pass through."""
    if name[0].isdigit():
        layer, head = name.split(".")
        return f"a{int(layer)}.h{int(head)}"
    return name


def _receiver_node(receiver: str) -> str:
    return receiver.split("<")[0]


def connections(graph: EdgeGraph, in_graph, sources: Sequence[str], targets: Sequence[str]) -> dict:
    """How a circuit connects ``sources`` to ``targets`` (heads as ``"L.H"`` or node names).

    Returns:
        ``{"direct": ["a2.h9->a5.h7<k>", ...], "paths": {"a2.h9->a5.h7": bool, ...}, "in_circuit": {node:
        bool}}``: circuit edges straight from a source to a target, whether a chain of circuit edges leads from
        each source to each target, and whether each named node has a circuit edge at all.
    """
    in_graph = np.asarray(in_graph, bool)
    src, dst = [_node(s) for s in sources], [_node(t) for t in targets]
    children: dict[str, set[str]] = {}
    touched = set()
    direct = []
    for e in np.flatnonzero(in_graph):
        s, r = graph.edge_name(int(e)).split("->")
        children.setdefault(s, set()).add(_receiver_node(r))
        touched |= {s, _receiver_node(r)}
        if s in src and _receiver_node(r) in dst:
            direct.append(graph.edge_name(int(e)))

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for c in children.get(todo.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return seen

    paths = {f"{s}->{t}": t in reach(s) for s in src for t in dst}
    return {"direct": direct, "paths": paths, "in_circuit": {n: n in touched for n in src + dst}}


__all__ = ["connections", "to_eap_ig_json"]
