"""Activation sites: every named activation the forward can return and a patch can replace.

Names follow TransformerLens's ``HookedEncoder`` (``blocks.{l}.attn.hook_z`` is site ``"z"`` at layer ``l``).
Shapes are per example; a batched forward prepends the batch axis, and per-layer sites are stacked with a
leading ``layer`` axis (``cache["z"]`` is ``[batch, layer, pos, head_index, d_head]``).

**The post-LN caveat.** BERT is a *post*-LayerNorm transformer. Each block computes::

    resid_mid  = resid_pre + attn_out                 # pre-LN sum
    normalized_resid_mid = LN1(resid_mid)
    resid_post = normalized_resid_mid + mlp_out       # pre-LN sum (the MLP reads the normalized value)
    normalized_resid_post = LN2(resid_post)
    resid_pre[l + 1] = normalized_resid_post[l]

so, unlike GPT-style models, the residual stream is *not* a running sum of component outputs:
``resid_pre[l]`` is the LayerNorm'd output of the previous block, ``resid_pre[0]`` is the LayerNorm'd
embedding sum, and direct-logit-attribution-style decompositions do not apply across a LayerNorm. Both the
pre-LN sums and the normalized values are exposed, together with the LayerNorm scales
(``sqrt(var + eps)``, TransformerLens's ``hook_scale``), so that effects can be traced through the LayerNorms.

``d_embed`` is ``d_model`` except in ELECTRA models whose ``embedding_size`` is smaller, where a linear map
takes the normalised embeddings into the residual stream. The same sites, with the same post-LN identities,
exist in BERT, ELECTRA, RoBERTa and XLM-RoBERTa; `jaxmech.architectures.site_table_for` prints one model's
table with its shapes and the meanings that differ (RoBERTa's position offset, ELECTRA's head).

Masked attention scores hold `MASK_VALUE` (a large finite negative) rather than ``-inf`` so that blends of two
score tensors stay finite; their softmax is exactly 0 either way.
"""

from __future__ import annotations

import dataclasses
import difflib

MASK_VALUE = -1e30


@dataclasses.dataclass(frozen=True)
class Site:
    """One activation site.

    Attributes:
        name: jaxmech name (TransformerLens hook name without the ``hook_`` prefix).
        dims: Axis names of one example's activation (without the ``layer`` axis).
        per_layer: Whether the site exists in every block (stacked with a leading ``layer`` axis).
        tl_name: TransformerLens hook name; ``{l}`` stands for the layer.
        meaning: What the activation is.
    """

    name: str
    dims: tuple[str, ...]
    per_layer: bool
    tl_name: str
    meaning: str

    @property
    def pos_axis(self) -> int | None:
        """Axis that a position mask selects (query position for attention patterns)."""
        for axis_name in ("pos", "query_pos"):
            if axis_name in self.dims:
                return self.dims.index(axis_name)
        return None

    @property
    def head_axis(self) -> int | None:
        """Axis that a head mask selects, or None for sites without heads."""
        return self.dims.index("head_index") if "head_index" in self.dims else None


_SITES = [
    # -- embeddings (no layer axis) --
    Site("embed", ("pos", "d_embed"), False, "embed.hook_embed", "token (word-piece) embedding W_E[tokens]"),
    Site("pos_embed", ("pos", "d_embed"), False, "embed.hook_pos_embed", "position embedding W_pos[positions]"),
    Site("token_type_embed", ("pos", "d_embed"), False, "embed.hook_token_type_embed",
         "segment embedding W_token_type[token_type_ids]"),
    Site("embed_sum", ("pos", "d_embed"), False, "embed.hook_embed_sum",
         "embed + pos_embed + token_type_embed, before the embedding LayerNorm"),
    Site("embed_ln_scale", ("pos", "one"), False, "embed.ln.hook_scale",
         "sqrt(var + eps) of embed_sum, the embedding LayerNorm's scale"),
    # -- per block --
    Site("resid_pre", ("pos", "d_model"), True, "blocks.{l}.hook_resid_pre",
         "block input: LN'd embeddings at l=0, else normalized_resid_post[l-1] (post-LN, not a running sum)"),
    Site("q", ("pos", "head_index", "d_head"), True, "blocks.{l}.attn.hook_q", "queries, bias included"),
    Site("k", ("pos", "head_index", "d_head"), True, "blocks.{l}.attn.hook_k", "keys, bias included"),
    Site("v", ("pos", "head_index", "d_head"), True, "blocks.{l}.attn.hook_v", "values, bias included"),
    Site("attn_scores", ("head_index", "query_pos", "key_pos"), True, "blocks.{l}.attn.hook_attn_scores",
         "q.k / sqrt(d_head), padding keys set to MASK_VALUE"),
    Site("pattern", ("head_index", "query_pos", "key_pos"), True, "blocks.{l}.attn.hook_pattern",
         "softmax of attn_scores over key_pos (attention probabilities)"),
    Site("z", ("pos", "head_index", "d_head"), True, "blocks.{l}.attn.hook_z",
         "pattern-weighted values per head, before W_O"),
    Site("result", ("pos", "head_index", "d_model"), True, "blocks.{l}.attn.hook_result",
         "per-head output z_h @ W_O[h] (without b_O); attn_out = sum_h result_h + b_O"),
    Site("attn_out", ("pos", "d_model"), True, "blocks.{l}.hook_attn_out", "attention output, W_O and b_O applied"),
    Site("resid_mid", ("pos", "d_model"), True, "blocks.{l}.hook_resid_mid",
         "resid_pre + attn_out (pre-LN sum)"),
    Site("ln1_scale", ("pos", "one"), True, "blocks.{l}.ln1.hook_scale", "sqrt(var + eps) of resid_mid"),
    Site("normalized_resid_mid", ("pos", "d_model"), True, "blocks.{l}.hook_normalized_resid_mid",
         "LN1(resid_mid): the MLP's input"),
    Site("mlp_pre", ("pos", "d_mlp"), True, "blocks.{l}.mlp.hook_pre", "MLP pre-activation (after W_in, b_in)"),
    Site("mlp_post", ("pos", "d_mlp"), True, "blocks.{l}.mlp.hook_post", "MLP activation act_fn(mlp_pre)"),
    Site("mlp_out", ("pos", "d_model"), True, "blocks.{l}.hook_mlp_out", "MLP output (after W_out, b_out)"),
    Site("resid_post", ("pos", "d_model"), True, "blocks.{l}.hook_resid_post",
         "normalized_resid_mid + mlp_out (pre-LN sum)"),
    Site("ln2_scale", ("pos", "one"), True, "blocks.{l}.ln2.hook_scale", "sqrt(var + eps) of resid_post"),
    Site("normalized_resid_post", ("pos", "d_model"), True, "blocks.{l}.hook_normalized_resid_post",
         "LN2(resid_post): the block output, equal to resid_pre[l+1]"),
    # -- readout (no layer axis) --
    Site("pooler_out", ("d_model",), False, "pooler.hook_out",
         "tanh(W_pool h_[CLS] + b_pool) (cross-encoders; ELECTRA / RoBERTa: the head's dense layer + activation)"),
    Site("pooled", ("d_model",), False, "pooling.hook_out",
         "mean (or CLS/max) pooled final hidden state, normalised if the model says so (bi-encoders)"),
    Site("logits", ("n_labels",), False, "hook_logits", "classifier output; the raw relevance logit(s)"),
]

SITES: dict[str, Site] = {s.name: s for s in _SITES}
LAYER_SITES: tuple[str, ...] = tuple(s.name for s in _SITES if s.per_layer)
EMBED_SITES: tuple[str, ...] = ("embed", "pos_embed", "token_type_embed", "embed_sum", "embed_ln_scale")
# Per-block sites in computation order: a patch at one leaves everything before it in the block unchanged.
BLOCK_ORDER: tuple[str, ...] = (
    "resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "result", "attn_out", "resid_mid", "ln1_scale",
    "normalized_resid_mid", "mlp_pre", "mlp_post", "mlp_out", "resid_post", "ln2_scale",
    "normalized_resid_post",
)
_TL_NAMES = {s.tl_name: s.name for s in _SITES}


class UnknownSiteError(KeyError):
    """An activation name that is not in the site table."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def dim_sizes(cfg, n_pos: int | None = None) -> dict[str, int]:
    """The size of each axis name of `Site.dims` for a model configuration.

    Args:
        cfg: An `jaxmech.config.EncoderConfig` or `jaxmech.models.modernbert.ModernBertConfig` (``d_embed`` is
            ``d_model`` where the config has no ``embed_width``).
        n_pos: The padded length; without it the position axes (``pos``, ``query_pos``, ``key_pos``) are absent.
    """
    sizes = {"d_model": cfg.d_model, "d_embed": getattr(cfg, "embed_width", cfg.d_model), "head_index": cfg.n_heads,
             "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "one": 1, "n_labels": cfg.num_labels}
    if n_pos is not None:
        sizes.update(pos=n_pos, query_pos=n_pos, key_pos=n_pos)
    return sizes


def get_site(name: str) -> Site:
    """Looks up a site by jaxmech name.

    Raises:
        UnknownSiteError: With the closest known names.
    """
    try:
        return SITES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(SITES), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise UnknownSiteError(
            f"unknown activation site {name!r}{hint} Known sites: {sorted(SITES)}"
        ) from None


def parse_tl_name(hook_name: str) -> tuple[str, int | None]:
    """Maps a TransformerLens hook name to ``(site, layer)``.

    ``"blocks.3.attn.hook_z"`` gives ``("z", 3)``; ``"embed.hook_embed"`` gives ``("embed", None)``.
    Bare jaxmech names are accepted too.

    Raises:
        UnknownSiteError: If the name matches no site.
    """
    if hook_name in SITES:
        return hook_name, None
    parts = hook_name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        template = ".".join(["blocks", "{l}", *parts[2:]])
        if template in _TL_NAMES:
            return _TL_NAMES[template], int(parts[1])
    if hook_name in _TL_NAMES:
        return _TL_NAMES[hook_name], None
    raise UnknownSiteError(f"unknown TransformerLens hook name {hook_name!r}")


def validate_capture(names) -> frozenset[str]:
    """Normalises a capture request (``"all"``, a name, or an iterable of names) to a frozenset.

    Raises:
        UnknownSiteError: If any name is unknown.
    """
    if names is None:
        return frozenset()
    if isinstance(names, str):
        names = tuple(SITES) if names == "all" else (names,)
    out = frozenset(names)
    for n in out:
        get_site(n)
    return out


def site_table_markdown() -> str:
    """The site table as Markdown (used by the README and ``jaxmech sites``)."""
    rows = ["| site | shape per example | per layer | TransformerLens hook | meaning |", "|---|---|---|---|---|"]
    for s in _SITES:
        rows.append(
            f"| `{s.name}` | `[{', '.join(s.dims)}]` | {'yes' if s.per_layer else 'no'} | `{s.tl_name}` | {s.meaning} |"
        )
    return "\n".join(rows)
