"""ModernBERT cross-encoders (``ModernBertForSequenceClassification``) as their own blocks.

ModernBERT is not a configuration of the post-LN BERT encoder: it has rotary positions (no position table), a
fused ``Wqkv`` without biases, alternating global / sliding-window attention (every ``global_every``-th layer
global with rope theta ``global_rope_theta``, the others attending within ``|q - k| <= local_attention // 2``
with ``local_rope_theta``), a GeGLU MLP and **pre-LayerNorm** blocks::

    normalized_resid_pre = LN1(resid_pre)            # identity at layer 0 (HF: attn_norm = Identity)
    resid_mid  = resid_pre + attn_out                # attn reads normalized_resid_pre
    normalized_resid_mid = LN2(resid_mid)            # the MLP's input
    mlp_post   = act(mlp_pre) * mlp_pre_linear       # GeGLU
    resid_post = resid_mid + mlp_out
    resid_pre[l + 1] = resid_post[l]                 # a running sum, unlike BERT

so the residual stream *is* a running sum of ``resid_pre[0]`` (the normalised token embedding) and every
block's ``attn_out`` and ``mlp_out``; the final LayerNorm (``final_ln_scale``) comes after the last block. The
head pools the final hidden states (first token, or the mean over real tokens), then dense, activation,
LayerNorm and the classifier.

Sites are `MODERNBERT_SITES`; names follow TransformerLens where it has them (``rot_q`` / ``rot_k``: queries and
keys after the rotation; ``mlp_pre_linear``: the gate). This module gives the forward, capture and
interventions at every site, and the restart the patching engine needs (`run_from`: blocks
from ``l`` on the cached ``resid_pre[l]``; `project`: a block's q/k/v from its input); the patching families
run on it through `jaxmech.patching.engines.pre_ln` (the model declares ``engine = "pre_ln"``). Strict conversion
from and to Hugging Face checkpoints is `jaxmech.hf.convert` (`modernbert_from_hf_state_dict`); loading,
`jaxmech.hf.loading.load_model`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, final

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jaxmech.config import UnsupportedConfigError
from jaxmech.models.base import NO_HOOKS, Encoder, HookPoints, Output
from jaxmech.models.bert import LayerNorm, _normal, _zeros, activation
from jaxmech.sites import MASK_VALUE, Site

_SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Hyperparameters of a ModernBERT encoder, TransformerLens names where they exist.

    Attributes:
        n_layers, d_model, n_heads, d_head, d_mlp, d_vocab, n_ctx: As in `jaxmech.config.EncoderConfig`
            (``d_mlp`` is the width of each GeGLU half).
        act_fn: Activation of the GeGLU (``hidden_activation``).
        eps: LayerNorm epsilon (``norm_eps``).
        num_labels: Classifier outputs.
        pad_token_id: Padding id.
        norm_bias, attention_bias, mlp_bias, classifier_bias: Whether those layers have biases.
        classifier_act: Activation of the head's dense layer.
        classifier_pooling: ``"cls"`` or ``"mean"``.
        local_attention: Total sliding window (each side sees ``local_attention // 2``).
        global_layers: For each layer, whether it attends globally.
        global_rope_theta, local_rope_theta: Rotary bases of global and sliding-window layers.
        initializer_range: Std of fresh weights.
    """

    n_layers: int = 22
    d_model: int = 768
    n_heads: int = 12
    d_head: int = 64
    d_mlp: int = 1152
    d_vocab: int = 50368
    n_ctx: int = 8192
    act_fn: str = "gelu"
    eps: float = 1e-5
    num_labels: int = 1
    pad_token_id: int = 50283
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False
    classifier_act: str = "gelu"
    classifier_pooling: str = "cls"
    local_attention: int = 128
    global_layers: tuple[bool, ...] = tuple(i % 3 == 0 for i in range(22))
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    initializer_range: float = 0.02

    model_type = "modernbert"
    positions = "rotary"

    def __post_init__(self):
        if len(self.global_layers) != self.n_layers:
            raise UnsupportedConfigError(
                f"global_layers has {len(self.global_layers)} entries for {self.n_layers} layers"
            )
        if self.n_heads * self.d_head != self.d_model:
            raise UnsupportedConfigError(f"n_heads * d_head must equal d_model ({self.n_heads} * {self.d_head})")
        if self.classifier_pooling not in ("cls", "mean"):
            raise UnsupportedConfigError(f"classifier_pooling={self.classifier_pooling!r} (supported: cls, mean)")
        for name in ("act_fn", "classifier_act"):
            if getattr(self, name) not in _SUPPORTED_ACTS:
                raise UnsupportedConfigError(f"{name}={getattr(self, name)!r} (supported: {_SUPPORTED_ACTS})")

    @property
    def max_length(self) -> int:
        """Longest input (rotary positions have no table; HF's limit is ``max_position_embeddings``)."""
        return self.n_ctx

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any] | Any, *, source: str = "config") -> ModernBertConfig:
        """From a Hugging Face ``ModernBertConfig`` (dict or object), refusing what is not implemented exactly.

        Raises:
            UnsupportedConfigError: Listing every unsupported option.
        """
        if not isinstance(hf, dict):
            hf = hf.to_dict()
        problems = []
        if hf.get("model_type") != "modernbert":
            problems.append(f"model_type={hf.get('model_type')!r} (expected 'modernbert')")
        n_layers = hf.get("num_hidden_layers", 22)
        layer_types = hf.get("layer_types") or [
            "full_attention" if i % hf.get("global_attn_every_n_layers", 3) == 0 else "sliding_attention"
            for i in range(n_layers)
        ]
        if set(layer_types) - {"full_attention", "sliding_attention"}:
            problems.append(f"layer_types={sorted(set(layer_types))}")
        rope = hf.get("rope_parameters") or {}
        thetas = {}
        for kind, default in (
            ("full_attention", hf.get("global_rope_theta", 160000.0)),
            ("sliding_attention", hf.get("local_rope_theta", 10000.0)),
        ):
            params = rope.get(kind) or {"rope_type": "default", "rope_theta": default}
            if params.get("rope_type", "default") != "default" or set(params) - {"rope_type", "rope_theta"}:
                problems.append(f"rope_parameters[{kind!r}]={params} (only default rotary is implemented)")
            thetas[kind] = float(params.get("rope_theta", default))
        for key in ("hidden_activation", "classifier_activation"):
            if hf.get(key, "gelu") not in _SUPPORTED_ACTS:
                problems.append(f"{key}={hf.get(key)!r} (supported: {_SUPPORTED_ACTS})")
        if hf.get("classifier_pooling", "cls") not in ("cls", "mean"):
            problems.append(f"classifier_pooling={hf.get('classifier_pooling')!r} (supported: cls, mean)")
        if hf.get("head_dim") not in (None, hf.get("hidden_size", 768) // hf.get("num_attention_heads", 12)):
            problems.append(f"head_dim={hf.get('head_dim')} (must be hidden_size / num_attention_heads)")
        if problems:
            raise UnsupportedConfigError(f"{source}: unsupported Hugging Face config option(s): " + "; ".join(problems))
        d, H = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
        return cls(
            n_layers=n_layers,
            d_model=d,
            n_heads=H,
            d_head=d // H,
            d_mlp=hf.get("intermediate_size", 1152),
            d_vocab=hf.get("vocab_size", 50368),
            n_ctx=hf.get("max_position_embeddings", 8192),
            act_fn=hf.get("hidden_activation", "gelu"),
            eps=hf.get("norm_eps", 1e-5),
            num_labels=hf.get("num_labels") or len(hf.get("id2label") or {0: 0}),
            pad_token_id=hf.get("pad_token_id", 50283),
            norm_bias=hf.get("norm_bias", False),
            attention_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            classifier_bias=hf.get("classifier_bias", False),
            classifier_act=hf.get("classifier_activation", "gelu"),
            classifier_pooling=hf.get("classifier_pooling", "cls"),
            local_attention=hf.get("local_attention", 128),
            global_layers=tuple(t == "full_attention" for t in layer_types),
            global_rope_theta=thetas["full_attention"],
            local_rope_theta=thetas["sliding_attention"],
            initializer_range=hf.get("initializer_range", 0.02),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict (inverse of `from_hf_config`)."""
        return {
            "architectures": ["ModernBertForSequenceClassification"],
            "model_type": "modernbert",
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_mlp,
            "vocab_size": self.d_vocab,
            "max_position_embeddings": self.n_ctx,
            "hidden_activation": self.act_fn,
            "norm_eps": self.eps,
            "pad_token_id": self.pad_token_id,
            "norm_bias": self.norm_bias,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "classifier_bias": self.classifier_bias,
            "classifier_activation": self.classifier_act,
            "classifier_pooling": self.classifier_pooling,
            "local_attention": self.local_attention,
            "layer_types": ["full_attention" if g else "sliding_attention" for g in self.global_layers],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": self.global_rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": self.local_rope_theta},
            },
            "num_labels": self.num_labels,
            "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(self.num_labels)},
            "initializer_range": self.initializer_range,
        }


# --------------------------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------------------------

_HEADS = ("pos", "head_index", "d_head")
_SITES = [
    Site("embed", ("pos", "d_model"), False, "embed.hook_embed", "token embedding W_E[tokens] (no positions)"),
    Site("embed_ln_scale", ("pos", "one"), False, "embed.ln.hook_scale", "sqrt(var + eps) of embed"),
    Site(
        "resid_pre",
        ("pos", "d_model"),
        True,
        "blocks.{l}.hook_resid_pre",
        "block input: LN(embed) at l=0, else resid_post[l-1] (pre-LN: a running sum)",
    ),
    Site(
        "ln1_scale",
        ("pos", "one"),
        True,
        "blocks.{l}.ln1.hook_scale",
        "sqrt(var + eps) of resid_pre (ones at layer 0, which has no attention LayerNorm)",
    ),
    Site(
        "normalized_resid_pre",
        ("pos", "d_model"),
        True,
        "blocks.{l}.ln1.hook_normalized",
        "LN1(resid_pre), the attention's input (resid_pre itself at layer 0)",
    ),
    Site("q", _HEADS, True, "blocks.{l}.attn.hook_q", "queries before the rotation"),
    Site("k", _HEADS, True, "blocks.{l}.attn.hook_k", "keys before the rotation"),
    Site("v", _HEADS, True, "blocks.{l}.attn.hook_v", "values"),
    Site("rot_q", _HEADS, True, "blocks.{l}.attn.hook_rot_q", "rotary-rotated queries"),
    Site("rot_k", _HEADS, True, "blocks.{l}.attn.hook_rot_k", "rotary-rotated keys"),
    Site(
        "attn_scores",
        ("head_index", "query_pos", "key_pos"),
        True,
        "blocks.{l}.attn.hook_attn_scores",
        "rot_q.rot_k / sqrt(d_head); padding keys and, in sliding-window layers, keys farther than "
        "local_attention // 2 set to MASK_VALUE",
    ),
    Site(
        "pattern",
        ("head_index", "query_pos", "key_pos"),
        True,
        "blocks.{l}.attn.hook_pattern",
        "softmax of attn_scores over key_pos",
    ),
    Site("z", _HEADS, True, "blocks.{l}.attn.hook_z", "pattern-weighted values per head, before W_O"),
    Site("attn_out", ("pos", "d_model"), True, "blocks.{l}.hook_attn_out", "attention output (W_O, b_O)"),
    Site("resid_mid", ("pos", "d_model"), True, "blocks.{l}.hook_resid_mid", "resid_pre + attn_out"),
    Site("ln2_scale", ("pos", "one"), True, "blocks.{l}.ln2.hook_scale", "sqrt(var + eps) of resid_mid"),
    Site(
        "normalized_resid_mid",
        ("pos", "d_model"),
        True,
        "blocks.{l}.ln2.hook_normalized",
        "LN2(resid_mid): the MLP's input",
    ),
    Site("mlp_pre", ("pos", "d_mlp"), True, "blocks.{l}.mlp.hook_pre", "GeGLU input half (first half of Wi)"),
    Site("mlp_pre_linear", ("pos", "d_mlp"), True, "blocks.{l}.mlp.hook_pre_linear", "GeGLU gate half"),
    Site("mlp_post", ("pos", "d_mlp"), True, "blocks.{l}.mlp.hook_post", "act_fn(mlp_pre) * mlp_pre_linear"),
    Site("mlp_out", ("pos", "d_model"), True, "blocks.{l}.hook_mlp_out", "MLP output (Wo)"),
    Site(
        "resid_post",
        ("pos", "d_model"),
        True,
        "blocks.{l}.hook_resid_post",
        "resid_mid + mlp_out = resid_pre[l+1] (running sum)",
    ),
    Site("final_ln_scale", ("pos", "one"), False, "ln_final.hook_scale", "sqrt(var + eps) of resid_post[-1]"),
    Site(
        "pooled",
        ("d_model",),
        False,
        "pooling.hook_out",
        "the final normalised hidden state of the first token, or its mean over real tokens (classifier_pooling)",
    ),
    Site("pooler_out", ("d_model",), False, "pooler.hook_out", "LN(act(W_dense pooled + b)): the head's output"),
    Site("logits", ("n_labels",), False, "hook_logits", "classifier output; the raw relevance logit(s)"),
]
MODERNBERT_SITES: dict[str, Site] = {s.name: s for s in _SITES}
RESIDUAL_IDENTITIES = (
    "resid_mid = resid_pre + attn_out",
    "resid_post = resid_mid + mlp_out",
    "resid_pre[l+1] = resid_post[l] (pre-LN: the residual stream is a running sum)",
    "resid_post[L-1] = resid_pre[0] + sum_l (attn_out[l] + mlp_out[l])",
    "mlp_post = act(mlp_pre) * mlp_pre_linear",
)


def validate_capture(names) -> frozenset[str]:
    """Normalises a capture request against `MODERNBERT_SITES` (``"all"``, a name or names).

    Raises:
        KeyError: Naming the unknown site and the known ones.
    """
    if names is None:
        return frozenset()
    if isinstance(names, str):
        names = tuple(MODERNBERT_SITES) if names == "all" else (names,)
    out = frozenset(names)
    unknown = sorted(out - set(MODERNBERT_SITES))
    if unknown:
        raise KeyError(f"unknown ModernBERT site(s) {unknown}; known: {sorted(MODERNBERT_SITES)}")
    return out


# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


def rotate(
    x: Float[Array, "pos head_index d_head"], positions: Int[Array, " pos"], theta
) -> Float[Array, "pos head_index d_head"]:
    """Rotary embedding as HF applies it: ``x cos + rotate_half(x) sin`` with frequencies
    ``theta ** (-2i / d_head)`` repeated over both halves."""
    dh = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    freqs = positions[:, None].astype(jnp.float32) * inv_freq
    emb = jnp.concatenate([freqs, freqs], -1)[:, None, :]
    half = jnp.concatenate([-x[..., dh // 2 :], x[..., : dh // 2]], -1)
    return x * jnp.cos(emb) + half * jnp.sin(emb)


class ModernBlock(nnx.Module):
    """One pre-LN ModernBERT block (stacked over layers; layer 0's ``ln1`` is unused, as HF's Identity)."""

    def __init__(self, cfg: ModernBertConfig, rngs: nnx.Rngs):
        std, H, d, dh = cfg.initializer_range, cfg.n_heads, cfg.d_model, cfg.d_head
        self.ln1 = LayerNorm(d, cfg.eps)
        self.W_Q, self.W_K, self.W_V = (_normal(rngs, (H, d, dh), std) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (_zeros((H, dh)) for _ in range(3))
        self.W_O = _normal(rngs, (H, dh, d), std)
        self.b_O = _zeros((d,))
        self.ln2 = LayerNorm(d, cfg.eps)
        self.W_in = _normal(rngs, (d, cfg.d_mlp), std)
        self.b_in = _zeros((cfg.d_mlp,))
        self.W_gate = _normal(rngs, (d, cfg.d_mlp), std)
        self.b_gate = _zeros((cfg.d_mlp,))
        self.W_out = _normal(rngs, (cfg.d_mlp, d), std)
        self.b_out = _zeros((d,))

    def norm1(self, x: Float[Array, "... pos d_model"], layer, hooks: HookPoints = NO_HOOKS
              ) -> Float[Array, "... pos d_model"]:
        """The attention's input ``normalized_resid_pre``: LN1 of ``x`` (``x`` itself at layer 0, whose HF
        ``attn_norm`` is the identity); leading axes of ``x`` are independent inputs (the edge engine's receivers)."""
        centered = x - x.mean(-1, keepdims=True)
        scale = jnp.sqrt(jnp.mean(jnp.square(centered), -1, keepdims=True) + self.ln1.eps)
        scale = hooks("ln1_scale", jnp.where(layer == 0, jnp.ones_like(scale), scale))
        normed = centered / scale * self.ln1.w[...] + self.ln1.b[...]
        return hooks("normalized_resid_pre", jnp.where(layer == 0, x, normed))

    def attend(self, q: Float[Array, "pos head_index d_head"], k: Float[Array, "pos head_index d_head"],
               v: Float[Array, "pos head_index d_head"], key_mask: Bool[Array, " pos"], is_global, theta, window,
               hooks: HookPoints = NO_HOOKS) -> Float[Array, "pos head_index d_head"]:
        """``z`` from (unrotated) queries, keys and values: rotary, scores masked to real keys (and, in a
        sliding-window layer, to ``|q - k| <= window``), softmax, values mixed."""
        positions = jnp.arange(q.shape[0])
        rot_q = hooks("rot_q", rotate(q, positions, theta))
        rot_k = hooks("rot_k", rotate(k, positions, theta))
        near = jnp.abs(positions[:, None] - positions[None, :]) <= window
        allowed = key_mask[None, :] & (is_global | near)
        scores = jnp.einsum("qhe,khe->hqk", rot_q, rot_k) * (q.shape[-1] ** -0.5)
        scores = hooks("attn_scores", jnp.where(allowed[None], scores, MASK_VALUE))
        pattern = hooks("pattern", jax.nn.softmax(scores, axis=-1))
        return hooks("z", jnp.einsum("hqk,khe->qhe", pattern, v))

    def mlp(self, normed_mid: Float[Array, "pos d_model"], act_fn: str, hooks: HookPoints = NO_HOOKS
            ) -> Float[Array, "pos d_model"]:
        """``mlp_out`` of the GeGLU MLP from its normalised input."""
        pre = hooks("mlp_pre", normed_mid @ self.W_in[...] + self.b_in[...])
        gate = hooks("mlp_pre_linear", normed_mid @ self.W_gate[...] + self.b_gate[...])
        post = hooks("mlp_post", activation(act_fn)(pre) * gate)
        return hooks("mlp_out", post @ self.W_out[...] + self.b_out[...])

    def __call__(self, x, key_mask, layer, is_global, theta, window, act_fn, hooks: HookPoints):
        x = hooks("resid_pre", x)
        normed = self.norm1(x, layer, hooks)
        proj = lambda W, b: jnp.einsum("td,hde->the", normed, W[...]) + b[...]
        q = hooks("q", proj(self.W_Q, self.b_Q))
        k = hooks("k", proj(self.W_K, self.b_K))
        v = hooks("v", proj(self.W_V, self.b_V))
        z = self.attend(q, k, v, key_mask, is_global, theta, window, hooks)
        attn_out = hooks("attn_out", jnp.einsum("the,hem->tm", z, self.W_O[...]) + self.b_O[...])
        resid_mid = hooks("resid_mid", x + attn_out)
        normed_mid = hooks("normalized_resid_mid", self.ln2(resid_mid, hooks, "ln2_scale"))
        return hooks("resid_post", resid_mid + self.mlp(normed_mid, act_fn, hooks))


@final
class ModernBertCrossEncoder(Encoder):
    """``ModernBertForSequenceClassification``: embeddings + LN, pre-LN blocks, final LN, pooling, head.

    The score is the raw logit ``logits[score_label]``. Called like `jaxmech.models.bert.HookedEncoder` (token types
    are accepted and ignored). Patched by the pre-LN restart engine (`jaxmech.patching.engines.pre_ln`).
    """

    engine: ClassVar[str] = "pre_ln"
    kind: ClassVar[str] = "cross"

    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs, score_label: int = 0):
        if not 0 <= score_label < cfg.num_labels:
            raise ValueError(f"score_label={score_label} out of range for num_labels={cfg.num_labels}")
        std = cfg.initializer_range
        self.cfg = cfg
        self.score_label = score_label
        self.W_E = _normal(rngs, (cfg.d_vocab, cfg.d_model), std)
        self.embed_ln = LayerNorm(cfg.d_model, cfg.eps)
        self.blocks = jax.tree.map(lambda *xs: jnp.stack(xs), *[ModernBlock(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_ln = LayerNorm(cfg.d_model, cfg.eps)
        self.head_W = _normal(rngs, (cfg.d_model, cfg.d_model), std)
        self.head_b = _zeros((cfg.d_model,))
        self.head_ln = LayerNorm(cfg.d_model, cfg.eps)
        self.classifier_W = _normal(rngs, (cfg.d_model, cfg.num_labels), std)
        self.classifier_b = _zeros((cfg.num_labels,))

    def forward_one(
        self,
        tokens: Int[Array, " pos"],
        token_type_ids=None,
        attention_mask=None,
        *,
        capture: Iterable[str] | str = (),
        interventions: Sequence[Any] = (),
    ) -> Output:
        """Forward for one example (no batch axis)."""
        cfg = self.cfg
        if tokens.shape[0] > cfg.max_length:
            raise ValueError(f"input of {tokens.shape[0]} positions exceeds the model's maximum of {cfg.max_length}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(tokens)
        hooks = HookPoints(validate_capture(capture), interventions)
        embed = hooks("embed", self.W_E[...][tokens])
        x = self.embed_ln(embed, hooks, "embed_ln_scale")
        x = self._blocks(x, attention_mask, hooks, None)
        logits = self.readout(x, attention_mask, hooks)
        return Output(score=logits[self.score_label], logits=logits, embedding=None, cache=hooks.records)

    def _blocks(self, x, attention_mask, hooks: HookPoints, start, stop=None):
        """The block stack on ``x = resid_pre[start]`` (every block if ``start`` is None; else only blocks
        ``start <= l < stop``, the others skipped by a ``lax.cond``), recording into ``hooks`` (full stack only)."""
        cfg = self.cfg
        key_mask: Bool[Array, " pos"] = attention_mask.astype(bool)

        def body(x, xs):
            block, layer = xs
            layer_hooks = hooks.for_layer(layer)
            run = lambda x: block(x, key_mask, layer, *self.attention_args(layer), cfg.act_fn, layer_hooks)
            if start is None:
                x = run(x)
            else:
                active = layer >= start if stop is None else (layer >= start) & (layer < stop)
                x = jax.lax.cond(active, run, lambda x: x, x)
            return x, layer_hooks.records

        x, records = jax.lax.scan(body, x, (self.blocks, jnp.arange(cfg.n_layers)))
        hooks.records.update(records)
        return x

    def attention_args(self, layer) -> tuple[Array, Array, int]:
        """``(is_global, rope theta, window)`` of block ``layer`` (a traced scalar inside a layer scan)."""
        cfg = self.cfg
        is_global = jnp.asarray(cfg.global_layers)
        thetas = jnp.where(is_global, cfg.global_rope_theta, cfg.local_rope_theta).astype(jnp.float32)
        return is_global[layer], thetas[layer], cfg.local_attention // 2

    def run_from(
        self,
        resid_pre: Float[Array, "pos d_model"],
        attention_mask: Int[Array, " pos"],
        start,
        *,
        interventions: Sequence[Any] = (),
        stop=None,
    ) -> Float[Array, "pos d_model"]:
        """The restart of the patching engine: blocks ``start <= l < n_layers`` on ``resid_pre[start]`` (a
        cached baseline activation), with ``interventions``; blocks before ``start`` are skipped.

        Because a pre-LN block's input is exactly the running sum ``resid_pre[start]``, this equals the full
        forward with the same interventions whenever none of them acts before block ``start``.

        Args:
            resid_pre: One example's ``resid_pre`` at layer ``start``.
            attention_mask: ``[pos]`` real-token mask.
            start: First block to run (traced scalar; under ``vmap`` it must not be batched, so the skip stays a
                branch).
            interventions: Applied at their sites in the blocks that run.
            stop: Stop before this block and return its input ``resid_pre[stop]`` (default: run to the end).

        Returns:
            ``resid_post`` of the last block run (before the final LayerNorm; see `score_hidden`), i.e.
            ``resid_pre[stop]``.
        """
        hooks = HookPoints(frozenset(), interventions)
        return self._blocks(resid_pre, attention_mask, hooks, start, stop)

    def project(self, resid_pre: Float[Array, "pos d_model"], layer, site: str
                ) -> Float[Array, "pos head_index d_head"]:
        """Block ``layer``'s ``q``, ``k`` or ``v`` (before the rotation) from its input ``resid_pre`` (LN1 first,
        except at layer 0, which has none)."""
        if site not in ("q", "k", "v"):
            raise ValueError(f"project: site {site!r} is not q, k or v")
        blocks = self.blocks
        centered = resid_pre - resid_pre.mean(-1, keepdims=True)
        scale = jnp.sqrt(jnp.mean(jnp.square(centered), -1, keepdims=True) + blocks.ln1.eps)
        normed = centered / scale * blocks.ln1.w[...][layer] + blocks.ln1.b[...][layer]
        normed = jnp.where(layer == 0, resid_pre, normed)
        W, b = {"q": (blocks.W_Q, blocks.b_Q), "k": (blocks.W_K, blocks.b_K), "v": (blocks.W_V, blocks.b_V)}[site]
        return jnp.einsum("td,hde->the", normed, W[...][layer]) + b[...][layer]

    def readout(self, x: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"], hooks=None
                ) -> Float[Array, " n_labels"]:
        """Final LayerNorm, pooling and head on the last block's ``resid_post``: the logits."""
        cfg = self.cfg
        hooks = HookPoints(frozenset()) if hooks is None else hooks
        hidden = self.final_ln(x, hooks, "final_ln_scale")
        if cfg.classifier_pooling == "cls":
            pooled = hidden[0]
        else:
            m = attention_mask.astype(hidden.dtype)[:, None]
            pooled = (hidden * m).sum(0) / m.sum()
        pooled = hooks("pooled", pooled)
        dense = activation(cfg.classifier_act)(pooled @ self.head_W[...] + self.head_b[...])
        head = hooks("pooler_out", self.head_ln(dense))
        return hooks("logits", head @ self.classifier_W[...] + self.classifier_b[...])

    pair_input: ClassVar[bool] = True
    """Reads query and document together (``[CLS] q [SEP] d [SEP]``)."""

    @property
    def score_name(self) -> str:
        """What the score is: ``"raw logit"``."""
        return "raw logit"

    def relevance(self, out: Output, query_embedding=None) -> Array:
        """The raw logit (``out.score``); ``query_embedding`` is not used."""
        return out.score

    def score_hidden(self, x: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"],
                     query_embedding=None) -> Float[Array, ""]:
        """The score from one example's last ``resid_post`` (before the final LayerNorm, unlike
        `jaxmech.models.bert.HookedEncoder.score_hidden`, whose post-LN blocks end normalised)."""
        return self.readout(x, attention_mask)[self.score_label]

    @property
    def readout_uses_cls_only(self) -> bool:
        """With ``cls`` pooling the score reads position 0 alone."""
        return self.cfg.classifier_pooling == "cls"

    def __call__(
        self,
        input_ids: Int[Array, "batch pos"],
        token_type_ids=None,
        attention_mask: Int[Array, "batch pos"] | None = None,
        *,
        capture: Iterable[str] | str = (),
        interventions: Sequence[Any] = (),
    ) -> Output:
        """Batched forward (see `jaxmech.models.bert.HookedEncoder.__call__`)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        capture = validate_capture(capture)
        one = lambda t, m: self.forward_one(t, None, m, capture=capture, interventions=interventions)
        return jax.vmap(one)(input_ids, attention_mask)

