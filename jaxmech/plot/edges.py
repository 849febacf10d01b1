"""The circuit graph of an ``edges`` analysis: nodes by layer, edges by weight, the paper's roles marked.

`edge_circuit_graph` draws the circuit of `jaxmech.analysis.edges.edge_circuits` (its ``eap_ig_graph``: the
edges in the circuit and their scores): the embeddings at the bottom, one row per layer with its heads left to
right and its MLP at the right end, the score on top. An edge's width grows with ``|score|``; red raises the
score when patched, blue lowers it; edges into a head's query/key/value are solid/dashed/dotted, edges into an
MLP or the score dash-dotted. Heads named in ``roles`` are filled with their role's colour. A legend below the
graph (never over a node) names the line styles, the two colours and the roles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DEFAULT_ROLES = {"matching": ["2.9", "1.1"], "relevance scoring": ["5.7", "5.1", "5.5", "5.3"]}
ROLE_COLORS = ("#f4a261", "#2a9d8f", "#8d99ae", "#e9c46a")
QKV_STYLE = {"q": "-", "k": "--", "v": ":", None: "-."}
STYLE_LABELS = {"q": "into query (q)", "k": "into key (k)", "v": "into value (v)", None: "into MLP / score"}
RAISES, LOWERS = "#d62828", "#1d3557"


def _positions(n_layers: int, n_heads: int) -> dict[str, tuple[float, float]]:
    pos = {"input": ((n_heads - 1) / 2, -1.0), "logits": ((n_heads - 1) / 2, float(n_layers))}
    for layer in range(n_layers):
        for h in range(n_heads):
            pos[f"a{layer}.h{h}"] = (float(h), float(layer))
        pos[f"m{layer}"] = (n_heads + 0.5, layer + 0.4)
    return pos


def _split(edge: str) -> tuple[str, str, str | None]:
    sender, receiver = edge.split("->")
    node, _, rest = receiver.partition("<")
    return sender, node, rest[:1] or None


def _legend(ax: Any, roles: dict[str, str]) -> None:
    """The legend below the axes (so it covers no node): line styles, edge colours, then ``roles`` (name -> colour)."""
    handles = [Line2D([], [], ls=QKV_STYLE[k], color="#444444", lw=1.5, label=lab) for k, lab in STYLE_LABELS.items()]
    handles += [Line2D([], [], color=c, lw=2.5, alpha=0.7, label=lab)
                for c, lab in ((RAISES, "raises score"), (LOWERS, "lowers score"))]
    handles += [Line2D([], [], ls="", marker="o", ms=8, color=c, markeredgecolor="black", label=role)
                for role, c in roles.items()]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3 + (len(roles) + 1) // 2,
              fontsize=8, handlelength=3, frameon=False, columnspacing=1.2)


def edge_circuit_graph(data: Any, *, roles: dict[str, list[str]] | None = None, max_edges: int = 200) -> Figure:
    """The circuit of an ``edges`` analysis result (dict or JSON path) as a layered graph.

    Args:
        data: The analysis JSON object (needs ``eap_ig_graph``) or a path to it.
        roles: Role name -> heads ``"L.H"`` to mark (default: the paper's matching and scoring heads).
        max_edges: Draw at most this many circuit edges (largest ``|score|`` first).

    Raises:
        ValueError: If ``data`` has no ``eap_ig_graph``.
    """
    if not isinstance(data, dict):
        import json
        from pathlib import Path

        data = json.loads(Path(data).read_text())
    graph = data.get("eap_ig_graph")
    if graph is None:
        raise ValueError("edge_circuit_graph: the result has no 'eap_ig_graph' (run `jaxmech analyze edges`)")
    cfg = graph["cfg"]
    pos = _positions(cfg["n_layers"], cfg["n_heads"])
    edges = [(name, e["score"]) for name, e in graph["edges"].items() if e["in_graph"]]
    edges = sorted(edges, key=lambda t: -abs(t[1]))[:max_edges]
    fig = Figure(figsize=(max(6.0, 0.6 * cfg["n_heads"] + 2), 1.1 * cfg["n_layers"] + 2.5), layout="constrained")
    ax = fig.add_subplot()
    top = max((abs(s) for _, s in edges), default=1.0) or 1.0
    for name, score in edges:
        s, r, kind = _split(name)
        (x0, y0), (x1, y1) = pos[s], pos[r]
        ax.plot([x0, x1], [y0, y1], QKV_STYLE[kind], color=RAISES if score > 0 else LOWERS,
                lw=0.4 + 3.6 * abs(score) / top, alpha=0.7, zorder=1)
    roles = DEFAULT_ROLES if roles is None else roles
    role_colour = {role: ROLE_COLORS[i % len(ROLE_COLORS)] for i, role in enumerate(roles)}
    colour = {}
    for role, heads in roles.items():
        for h in heads:
            layer, head = h.split(".")
            colour[f"a{int(layer)}.h{int(head)}"] = role_colour[role]
    used = {n for name, _ in edges for n in _split(name)[:2]}
    for node, (x, y) in pos.items():
        ax.scatter([x], [y], s=90 if node in used else 25, color=colour.get(node, "white"),
                   edgecolors="black" if node in used else "#bbbbbb", zorder=2, marker="s" if node[0] == "m" else "o")
        if node in used or node in colour:
            ax.annotate(node, (x, y), fontsize=6, ha="center", va="bottom", xytext=(0, 5), textcoords="offset points")
    ax.set_yticks(np.arange(-1, cfg["n_layers"] + 1), ["emb", *map(str, range(cfg["n_layers"])), "score"])
    ax.set_xticks([])
    ax.set_xlim(-0.8, cfg["n_heads"] + 1.3)  # room for the MLP column's squares and names
    ax.set_ylabel("layer")
    method = data.get("method", "")
    ax.set_title(f"edge circuit ({method}): {len(edges)} edges shown")
    _legend(ax, role_colour)
    return fig


__all__ = ["DEFAULT_ROLES", "STYLE_LABELS", "edge_circuit_graph"]
