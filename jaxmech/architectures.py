"""The supported encoder architectures, and the site table of one model.

BERT, ELECTRA, RoBERTa and XLM-RoBERTa are one post-LayerNorm encoder with different positions, token types,
embedding widths and heads (`jaxmech.config.ARCHITECTURES`). Every site of `jaxmech.sites` exists in each of
them, with the same meaning except where this module says otherwise, and the same residual identities hold:
the residual stream is **not** a running sum (``resid_pre[l + 1] = LN2(resid_post[l])``).

`architecture_table_markdown` is the README's table; `site_table_for` is what ``jaxmech sites --model M``
prints: the model's architecture, the identities that hold for it, and every site with its concrete shape.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxmech.config import ARCHITECTURES, EncoderConfig
from jaxmech.sites import SITES, Site, dim_sizes

# What the test suite verifies for each architecture (tests/test_parity.py, tests/test_archs_*.py).
VERIFIED = {
    "bert": "fp32 parity (every site, logits): tiny odd, MiniLM-L12 shapes, real MiniLM-L6 weights; round trip; "
            "sweep = loop; PyTorch-hook cross-check (activation, path); attribution = derivative",
    "electra": "fp32 parity (every site, logits): tiny odd with and without embedding projection, "
               "ms-marco-electra-base shapes (slow); bit-exact round trip through transformers; tokenizer pairs; "
               "sweep = loop; PyTorch-hook cross-check (activation, path); attribution = derivative",
    "roberta": "fp32 parity (every site, logits): tiny odd, stsb-roberta-base shapes (slow); bit-exact round trip; "
               "byte-level BPE pairs and filler Ġa; sweep = loop; PyTorch-hook cross-check; attribution = derivative",
    "xlm-roberta": "fp32 parity (every site, logits): tiny odd, bge-reranker-base and bge-reranker-v2-m3 shapes "
                   "(slow); bit-exact round trip; SentencePiece pairs and filler ▁a; sweep = loop; PyTorch-hook "
                   "cross-check; attribution = derivative",
    "modernbert": "fp32 parity (every hookable site, logits): tiny odd with / without biases, cls / mean pooling, "
                  "gte-reranker-modernbert-base shapes (slow); bit-exact round trip; running-sum identities; local "
                  "BPE tokenizer (pairs, truncation, scores) = AutoTokenizer + transformers; patching "
                  "(`jaxmech.patching.engines.pre_ln`, restarted from the cached resid_pre): sweep = loop (activation "
                  "and path families, padded batch), PyTorch-hook cross-check (activation, path); attribution = "
                  "derivative; no normalized_resid_post / result families; `load_model` (cross-encoder only), so "
                  "`jaxmech patch` / `score` / `sweep` (`jaxmech patch` = `run_patching`); edges "
                  "(`jaxmech.patching.engines.pre_ln_edges`, live LayerNorms): exact = hooked full forwards = "
                  "PyTorch hooks, EAP = derivative, `jaxmech analyze edges`",
}

POST_LN_IDENTITIES = (
    "resid_mid = resid_pre + attn_out",
    "attn_out = sum_h result_h + b_O",
    "resid_post = normalized_resid_mid + mlp_out",
    "normalized_resid_mid = LN1(resid_mid), normalized_resid_post = LN2(resid_post)",
    "resid_pre[l+1] = normalized_resid_post[l] (post-LN: the residual stream is not a running sum)",
)


def architecture_table_markdown() -> str:
    """The supported architectures as a Markdown table (the README's)."""
    rows = ["| architecture | `transformers` class | e.g. | positions | token types | head | pair format | verified |",
            "|---|---|---|---|---|---|---|---|"]
    for a in ARCHITECTURES.values():
        positions = "0, 1, 2, ..." if a.positions == "absolute" else "pad + 1, pad + 2, ... (padding: pad)"
        types = "2 (query 0, document 1)" if a.n_token_types == 2 else "1 (all 0)"
        rows.append(f"| {a.model_type} | `{a.cross_class}` | {', '.join(f'`{e}`' for e in a.examples)} | "
                    f"{positions} | {types} | {a.head} | `{a.pair_format}` | {VERIFIED[a.model_type]} |")
    rows.append("| modernbert (pre-LN, `jaxmech.models.modernbert`) | `ModernBertForSequenceClassification` | "
                "`Alibaba-NLP/gte-reranker-modernbert-base` | rotary (global / local theta) | none | pooling (cls or "
                "mean), dense, act, LayerNorm, classifier | `[CLS] q [SEP] d [SEP]` (read off its tokenizer) | "
                f"{VERIFIED['modernbert']} |")
    return "\n".join(rows)


def _meaning(site: Site, cfg: EncoderConfig) -> str:
    a = cfg.arch
    if site.name == "pos_embed" and cfg.positions == "padding_offset":
        return (f"W_pos[positions], positions {cfg.pad_token_id + 1}, {cfg.pad_token_id + 2}, ... on real tokens "
                f"and {cfg.pad_token_id} on padding (fairseq offset)")
    if site.name == "token_type_embed" and cfg.n_token_types == 1:
        return "W_token_type[0] on every token (a single token type)"
    if site.name == "resid_pre" and cfg.has_embed_proj:
        return (f"block input: at l=0 the normalised embeddings projected {cfg.embed_width} -> {cfg.d_model} "
                f"(W_proj, b_proj), else normalized_resid_post[l-1] (post-LN, not a running sum)")
    if site.name == "pooler_out" and not a.pooler:
        return f"{cfg.head_act}(classifier.dense(h_0)): the head's dense layer on the first token ({a.head})"
    if site.name == "logits" and not a.pooler:
        return "classifier.out_proj(pooler_out): the raw relevance logit(s)"
    return site.meaning


def _shape(site: Site, cfg: EncoderConfig) -> str:
    sizes = dim_sizes(cfg)
    dims = [str(sizes.get(d, d)) for d in site.dims]
    return "[" + ", ".join(([str(cfg.n_layers)] if site.per_layer else []) + dims) + "]"


def site_table_markdown_for_config(cfg: EncoderConfig, kind: str = "cross", *, name: str = "model") -> str:
    """The site table of one model: its architecture, the identities that hold, every site with its shape.

    Args:
        cfg: The model's configuration.
        kind: ``"cross"`` (pooler/head sites and logits) or ``"bi"`` (the pooled embedding).
        name: What to call the model in the heading.

    Returns:
        Markdown text.
    """
    if kind not in ("cross", "bi"):
        raise ValueError(f"unknown model kind {kind!r}; expected 'cross' or 'bi'")
    a = cfg.arch
    skip = {"pooled"} if kind == "cross" else {"pooler_out", "logits"}
    embed_line = (f"W_proj maps the {cfg.embed_width}-wide normalised embeddings to d_model = {cfg.d_model}"
                  if cfg.has_embed_proj else f"embeddings are d_model = {cfg.d_model} wide")
    lines = [
        f"# {name}: {a.model_type} ({cfg.hf_class(kind)}), {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, max length {cfg.max_length}",
        "",
        f"- positions: {cfg.positions}; token types: {cfg.n_token_types}; {embed_line}",
        f"- head: {a.head if kind == 'cross' else 'pooling of the final hidden states'}; pairs: `{a.pair_format}`",
        "- post-LayerNorm blocks; these identities hold: " + "; ".join(f"`{i}`" for i in POST_LN_IDENTITIES),
        "- shapes are per example; a batched forward prepends the batch axis",
        "",
        "| site | shape | TransformerLens hook | meaning |",
        "|---|---|---|---|",
    ]
    for s in SITES.values():
        if s.name not in skip:
            lines.append(f"| `{s.name}` | `{_shape(s, cfg)}` | `{s.tl_name}` | {_meaning(s, cfg)} |")
    return "\n".join(lines)


def site_table_for(model: str | Path) -> str:
    """``jaxmech sites --model M``: the site table of a local folder or hub id, from its ``config.json`` alone
    (no weights are read).

    Raises:
        ModelNotFoundError: If the folder or id cannot be found or has no ``config.json``.
        UnsupportedConfigError: If the architecture or an option is not supported (named in the message).
    """
    from jaxmech.hf.loading import ModelNotFoundError, detect_kind, resolve_model_dir

    folder = resolve_model_dir(model)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelNotFoundError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    hf = json.loads(config_file.read_text())
    own_blocks = _OWN_SITE_TABLES.get(hf.get("model_type"))
    if own_blocks is not None:
        return own_blocks(hf, str(config_file), str(model))
    cfg = EncoderConfig.from_hf_config(hf, source=str(config_file))
    try:
        kind = detect_kind(folder, hf)
    except ValueError:
        kind = "cross"
    return site_table_markdown_for_config(cfg, kind, name=str(model))


def modernbert_site_table(cfg, *, name: str = "model") -> str:
    """The site table of a ModernBERT cross-encoder (`jaxmech.models.modernbert.ModernBertConfig`): pre-LN, so the
    residual stream is a running sum."""
    from jaxmech.models.modernbert import MODERNBERT_SITES, RESIDUAL_IDENTITIES

    sizes = dim_sizes(cfg)
    n_global = sum(cfg.global_layers)
    lines = [
        f"# {name}: modernbert (ModernBertForSequenceClassification), {cfg.n_layers} layers ({n_global} global, "
        f"{cfg.n_layers - n_global} sliding-window of {cfg.local_attention}), {cfg.n_heads} heads, d_model "
        f"{cfg.d_model}, d_mlp {cfg.d_mlp} (GeGLU), max length {cfg.max_length}",
        "",
        f"- rotary positions (theta {cfg.global_rope_theta:g} global, {cfg.local_rope_theta:g} local); no token types",
        f"- head: {cfg.classifier_pooling} pooling, dense, {cfg.classifier_act}, LayerNorm, classifier",
        "- pre-LayerNorm blocks; these identities hold: " + "; ".join(f"`{i}`" for i in RESIDUAL_IDENTITIES),
        "- post-LN identities that do **not** hold here: `resid_post = normalized_resid_mid + mlp_out` (it is "
        "`resid_mid + mlp_out`), `resid_pre[l+1] = LN(resid_post[l])` (it is `resid_post[l]` itself); there is no "
        "`normalized_resid_post` and no per-head `result` site",
        "- patching (`jaxmech.patching.engines.pre_ln`): a patch in block l restarts from the cached `resid_pre[l]` "
        "(the whole residual stream) and runs blocks l.. on every row; every activation family except "
        "`normalized_resid_post_*` and `*_result` (exact or attribution), and the three path families, exactly",
        "",
        "| site | shape | TransformerLens hook | meaning |",
        "|---|---|---|---|",
    ]
    for s in MODERNBERT_SITES.values():
        dims = ([str(cfg.n_layers)] if s.per_layer else []) + [str(sizes.get(d, d)) for d in s.dims]
        lines.append(f"| `{s.name}` | `[{', '.join(dims)}]` | `{s.tl_name}` | {s.meaning} |")
    return "\n".join(lines)


def _modernbert_site_table_from_hf(hf: dict, source: str, name: str) -> str:
    from jaxmech.models.modernbert import ModernBertConfig

    return modernbert_site_table(ModernBertConfig.from_hf_config(hf, source=source), name=name)


_OWN_SITE_TABLES = {"modernbert": _modernbert_site_table_from_hf}
"""`site_table_for`'s table builders by ``model_type`` for families with their own blocks (and sites); every
other ``model_type`` is a BERT-family architecture (`jaxmech.config.ARCHITECTURES`)."""
