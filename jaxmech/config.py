"""Frozen model configuration, with TransformerLens field names, and strict conversion from Hugging Face.

`EncoderConfig.from_hf_config` accepts only what the port implements exactly. Anything else (relative position
embeddings, decoder or cross-attention settings, activations other than the GELU variants and ReLU) is refused
with one error that lists every unsupported option, so a checkpoint is never silently run with different
arithmetic from the one it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
SUPPORTED_MODEL_TYPES = ("bert",)


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

    def __post_init__(self):
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
    def n_params(self) -> int:
        """Parameter count of the cross-encoder (embeddings, blocks, pooler, classifier)."""
        d, L = self.d_model, self.n_layers
        embed = (self.d_vocab + self.n_ctx + self.n_token_types) * d + 2 * d
        block = 4 * (d * d + d) + 2 * d * self.d_mlp + self.d_mlp + d + 4 * d
        return embed + L * block + (d * d + d) + (d * self.num_labels + self.num_labels)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any] | Any, *, source: str = "config") -> EncoderConfig:
        """Builds a config from a Hugging Face BERT config, refusing anything not implemented exactly.

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
            problems.append(f"model_type={model_type!r} (supported: {SUPPORTED_MODEL_TYPES})")
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
        if problems:
            raise UnsupportedConfigError(
                f"{source}: unsupported Hugging Face config option(s): " + "; ".join(problems)
            )
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
        )

    def to_hf_config(self, *, architecture: str = "BertForSequenceClassification") -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict for this config (inverse of `from_hf_config`)."""
        out = {
            "architectures": [architecture],
            "model_type": "bert",
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
