"""An independent PyTorch implementation of the paper's patching procedures, with forward hooks on the Hugging
Face model: one hooked forward per patched site, batch 1, as in the authors' TransformerLens fork.

It shares no code with jaxmech's patching (only the inputs), so agreement between the two is evidence that
both implement the paper's definitions. Used by the cross-implementation tests and as the baseline of
``benchmarks/bench_patching.py``.

Two baselines:

* `TorchPatcher`: the paper's loop, one hooked forward per site, batch 1.
* `BatchedTorchPatcher`: what a strong PyTorch user writes: ``B`` copies of the baseline input per forward,
  each row patching its own site (hooks blend with per-row masks), so one forward evaluates ``B`` sites.
* `ModernBertTorchPatcher`: `TorchPatcher` on ``ModernBertForSequenceClassification`` (its own hook points).

The attention function registered here gets eager's additive mask (padding and sliding windows) through
transformers' ``AttentionMaskInterface``; padded inputs are therefore scored and patched like unpadded ones.

Both run on the device of the Hugging Face model they are given (`torch_precision` sets the matmul
precision that matches a jaxmech precision name).

Hook points on ``BertForSequenceClassification`` (``transformers`` 5):

* ``resid_pre[l]``: the input of ``encoder.layer[l]`` (forward pre-hook);
* ``q``/``k``/``v``: the outputs of ``attention.self.query/key/value`` (``[T, H * d_head]``);
* ``z``: the input of ``attention.output.dense`` (the concatenated heads, before W_O);
* ``attn_out``: the output of ``attention.output.dense`` (W_O and b_O applied);
* ``mlp_out``: the output of ``output.dense``;
* ``pattern``: inside a registered attention function (``AttentionInterface``) that applies a per-module
  hook to the softmax probabilities.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

_IMPL = "jaxmech_reference"


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    hook = getattr(module, "_pattern_hook", None)
    if hook is not None:
        weights = hook(weights)  # [batch, head, query, key]
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


AttentionInterface.register(_IMPL, _attention)
# transformers builds the additive padding (and sliding-window) mask only for attention implementations with a
# registered mask function; without this line ``attention_mask`` arrives as None and padding keys are attended.
AttentionMaskInterface.register(_IMPL, eager_mask)


class TorchPatcher:
    """Hook-based patching on a Hugging Face BERT-family ``*ForSequenceClassification`` (eval mode, batch 1)."""

    def __init__(self, hf_model):
        self.model = hf_model.eval()
        self.model.set_attn_implementation(_IMPL)
        cfg = hf_model.config
        self.L, self.H = cfg.num_hidden_layers, cfg.num_attention_heads
        self.dh = cfg.hidden_size // cfg.num_attention_heads
        self.layers = self._trunk_layers(hf_model)
        self.device = next(hf_model.parameters()).device

    # -- where the sites are (overridden for ModernBERT) -----------------------------------------------------------
    @staticmethod
    def _trunk_layers(hf_model):
        """The transformer blocks (BERT, ELECTRA, RoBERTa, XLM-R trunks)."""
        return hf_model.base_model.encoder.layer

    def _attn(self, l):
        """The module the attention function receives (it holds the pattern hook)."""
        return self.layers[l].attention.self

    def _wo(self, l):
        """The attention output projection: its input is ``z``, its output ``attn_out``."""
        return self.layers[l].attention.output.dense

    def _mlp_out(self, l):
        """The MLP's output projection (its output is ``mlp_out``)."""
        return self.layers[l].output.dense

    def _qkv(self, l, site: str):
        """``(module, column offset)``: the linear layer whose output holds ``site`` (q, k or v) of layer ``l``."""
        return getattr(self._attn(l), {"q": "query", "k": "key", "v": "value"}[site]), 0

    def _forward(self, ids, tt, mask):
        return self.model(input_ids=ids, token_type_ids=tt, attention_mask=mask)

    attention_readout = None
    """``(layer, head, from_weights, to_weights)``: `score` measures ``from_weights @ pattern[head] @ to_weights``
    at ``layer`` (after any pattern patch there) instead of the logit."""

    # -- running ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, inputs) -> float:
        ids, tt, mask = (torch.as_tensor(np.asarray(a)).long()[None].to(self.device) for a in inputs)
        if self.attention_readout is None:
            return float(self._forward(ids, tt, mask).logits[0, 0])
        layer, head, w_from, w_to = self.attention_readout
        attn = self._attn(layer)
        inner, seen = getattr(attn, "_pattern_hook", None), {}

        def keep(w):
            w = inner(w) if inner is not None else w
            seen["pattern"] = w
            return w

        attn._pattern_hook = keep
        try:
            self._forward(ids, tt, mask)
        finally:
            attn._pattern_hook = inner
        p = seen["pattern"][0, head].double().cpu().numpy()
        return float(np.asarray(w_from, np.float64) @ p @ np.asarray(w_to, np.float64))

    @contextlib.contextmanager
    def hooks(self, handles_fn):
        handles = handles_fn()
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for l in range(self.L):
                self._attn(l)._pattern_hook = None

    @contextlib.contextmanager
    def background(self, heads, values=None):
        """While active, every forward sets the ``z`` of ``heads`` ``[(layer, head), ...]`` to zero, or to
        ``values[(layer, head)]`` (a ``[d_head]`` vector, e.g. a mean), at every position: jaxmech's background
        ablation written as hooks. Registered before any patch, so a patch's hooks run after it."""
        handles = []
        for layer in sorted({l for l, _ in heads}):

            def pre(m, a, layer=layer):
                z = a[0].clone()
                for l, h in heads:
                    if l == layer:
                        cols = slice(h * self.dh, (h + 1) * self.dh)
                        z[:, :, cols] = 0.0 if values is None else torch.as_tensor(
                            np.asarray(values[(l, h)]), dtype=z.dtype, device=z.device)
                return (z,)

            handles.append(self.layers[layer].attention.output.dense.register_forward_pre_hook(pre))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def cache(self, inputs) -> dict[str, list[torch.Tensor]]:
        """Per-layer ``resid_pre``, ``q``, ``k``, ``v`` (before any rotation), ``z``, ``attn_out``, ``mlp_out``,
        ``pattern`` of one input."""
        out = {k: [None] * self.L for k in ("resid_pre", "q", "k", "v", "z", "attn_out", "mlp_out", "pattern")}

        def make():
            hs = []
            for l, layer in enumerate(self.layers):
                hs.append(
                    layer.register_forward_pre_hook(
                        lambda m, a, kw, l=l: out["resid_pre"].__setitem__(
                            l, (a[0] if a else kw["hidden_states"]).clone()
                        ),
                        with_kwargs=True,
                    )
                )
                for site in ("q", "k", "v"):
                    module, off = self._qkv(l, site)
                    hs.append(module.register_forward_hook(
                        lambda m, a, o, l=l, off=off, site=site: out[site].__setitem__(
                            l, o[..., off: off + self.H * self.dh].clone())))
                hs.append(
                    self._wo(l).register_forward_pre_hook(lambda m, a, l=l: out["z"].__setitem__(l, a[0].clone()))
                )
                hs.append(
                    self._wo(l).register_forward_hook(
                        lambda m, a, o, l=l: out["attn_out"].__setitem__(l, o.clone())
                    )
                )
                hs.append(
                    self._mlp_out(l).register_forward_hook(
                        lambda m, a, o, l=l: out["mlp_out"].__setitem__(l, o.clone())
                    )
                )

                def keep(w, l=l):
                    out["pattern"][l] = w.clone()
                    return w

                self._attn(l)._pattern_hook = keep
            return hs

        with self.hooks(make):
            self.score(inputs)
        return out

    # -- single-site hooks ----------------------------------------------------------------------------------------
    def _resid_pre_hook(self, l, pos, value):
        def pre(m, a, kw):
            if a:
                h = a[0].clone()
                h[:, pos] = value[:, pos]
                return (h, *a[1:]), kw
            h = kw["hidden_states"].clone()
            h[:, pos] = value[:, pos]
            return a, {**kw, "hidden_states": h}

        return self.layers[l].register_forward_pre_hook(pre, with_kwargs=True)

    def _output_hook(self, module, pos, value, head=None, offset=0):
        """Replace a module's output at ``pos`` (all if None), optionally one head's slice; ``value`` holds the
        columns from ``offset`` on (a fused q/k/v projection's part)."""
        vs = slice(None) if head is None else slice(head * self.dh, (head + 1) * self.dh)
        sl = slice(offset, offset + value.shape[-1]) if head is None else slice(offset + vs.start, offset + vs.stop)
        p = slice(None) if pos is None else pos

        def fwd(m, a, o):
            o = o.clone()
            o[:, p, sl] = value[:, p, vs]
            return o

        return module.register_forward_hook(fwd)

    def _qkv_hook(self, l, site, value, pos=None, head=None):
        """Replace ``site`` (q, k or v, before any rotation) of layer ``l`` by ``value`` ``[1, T, H * d_head]``."""
        module, off = self._qkv(l, site)
        return self._output_hook(module, pos, value, head=head, offset=off)

    def _z_hook(self, l, pos, head, value):
        sl = slice(head * self.dh, (head + 1) * self.dh)
        p = slice(None) if pos is None else pos

        def pre(m, a):
            z = a[0].clone()
            z[:, p, sl] = value[:, p, sl]
            return (z,)

        return self._wo(l).register_forward_pre_hook(pre)

    # -- the paper's experiments ----------------------------------------------------------------------------------
    @staticmethod
    def _sites(shape, sites):
        """Every index of a result of ``shape``, or only ``sites`` (for timing samples)."""
        return list(np.ndindex(*shape)) if sites is None else [tuple(s) for s in sites]

    def block_every(self, base_inputs, src, sites=None) -> np.ndarray:
        """E1: ``[3, layer, pos]`` patched scores (resid_pre, attn_out, mlp_out at one position)."""
        T = len(base_inputs[0])
        out = np.full((3, self.L, T), np.nan, np.float32)
        for c, l, p in self._sites(out.shape, sites):
            make = [
                lambda: [self._resid_pre_hook(l, p, src["resid_pre"][l])],
                lambda: [self._output_hook(self._wo(l), p, src["attn_out"][l])],
                lambda: [self._output_hook(self._mlp_out(l), p, src["mlp_out"][l])],
            ][c]
            with self.hooks(make):
                out[c, l, p] = self.score(base_inputs)
        return out

    def head_all_pos(self, base_inputs, src, site: str, sites=None) -> np.ndarray:
        """E2: ``[layer, head]`` patched scores, patching one head's ``v`` (or ``z``) at every position."""
        out = np.full((self.L, self.H), np.nan, np.float32)
        for l, h in self._sites(out.shape, sites):
            if site in ("q", "k", "v"):
                make = lambda l=l, h=h: [self._qkv_hook(l, site, src[site][l], head=h)]
            else:
                make = lambda l=l, h=h: [self._z_hook(l, None, h, src["z"][l])]
            with self.hooks(make):
                out[l, h] = self.score(base_inputs)
        return out

    def head_by_pos_z(self, base_inputs, src, sites=None) -> np.ndarray:
        """E3 (z): ``[layer, pos, head]``."""
        T = len(base_inputs[0])
        out = np.full((self.L, T, self.H), np.nan, np.float32)
        for l, p, h in self._sites(out.shape, sites):
            with self.hooks(lambda: [self._z_hook(l, p, h, src["z"][l])]):
                out[l, p, h] = self.score(base_inputs)
        return out

    def head_by_pos_pattern(self, base_inputs, src, sites=None) -> np.ndarray:
        """E3 (pattern rows): ``[layer, head, query_pos]``."""
        T = len(base_inputs[0])
        out = np.full((self.L, self.H, T), np.nan, np.float32)
        for l, h, p in self._sites(out.shape, sites):

            def make(l=l, h=h, p=p):
                def hook(w):
                    w = w.clone()
                    w[:, h, p] = src["pattern"][l][:, h, p]
                    return w

                self._attn(l)._pattern_hook = hook
                return []

            with self.hooks(make):
                out[l, h, p] = self.score(base_inputs)
        return out

    def _freeze_z_hooks(self, base, src, sender_layer, sender_head):
        """Every layer's z set to the baseline's, then the sender head's z to the source's."""
        hs = []
        for l in range(self.L):

            def pre(m, a, l=l):
                z = base["z"][l].clone()
                if l == sender_layer:
                    cols = slice(sender_head * self.dh, (sender_head + 1) * self.dh)
                    z[:, :, cols] = src["z"][l][:, :, cols]
                return (z,)

            hs.append(self._wo(l).register_forward_pre_hook(pre))
        return hs

    def path_to_score(self, base_inputs, base, src, sites=None) -> np.ndarray:
        """E4: ``[layer, head]``: every layer's z frozen to the baseline, the sender's from the source."""
        out = np.full((self.L, self.H), np.nan, np.float32)
        for sl, sh in self._sites(out.shape, sites):
            with self.hooks(lambda: self._freeze_z_hooks(base, src, sl, sh)):
                out[sl, sh] = self.score(base_inputs)
        return out

    def path_to_heads(self, base_inputs, base, src, receivers, receiver_input: str = "k", sites=None) -> np.ndarray:
        """E5: ``[max_receiver_layer, head]``. Step 2: z frozen except the sender, cache the receivers'
        ``q``/``k``/``v``; step 3: a fresh baseline run with only those receiver inputs replaced."""
        r_max = max(r for r, _ in receivers)
        width = self.H * self.dh
        out = np.full((r_max, self.H), np.nan, np.float32)
        for sl, sh in self._sites(out.shape, sites):
            cached = {}

            def freeze(sl=sl, sh=sh):
                hs = self._freeze_z_hooks(base, src, sl, sh)
                for r in {r for r, _ in receivers}:
                    module, off = self._qkv(r, receiver_input)
                    hs.append(module.register_forward_hook(
                        lambda m, a, o, r=r, off=off: cached.__setitem__(r, o[..., off: off + width].clone())))
                return hs

            with self.hooks(freeze):
                self.score(base_inputs)

            def patch_receivers():
                hs = []
                for r, h in receivers:
                    hs.append(self._qkv_hook(r, receiver_input, cached[r], head=h))
                return hs

            with self.hooks(patch_receivers):
                out[sl, sh] = self.score(base_inputs)
        return out


class ModernBertTorchPatcher(TorchPatcher):
    """`TorchPatcher` on ``ModernBertForSequenceClassification`` (pre-LN blocks, fused ``Wqkv``, rotary
    positions applied inside the attention after the ``Wqkv`` hook, so ``q``/``k`` are the unrotated ones):

    * ``resid_pre[l]``: the input of ``model.layers[l]``; ``q``/``k``/``v``: column blocks of ``attn.Wqkv``'s
      output; ``z``: the input of ``attn.Wo``; ``attn_out``: its output; ``mlp_out``: the output of ``mlp.Wo``;
      ``pattern``: the registered attention function's probabilities (padding and sliding-window masks come
      from eager's mask function, registered for it above).
    """

    @staticmethod
    def _trunk_layers(hf_model):
        return hf_model.model.layers

    def _attn(self, l):
        return self.layers[l].attn

    def _wo(self, l):
        return self.layers[l].attn.Wo

    def _mlp_out(self, l):
        return self.layers[l].mlp.Wo

    def _qkv(self, l, site: str):
        return self.layers[l].attn.Wqkv, "qkv".index(site) * self.H * self.dh

    def _forward(self, ids, tt, mask):
        return self.model(input_ids=ids, attention_mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Batched hooks: B sites per forward
# ----------------------------------------------------------------------------------------------------------------

#: jaxmech precision name -> ``torch.set_float32_matmul_precision`` value. PyTorch has no bf16x3 mode for
#: fp32 matmuls; "high" (TF32 on NVIDIA GPUs) is the nearest.
TORCH_PRECISION = {"fp32": "highest", "tf32": "high", "bf16x3": "high", "bf16": "medium"}


@contextlib.contextmanager
def torch_precision(name: str):
    """PyTorch's fp32 matmul precision matching a jaxmech precision name (``"fp32"``: TF32 off)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(TORCH_PRECISION[name])
    try:
        yield TORCH_PRECISION[name]
    finally:
        torch.set_float32_matmul_precision(old)


class BatchedTorchPatcher(TorchPatcher):
    """Hook-based patching with ``batch_size`` sites per forward: row ``b`` of the batch is the baseline
    input with site ``b`` patched. Each hook blends the source into the rows whose site is at that hook
    (``torch.where`` with a per-row mask), so the rows are independent and agree with `TorchPatcher`."""

    def __init__(self, hf_model, batch_size: int = 128):
        super().__init__(hf_model)
        self.batch_size = batch_size

    @torch.no_grad()
    def scores(self, inputs, n: int) -> np.ndarray:
        """Scores of ``n`` copies of one input (under whatever hooks are registered)."""
        ids, tt, mask = (torch.as_tensor(np.asarray(a)).long()[None].expand(n, -1).to(self.device) for a in inputs)
        return self.model(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits[:, 0].float().cpu().numpy()

    def _zeros(self, n, *shape):
        return torch.zeros((n, *shape), dtype=torch.bool, device=self.device)

    def _blend_output(self, module, mask, value):
        """Output hook: rows/positions/features where ``mask`` holds take ``value`` (``[1, ...]``)."""
        return module.register_forward_hook(lambda m, a, o: torch.where(mask, value, o))

    def _chunks(self, sites):
        sites = [tuple(int(x) for x in s) for s in sites]
        for i in range(0, len(sites), self.batch_size):
            yield i, sites[i : i + self.batch_size]

    def _run(self, base_inputs, sites, out_shape, make_hooks) -> np.ndarray:
        """Fills ``out[site] = score`` chunk by chunk; ``make_hooks(chunk)`` registers the chunk's hooks."""
        out = np.full(out_shape, np.nan, np.float32)
        for _, chunk in self._chunks(sites):
            with self.hooks(lambda chunk=chunk: make_hooks(chunk)):
                scores = self.scores(base_inputs, len(chunk))
            for s, v in zip(chunk, scores, strict=True):
                out[s] = v
        return out

    def block_every(self, base_inputs, src, sites=None) -> np.ndarray:
        """E1, batched: ``[3, layer, pos]``."""
        T = len(base_inputs[0])
        shape = (3, self.L, T)

        def make(chunk):
            n, hs = len(chunk), []
            masks = {}
            for b, (c, l, p) in enumerate(chunk):
                masks.setdefault((c, l), self._zeros(n, T, 1))[b, p] = True
            for (c, l), m in masks.items():
                if c == 0:

                    def pre(mod, a, kw, m=m, v=src["resid_pre"][l]):
                        if a:
                            return (torch.where(m, v, a[0]), *a[1:]), kw
                        return a, {**kw, "hidden_states": torch.where(m, v, kw["hidden_states"])}

                    hs.append(self.layers[l].register_forward_pre_hook(pre, with_kwargs=True))
                elif c == 1:
                    hs.append(self._blend_output(self.layers[l].attention.output.dense, m, src["attn_out"][l]))
                else:
                    hs.append(self._blend_output(self.layers[l].output.dense, m, src["mlp_out"][l]))
            return hs

        return self._run(base_inputs, self._sites(shape, sites), shape, make)

    def _head_mask(self, n, T, rows):
        """``[n, T, H * d_head]`` mask from ``(row, pos or None, head)`` triples."""
        m = self._zeros(n, T, self.H * self.dh)
        for b, p, h in rows:
            m[b, slice(None) if p is None else p, h * self.dh : (h + 1) * self.dh] = True
        return m

    def head_all_pos(self, base_inputs, src, site: str, sites=None) -> np.ndarray:
        """E2, batched: ``[layer, head]``, one head's ``v`` (or ``z``) at every position."""
        T = len(base_inputs[0])
        shape = (self.L, self.H)

        def make(chunk):
            by_layer = {}
            for b, (l, h) in enumerate(chunk):
                by_layer.setdefault(l, []).append((b, None, h))
            hs = []
            for l, rows in by_layer.items():
                m = self._head_mask(len(chunk), T, rows)
                if site == "v":
                    hs.append(self._blend_output(self.layers[l].attention.self.value, m, src["v"][l]))
                else:
                    hs.append(self._z_blend(l, m, src["z"][l]))
            return hs

        return self._run(base_inputs, self._sites(shape, sites), shape, make)

    def _z_blend(self, l, mask, value, base=None):
        """Pre-hook on ``W_O``: ``z`` (or the frozen ``base``) with ``value`` where ``mask`` holds."""

        def pre(m, a):
            z = a[0] if base is None else base.expand_as(a[0])
            return (torch.where(mask, value, z),)

        return self.layers[l].attention.output.dense.register_forward_pre_hook(pre)

    def head_by_pos_z(self, base_inputs, src, sites=None) -> np.ndarray:
        """E3 (z), batched: ``[layer, pos, head]``."""
        T = len(base_inputs[0])
        shape = (self.L, T, self.H)

        def make(chunk):
            by_layer = {}
            for b, (l, p, h) in enumerate(chunk):
                by_layer.setdefault(l, []).append((b, p, h))
            return [self._z_blend(l, self._head_mask(len(chunk), T, rows), src["z"][l]) for l, rows in by_layer.items()]

        return self._run(base_inputs, self._sites(shape, sites), shape, make)

    def head_by_pos_pattern(self, base_inputs, src, sites=None) -> np.ndarray:
        """E3 (pattern rows), batched: ``[layer, head, query_pos]``."""
        T = len(base_inputs[0])
        shape = (self.L, self.H, T)

        def make(chunk):
            masks = {}
            for b, (l, h, p) in enumerate(chunk):
                masks.setdefault(l, self._zeros(len(chunk), self.H, T, 1))[b, h, p] = True
            for l, m in masks.items():
                self.layers[l].attention.self._pattern_hook = lambda w, m=m, v=src["pattern"][l]: torch.where(m, v, w)
            return []

        return self._run(base_inputs, self._sites(shape, sites), shape, make)

    def _freeze_z_batched(self, base, src, chunk, T):
        """Every layer's ``z`` frozen to the baseline's; row ``b``'s sender head ``chunk[b]`` from the source."""
        hs = []
        for l in range(self.L):
            rows = [(b, None, h) for b, (sl, h) in enumerate(chunk) if sl == l]
            m = self._head_mask(len(chunk), T, rows)
            hs.append(self._z_blend(l, m, src["z"][l], base=base["z"][l]))
        return hs

    def path_to_score(self, base_inputs, base, src, sites=None) -> np.ndarray:
        """E4, batched: ``[layer, head]``."""
        T = len(base_inputs[0])
        shape = (self.L, self.H)
        return self._run(
            base_inputs, self._sites(shape, sites), shape, lambda chunk: self._freeze_z_batched(base, src, chunk, T)
        )

    def path_to_heads(self, base_inputs, base, src, receivers, receiver_input: str = "k", sites=None) -> np.ndarray:
        """E5, batched: ``[max_receiver_layer, head]``; both steps run ``B`` senders per forward."""
        T = len(base_inputs[0])
        r_max = max(r for r, _ in receivers)
        linear = {"q": "query", "k": "key", "v": "value"}[receiver_input]
        out = np.full((r_max, self.H), np.nan, np.float32)
        for _, chunk in self._chunks(self._sites(out.shape, sites)):
            cached = {}

            def freeze(chunk=chunk):
                hs = self._freeze_z_batched(base, src, chunk, T)
                for r in {r for r, _ in receivers}:
                    module = getattr(self.layers[r].attention.self, linear)
                    hs.append(module.register_forward_hook(lambda m, a, o, r=r: cached.__setitem__(r, o.clone())))
                return hs

            with self.hooks(freeze):
                self.scores(base_inputs, len(chunk))

            def patch_receivers(chunk=chunk):
                hs = []
                for r in {r for r, _ in receivers}:
                    heads = [h for rr, h in receivers if rr == r]
                    m = self._head_mask(len(chunk), T, [(b, None, h) for b in range(len(chunk)) for h in heads])
                    module = getattr(self.layers[r].attention.self, linear)
                    hs.append(self._blend_output(module, m, cached[r]))
                return hs

            with self.hooks(patch_receivers):
                scores = self.scores(base_inputs, len(chunk))
            for s, v in zip(chunk, scores, strict=True):
                out[s] = v
        return out
