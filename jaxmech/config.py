"""Frozen model configuration, with TransformerLens field names, and strict conversion from Hugging Face.

`EncoderConfig.from_hf_config` accepts only what the port implements exactly. Anything else (relative position
embeddings, decoder or cross-attention settings, activations other than the GELU variants and ReLU) is refused
with one error that lists every unsupported option, so a checkpoint is never silently run with different
arithmetic from the one it was trained with.

**Architectures.** BERT, ELECTRA, RoBERTa and XLM-RoBERTa are the same post-LayerNorm encoder; they differ only in
details that are fields of the one config (see `ARCHITECTURES` and `architecture_table_markdown`):

* ``positions``: ``"absolute"`` (BERT, ELECTRA: position ``t`` for the ``t``-th token) or ``"padding_offset"``
  (RoBERTa, XLM-R: fairseq's ``cumsum(tokens != pad) * (tokens != pad) + pad``, so real tokens start at
  ``pad_token_id + 1`` and padding tokens read ``W_pos[pad_token_id]``; the longest input is
  ``n_ctx - pad_token_id - 1``);
* ``n_token_types``: 2 for BERT and ELECTRA, 1 for RoBERTa-family models (every token has type 0);
* ``d_embed``: ELECTRA's ``embedding_size``; when it differs from ``d_model``, the embeddings (and their
  LayerNorm) are ``d_embed`` wide and a linear ``embed.W_proj`` maps the normalised sum to ``d_model``;
* ``head_act``: the activation between the dense layer on the first token and the output projection of the
  classification head: ``tanh`` for the BERT pooler and the RoBERTa head, erf ``gelu`` for ELECTRA's head.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
SUPPORTED_MODEL_TYPES = ("bert", "electra", "roberta", "xlm-roberta")
POSITION_SCHEMES = ("absolute", "padding_offset")
HEAD_ACTIVATIONS = ("tanh", "gelu")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one Hugging Face ``model_type`` maps onto the encoder (checkpoint key names live in `jaxmech.hf.convert`).

    Attributes:
        model_type: Hugging Face ``model_type``.
        cross_class: ``transformers`` class of the cross-encoder.
        bi_class: ``transformers`` class of the bare trunk (bi-encoders).
        positions: Position scheme (see the module docstring).
        head_act: Activation of the classification head's dense layer.
        head: The classification head, in words.
        pair_format: The tokenizer's pair layout.
        examples: Public checkpoints of this architecture.
        n_token_types: Token types its tokenizer gives a pair (2: query 0, document 1; 1: all 0).
        pooler: Whether the head is the trunk's pooler and a classifier (BERT: ``pooler.dense``); else a
            classification head of its own (``classifier.dense`` and ``classifier.out_proj``).
        embed_proj: Whether ``embedding_size`` may differ from ``hidden_size`` (ELECTRA's ``embeddings_project``).
        hf_extra: Fixed ``config.json`` entries this architecture's configs carry (`EncoderConfig.to_hf_config`).
    """

    model_type: str
    cross_class: str
    bi_class: str
    positions: str
    head_act: str
    head: str
    pair_format: str
    examples: tuple[str, ...]
    n_token_types: int = 2
    pooler: bool = False
    embed_proj: bool = False
    hf_extra: tuple[tuple[str, int], ...] = ()


_ROBERTA_PAIR = "<s> q </s></s> d </s>, all token types 0"
_ROBERTA_IDS = (("bos_token_id", 0), ("eos_token_id", 2))
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert", "BertForSequenceClassification", "BertModel", "absolute", "tanh",
                         "pooler (dense, tanh) on [CLS], then classifier", "[CLS] q [SEP] d [SEP], types 0 / 1",
                         ("cross-encoder/ms-marco-MiniLM-L-12-v2",), pooler=True),
    "electra": Architecture("electra", "ElectraForSequenceClassification", "ElectraModel", "absolute", "gelu",
                            "dense, erf GELU, out_proj on [CLS]; no pooler", "[CLS] q [SEP] d [SEP], types 0 / 1",
                            ("cross-encoder/ms-marco-electra-base",), embed_proj=True),
    "roberta": Architecture("roberta", "RobertaForSequenceClassification", "RobertaModel", "padding_offset", "tanh",
                            "dense, tanh, out_proj on <s>; no pooler", _ROBERTA_PAIR,
                            ("cross-encoder/stsb-roberta-base",), n_token_types=1, hf_extra=_ROBERTA_IDS),
    "xlm-roberta": Architecture("xlm-roberta", "XLMRobertaForSequenceClassification", "XLMRobertaModel",
                                "padding_offset", "tanh", "dense, tanh, out_proj on <s>; no pooler", _ROBERTA_PAIR,
                                ("BAAI/bge-reranker-base", "BAAI/bge-reranker-v2-m3"), n_token_types=1,
                                hf_extra=_ROBERTA_IDS),
}


class UnsupportedConfigError(ValueError):
    """A Hugging Face config asks for something jaxmech does not implement."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of a BERT-family encoder (post-LayerNorm), named as in TransformerLens.

    Attributes:
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads per block.
        d_head: Width of one head (``d_model // n_heads`` for BERT).
        d_mlp: Hidden width of the MLP.
        d_vocab: Vocabulary size.
        n_ctx: Maximum number of positions (size of the position embedding).
        n_token_types: Number of token types (segment embeddings).
        act_fn: MLP activation, one of ``SUPPORTED_ACTIVATIONS``.
        eps: LayerNorm epsilon.
        num_labels: Outputs of the classification head (1 for a relevance score).
        pad_token_id: Id of the padding token.
        initializer_range: Std of the normal initialiser (only used for fresh weights).
        model_type: Hugging Face ``model_type`` (a key of `ARCHITECTURES`): checkpoint names and ``transformers``
            classes.
        positions: Position scheme, one of `POSITION_SCHEMES`.
        d_embed: Embedding width (ELECTRA's ``embedding_size``); None means ``d_model`` (no projection).
        head_act: Activation of the classification head's dense layer, one of `HEAD_ACTIVATIONS`.
    """

    n_layers: int = 12
    d_model: int = 384
    n_heads: int = 12
    d_head: int = 32
    d_mlp: int = 1536
    d_vocab: int = 30522
    n_ctx: int = 512
    n_token_types: int = 2
    act_fn: str = "gelu"
    eps: float = 1e-12
    num_labels: int = 1
    pad_token_id: int = 0
    initializer_range: float = 0.02
    model_type: str = "bert"
    positions: str = "absolute"
    d_embed: int | None = None
    head_act: str = "tanh"

    def __post_init__(self):
        for name, value, allowed in (("model_type", self.model_type, SUPPORTED_MODEL_TYPES),
                                     ("positions", self.positions, POSITION_SCHEMES),
                                     ("head_act", self.head_act, HEAD_ACTIVATIONS)):
            if value not in allowed:
                raise UnsupportedConfigError(f"{name}={value!r} is not supported; choose one of {allowed}")
        if self.d_embed is not None and self.d_embed < 1:
            raise UnsupportedConfigError(f"d_embed must be positive or None, got {self.d_embed}")
        if self.positions == "padding_offset" and self.n_ctx <= self.pad_token_id + 1:
            raise UnsupportedConfigError(
                f"positions='padding_offset' needs n_ctx > pad_token_id + 1, got n_ctx={self.n_ctx}, "
                f"pad_token_id={self.pad_token_id}"
            )
        if self.act_fn not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedConfigError(
                f"act_fn={self.act_fn!r} is not supported; choose one of {SUPPORTED_ACTIVATIONS}"
            )
        if self.n_heads * self.d_head != self.d_model:
            raise UnsupportedConfigError(
                f"n_heads * d_head must equal d_model, got {self.n_heads} * {self.d_head} != {self.d_model}"
            )
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "num_labels"):
            if getattr(self, name) < 1:
                raise UnsupportedConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def arch(self) -> Architecture:
        """The `Architecture` of ``model_type``."""
        return ARCHITECTURES[self.model_type]

    @property
    def embed_width(self) -> int:
        """Width of the embeddings and their LayerNorm (``d_embed``, else ``d_model``)."""
        return self.d_model if self.d_embed is None else self.d_embed

    @property
    def has_embed_proj(self) -> bool:
        """Whether a linear map takes the normalised embeddings from ``d_embed`` to ``d_model`` (ELECTRA)."""
        return self.embed_width != self.d_model

    @property
    def max_length(self) -> int:
        """Longest input the position embedding supports (``n_ctx``, less ``pad_token_id + 1`` for RoBERTa)."""
        return self.n_ctx - (self.pad_token_id + 1 if self.positions == "padding_offset" else 0)

    @property
    def n_params(self) -> int:
        """Parameter count of the cross-encoder (embeddings, blocks, pooler / head dense layer, classifier)."""
        d, L, e = self.d_model, self.n_layers, self.embed_width
        embed = (self.d_vocab + self.n_ctx + self.n_token_types) * e + 2 * e
        if self.has_embed_proj:
            embed += e * d + d
        block = 4 * (d * d + d) + 2 * d * self.d_mlp + self.d_mlp + d + 4 * d
        return embed + L * block + (d * d + d) + (d * self.num_labels + self.num_labels)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any] | Any, *, source: str = "config") -> EncoderConfig:
        """Builds a config from a Hugging Face BERT / ELECTRA / (XLM-)RoBERTa config, refusing anything not
        implemented exactly.

        Args:
            hf: The ``config.json`` contents as a dict, or a ``transformers.PretrainedConfig``.
            source: Where the config came from, for error messages.

        Returns:
            The equivalent `EncoderConfig`.

        Raises:
            UnsupportedConfigError: Listing every unsupported option found.
        """
        if not isinstance(hf, dict):
            hf = hf.to_dict()
        problems = []
        model_type = hf.get("model_type", "bert")
        if model_type not in SUPPORTED_MODEL_TYPES:
            problems.append(f"model_type={model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)}, and "
                            "modernbert, which jaxmech.hf.loading.load_model runs as its own blocks "
                            "(jaxmech.models.modernbert))")
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            problems.append(f"position_embedding_type={pos_type!r} (only 'absolute' is implemented)")
        if hf.get("is_decoder", False):
            problems.append("is_decoder=True (decoder/causal attention is not implemented)")
        if hf.get("add_cross_attention", False):
            problems.append("add_cross_attention=True (cross-attention is not implemented)")
        act = hf.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in SUPPORTED_ACTIVATIONS:
            problems.append(f"hidden_act={act!r} (supported: {SUPPORTED_ACTIVATIONS})")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in hf]
        if missing:
            problems.append(f"missing required keys {missing}")
        elif hf["hidden_size"] % hf["num_attention_heads"]:
            problems.append(
                f"hidden_size={hf['hidden_size']} is not divisible by num_attention_heads="
                f"{hf['num_attention_heads']}"
            )
        embedding_size = hf.get("embedding_size")
        projecting = [name for name, a in ARCHITECTURES.items() if a.embed_proj]
        if embedding_size is not None and model_type not in projecting:
            problems.append(f"embedding_size={embedding_size} (an embedding projection exists only for "
                            f"{', '.join(map(repr, projecting))})")
        if hf.get("type_vocab_size", 2) < 1:
            problems.append(f"type_vocab_size={hf.get('type_vocab_size')} (need at least one token type)")
        if problems:
            raise UnsupportedConfigError(
                f"{source}: unsupported Hugging Face config option(s): " + "; ".join(problems)
            )
        arch = ARCHITECTURES[model_type]
        num_labels = hf.get("num_labels")
        if num_labels is None:
            num_labels = len(hf["id2label"]) if hf.get("id2label") else 1
        return cls(
            n_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"],
            d_head=hf["hidden_size"] // hf["num_attention_heads"],
            d_mlp=hf.get("intermediate_size", 4 * hf["hidden_size"]),
            d_vocab=hf.get("vocab_size", 30522),
            n_ctx=hf.get("max_position_embeddings", 512),
            n_token_types=hf.get("type_vocab_size", 2),
            act_fn=act,
            eps=hf.get("layer_norm_eps", 1e-12),
            num_labels=num_labels,
            pad_token_id=hf.get("pad_token_id", 0) or 0,
            initializer_range=hf.get("initializer_range", 0.02),
            model_type=model_type,
            positions=arch.positions,
            d_embed=embedding_size if embedding_size not in (None, hf["hidden_size"]) else None,
            head_act=arch.head_act,
        )

    def hf_class(self, kind: str = "cross") -> str:
        """The ``transformers`` class of this architecture for a ``"cross"`` or ``"bi"`` model."""
        if kind not in ("cross", "bi"):
            raise ValueError(f"unknown model kind {kind!r}; expected 'cross' or 'bi'")
        return self.arch.cross_class if kind == "cross" else self.arch.bi_class

    def to_hf_config(self, *, architecture: str | None = None) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict for this config (inverse of `from_hf_config`).

        Args:
            architecture: The ``architectures`` entry; default: this architecture's sequence-classification class.
        """
        architecture = architecture or self.hf_class("cross")
        out = {
            "architectures": [architecture],
            "model_type": self.model_type,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_mlp,
            "vocab_size": self.d_vocab,
            "max_position_embeddings": self.n_ctx,
            "type_vocab_size": self.n_token_types,
            "hidden_act": self.act_fn,
            "layer_norm_eps": self.eps,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "position_embedding_type": "absolute",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
        }
        if self.arch.embed_proj:
            out["embedding_size"] = self.embed_width
        out.update(self.arch.hf_extra)
        if architecture.endswith("ForSequenceClassification"):
            out["num_labels"] = self.num_labels
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> EncoderConfig:
        """Reads a Hugging Face ``config.json`` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config.json not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_hf_config(data, source=str(path))


# The exact shapes of cross-encoder/ms-marco-MiniLM-L-12-v2 (33,360,385 parameters) and of MiniLM-L6-H384.
MINILM_L12_H384 = EncoderConfig()
MINILM_L6_H384 = dataclasses.replace(MINILM_L12_H384, n_layers=6)
