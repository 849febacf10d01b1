"""BERT-family encoders as Flax NNX modules, with the residual stream as an output.

The modules are plain pytrees (Flax NNX tree mode): ``jax.jit``, ``jax.vmap`` and ``jax.grad`` apply to a
function of the model directly, e.g. ``jax.jit(lambda m, b: m(b).score)(model, batch)``. Blocks are stored
once, stacked with a leading ``layer`` axis, and run with ``jax.lax.scan``, so compile time does not grow with
depth and every per-layer activation comes back stacked ``[layer, ...]``.

Every activation in `jaxmech.sites.SITES` passes through a *hook point*: ``x = hooks(name, x)``. A hook point
(1) applies the interventions whose ``site`` equals ``name`` (any `jaxmech.interventions.Intervention`: a patch
spec, an additive delta for attribution, a head replacement) and (2) records ``x`` if ``name`` is in the
static ``capture`` set. Both are decided at trace time, so unrequested activations are never materialised
under ``jit`` and the patched forward is the same program as the clean one plus a blend.

The math is written per example (``tokens: [pos]``); `HookedEncoder.__call__` vmaps it over a batch.
Post-LayerNorm structure and the site table are documented in `jaxmech.sites`.

Every class is abstract or final: `HookedEncoder` is the abstract post-LN trunk (embeddings, stacked blocks, the
forward; a `jaxmech.models.base.Encoder` whose engine is ``"post_ln"``) whose readout is abstract; `CrossEncoder`
and `BiEncoder` are final and define the readout and how a forward's output becomes a relevance score
(`HookedEncoder.relevance`), so no caller switches on the model's type. `Hooks` (the abstract hook interface),
`HookPoints` (the forward's final implementation) and `Output` live in `jaxmech.models.base` and are re-exported.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, final

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jaxmech.config import EncoderConfig
from jaxmech.interventions import Intervention
from jaxmech.models.base import NO_HOOKS, Encoder, HookPoints, Hooks, Output
from jaxmech.sites import MASK_VALUE, validate_capture

# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


def _normal(rngs: nnx.Rngs, shape, std):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


def _zeros(shape):
    return nnx.Param(jnp.zeros(shape, jnp.float32))


def activation(name: str) -> Callable[[Array], Array]:
    """The MLP nonlinearity for a Hugging Face ``hidden_act`` name."""
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)  # erf GELU, as torch.nn.functional.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unsupported activation {name!r}")


class LayerNorm(nnx.Module):
    """LayerNorm with TransformerLens's parameter names (``w``, ``b``); also returns the scale."""

    def __init__(self, d: int, eps: float):
        self.eps = eps
        self.w = nnx.Param(jnp.ones((d,), jnp.float32))
        self.b = _zeros((d,))

    def __call__(
        self, x: Float[Array, "... d"], hooks: Hooks | None = None, scale_site: str | None = None
    ) -> Float[Array, "... d"]:
        """Normalises ``x``; the scale ``sqrt(var + eps)`` (biased variance, as torch) passes through the
        hook point ``scale_site`` so it can be recorded or patched (TransformerLens's ``hook_scale``)."""
        centered = x - x.mean(-1, keepdims=True)
        scale = jnp.sqrt(jnp.mean(jnp.square(centered), -1, keepdims=True) + self.eps)
        if hooks is not None:
            scale = hooks(scale_site, scale)
        return centered / scale * self.w[...] + self.b[...]


class Embed(nnx.Module):
    """Word + position + token-type embeddings followed by LayerNorm (BERT, ELECTRA, RoBERTa, XLM-R).

    ``W_E: [d_vocab, d_embed]``, ``W_pos: [n_ctx, d_embed]``, ``W_token_type: [n_token_types, d_embed]``;
    ``d_embed = d_model`` except for ELECTRA models with a smaller ``embedding_size``, where
    ``W_proj: [d_embed, d_model]`` and ``b_proj: [d_model]`` map the normalised sum into the residual stream
    (``resid_pre[0]``). Positions follow ``cfg.positions`` (see `position_ids`).
    """

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        std, e = cfg.initializer_range, cfg.embed_width
        self.positions = cfg.positions
        self.pad_token_id = cfg.pad_token_id
        self.max_length = cfg.max_length
        self.W_E = _normal(rngs, (cfg.d_vocab, e), std)
        self.W_pos = _normal(rngs, (cfg.n_ctx, e), std)
        self.W_token_type = _normal(rngs, (cfg.n_token_types, e), std)
        self.ln = LayerNorm(e, cfg.eps)
        self.W_proj = _normal(rngs, (e, cfg.d_model), std) if cfg.has_embed_proj else None
        self.b_proj = _zeros((cfg.d_model,)) if cfg.has_embed_proj else None

    def position_ids(self, tokens: Int[Array, " pos"]) -> Int[Array, " pos"]:
        """Row of ``W_pos`` for each token: ``arange(pos)`` (``"absolute"``), or fairseq's
        ``cumsum(tokens != pad) * (tokens != pad) + pad`` (``"padding_offset"``: RoBERTa, XLM-R), so that real
        tokens start at ``pad + 1`` and padding tokens read ``W_pos[pad]``, exactly as ``transformers``."""
        if self.positions == "absolute":
            return jnp.arange(tokens.shape[0])
        real = (tokens != self.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real) * real + self.pad_token_id

    def __call__(
        self, tokens: Int[Array, " pos"], token_type_ids: Int[Array, " pos"], hooks: Hooks
    ) -> Float[Array, "pos d_model"]:
        if tokens.shape[0] > self.max_length:  # a gather past W_pos would silently clamp under XLA
            raise ValueError(f"input of {tokens.shape[0]} positions exceeds the model's maximum of {self.max_length}")
        embed = hooks("embed", self.W_E[...][tokens])
        pos_embed = hooks("pos_embed", self.W_pos[...][self.position_ids(tokens)])
        tt_embed = hooks("token_type_embed", self.W_token_type[...][token_type_ids])
        total = hooks("embed_sum", embed + pos_embed + tt_embed)
        x = self.ln(total, hooks, "embed_ln_scale")
        if self.W_proj is not None:  # ELECTRA's embeddings_project, d_embed -> d_model
            x = x @ self.W_proj[...] + self.b_proj[...]
        return x


class Attention(nnx.Module):
    """Multi-head self-attention with TransformerLens weight layout.

    ``W_Q, W_K, W_V: [head_index, d_model, d_head]``, ``b_Q, b_K, b_V: [head_index, d_head]``,
    ``W_O: [head_index, d_head, d_model]``, ``b_O: [d_model]``.
    """

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        std, H, d, dh = cfg.initializer_range, cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = (_normal(rngs, (H, d, dh), std) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (_zeros((H, dh)) for _ in range(3))
        self.W_O = _normal(rngs, (H, dh, d), std)
        self.b_O = _zeros((d,))

    def project(self, x: Float[Array, "pos d_model"], which: str) -> Float[Array, "pos head_index d_head"]:
        """One of the ``q``, ``k``, ``v`` projections of ``x`` (bias included)."""
        W, b = {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[which]
        return jnp.einsum("td,hde->the", x, W[...]) + b[...]

    @staticmethod
    def scores(
        q: Float[Array, "qpos head_index d_head"],
        k: Float[Array, "kpos head_index d_head"],
        key_mask: Bool[Array, " kpos"],
    ) -> Float[Array, "head_index qpos kpos"]:
        """Scaled dot-product scores with padding keys set to `MASK_VALUE`."""
        s = jnp.einsum("qhe,khe->hqk", q, k) * (q.shape[-1] ** -0.5)
        return jnp.where(key_mask[None, None, :], s, MASK_VALUE)

    @staticmethod
    def mix(
        pattern: Float[Array, "head_index qpos kpos"], v: Float[Array, "kpos head_index d_head"]
    ) -> Float[Array, "qpos head_index d_head"]:
        """z: the pattern-weighted sum of values."""
        return jnp.einsum("hqk,khe->qhe", pattern, v)

    def result(self, z: Float[Array, "pos head_index d_head"]) -> Float[Array, "pos head_index d_model"]:
        """Per-head outputs ``z_h @ W_O[h]`` (without ``b_O``)."""
        return jnp.einsum("the,hem->thm", z, self.W_O[...])

    def out(self, z: Float[Array, "pos head_index d_head"]) -> Float[Array, "pos d_model"]:
        """attn_out computed directly from z (one contraction over heads and d_head)."""
        return jnp.einsum("the,hem->tm", z, self.W_O[...]) + self.b_O[...]


class MLP(nnx.Module):
    """Two-layer MLP, ``W_in: [d_model, d_mlp]``, ``W_out: [d_mlp, d_model]``."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        std = cfg.initializer_range
        self.act_fn = cfg.act_fn
        self.W_in = _normal(rngs, (cfg.d_model, cfg.d_mlp), std)
        self.b_in = _zeros((cfg.d_mlp,))
        self.W_out = _normal(rngs, (cfg.d_mlp, cfg.d_model), std)
        self.b_out = _zeros((cfg.d_model,))

    def __call__(self, x: Float[Array, "pos d_model"], hooks: Hooks) -> Float[Array, "pos d_model"]:
        pre = hooks("mlp_pre", x @ self.W_in[...] + self.b_in[...])
        post = hooks("mlp_post", activation(self.act_fn)(pre))
        return post @ self.W_out[...] + self.b_out[...]


class Block(nnx.Module):
    """One post-LN encoder block: attention, add, LN1, MLP, add, LN2."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.attn = Attention(cfg, rngs)
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps)
        self.mlp = MLP(cfg, rngs)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps)

    def __call__(
        self, x: Float[Array, "pos d_model"], key_mask: Bool[Array, " pos"], hooks: Hooks
    ) -> Float[Array, "pos d_model"]:
        x = hooks("resid_pre", x)
        q = hooks("q", self.attn.project(x, "q"))
        k = hooks("k", self.attn.project(x, "k"))
        v = hooks("v", self.attn.project(x, "v"))
        return self.after_attention(x, self.attend(q, k, v, key_mask, hooks), hooks)

    def attend(
        self,
        q: Float[Array, "qpos head_index d_head"],
        k: Float[Array, "kpos head_index d_head"],
        v: Float[Array, "kpos head_index d_head"],
        key_mask: Bool[Array, " kpos"],
        hooks: Hooks,
    ) -> Float[Array, "qpos d_model"]:
        """From queries, keys and values to ``attn_out``; ``q`` may hold a subset of the query rows."""
        scores = hooks("attn_scores", self.attn.scores(q, k, key_mask))
        pattern = hooks("pattern", jax.nn.softmax(scores, axis=-1))
        z = hooks("z", self.attn.mix(pattern, v))
        return self.attn_output(z, hooks)

    def attn_output(self, z: Float[Array, "pos head_index d_head"], hooks: Hooks) -> Float[Array, "pos d_model"]:
        """``attn_out`` from ``z``. Per-head ``result`` is materialised only when something reads or patches it;
        a change to it enters as ``sum_h (result' - result)_h`` so an unchanged result leaves ``attn_out``
        bit-identical to the fused computation."""
        attn_out = self.attn.out(z)
        if hooks.wants("result"):
            result = self.attn.result(z)
            attn_out = attn_out + (hooks("result", result) - result).sum(axis=-2)
        return hooks("attn_out", attn_out)

    def after_attention(
        self, resid_pre: Float[Array, "pos d_model"], attn_out: Float[Array, "pos d_model"], hooks: Hooks
    ) -> Float[Array, "pos d_model"]:
        """From ``attn_out`` to the block output, through every later hook point. Position-wise, so it can run
        on any subset of rows."""
        resid_mid = hooks("resid_mid", resid_pre + attn_out)
        normalized_mid = hooks("normalized_resid_mid", self.ln1(resid_mid, hooks, "ln1_scale"))
        mlp_out = hooks("mlp_out", self.mlp(normalized_mid, hooks))
        resid_post = hooks("resid_post", normalized_mid + mlp_out)
        return hooks("normalized_resid_post", self.ln2(resid_post, hooks, "ln2_scale"))


def stack_blocks(blocks: Sequence[Block]) -> Block:
    """Stacks identically shaped blocks into one `Block` whose leaves have a leading ``layer`` axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)


def layer_slice(blocks: Block, layer) -> Block:
    """The block at ``layer`` (static or traced) of a stacked `Block`."""
    return jax.tree.map(lambda p: p[layer], blocks)


# --------------------------------------------------------------------------------------------------------------
# Encoder and readouts
# --------------------------------------------------------------------------------------------------------------


def _default_segments(ids: Array, token_type_ids: Array | None, attention_mask: Array | None) -> tuple[Array, Array]:
    """Zero segment ids and an all-ones mask where not given."""
    return (jnp.zeros_like(ids) if token_type_ids is None else token_type_ids,
            jnp.ones_like(ids) if attention_mask is None else attention_mask)


class HookedEncoder(Encoder):
    """The abstract post-LayerNorm encoder trunk (`jaxmech.models.base.Encoder`): embeddings, stacked blocks and
    the forward. The final subclasses (`CrossEncoder`, `BiEncoder`) define the readout and the relevance score.
    Patched by the post-LN restart engine (`jaxmech.patching.engines.post_ln`)."""

    engine: ClassVar[str] = "post_ln"

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg, rngs)
        self.blocks = stack_blocks([Block(cfg, rngs) for _ in range(cfg.n_layers)])

    # -- trunk --------------------------------------------------------------------------------------------------
    def run_blocks(
        self,
        x: Float[Array, "pos d_model"],
        key_mask: Bool[Array, " pos"],
        hooks: HookPoints,
        *,
        start_layer=None,
        stop_layer=None,
    ) -> tuple[Float[Array, "pos d_model"], dict[str, Array]]:
        """Runs blocks ``start_layer <= l < stop_layer`` (bounds may be traced) on ``x = resid_pre[start]``.

        Returns:
            The output of the last block run, and the stacked per-layer records (layers outside the range
            hold zeros).
        """
        L = self.cfg.n_layers
        bounded = start_layer is not None or stop_layer is not None
        start = 0 if start_layer is None else start_layer
        stop = L if stop_layer is None else stop_layer

        def run(block, x, layer):
            layer_hooks = hooks.for_layer(layer)
            return block(x, key_mask, layer_hooks), layer_hooks.records

        def body(x, xs):
            block, layer = xs
            if not bounded:
                return run(block, x, layer)
            _, rec_shape = jax.eval_shape(run, block, x, layer)
            skip = lambda block, x, layer: (x, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), rec_shape))
            return jax.lax.cond((layer >= start) & (layer < stop), run, skip, block, x, layer)

        return jax.lax.scan(body, x, (self.blocks, jnp.arange(L)))

    def encode(
        self,
        tokens: Int[Array, " pos"],
        token_type_ids: Int[Array, " pos"],
        attention_mask: Int[Array, " pos"],
        hooks: HookPoints,
    ) -> Float[Array, "pos d_model"]:
        """Final hidden states (``normalized_resid_post`` of the last block) for one example."""
        x = self.embed(tokens, token_type_ids, hooks)
        x, layer_records = self.run_blocks(x, attention_mask.astype(bool), hooks)
        hooks.records.update(layer_records)
        return x

    # -- public forward -----------------------------------------------------------------------------------------
    def forward_one(
        self,
        tokens: Int[Array, " pos"],
        token_type_ids: Int[Array, " pos"] | None = None,
        attention_mask: Int[Array, " pos"] | None = None,
        *,
        capture: Iterable[str] | str = (),
        interventions: Sequence[Intervention] = (),
    ) -> Output:
        """Forward for one example (no batch axis). See `__call__`."""
        token_type_ids, attention_mask = _default_segments(tokens, token_type_ids, attention_mask)
        hooks = HookPoints(validate_capture(capture), interventions)
        hidden = self.encode(tokens, token_type_ids, attention_mask, hooks)
        out = self.readout(hidden, attention_mask, hooks)
        out.cache = hooks.records
        return out

    def __call__(
        self,
        input_ids: Int[Array, "batch pos"],
        token_type_ids: Int[Array, "batch pos"] | None = None,
        attention_mask: Int[Array, "batch pos"] | None = None,
        *,
        capture: Iterable[str] | str = (),
        interventions: Sequence[Intervention] = (),
    ) -> Output:
        """Batched forward.

        Args:
            input_ids: Token ids ``[batch, pos]``.
            token_type_ids: Segment ids, zeros if None.
            attention_mask: 1 for real tokens, 0 for padding; all ones if None.
            capture: Site names (or ``"all"``) whose activations to return in ``Output.cache``; static.
            interventions: Applied at their sites in every example (shared across the batch). To give each
                example its own intervention, ``jax.vmap`` `forward_one` yourself.

        Returns:
            `Output` with a leading batch axis on every array.
        """
        token_type_ids, attention_mask = _default_segments(input_ids, token_type_ids, attention_mask)
        capture = validate_capture(capture)
        one = lambda t, tt, m: self.forward_one(t, tt, m, capture=capture, interventions=interventions)
        return jax.vmap(one)(input_ids, token_type_ids, attention_mask)

    # -- readout (abstract: each final subclass defines it, and `relevance`, `score_name`, ...) ----------------
    @abc.abstractmethod
    def readout(self, hidden: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"],
                hooks: Hooks) -> Output:
        """From final hidden states to the `Output` (score and logits, or the pooled embedding)."""

    def score_hidden(self, hidden: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"],
                     query_embedding: Float[Array, " d_model"] | None = None) -> Float[Array, ""]:
        """The relevance score from one example's final hidden states (see `relevance`)."""
        return self.relevance(self.readout(hidden, attention_mask, NO_HOOKS), query_embedding)


class Pooler(nnx.Module):
    """Dense layer + activation on the first token's hidden state. ``W: [d_model, d_model]``.

    The BERT pooler (tanh) and the dense half of the RoBERTa / XLM-R (tanh) and ELECTRA (erf GELU)
    classification heads are the same computation; ``cfg.head_act`` picks the activation.
    """

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.head_act = cfg.head_act
        self.W = _normal(rngs, (cfg.d_model, cfg.d_model), cfg.initializer_range)
        self.b = _zeros((cfg.d_model,))

    def __call__(self, h_cls: Float[Array, " d_model"]) -> Float[Array, " d_model"]:
        x = h_cls @ self.W[...] + self.b[...]
        return jnp.tanh(x) if self.head_act == "tanh" else activation(self.head_act)(x)


class Classifier(nnx.Module):
    """Linear classification head. ``W: [d_model, num_labels]``."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.W = _normal(rngs, (cfg.d_model, cfg.num_labels), cfg.initializer_range)
        self.b = _zeros((cfg.num_labels,))

    def __call__(self, x: Float[Array, " d_model"]) -> Float[Array, " n_labels"]:
        return x @ self.W[...] + self.b[...]


@final
class CrossEncoder(HookedEncoder):
    """A ``BertForSequenceClassification`` cross-encoder: trunk, pooler on [CLS], classifier.

    The score is the raw logit ``logits[score_label]`` (no sigmoid), as in the paper.

    Args:
        cfg: Model configuration.
        rngs: Random streams for fresh weights.
        score_label: Which logit is the relevance score when ``num_labels > 1``.
    """

    kind: ClassVar[str] = "cross"
    pair_input: ClassVar[bool] = True

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs, score_label: int = 0):
        super().__init__(cfg, rngs=rngs)
        if not 0 <= score_label < cfg.num_labels:
            raise ValueError(f"score_label={score_label} out of range for num_labels={cfg.num_labels}")
        self.score_label = score_label
        self.pooler = Pooler(cfg, rngs)
        self.classifier = Classifier(cfg, rngs)

    def head(self, h_cls: Float[Array, " d_model"], hooks: Hooks) -> Float[Array, " n_labels"]:
        """Logits from the final [CLS] hidden state."""
        pooled = hooks("pooler_out", self.pooler(h_cls))
        return hooks("logits", self.classifier(pooled))

    def readout(self, hidden: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"],
                hooks: Hooks) -> Output:
        """Logits from the final [CLS] hidden state; the score is ``logits[score_label]``."""
        logits = self.head(hidden[0], hooks)
        return Output(score=logits[self.score_label], logits=logits, embedding=None, cache={})

    def relevance(self, out: Output, query_embedding: Float[Array, "... d_model"] | None = None) -> Array:
        """The raw logit (``out.score``); ``query_embedding`` is not used."""
        return out.score

    @property
    def score_name(self) -> str:
        """What the score is: ``"raw logit"``."""
        return "raw logit"

    @property
    def readout_uses_cls_only(self) -> bool:
        """Always: the classifier reads the final [CLS] state."""
        return True


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
    """sentence-transformers pooling and similarity settings.

    Attributes:
        mode: ``"mean"``, ``"cls"`` or ``"max"``.
        normalize: L2-normalise the pooled embedding (a ``Normalize`` module follows pooling).
        similarity: ``"cosine"`` or ``"dot"``.
    """

    mode: str = "mean"
    normalize: bool = True
    similarity: str = "cosine"

    def __post_init__(self):
        if self.mode not in ("mean", "cls", "max"):
            raise ValueError(f"pooling mode {self.mode!r} is not supported (mean, cls, max)")
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity {self.similarity!r} is not supported (cosine, dot)")


@final
class BiEncoder(HookedEncoder):
    """A sentence-transformers bi-encoder: trunk, pooling (+ normalisation); score by cosine or dot."""

    kind: ClassVar[str] = "bi"
    pair_input: ClassVar[bool] = False

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs, pooling: PoolingConfig = PoolingConfig()):
        super().__init__(cfg, rngs=rngs)
        self.pooling = pooling

    def pool(self, hidden: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"]) -> Float[Array, " d_model"]:
        """Pools final hidden states over real (non-padding) tokens."""
        m = attention_mask.astype(hidden.dtype)[:, None]
        if self.pooling.mode == "cls":
            pooled = hidden[0]
        elif self.pooling.mode == "max":
            pooled = jnp.max(jnp.where(m > 0, hidden, -jnp.inf), axis=0)
        else:
            pooled = (hidden * m).sum(0) / jnp.maximum(m.sum(), 1e-9)
        if self.pooling.normalize:
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled), 1e-12)
        return pooled

    def readout(self, hidden: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"],
                hooks: Hooks) -> Output:
        """The pooled embedding (no score until compared with a query's, see `relevance`)."""
        pooled = hooks("pooled", self.pool(hidden, attention_mask))
        return Output(score=None, logits=None, embedding=pooled, cache={})

    def relevance(self, out: Output, query_embedding: Float[Array, "... d_model"] | None = None) -> Array:
        """Similarity of ``query_embedding`` and the document's pooled embedding.

        Raises:
            ValueError: If ``query_embedding`` is None.
        """
        if query_embedding is None:
            raise ValueError("a bi-encoder's relevance score needs the query's embedding (query_embedding)")
        return self.similarity(query_embedding, out.embedding)

    @property
    def score_name(self) -> str:
        """What the score is, e.g. ``"cosine similarity"``."""
        return f"{self.pooling.similarity} similarity"

    def similarity(self, a: Float[Array, "... d_model"], b: Float[Array, "... d_model"]) -> Float[Array, "..."]:
        """Cosine or dot similarity of embeddings, as configured."""
        if self.pooling.similarity == "cosine":
            a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
            b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        return jnp.sum(a * b, axis=-1)

    @property
    def readout_uses_cls_only(self) -> bool:
        """With CLS pooling."""
        return self.pooling.mode == "cls"


__all__ = [
    "Attention",
    "BiEncoder",
    "Block",
    "Classifier",
    "CrossEncoder",
    "Embed",
    "NO_HOOKS",
    "HookPoints",
    "HookedEncoder",
    "Hooks",
    "LayerNorm",
    "MLP",
    "Output",
    "Pooler",
    "PoolingConfig",
    "activation",
    "layer_slice",
    "stack_blocks",
]
