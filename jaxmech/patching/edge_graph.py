"""The computational graph of an encoder for edge-level circuit discovery, and what an edge is (post-LN and pre-LN).

**Nodes.** Senders: the embeddings (``input``: the embedding LayerNorm's output, ``resid_pre[0]``), every
attention head (``a{l}.h{h}``: its ``result``, ``z_h @ W_O[h]``) and every MLP (``m{l}``: ``mlp_out``).
Receivers: every head's query, key and value inputs separately (``a{l}.h{h}<q>``, ``<k>``, ``<v>``), every MLP's
input (``m{l}``) and the score's input (``logits``: the final hidden state the classifier head reads). Names
follow EAP-IG (hannamw/EAP-IG), so a circuit exported with `jaxmech.analysis.edges.to_eap_ig_json` reads there.

**Edges.** ``s -> r`` for every sender ``s`` that comes before receiver ``r`` in the forward: a head at layer
``l`` receives from the embeddings, the heads and MLPs of layers ``< l``; the MLP of layer ``l`` also from the
heads of layer ``l``; the score from every sender.

**The edge on a post-LN model.** A post-LN block computes ``x' = LN2(LN1(x + attn) + mlp)``: the residual stream
is not a sum of component outputs, so an edge is not defined until the LayerNorms are. jaxmech freezes each
LayerNorm's scale ``sqrt(var + eps)`` (per position) at its value in the run being patched (the baseline). A
frozen LayerNorm is affine, ``y -> (y - mean(y)) / s * w + b``, so every receiver's input is exactly
``bias + sum_s T_{s->r}(o_s)``, a sum over its senders' outputs ``o_s`` carried by fixed linear maps ``T``
(centering, scaling, ``w``), and an edge ``s -> r`` is the term ``T_{s->r}(o_s)``. The model with frozen scales
equals the real model at the baseline input exactly; patching an edge replaces that one term by
``T_{s->r}(o_s')`` with ``o_s'`` the sender's output on the perturbed input (the scales stay frozen, everything
downstream of the receiver is recomputed). The definition is exact and compositional: patching a set of edges
is well defined, and the model with every edge patched is the empty circuit.

**What it leaves out.** In the real model a component also changes every other component's contribution by
changing the LayerNorm scales it passes through (a global, multiplicative effect); with frozen scales that
effect is attributed to no edge. The empty circuit is therefore not the perturbed run: the perturbed run
normalises with its own scales. Edge effects are exact for the frozen-scale model, approximations of the real
model's patches, close where a patch moves the residual norms little (checked on MiniLM in the report).
The engine: `jaxmech.patching.engines.post_ln_edges`.

**The edge on a pre-LN model (ModernBERT).** Every block reads ``LN(x)`` of the running sum ``x``, so a
receiver's input *sum* is exactly ``bias + sum_s o_s`` without any freezing, and edge ``s -> r`` is the term
``o_s`` in it (the embeddings' output after the embedding LayerNorm, a head's ``z_h W_O[h]``, an MLP's output).
Patching it replaces ``o_s`` by ``o_s'`` in that one sum; the receiver applies its own LayerNorm live (a head's
``attn_norm``, the identity at layer 0; an MLP's ``mlp_norm``; the score's ``final_norm``). Nothing is left out:
the empty circuit is the run in which every sender's output is the perturbed one (the perturbed run when every
position is patchable). This is the definition EAP-IG and auto-circuit use for pre-LN decoders. The engine:
`jaxmech.patching.engines.pre_ln_edges`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from jaxtyping import Bool, Int

QKV = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class EdgeGraph:
    """Senders, receivers and edges of an ``n_layers x n_heads`` encoder.

    Sender index: 0 the embeddings; ``1 + l (H + 1) + h`` head ``(l, h)``; ``1 + l (H + 1) + H`` MLP ``l``.
    Receiver index: ``l (3H + 1) + c H + h`` for input ``c`` (q, k, v) of head ``(l, h)``, ``l (3H + 1) + 3H`` the
    MLP of layer ``l``, ``L (3H + 1)`` the score. Edge coefficients live in a dense ``[receiver, sender]`` array
    whose invalid entries (a sender after its receiver) are ignored.

    Attributes:
        n_layers: Layers ``L``.
        n_heads: Heads per layer ``H``.
    """

    n_layers: int
    n_heads: int

    @property
    def n_senders(self) -> int:
        """``1 + L (H + 1)``."""
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        """``L (3H + 1) + 1``."""
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def sender_name(self, s: int) -> str:
        """``input``, ``a{l}.h{h}`` or ``m{l}``."""
        if s == 0:
            return "input"
        layer, h = divmod(s - 1, self.n_heads + 1)
        return f"m{layer}" if h == self.n_heads else f"a{layer}.h{h}"

    def receiver_name(self, r: int) -> str:
        """``a{l}.h{h}<q|k|v>``, ``m{l}`` or ``logits``."""
        if r == self.n_receivers - 1:
            return "logits"
        layer, j = divmod(r, 3 * self.n_heads + 1)
        if j == 3 * self.n_heads:
            return f"m{layer}"
        c, h = divmod(j, self.n_heads)
        return f"a{layer}.h{h}<{QKV[c]}>"

    def _sender_order(self) -> np.ndarray:
        s = np.arange(self.n_senders)
        layer, h = np.divmod(np.maximum(s - 1, 0), self.n_heads + 1)
        return np.where(s == 0, 0, 2 * layer + 1 + (h == self.n_heads))

    def _receiver_order(self) -> np.ndarray:
        r = np.arange(self.n_receivers)
        layer, j = np.divmod(r, 3 * self.n_heads + 1)
        return np.where(r == self.n_receivers - 1, 2 * self.n_layers + 1, 2 * layer + 1 + (j == 3 * self.n_heads))

    @functools.cached_property
    def valid(self) -> Bool[np.ndarray, "receiver sender"]:
        """Which ``[receiver, sender]`` entries are edges."""
        return self._sender_order()[None, :] < self._receiver_order()[:, None]

    @functools.cached_property
    def edges(self) -> Int[np.ndarray, "edge 2"]:
        """``(receiver, sender)`` of every edge, row-major over `valid`."""
        return np.argwhere(self.valid).astype(np.int32)

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return int(self.edges.shape[0])

    def receiver_layer(self, r) -> np.ndarray:
        """The layer each receiver sits in (``L`` for the score)."""
        return np.minimum(np.asarray(r) // (3 * self.n_heads + 1), self.n_layers)

    def edge_name(self, e: int) -> str:
        """``sender->receiver`` (EAP-IG's spelling)."""
        r, s = self.edges[e]
        return f"{self.sender_name(int(s))}->{self.receiver_name(int(r))}"

    def dense(self, values, fill: float = 0.0) -> np.ndarray:
        """Per-edge ``values`` ``[..., edge]`` as a dense ``[..., receiver, sender]`` array (``fill`` elsewhere)."""
        values = np.asarray(values)
        out = np.full((*values.shape[:-1], self.n_receivers, self.n_senders), fill, values.dtype)
        out[..., self.edges[:, 0], self.edges[:, 1]] = values
        return out

    def per_edge(self, dense) -> np.ndarray:
        """The edge entries ``[..., edge]`` of a dense ``[..., receiver, sender]`` array."""
        return np.asarray(dense)[..., self.edges[:, 0], self.edges[:, 1]]


__all__ = ["QKV", "EdgeGraph"]
