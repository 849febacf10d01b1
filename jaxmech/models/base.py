"""The abstract encoder every model family derives from, and what all of them share: hook points and the
forward's `Output`.

`Encoder` declares what the rest of jaxmech may ask of a model, whatever its blocks: the batched forward
(``model(input_ids, token_type_ids, attention_mask, capture=..., interventions=...)``) and its one-example form
`Encoder.forward_one`, the relevance score of an output (`Encoder.relevance`) or of final hidden states
(`Encoder.score_hidden`), whether it reads query and document together (``pair_input``), its family (``kind``),
its configuration (``cfg``) and **which restart engine patches it** (``engine``). Models sit below the patching
package, so a model names its engine by a key; `jaxmech.patching.engines.ENGINES` maps the key to the engine.
A new block type is a model class declaring its key plus one engine module registered there.

Families: `jaxmech.models.bert.HookedEncoder` (post-LayerNorm BERT, ELECTRA, (XLM-)RoBERTa blocks; engine
``"post_ln"``) and `jaxmech.models.modernbert.ModernBertCrossEncoder` (pre-LayerNorm blocks; engine ``"pre_ln"``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Sequence
from typing import ClassVar, final

import jax
from flax import nnx
from jaxtyping import Array, Float, Int

from jaxmech.interventions import Intervention

# --------------------------------------------------------------------------------------------------------------
# Hook points
# --------------------------------------------------------------------------------------------------------------


class Hooks(abc.ABC):
    """What a module calls at each hook point: ``x = hooks(name, x)`` (a trace-time helper, not a pytree)."""

    @abc.abstractmethod
    def wants(self, name: str) -> bool:
        """Whether anything reads or writes ``name`` (lets the forward skip optional work such as ``result``)."""

    @abc.abstractmethod
    def __call__(self, name: str, x: Array) -> Array:
        """The value the forward continues with at hook point ``name``."""


@final
class HookPoints(Hooks):
    """Applies interventions and records activations at named sites.

    Args:
        capture: Site names to record.
        interventions: Applied in order at their sites (`jaxmech.interventions.Intervention`).
        layer: The current layer index (a traced scalar inside the layer scan) or None for embedding/readout.
    """

    def __init__(self, capture: frozenset[str], interventions: Sequence[Intervention] = (), layer=None):
        self.capture = capture
        self.interventions = tuple(interventions)
        self.layer = layer
        self.records: dict[str, Array] = {}

    def wants(self, name: str) -> bool:
        """Whether anything reads or writes ``name``."""
        return name in self.capture or any(iv.site == name for iv in self.interventions)

    def __call__(self, name: str, x: Array) -> Array:
        """Applies the interventions at ``name`` and records the result if captured."""
        for iv in self.interventions:
            if iv.site == name:
                x = iv.apply(x, self.layer)
        if name in self.capture:
            self.records[name] = x
        return x

    def for_layer(self, layer) -> HookPoints:
        """The same hooks at ``layer`` (with their own records)."""
        return HookPoints(self.capture, self.interventions, layer)


NO_HOOKS = HookPoints(frozenset())
"""Hook points that record nothing and apply nothing."""


# --------------------------------------------------------------------------------------------------------------
# The forward's output and the abstract encoder
# --------------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Output:
    """What a forward returns (per batch when called on a batch).

    Attributes:
        score: The relevance score: the raw logit ``logits[..., score_label]`` for cross-encoders; for
            bi-encoders the pooled embedding has no score until compared (see
            `jaxmech.models.bert.BiEncoder.similarity`).
        logits: Classifier outputs ``[..., num_labels]`` (cross-encoders) or None.
        embedding: Pooled (and possibly normalised) embedding ``[..., d_model]`` (bi-encoders) or None.
        cache: Captured activations, site name to array (per-layer sites stacked ``[..., layer, ...]``).
    """

    score: Array | None
    logits: Array | None
    embedding: Array | None
    cache: dict[str, Array]




class Encoder(nnx.Module, abc.ABC):
    """The abstract encoder: what every model family offers the rest of jaxmech (see the module docstring).

    Subclasses are Flax NNX modules in tree mode (``jax.jit`` / ``vmap`` / ``grad`` apply to functions of the
    model) and are abstract or final; ``cfg`` is the frozen configuration (TransformerLens names). Callers ask
    the model (``pair_input``, ``relevance``, ``score_hidden``, ``readout_uses_cls_only``, ``engine``) instead of
    switching on its type.
    """

    engine: ClassVar[str]
    """Key of the restart engine that patches this model (`jaxmech.patching.engines.ENGINES`): ``"post_ln"``
    for post-LayerNorm blocks, ``"pre_ln"`` for pre-LayerNorm blocks."""
    kind: ClassVar[str]
    """``"cross"`` or ``"bi"``: the model family, for file formats and reports (never to switch behaviour on)."""
    pair_input: ClassVar[bool]
    """Whether the model reads query and document together (``[CLS] q [SEP] d [SEP]``); False when it reads
    one text and compares embeddings (then a patched run is the document's and the score needs the query's
    embedding)."""

    @abc.abstractmethod
    def forward_one(self, tokens: Int[Array, " pos"], token_type_ids: Int[Array, " pos"] | None = None,
                    attention_mask: Int[Array, " pos"] | None = None, *, capture: Iterable[str] | str = (),
                    interventions: Sequence[Intervention] = ()) -> Output:
        """Forward for one example (no batch axis); see `__call__`."""

    @abc.abstractmethod
    def __call__(self, input_ids: Int[Array, "batch pos"], token_type_ids: Int[Array, "batch pos"] | None = None,
                 attention_mask: Int[Array, "batch pos"] | None = None, *, capture: Iterable[str] | str = (),
                 interventions: Sequence[Intervention] = ()) -> Output:
        """Batched forward.

        Args:
            input_ids: Token ids ``[batch, pos]``.
            token_type_ids: Segment ids (zeros if None; ignored by models without token types).
            attention_mask: 1 for real tokens, 0 for padding; all ones if None.
            capture: Site names (or ``"all"``) whose activations to return in ``Output.cache``; static.
            interventions: Applied at their sites in every example (shared across the batch).

        Returns:
            `Output` with a leading batch axis on every array.
        """

    def run_with_cache(self, input_ids, token_type_ids=None, attention_mask=None, *, capture="all", **kw) -> Output:
        """`__call__` capturing every site by default (TransformerLens's name for it)."""
        return self(input_ids, token_type_ids, attention_mask, capture=capture, **kw)

    @abc.abstractmethod
    def relevance(self, out: Output, query_embedding: Float[Array, "... d_model"] | None = None) -> Array:
        """The scalar relevance score of a forward's `Output` (per example).

        Args:
            out: What a forward returned (batched or not).
            query_embedding: The query's embedding, for models that score by comparing embeddings (required
                there, ignored otherwise).
        """

    @abc.abstractmethod
    def score_hidden(self, hidden: Float[Array, "pos d_model"], attention_mask: Int[Array, " pos"],
                     query_embedding: Float[Array, " d_model"] | None = None) -> Float[Array, ""]:
        """The relevance score from one example's last hidden states (what the last block returns; see each
        family for whether that is before or after a final LayerNorm)."""

    @property
    @abc.abstractmethod
    def score_name(self) -> str:
        """What the relevance score is, for outputs (``"raw logit"``, ``"cosine similarity"``)."""

    @property
    @abc.abstractmethod
    def readout_uses_cls_only(self) -> bool:
        """True when the score depends on the final hidden state of position 0 ([CLS]) alone."""


__all__ = ["NO_HOOKS", "Encoder", "HookPoints", "Hooks", "Output"]
