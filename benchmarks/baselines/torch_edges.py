"""An independent PyTorch implementation of exact edge patching (jaxmech's edge definition, see
`jaxmech.patching.edge_graph`), with forward hooks on a Hugging Face ``BertForSequenceClassification``.

It shares no code with jaxmech (only the inputs and the definition), so agreement with
`jaxmech.patching.edges.exact_edge_scores` is evidence that both implement the definition:

* every LayerNorm between components (each layer's ``attention.output.LayerNorm`` and ``output.LayerNorm``) is
  frozen at the baseline run: its output is recomputed as ``(x - mean(x)) / s * w + b`` with ``s`` the baseline's
  ``sqrt(var + eps)`` per position;
* stage A: a frozen-scale forward on the baseline input in which every head's ``result`` and every MLP's output is
  set to its baseline value except the sender's, set to its value in the perturbed run (at patchable positions);
  the receiver's input there, minus its input in the same run without the sender's change, is the edge's input
  change ``T_{s->r}(o_s' - o_s)``;
* stage B: a frozen-scale forward on the baseline input with that change added to the one receiver input (a head's
  query, key or value: projected by that head's rows of the projection; an MLP: its input; the score: the final
  hidden state the pooler reads); everything after the receiver is recomputed.

Batch 1, one input at its real length (no padding), eager attention. Node names are EAP-IG's (``input``,
``a{l}.h{h}``, ``m{l}``; receivers ``a{l}.h{h}<q|k|v>``, ``m{l}``, ``logits``).

`TorchModernBertEdgePatcher` does the same on ``ModernBertForSequenceClassification`` (pre-LN): the residual
stream is a running sum, so no LayerNorm is frozen and an edge's input change is the sender's own change
``o_s' - o_s``, added to the receiver's input sum (``attn_norm``'s input for a head's query / key / value, only that
head's columns of ``Wqkv`` taking the changed value; ``mlp_norm``'s for an MLP; ``final_norm``'s for the score),
normalised live.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


class TorchEdgePatcher:
    """Exact edge patching by hooks on a Hugging Face BERT ``*ForSequenceClassification`` (eval mode, batch 1)."""

    def __init__(self, hf_model):
        self.model = hf_model.eval()
        self.model.set_attn_implementation("eager")
        self.bert = hf_model.base_model
        self.layers = self.bert.encoder.layer
        cfg = hf_model.config
        self.H = cfg.num_attention_heads
        self.dh = cfg.hidden_size // cfg.num_attention_heads

    @staticmethod
    def _tensors(inputs):
        return tuple(torch.as_tensor(np.asarray(a)).long()[None] for a in inputs)

    def _score(self, inputs) -> torch.Tensor:
        ids, tt, mask = self._tensors(inputs)
        return self.model(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits[0, 0]

    @contextlib.contextmanager
    def _hooked(self, hooks):
        handles = [register(fn) for register, fn in hooks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _lns(self):
        for layer in self.layers:
            yield layer.attention.output.LayerNorm
            yield layer.output.LayerNorm

    @torch.no_grad()
    def _capture(self, inputs) -> dict:
        """The LayerNorm scales, the embeddings' output, each head's ``result`` and each MLP's output of a run."""
        out = {"scale": [], "z": [], "mlp": []}

        def scale(m, a, o):
            x = a[0]
            out["scale"].append(torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + m.eps))

        hooks = [(ln.register_forward_hook, scale) for ln in self._lns()]
        hooks.append((self.bert.embeddings.register_forward_hook, lambda m, a, o: out.__setitem__("emb", o)))
        for layer in self.layers:
            hooks.append((layer.attention.output.dense.register_forward_pre_hook,
                          lambda m, a: out["z"].append(a[0])))
            hooks.append((layer.output.dense.register_forward_hook, lambda m, a, o: out["mlp"].append(o)))
        with self._hooked(hooks):
            self._score(inputs)
        W_O = [layer.attention.output.dense.weight for layer in self.layers]
        # per-head result [T, H, d_model]: z_h @ W_O[:, h]^T (W_O is [d_model, H * d_head] in torch's layout)
        out["result"] = [torch.einsum("thd,mhd->thm", z[0].reshape(z.shape[1], self.H, self.dh),
                                      w.reshape(w.shape[0], self.H, self.dh))
                         for z, w in zip(out["z"], W_O, strict=True)]
        out["mlp"] = [m[0] for m in out["mlp"]]
        out["emb"] = out["emb"][0]
        return out

    def _frozen_ln_hooks(self, scales):
        def frozen(s):
            def fwd(m, a, o):
                x = a[0]
                return (x - x.mean(-1, keepdim=True)) / s * m.weight + m.bias

            return fwd

        return [(ln.register_forward_hook, frozen(s)) for ln, s in zip(self._lns(), scales, strict=True)]

    def _component_hooks(self, base, pert, sender: str | None, pm):
        """Stage A: every head's and MLP's output set to the baseline's, the sender's to the perturbed value."""
        hooks = []
        if sender == "input":
            emb = base["emb"] + pm * (pert["emb"] - base["emb"])
            hooks.append((self.bert.embeddings.register_forward_hook, lambda m, a, o: emb[None]))
        for l, layer in enumerate(self.layers):
            res = base["result"][l].clone()
            mlp = base["mlp"][l].clone()
            if sender == f"m{l}":
                mlp = mlp + pm * (pert["mlp"][l] - mlp)
            for h in range(self.H):
                if sender == f"a{l}.h{h}":
                    res[:, h] = res[:, h] + pm * (pert["result"][l][:, h] - res[:, h])
            attn_out = res.sum(1) + layer.attention.output.dense.bias
            hooks.append((layer.attention.output.dense.register_forward_hook, lambda m, a, o, v=attn_out: v[None]))
            hooks.append((layer.output.dense.register_forward_hook, lambda m, a, o, v=mlp: v[None]))
        return hooks

    def _receiver_input_hook(self, receiver: str, store: dict | None = None, add: torch.Tensor | None = None):
        """A hook that reads (``store``) or adds to (``add``) the receiver's input (a residual vector ``[T, d]``)."""
        if receiver == "logits":
            module, layer, kind = self.bert.pooler, None, None
        elif receiver.startswith("m"):
            module, layer, kind = self.layers[int(receiver[1:])].intermediate, None, None
        else:
            head, kind = receiver[1:-1].split("<")
            l, h = (int(t) for t in head.split(".h"))
            module, layer = self.layers[l], (l, h)
        if store is not None:
            def read(m, a, kw):
                store["x"] = (a[0] if a else kw["hidden_states"])[0]

            return module.register_forward_pre_hook, read, True
        if layer is None:
            return module.register_forward_pre_hook, lambda m, a: (a[0] + add[None], *a[1:]), False
        l, h = layer
        proj = getattr(self.layers[l].attention.self, {"q": "query", "k": "key", "v": "value"}[kind])
        cols = slice(h * self.dh, (h + 1) * self.dh)
        extra = add @ proj.weight[cols].T

        def fwd(m, a, o):
            o = o.clone()
            o[0, :, cols] = o[0, :, cols] + extra
            return o

        return proj.register_forward_hook, fwd, False

    @torch.no_grad()
    def _receiver_input(self, inputs, scales, base, pert, sender, receiver, pm) -> torch.Tensor:
        store = {}
        register, fn, kwargs = self._receiver_input_hook(receiver, store=store)
        hooks = self._frozen_ln_hooks(scales) + self._component_hooks(base, pert, sender, pm)
        with self._hooked(hooks):
            handle = register(fn, with_kwargs=kwargs)
            try:
                self._score(inputs)
            finally:
                handle.remove()
        return store["x"]

    @torch.no_grad()
    def edge_score(self, base_inputs, pert_inputs, sender: str, receiver: str, patchable=None) -> float:
        """The baseline's score with edge ``sender -> receiver`` patched to its perturbed value.

        Args:
            base_inputs: ``(ids, token_type_ids, attention_mask)`` of the baseline (one unpadded input).
            pert_inputs: The perturbed input, aligned position by position.
            sender: ``input``, ``a{l}.h{h}`` or ``m{l}``.
            receiver: ``a{l}.h{h}<q|k|v>``, ``m{l}`` or ``logits`` (after the sender in the forward).
            patchable: ``[pos]`` 1 where the perturbed value may replace the baseline's (default: everywhere).
        """
        base, pert = self._capture(base_inputs), self._capture(pert_inputs)
        n = len(base_inputs[0])
        pm = torch.ones(n, 1) if patchable is None else torch.as_tensor(np.asarray(patchable), dtype=torch.float32)
        pm = pm.reshape(n, 1)
        change = (self._receiver_input(base_inputs, base["scale"], base, pert, sender, receiver, pm)
                  - self._receiver_input(base_inputs, base["scale"], base, pert, None, receiver, pm))
        register, fn, _ = self._receiver_input_hook(receiver, add=change)
        with self._hooked(self._frozen_ln_hooks(base["scale"]) + [(register, fn)]):
            return float(self._score(base_inputs))




class TorchModernBertEdgePatcher:
    """Exact edge patching on a pre-LN ModernBERT by hooks on transformers' ``ModernBertForSequenceClassification``
    (eval mode, eager attention, batch 1 at the input's real length).

    Senders: ``input`` (the embeddings' output, after their LayerNorm), ``a{l}.h{h}`` (``z_h @ W_O[h]``: head
    ``h``'s slice of ``attn.Wo``'s input times the matching columns of its weight, no bias) and ``m{l}`` (the MLP's
    output, ``mlp.Wo`` with its bias). Patching ``s -> r`` adds ``o_s' - o_s`` (perturbed minus baseline, at the
    patchable positions) to the residual sum that receiver ``r`` reads: the input of ``layers[l].attn_norm`` (a
    head's query, key or value; only that head's columns of ``Wqkv(attn_norm(x + delta))`` replace the original
    ones), of ``layers[l].mlp_norm`` (MLP ``l``) or of ``final_norm`` (``logits``). Each LayerNorm runs live on the
    changed sum; nothing else sees the change and everything after the receiver is recomputed.
    """

    def __init__(self, hf_model):
        self.model = hf_model.eval()
        self.model.set_attn_implementation("eager")
        self.trunk = hf_model.model
        self.layers = self.trunk.layers
        cfg = hf_model.config
        self.H = cfg.num_attention_heads
        self.dh = cfg.hidden_size // cfg.num_attention_heads

    @torch.no_grad()
    def score(self, ids) -> torch.Tensor:
        """The raw logit (first label) of one unpadded input ``ids`` ``[pos]`` (under any registered hooks)."""
        ids = torch.as_tensor(np.asarray(ids)).long()[None]
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]

    @torch.no_grad()
    def outputs(self, ids) -> dict:
        """Every sender's output in the run on ``ids``: ``{"input": [T, d], "a{l}.h{h}": [T, d], "m{l}": [T, d]}``."""
        out, handles = {}, [self.trunk.embeddings.register_forward_hook(
            lambda m, a, o: out.__setitem__("input", o[0]))]
        for l, layer in enumerate(self.layers):
            handles.append(layer.attn.Wo.register_forward_pre_hook(
                lambda m, a, l=l: out.__setitem__(f"z{l}", a[0][0])))
            handles.append(layer.mlp.register_forward_hook(lambda m, a, o, l=l: out.__setitem__(f"m{l}", o[0])))
        try:
            self.score(ids)
        finally:
            for h in handles:
                h.remove()
        for l, layer in enumerate(self.layers):
            z = out.pop(f"z{l}")
            w = layer.attn.Wo.weight  # [d_model, H * d_head]
            for h in range(self.H):
                cols = slice(h * self.dh, (h + 1) * self.dh)
                out[f"a{l}.h{h}"] = z[:, cols] @ w[:, cols].T
        return out

    def _receiver_hooks(self, receiver: str, delta: torch.Tensor) -> list:
        """Hooks adding ``delta`` ``[T, d]`` to the residual sum that ``receiver`` reads (and only there)."""
        def add(m, a):
            return (a[0] + delta[None], *a[1:])

        if receiver == "logits":
            return [self.trunk.final_norm.register_forward_pre_hook(add)]
        if receiver.startswith("m"):
            return [self.layers[int(receiver[1:])].mlp_norm.register_forward_pre_hook(add)]
        head, kind = receiver[1:-1].split("<")
        l, h = (int(t) for t in head.split(".h"))
        norm, wqkv = self.layers[l].attn_norm, self.layers[l].attn.Wqkv
        cols = slice("qkv".index(kind) * self.H * self.dh + h * self.dh,
                     "qkv".index(kind) * self.H * self.dh + (h + 1) * self.dh)
        seen = {}

        def read(m, a):  # the unchanged sum entering block l (attn_norm's input)
            seen["x"] = a[0]

        def replace(m, a, o):  # this head's q / k / v columns from the changed sum, normalised live
            changed = torch.nn.functional.linear(norm.forward(seen["x"] + delta[None]), m.weight, m.bias)
            o = o.clone()
            o[..., cols] = changed[..., cols]
            return o

        return [norm.register_forward_pre_hook(read), wqkv.register_forward_hook(replace)]

    @torch.no_grad()
    def patched_score(self, ids, receiver, delta) -> float:
        """The score of ``ids`` with ``delta`` ``[T, d]`` added to the residual sum ``receiver`` reads.

        Args:
            ids: Token ids ``[T]`` (unpadded).
            receiver: A receiver name, or several (each gets ``delta``; none sees another's change).
            delta: ``[T, d_model]``.
        """
        delta = torch.as_tensor(np.asarray(delta), dtype=torch.float32)
        receivers = [receiver] if isinstance(receiver, str) else list(receiver)
        handles = [h for r in receivers for h in self._receiver_hooks(r, delta)]
        try:
            return float(self.score(ids))
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def edge_score(self, base_ids, pert_ids, sender: str, receiver: str, position_map=None) -> float:
        """The baseline's score with edge ``sender -> receiver`` patched to its perturbed value.

        Args:
            base_ids: The baseline's token ids ``[T]`` (unpadded).
            pert_ids: The perturbed input's token ids ``[T']`` (unpadded).
            sender: ``input``, ``a{l}.h{h}`` or ``m{l}``.
            receiver: ``a{l}.h{h}<q|k|v>``, ``m{l}`` or ``logits`` (after the sender in the forward).
            position_map: ``[T]``: the perturbed position aligned with each baseline position, -1 where none (not
                patchable: the baseline's value stays). Default: position by position (``T' == T``).
        """
        base, pert = self.outputs(base_ids)[sender], self.outputs(pert_ids)[sender]
        n = len(base_ids)
        pos = torch.arange(n) if position_map is None else torch.as_tensor(np.asarray(position_map)).long()
        if pos.shape != (n,):
            raise ValueError(f"position_map has shape {tuple(pos.shape)}, expected ({n},)")
        aligned = pos >= 0
        delta = torch.zeros_like(base)
        delta[aligned] = pert[pos[aligned]] - base[aligned]
        return self.patched_score(base_ids, receiver, delta)


__all__ = ["TorchEdgePatcher", "TorchModernBertEdgePatcher"]
