"""Hugging Face BERT / ELECTRA / (XLM-)RoBERTa and ModernBERT weights <-> jaxmech parameters, strictly.

`key_map` is the whole correspondence: one row per Hugging Face tensor (``{l}`` for the layer), the jaxmech
parameter it fills, and the reshape between torch's ``Linear`` layout ``[out, in]`` and TransformerLens's
layout (``W_Q: [head_index, d_model, d_head]``, ``W_O: [head_index, d_head, d_model]``, ``W_in: [d_model,
d_mlp]``). Conversion consumes every checkpoint tensor or lists it as explicitly ignored (``IGNORED``), fills
every parameter, and checks every shape; anything else is an error naming the tensor. `to_hf_state_dict` is
the inverse, so a round trip through ``transformers`` can be tested.

The architectures share the trunk's names under their own prefix (`TRUNK_PREFIX`: ``bert.``, ``electra.``,
``roberta.``) and differ in the head: BERT's ``pooler.dense`` + ``classifier`` against ``classifier.dense`` +
``classifier.out_proj`` (ELECTRA, RoBERTa, XLM-R), which fill the same `Pooler` and `Classifier` parameters.
ELECTRA's ``embeddings_project`` fills ``embed.W_proj`` / ``embed.b_proj`` when ``embedding_size`` differs from
``hidden_size``.

ModernBERT (`jaxmech.models.modernbert`) has its own table (`modernbert_from_hf_state_dict`,
`modernbert_to_hf_state_dict`): the fused ``Wqkv`` splits into ``W_Q``, ``W_K``, ``W_V`` and GeGLU's ``Wi`` into
``W_in`` and ``W_gate``; layer 0 has no attention LayerNorm. Every key map lives here, so models import nothing
from `jaxmech.hf`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmech.config import EncoderConfig
from jaxmech.models.bert import BiEncoder, CrossEncoder, HookedEncoder, PoolingConfig
from jaxmech.models.modernbert import ModernBertConfig, ModernBertCrossEncoder


class ConversionError(ValueError):
    """A checkpoint does not match the model: unexpected, missing or misshapen tensors."""


def _qkv_w(cfg):  # torch [H*dh, d] -> [H, d, dh]
    return (lambda w: w.T.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).transpose(1, 0, 2),
            lambda p: p.transpose(1, 0, 2).reshape(cfg.d_model, cfg.n_heads * cfg.d_head).T)


def _qkv_b(cfg):  # [H*dh] -> [H, dh]
    return (lambda b: b.reshape(cfg.n_heads, cfg.d_head), lambda p: p.reshape(-1))


def _o_w(cfg):  # torch [d, H*dh] -> [H, dh, d]
    return (lambda w: w.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model),
            lambda p: p.reshape(cfg.n_heads * cfg.d_head, cfg.d_model).T)


_T = (lambda w: w.T, lambda p: p.T)
_ID = (lambda w: w, lambda p: p)


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One Hugging Face tensor (``{l}`` = layer) and the jaxmech parameter it fills."""

    hf: str
    param: tuple[str, ...]
    transform: Callable[[EncoderConfig], tuple[Callable, Callable]] | tuple[Callable, Callable]

    def fns(self, cfg):
        return self.transform(cfg) if callable(self.transform) else self.transform


_EMBED_RULES = [
    KeyRule("embeddings.word_embeddings.weight", ("embed", "W_E"), _ID),
    KeyRule("embeddings.position_embeddings.weight", ("embed", "W_pos"), _ID),
    KeyRule("embeddings.token_type_embeddings.weight", ("embed", "W_token_type"), _ID),
    KeyRule("embeddings.LayerNorm.weight", ("embed", "ln", "w"), _ID),
    KeyRule("embeddings.LayerNorm.bias", ("embed", "ln", "b"), _ID),
]
_LAYER = "encoder.layer.{l}."
_BLOCK_RULES = [
    KeyRule(_LAYER + "attention.self.query.weight", ("blocks", "attn", "W_Q"), _qkv_w),
    KeyRule(_LAYER + "attention.self.query.bias", ("blocks", "attn", "b_Q"), _qkv_b),
    KeyRule(_LAYER + "attention.self.key.weight", ("blocks", "attn", "W_K"), _qkv_w),
    KeyRule(_LAYER + "attention.self.key.bias", ("blocks", "attn", "b_K"), _qkv_b),
    KeyRule(_LAYER + "attention.self.value.weight", ("blocks", "attn", "W_V"), _qkv_w),
    KeyRule(_LAYER + "attention.self.value.bias", ("blocks", "attn", "b_V"), _qkv_b),
    KeyRule(_LAYER + "attention.output.dense.weight", ("blocks", "attn", "W_O"), _o_w),
    KeyRule(_LAYER + "attention.output.dense.bias", ("blocks", "attn", "b_O"), _ID),
    KeyRule(_LAYER + "attention.output.LayerNorm.weight", ("blocks", "ln1", "w"), _ID),
    KeyRule(_LAYER + "attention.output.LayerNorm.bias", ("blocks", "ln1", "b"), _ID),
    KeyRule(_LAYER + "intermediate.dense.weight", ("blocks", "mlp", "W_in"), _T),
    KeyRule(_LAYER + "intermediate.dense.bias", ("blocks", "mlp", "b_in"), _ID),
    KeyRule(_LAYER + "output.dense.weight", ("blocks", "mlp", "W_out"), _T),
    KeyRule(_LAYER + "output.dense.bias", ("blocks", "mlp", "b_out"), _ID),
    KeyRule(_LAYER + "output.LayerNorm.weight", ("blocks", "ln2", "w"), _ID),
    KeyRule(_LAYER + "output.LayerNorm.bias", ("blocks", "ln2", "b"), _ID),
]
_EMBED_PROJ_RULES = [  # ELECTRA with embedding_size != hidden_size
    KeyRule("embeddings_project.weight", ("embed", "W_proj"), _T),
    KeyRule("embeddings_project.bias", ("embed", "b_proj"), _ID),
]
_BERT_HEAD_RULES = [
    KeyRule("pooler.dense.weight", ("pooler", "W"), _T),
    KeyRule("pooler.dense.bias", ("pooler", "b"), _ID),
    KeyRule("classifier.weight", ("classifier", "W"), _T),
    KeyRule("classifier.bias", ("classifier", "b"), _ID),
]
_DENSE_OUT_PROJ_HEAD_RULES = [  # ElectraClassificationHead, RobertaClassificationHead (no pooler)
    KeyRule("classifier.dense.weight", ("pooler", "W"), _T),
    KeyRule("classifier.dense.bias", ("pooler", "b"), _ID),
    KeyRule("classifier.out_proj.weight", ("classifier", "W"), _T),
    KeyRule("classifier.out_proj.bias", ("classifier", "b"), _ID),
]
HEAD_RULES = {"bert": _BERT_HEAD_RULES, "electra": _DENSE_OUT_PROJ_HEAD_RULES,
              "roberta": _DENSE_OUT_PROJ_HEAD_RULES, "xlm-roberta": _DENSE_OUT_PROJ_HEAD_RULES}
# Prefix of the trunk's tensors in ``*ForSequenceClassification`` checkpoints (head keys are unprefixed,
# except BERT's pooler, which is part of the trunk).
TRUNK_PREFIX = {"bert": "bert.", "electra": "electra.", "roberta": "roberta.", "xlm-roberta": "roberta."}

# Tensors a checkpoint may carry that the port deliberately does not use.
IGNORED = {
    r"embeddings\.position_ids": "buffer of arange(n_ctx), recomputed",
    r"embeddings\.token_type_ids": "buffer of zeros, unused",
    r"cls\..*": "pre-training (MLM / next-sentence) head, unused by encoders",
    r"lm_head\..*": "RoBERTa / XLM-R masked-LM head, unused by encoders",
    r"discriminator_predictions\..*": "ELECTRA replaced-token-detection head, unused by encoders",
    r"generator_(predictions|lm_head)\..*": "ELECTRA generator head, unused by encoders",
}
IGNORED_FOR_BI = {r"pooler\.dense\.(weight|bias)": "BERT pooler, unused by sentence-transformers pooling"}
IGNORED_FOR_CROSS_WITHOUT_POOLER = {
    r"pooler\.dense\.(weight|bias)": "trunk pooler, unused by the ELECTRA / RoBERTa classification head"
}
_LEGACY = {".gamma": ".weight", ".beta": ".bias"}  # old TF-converted BERT LayerNorm names


def key_map(cfg: EncoderConfig, kind: str) -> list[tuple[str, KeyRule, int | None]]:
    """All ``(hf_key, rule, layer)`` rows for a model kind (``"cross"`` or ``"bi"``), without prefix."""
    rows = [(r.hf, r, None) for r in _EMBED_RULES + (_EMBED_PROJ_RULES if cfg.has_embed_proj else [])]
    rows += [(r.hf.format(l=l), r, l) for l in range(cfg.n_layers) for r in _BLOCK_RULES]
    if kind == "cross":
        rows += [(r.hf, r, None) for r in HEAD_RULES[cfg.model_type]]
    return rows


def _ignored_patterns(cfg: EncoderConfig, kind: str) -> dict[str, str]:
    if kind == "bi":
        return dict(IGNORED, **IGNORED_FOR_BI)
    if not cfg.arch.pooler:
        return dict(IGNORED, **IGNORED_FOR_CROSS_WITHOUT_POOLER)
    return dict(IGNORED)


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did with each tensor.

    Attributes:
        consumed: Checkpoint keys that filled a parameter.
        ignored: Checkpoint keys deliberately unused, with the reason.
        initialized: Parameters not in the checkpoint, freshly initialised on request (e.g. a seeded head).
    """

    consumed: list[str] = dataclasses.field(default_factory=list)
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)
    initialized: list[str] = dataclasses.field(default_factory=list)


def _normalise_keys(
    state: Mapping[str, np.ndarray], prefix: str = "bert."
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Strips the trunk prefix (``bert.``, ``electra.``, ``roberta.`` in sequence-classification checkpoints)
    and renames legacy LN keys.

    Returns:
        The renamed state and the map from new names back to the checkpoint's own names.
    """
    prefix = prefix if any(k.startswith(prefix) for k in state) else ""
    out, original = {}, {}
    for k, v in state.items():
        new = k[len(prefix):] if prefix and k.startswith(prefix) else k
        for old, repl in _LEGACY.items():
            if new.endswith(old) and "LayerNorm" in new:
                new = new[: -len(old)] + repl
        out[new] = np.asarray(v)
        original[new] = k
    return out, original


def build_model(
    cfg: EncoderConfig,
    kind: str = "cross",
    *,
    pooling: PoolingConfig | None = None,
    score_label: int = 0,
    seed: int = 0,
) -> HookedEncoder:
    """A freshly initialised `CrossEncoder` (``kind="cross"``) or `BiEncoder` (``kind="bi"``)."""
    rngs = nnx.Rngs(seed)
    if kind == "cross":
        return CrossEncoder(cfg, rngs=rngs, score_label=score_label)
    if kind == "bi":
        return BiEncoder(cfg, rngs=rngs, pooling=pooling or PoolingConfig())
    raise ValueError(f"unknown model kind {kind!r}; expected 'cross' or 'bi'")


def from_hf_state_dict(
    state: Mapping[str, np.ndarray],
    cfg: EncoderConfig,
    kind: str = "cross",
    *,
    pooling: PoolingConfig | None = None,
    score_label: int = 0,
    init_missing_head_seed: int | None = None,
    source: str = "checkpoint",
) -> tuple[HookedEncoder, ConversionReport]:
    """Builds a jaxmech model from a Hugging Face BERT / ELECTRA / (XLM-)RoBERTa state dict.

    Args:
        state: Tensor name to array (numpy, or anything ``np.asarray`` accepts).
        cfg: Configuration (usually `EncoderConfig.from_hf_config` of the same folder).
        kind: ``"cross"`` (``*ForSequenceClassification``) or ``"bi"`` (``BertModel`` etc. + pooling).
        pooling: Pooling settings for bi-encoders.
        score_label: See `CrossEncoder`.
        init_missing_head_seed: For a cross-encoder built from an encoder-only checkpoint (no classifier, maybe
            no pooler): initialise the missing head from this seed and report it, instead of failing.
        source: Name of the checkpoint for error messages.

    Returns:
        The model (fp32) and a `ConversionReport`.

    Raises:
        ConversionError: On unexpected tensors, missing parameters or wrong shapes; the message lists all.
    """
    state, original = _normalise_keys(state, TRUNK_PREFIX[cfg.model_type])
    rows = key_map(cfg, kind)
    report = ConversionReport()
    template = build_model(cfg, kind, pooling=pooling, score_label=score_label, seed=init_missing_head_seed or 0) \
        if init_missing_head_seed is not None else \
        nnx.eval_shape(lambda: build_model(cfg, kind, pooling=pooling, score_label=score_label))
    graphdef, abstract = nnx.split(template, nnx.Param)
    flat = {path: var for path, var in nnx.to_flat_state(abstract)}
    values, problems = _convert_rows(state, original, rows, cfg, flat, report)
    problems += _unexpected_tensors(state, original, rows, _ignored_patterns(cfg, kind), report)
    problems += _missing_tensors(state, rows, init_missing_head_seed is not None, report)
    if problems:
        listing = "\n  ".join(problems)
        head_missing = any(rule.param in _HEAD_PARAMS and hf_key not in state for hf_key, rule, _ in rows)
        hint = ("\n  (an encoder-only checkpoint has no classifier head: --init-head-seed S, or "
                "init_missing_head_seed=S from Python, builds a seeded one and reports it)" if head_missing else "")
        raise ConversionError(f"{source}: {len(problems)} problem(s) converting to jaxmech:\n  {listing}{hint}")
    new_flat = []
    for path, var in flat.items():
        if path in values:
            new_flat.append((path, var.replace(jnp.asarray(values[path], jnp.float32))))
        else:  # a freshly initialised head parameter (init_missing_head_seed)
            new_flat.append((path, var))
    model = nnx.merge(graphdef, nnx.from_flat_state(new_flat))
    return model, report


_HEAD_PARAMS = {("pooler", "W"), ("pooler", "b"), ("classifier", "W"), ("classifier", "b")}


def _convert_rows(state: dict[str, np.ndarray], original: dict[str, str], rows, cfg: EncoderConfig, flat: dict,
                  report: ConversionReport) -> tuple[dict[tuple[str, ...], np.ndarray], list[str]]:
    """Every key-map row present in ``state``, converted and shape-checked against the template's parameters
    (``flat``): the parameter values (per-layer rows stacked) and the problems, each naming the tensor; consumed
    keys are added to ``report``."""
    per_layer: dict[tuple[str, ...], list] = {}
    values: dict[tuple[str, ...], np.ndarray] = {}
    problems: list[str] = []
    for hf_key, rule, layer in rows:
        if hf_key not in state:
            continue
        torch_to_jax, _ = rule.fns(cfg)
        try:
            value = torch_to_jax(state[hf_key].astype(np.float32))
        except ValueError as err:
            problems.append(f"{original[hf_key]}: shape {state[hf_key].shape} cannot be converted ({err})")
            continue
        expected = flat[rule.param].get_value().shape
        expected = expected[1:] if layer is not None else expected
        if value.shape != tuple(expected):
            problems.append(f"{original[hf_key]}: converted shape {value.shape} != expected {tuple(expected)}")
            continue
        report.consumed.append(original[hf_key])
        if layer is None:
            values[rule.param] = value
        else:
            per_layer.setdefault(rule.param, [None] * cfg.n_layers)[layer] = value
    for param, layers in per_layer.items():
        if all(x is not None for x in layers):  # else a layer is missing or misshapen: a problem listed elsewhere
            values[param] = np.stack(layers)
    return values, problems


def _unexpected_tensors(state: dict[str, np.ndarray], original: dict[str, str], rows,
                        ignored_patterns: dict[str, str], report: ConversionReport) -> list[str]:
    """Checkpoint tensors no row takes: deliberately ignored ones go to ``report`` with the reason, the others
    are problems."""
    problems = []
    expected_keys = {k for k, _, _ in rows}
    for k in sorted(set(state) - expected_keys):
        reason = next((why for pat, why in ignored_patterns.items() if re.fullmatch(pat, k)), None)
        if reason is None:
            problems.append(f"{original[k]}: unexpected tensor (no jaxmech parameter takes it)")
        else:
            report.ignored[original[k]] = reason
    return problems


def _missing_tensors(state: dict[str, np.ndarray], rows, init_head: bool, report: ConversionReport) -> list[str]:
    """Rows the checkpoint lacks: problems, except head parameters when a seeded head is asked for
    (``init_head``; those go to ``report.initialized``)."""
    problems = []
    for hf_key, rule, _ in rows:
        if hf_key in state:
            continue
        if init_head and rule.param in _HEAD_PARAMS:
            if ".".join(rule.param) not in report.initialized:
                report.initialized.append(".".join(rule.param))
            continue
        problems.append(f"{hf_key}: missing from the checkpoint (needed for {'.'.join(rule.param)})")
    return problems


def hf_shapes(cfg: EncoderConfig, kind: str = "cross") -> dict[str, tuple[int, ...]]:
    """Shape of every tensor a Hugging Face checkpoint of this config holds, by its key in the
    ``*ForSequenceClassification`` (``kind="cross"``) or bare-trunk (``"bi"``) state dict, without allocating
    anything (the key map's inverse transforms traced on shapes): a cheap exact-shape check against a real
    model's config.
    """
    import jax

    template = nnx.eval_shape(lambda: build_model(cfg, kind))
    flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(template, nnx.Param))}
    prefix = TRUNK_PREFIX[cfg.model_type] if kind == "cross" else ""
    out = {}
    for hf_key, rule, layer in key_map(cfg, kind):
        _, jax_to_torch = rule.fns(cfg)
        shape = flat[rule.param].shape[1:] if layer is not None else flat[rule.param].shape
        spec = jax.eval_shape(jax_to_torch, jax.ShapeDtypeStruct(shape, jnp.float32))
        out[hf_key if hf_key.startswith("classifier.") else prefix + hf_key] = tuple(spec.shape)
    return out


def to_hf_state_dict(model: HookedEncoder) -> dict[str, np.ndarray]:
    """The Hugging Face state dict of a jaxmech model (inverse of `from_hf_state_dict`).

    Cross-encoders get the trunk prefix of their ``*ForSequenceClassification`` class (`TRUNK_PREFIX`);
    bi-encoders use the bare trunk's keys (``BertModel`` etc.: no prefix, no pooler).
    """
    cfg = model.cfg
    kind = model.kind
    flat = {path: var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    prefix = TRUNK_PREFIX[cfg.model_type] if kind == "cross" else ""
    out = {}
    for hf_key, rule, layer in key_map(cfg, kind):
        _, jax_to_torch = rule.fns(cfg)
        value = np.asarray(flat[rule.param].get_value(), np.float32)
        if layer is not None:
            value = value[layer]
        key = hf_key if hf_key.startswith("classifier.") else prefix + hf_key
        out[key] = np.ascontiguousarray(jax_to_torch(value))
    return out


# --------------------------------------------------------------------------------------------------------------
# ModernBERT (`jaxmech.models.modernbert`): fused Wqkv and GeGLU Wi split into TransformerLens parameters
# --------------------------------------------------------------------------------------------------------------


def _modernbert_rules(cfg: ModernBertConfig) -> list[tuple[str, tuple[str, ...], Any, Any]]:
    """``(hf_key, param path, torch->jax, jax->torch)``; ``{l}`` is the layer. Bias rows only where HF has them."""
    H, d, dh, m = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    T = (lambda w: w.T, lambda p: p.T)
    ID = (lambda w: w, lambda p: p)
    rows = [
        ("model.embeddings.tok_embeddings.weight", ("W_E",), *ID),
        ("model.embeddings.norm.weight", ("embed_ln", "w"), *ID),
    ]
    L = "model.layers.{l}."
    rows += [
        (L + "attn_norm.weight", ("blocks", "ln1", "w"), *ID),
        (L + "mlp_norm.weight", ("blocks", "ln2", "w"), *ID),
        (L + "attn.Wo.weight", ("blocks", "W_O"), lambda w: w.T.reshape(H, dh, d), lambda p: p.reshape(H * dh, d).T),
        (L + "mlp.Wi.weight", ("blocks", "W_in"), lambda w: w[:m].T, None),
        (L + "mlp.Wo.weight", ("blocks", "W_out"), *T),
    ]
    rows += [
        ("model.final_norm.weight", ("final_ln", "w"), *ID),
        ("head.dense.weight", ("head_W",), *T),
        ("head.norm.weight", ("head_ln", "w"), *ID),
        ("classifier.weight", ("classifier_W",), *T),
        ("classifier.bias", ("classifier_b",), *ID),
    ]
    if cfg.norm_bias:
        rows += [
            ("model.embeddings.norm.bias", ("embed_ln", "b"), *ID),
            (L + "attn_norm.bias", ("blocks", "ln1", "b"), *ID),
            (L + "mlp_norm.bias", ("blocks", "ln2", "b"), *ID),
            ("model.final_norm.bias", ("final_ln", "b"), *ID),
            ("head.norm.bias", ("head_ln", "b"), *ID),
        ]
    if cfg.attention_bias:
        rows += [(L + "attn.Wo.bias", ("blocks", "b_O"), *ID)]
    if cfg.mlp_bias:
        rows += [(L + "mlp.Wo.bias", ("blocks", "b_out"), *ID)]
    if cfg.classifier_bias:
        rows += [("head.dense.bias", ("head_b",), *ID)]
    return rows


def _split_qkv(w: np.ndarray, cfg: ModernBertConfig) -> list[np.ndarray]:
    """HF ``Wqkv`` ``[3 * d, d]`` (q, k, v stacked on the output axis) -> three ``[H, d, dh]``."""
    return [part.T.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).transpose(1, 0, 2) for part in np.split(w, 3)]


def modernbert_from_hf_state_dict(
    state: Mapping[str, np.ndarray], cfg: ModernBertConfig, *, score_label: int = 0, source: str = "checkpoint"
) -> ModernBertCrossEncoder:
    """A `ModernBertCrossEncoder` from a ``ModernBertForSequenceClassification`` state dict, strictly: every
    tensor consumed, every shape checked, errors naming the tensor.

    Raises:
        ConversionError: Listing every problem.
    """
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    model = nnx.eval_shape(lambda: ModernBertCrossEncoder(cfg, rngs=nnx.Rngs(0), score_label=score_label))
    graphdef, abstract = nnx.split(model, nnx.Param)
    flat = {path: var for path, var in nnx.to_flat_state(abstract)}
    values = {path: np.zeros(var.get_value().shape, np.float32) for path, var in flat.items()}
    for path in values:  # LayerNorm scales default to one (layer 0's unused ln1; bias-free norms keep b = 0)
        if path[-1] == "w" and any("ln" in str(p) for p in path):
            values[path][...] = 1.0
    consumed, problems = set(), []

    def put(key, path, value, layer=None):
        target = values[path] if layer is None else values[path][layer]
        if value.shape != target.shape:
            problems.append(f"{key}: converted shape {value.shape} != expected {target.shape}")
            return
        target[...] = value
        consumed.add(key)

    for hf_key, path, fwd, _ in _modernbert_rules(cfg):
        for layer in range(cfg.n_layers) if "{l}" in hf_key else [None]:
            key = hf_key.format(l=layer)
            if layer == 0 and "attn_norm" in key:
                continue  # HF's layer 0 has no attention LayerNorm (Identity)
            if key not in state:
                problems.append(f"{key}: missing from the checkpoint (needed for {'.'.join(path)})")
                continue
            put(key, path, fwd(state[key]), layer)
    H, d, dh, m = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    for layer in range(cfg.n_layers):
        key = f"model.layers.{layer}.mlp.Wi.weight"
        if key in state:
            put(key, ("blocks", "W_gate"), state[key][m:].T, layer)
        key = f"model.layers.{layer}.attn.Wqkv.weight"
        if key not in state:
            problems.append(f"{key}: missing from the checkpoint (needed for W_Q, W_K, W_V)")
        elif state[key].shape != (3 * H * dh, d):
            problems.append(f"{key}: shape {state[key].shape} != expected {(3 * H * dh, d)}")
        else:
            for name, w in zip(("W_Q", "W_K", "W_V"), _split_qkv(state[key], cfg), strict=True):
                put(key, ("blocks", name), w, layer)
        for hf_name, params in (("attn.Wqkv.bias", ("b_Q", "b_K", "b_V")), ("mlp.Wi.bias", ("b_in", "b_gate"))):
            key = f"model.layers.{layer}.{hf_name}"
            biased = cfg.attention_bias if hf_name.startswith("attn") else cfg.mlp_bias
            if biased and key in state:
                parts = np.split(state[key], len(params))
                for name, b in zip(params, parts, strict=True):
                    put(
                        key,
                        ("blocks", name),
                        b.reshape(H, dh) if name.startswith("b_") and len(params) == 3 else b,
                        layer,
                    )
            elif biased:
                problems.append(f"{key}: missing from the checkpoint")
    for key in sorted(set(state) - consumed):
        if not re.fullmatch(r"model\.layers\.\d+\.attn\.rotary_emb\..*", key):
            problems.append(f"{key}: unexpected tensor (no jaxmech parameter takes it)")
    if problems:
        raise ConversionError(
            f"{source}: {len(problems)} problem(s) converting to jaxmech:\n  " + "\n  ".join(problems)
        )
    new = [(path, var.replace(jnp.asarray(values[path]))) for path, var in flat.items()]
    return nnx.merge(graphdef, nnx.from_flat_state(new))


def modernbert_to_hf_state_dict(model: ModernBertCrossEncoder) -> dict[str, np.ndarray]:
    """The ``ModernBertForSequenceClassification`` state dict of a model (inverse of
    `modernbert_from_hf_state_dict`)."""
    cfg = model.cfg
    flat = {
        path: np.asarray(var.get_value(), np.float32) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    out = {}
    for hf_key, path, _, back in _modernbert_rules(cfg):
        if back is None:
            continue
        for layer in range(cfg.n_layers) if "{l}" in hf_key else [None]:
            if layer == 0 and "attn_norm" in hf_key:
                continue
            value = flat[path] if layer is None else flat[path][layer]
            out[hf_key.format(l=layer)] = np.ascontiguousarray(back(value))
    H, dh = cfg.n_heads, cfg.d_head
    for layer in range(cfg.n_layers):
        b = lambda name, layer=layer: flat[("blocks", name)][layer]
        out[f"model.layers.{layer}.attn.Wqkv.weight"] = np.concatenate(
            [b(n).transpose(1, 0, 2).reshape(cfg.d_model, H * dh).T for n in ("W_Q", "W_K", "W_V")]
        )
        out[f"model.layers.{layer}.mlp.Wi.weight"] = np.concatenate([b("W_in").T, b("W_gate").T])
        if cfg.attention_bias:
            out[f"model.layers.{layer}.attn.Wqkv.bias"] = np.concatenate(
                [b(n).reshape(-1) for n in ("b_Q", "b_K", "b_V")]
            )
        if cfg.mlp_bias:
            out[f"model.layers.{layer}.mlp.Wi.bias"] = np.concatenate([b("b_in"), b("b_gate")])
    return out
