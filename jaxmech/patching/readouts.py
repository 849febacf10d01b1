"""Readouts: what a patched run measures, declared as data (the score by default).

Every patching family, activation or path, measures one scalar per patched run. By default that is the
model's score (`Score`: the cross-encoder's logit, the bi-encoder's cosine); a readout declares another:

* `AttentionWeight` ``(layer, head, from_, to)``: head ``layer.head``'s attention from the ``from_``
  positions to the ``to`` positions (E7, paper-notes §4). ``pattern[from, to]`` is **summed over the from
  rows and averaged over the to columns** by default (the paper's E7: "attention from all query rows summed,
  averaged over the word's pieces"); ``from_reduce`` / ``to_reduce`` choose ``"sum"`` or ``"mean"``.
* `LogitMargin` ``(i, j)``: ``logits[i] - logits[j]`` of a cross-encoder head with ``num_labels > 1``
  (refused on one-label heads and on bi-encoders, which have no logits).
* `Projection` ``(site, layer, position, direction)``: ``<site[layer][position], direction>``, averaged over
  the positions of a token type by default (``reduce="sum"`` sums), for a ``d_model`` site (``resid_pre``,
  ``resid_mid``, ``resid_post``, their normalized forms, ``attn_out``, ``mlp_out``).

**Positions.** A position selector is a position index (``0`` = [CLS]) or token types of
`jaxmech.data.records.TOKEN_TYPES` (``CLS``, ``SEP1``, ``SEP2``, ``Qplus``, ``Qsub``, ``Dinj``, ``Dplus``,
``Dsub``, ``Dother``; case-insensitive), joined with ``|``, or the groups ``Q`` (``Qplus|Qsub``), ``D``
(``Dinj|Dplus|Dsub|Dother``) and ``SEP`` (``SEP1|SEP2``), or ``@KEY``: the positions listed in each pair's
``meta[KEY]`` (E7's ``@moved_positions``: the first-word positions, where ``idf_front`` puts the moved
highest-IDF word in the perturbed input; its position map is the identity, so both runs are read at the same
positions, as in the paper). Selectors name **baseline positions** (the pair's
token types are the baseline's); the perturbed run is read at their aligned positions (the pair's position
map, as patching moves activations), unaligned positions dropped. A pair with no position of a selector
reads NaN (its effects are NaN and the pair is flagged as having no result). With ``reverse`` the patched run
is the perturbed input and is read at the aligned positions.

**Specs.** `parse_readout` reads the command line's and sweep configs' string form (`Readout.spec` writes
it)::

    score
    attn:LAYER.HEAD:FROM->TO[:FROM_REDUCE,TO_REDUCE]      attn:10.7:CLS->Qplus   attn:3.1:Q->5:sum,sum
    margin:I,J                                             margin:1,0
    proj:SITE:LAYER:POSITION:FILE.npy[:REDUCE]             proj:resid_post:4:CLS:dir.npy

**Classes.** `Readout` is abstract; a `FinalReadout` reads the final hidden states (`Score`, `LogitMargin`), a
`LayerReadout` reduces a site at one layer over weighted positions (`AttentionWeight`, `Projection`); the four
kinds are final. A readout's behaviour is its methods (``spec``, ``parse``, ``check``/``check_shape``,
``final_value`` or ``site_value``, ``run_value``), so no caller tests its type; a new readout is one class here
(its ``kind`` is its spec's prefix) and its tests. This module imports no JAX (a config's readout is parsed
without it); what kernels read is in `jaxmech.patching.reading`.

**How the engine computes a layer readout.** A readout at layer ``L`` (attention weight, projection) needs
the patched run's ``resid_pre[L]`` at *every* row (the attention at ``L`` reads every key), then block ``L``
itself (with the patch applied when the patch is at ``L``). The kernels therefore stop the restarted engine
after layer ``L`` (`jaxmech.patching.engines.post_ln.patched_hidden` with ``stop_layer=L``, full rows; the
[CLS]-only last block is never used; `jaxmech.patching.reading.layer_value`), and a patch above ``L`` reads the
baseline value. Path to the score with frozen attention propagates every row to ``L`` and freezes block ``L``'s
``z`` too; path families through receiver heads read the readout in their second stage. Attribution (gradient)
estimates are refused for readouts other than the score.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, final

import numpy as np

from jaxmech.data.records import TOKEN_TYPES

if TYPE_CHECKING:
    from jaxtyping import Array, Float

TYPE_GROUPS = {"Q": ("Qplus", "Qsub"), "D": ("Dinj", "Dplus", "Dsub", "Dother"), "SEP": ("SEP1", "SEP2")}
"""Groups of token types a selector may name."""
REDUCTIONS = ("sum", "mean")
PROJECTION_SITES = ("resid_pre", "resid_mid", "resid_post", "normalized_resid_mid", "normalized_resid_post",
                    "attn_out", "mlp_out")
"""Sites a `Projection` may read (``[pos, d_model]`` per layer)."""

Selector = int | str


class ReadoutError(ValueError):
    """A readout spec or combination that cannot be computed (the message names the field)."""


def _canon_selector(sel, field: str, where: str) -> Selector:
    """A position index or a ``|``-joined list of canonical token type / group names."""
    if isinstance(sel, (int, np.integer)) and not isinstance(sel, bool):
        if sel < 0:
            raise ReadoutError(f"{where}: {field} position {sel} must be >= 0")
        return int(sel)
    if not isinstance(sel, str) or not sel.strip():
        raise ReadoutError(f"{where}: {field} must be a position or token type, got {sel!r}")
    s = sel.strip()
    if s.isdigit():
        return int(s)
    if s.startswith("@"):
        if not s[1:].isidentifier():
            raise ReadoutError(f"{where}: {field} {s!r}: @KEY needs a meta key such as @moved_positions")
        return s
    known = {t.lower(): t for t in (*TOKEN_TYPES, *TYPE_GROUPS)}
    names = []
    for part in s.split("|"):
        name = known.get(part.strip().lower())
        if name is None:
            raise ReadoutError(f"{where}: {field} {part.strip()!r} is not a position or token type; known types: "
                               f"{', '.join(TOKEN_TYPES)}, groups {', '.join(TYPE_GROUPS)}")
        names.append(name)
    return "|".join(dict.fromkeys(names))


def _check_reduce(value: str, field: str, where: str) -> None:
    if value not in REDUCTIONS:
        raise ReadoutError(f"{where}: {field} {value!r}; choose one of {REDUCTIONS}")


def _check_layer(layer: int, n_layers: int, where: str) -> None:
    if not 0 <= layer < n_layers:
        raise ReadoutError(f"{where}: layer {layer} is out of range (the model has layers 0..{n_layers - 1})")


def _int(text: str, field: str, spec: str) -> int:
    t = text.strip()
    if not t.lstrip("-").isdigit():
        raise ReadoutError(f"readout {spec!r}: {field} {t!r} is not an integer")
    return int(t)


class Readout(abc.ABC):
    """What a patched run measures: one scalar per run (abstract; see the module docstring).

    Attributes:
        kind: The spec's prefix (``"score"``, ``"margin"``, ``"attn"``, ``"proj"``); subclasses with a kind are
            what `parse_readout` reads.
        layer: The layer a layer readout reads (None: the final hidden states).
        site: The site a layer readout reads (None for final readouts).
    """

    kind: ClassVar[str] = ""
    layer: int | None  # final readouts: None (a class attribute); layer readouts: a field
    site: str | None
    _kinds: ClassVar[dict[str, type[Readout]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            Readout._kinds[cls.kind] = cls

    @property
    def is_score(self) -> bool:
        """Whether this is the model's score (results then equal those of patching without a readout)."""
        return False

    @property
    def selectors(self) -> tuple[tuple[Selector, str], ...]:
        """The positions it reads, each with its reduction (``()`` for final readouts; see `bind`)."""
        return ()

    @abc.abstractmethod
    def spec(self) -> str:
        """The string form `parse_readout` reads."""

    @classmethod
    @abc.abstractmethod
    def parse(cls, rest: str, spec: str, base_dir: str | Path | None) -> Readout:
        """The readout of a spec ``KIND:REST`` (``spec`` whole, for messages; ``base_dir`` for files).

        Raises:
            ReadoutError: Naming the malformed field.
        """

    def check(self, model) -> None:
        """Refuses what ``model`` cannot produce (default: `check_shape` against its config).

        Raises:
            ReadoutError: Naming the field.
        """
        self.check_shape(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model)

    def check_shape(self, n_layers: int, n_heads: int, d_model: int) -> None:
        """Refuses what a model of this shape cannot produce (layers, heads, vector sizes; default: nothing).

        Raises:
            ReadoutError: Naming the field.
        """
        return None

    @abc.abstractmethod
    def run_value(self, model, out, cache, weights, query_embedding) -> np.ndarray:
        """``[pair]`` values of unpatched runs, from a full forward's output and the captured ``cache`` (a
        `jaxmech.patching.reading.run_values` step).

        Args:
            model: The encoder.
            out: The forward's output.
            cache: ``site -> [pair, layer, ...]`` (the readout's site captured).
            weights: ``[pair, 2, pos]`` the run's readout weights (layer readouts).
            query_embedding: ``[pair, d_model]`` (bi-encoders' score).
        """


class FinalReadout(Readout):
    """A readout of the final hidden states (abstract): the engine runs to the end and calls `final_value`."""

    layer = None
    site = None

    @abc.abstractmethod
    def final_value(self, model, hidden, attention_mask, query_embedding) -> Float[Array, ""]:
        """The value from one example's final hidden states ``[pos, d_model]``."""


class LayerReadout(Readout):
    """A readout of one site at one layer, reduced over weighted positions (abstract): the engine stops after
    ``layer`` and calls `site_value` on the site's activation (`jaxmech.patching.reading.read_block`)."""

    @abc.abstractmethod
    def site_value(self, act: Array, weights: Float[Array, "2 pos"]) -> Float[Array, ""]:
        """The scalar of one example's activation of ``site`` at ``layer`` (``weights``: `bind` 's rows)."""

    def run_value(self, model, out, cache, weights, query_embedding) -> np.ndarray:
        """``site_value`` of each pair's activation at ``layer``."""
        import jax
        import jax.numpy as jnp

        act = cache[self.site][:, self.layer]
        return np.asarray(jax.vmap(self.site_value)(act, jnp.asarray(weights)))


@final
@dataclasses.dataclass(frozen=True)
class Score(FinalReadout):
    """The model's score (the default; results are bit-identical to patching without a readout)."""

    kind: ClassVar[str] = "score"

    @property
    def is_score(self) -> bool:
        """True."""
        return True

    def spec(self) -> str:
        """``"score"``."""
        return "score"

    @classmethod
    def parse(cls, rest: str, spec: str, base_dir=None) -> Score:
        """`SCORE` (``score`` takes no fields)."""
        if rest:
            raise ReadoutError(f"readout {spec!r}: score takes no fields")
        return SCORE

    def check(self, model) -> None:
        """Always computable."""

    def final_value(self, model, hidden, attention_mask, query_embedding) -> Float[Array, ""]:
        """The score from one example's final hidden states."""
        return model.score_hidden(hidden, attention_mask, query_embedding)

    def run_value(self, model, out, cache, weights, query_embedding) -> np.ndarray:
        """The model's relevance scores."""
        return np.asarray(model.relevance(out, query_embedding))


@final
@dataclasses.dataclass(frozen=True)
class AttentionWeight(LayerReadout):
    """Head ``layer.head``'s attention from ``from_`` positions to ``to`` positions.

    Attributes:
        layer: The head's layer.
        head: The head.
        from_: Query (destination) positions: a position or token types (see the module docstring).
        to: Key (source) positions.
        from_reduce: ``"sum"`` (default, the paper's E7) or ``"mean"`` over the from rows.
        to_reduce: ``"mean"`` (default, the paper's E7) or ``"sum"`` over the to columns.
    """

    kind: ClassVar[str] = "attn"
    layer: int
    head: int
    from_: Selector = "CLS"
    to: Selector = "Qplus"
    from_reduce: str = "sum"
    to_reduce: str = "mean"
    site = "pattern"

    def __post_init__(self):
        where = f"readout attn:{self.layer}.{self.head}"
        if self.layer < 0 or self.head < 0:
            raise ReadoutError(f"{where}: layer and head must be >= 0")
        object.__setattr__(self, "from_", _canon_selector(self.from_, "from", where))
        object.__setattr__(self, "to", _canon_selector(self.to, "to", where))
        _check_reduce(self.from_reduce, "from reduction", where)
        _check_reduce(self.to_reduce, "to reduction", where)

    def spec(self) -> str:
        """``"attn:L.H:FROM->TO:FROM_REDUCE,TO_REDUCE"``."""
        return f"attn:{self.layer}.{self.head}:{self.from_}->{self.to}:{self.from_reduce},{self.to_reduce}"

    @classmethod
    def parse(cls, rest: str, spec: str, base_dir=None) -> AttentionWeight:
        """``LAYER.HEAD:FROM->TO[:FROM_REDUCE,TO_REDUCE]``."""
        parts = rest.split(":") if rest else []
        if len(parts) not in (2, 3):
            raise ReadoutError(f"readout {spec!r}: expected attn:LAYER.HEAD:FROM->TO[:FROM_REDUCE,TO_REDUCE]")
        lh = parts[0].split(".")
        if len(lh) != 2:
            raise ReadoutError(f"readout {spec!r}: head {parts[0]!r} is not LAYER.HEAD (e.g. 10.7)")
        layer, head = _int(lh[0], "layer", spec), _int(lh[1], "head", spec)
        if "->" not in parts[1]:
            raise ReadoutError(f"readout {spec!r}: positions {parts[1]!r} are not FROM->TO (e.g. CLS->Qplus)")
        src, dst = parts[1].split("->", 1)
        reduces = ("sum", "mean")
        if len(parts) == 3:
            reduces = tuple(r.strip() for r in parts[2].split(","))
            if len(reduces) != 2:
                raise ReadoutError(f"readout {spec!r}: reductions {parts[2]!r} are not FROM_REDUCE,TO_REDUCE "
                                   "(e.g. sum,mean)")
        try:
            return cls(layer, head, src, dst, *reduces)
        except ReadoutError as err:
            raise ReadoutError(f"{err} (in {spec!r})") from None

    @property
    def selectors(self) -> tuple[tuple[Selector, str], tuple[Selector, str]]:
        """``((from, reduce), (to, reduce))``."""
        return (self.from_, self.from_reduce), (self.to, self.to_reduce)

    def check_shape(self, n_layers: int, n_heads: int, d_model: int) -> None:
        """Refuses a head outside the model."""
        where = f"readout {self.spec()!r}"
        _check_layer(self.layer, n_layers, where)
        if self.head >= n_heads:
            raise ReadoutError(f"{where}: head {self.head} is out of range (heads 0..{n_heads - 1})")

    def site_value(self, act: Float[Array, "head_index query_pos key_pos"], weights: Float[Array, "2 pos"]
                   ) -> Float[Array, ""]:
        """``from_weights @ pattern[head] @ to_weights``."""
        return weights[0] @ act[self.head] @ weights[1]


@final
@dataclasses.dataclass(frozen=True)
class LogitMargin(FinalReadout):
    """``logits[i] - logits[j]`` of a multi-label cross-encoder head.

    Attributes:
        i: First label.
        j: Second label.
    """

    kind: ClassVar[str] = "margin"
    i: int
    j: int

    def __post_init__(self):
        if self.i == self.j:
            raise ReadoutError(f"readout {self.spec()!r}: labels i and j must differ")
        if min(self.i, self.j) < 0:
            raise ReadoutError(f"readout {self.spec()!r}: labels must be >= 0")

    def spec(self) -> str:
        """``"margin:I,J"``."""
        return f"margin:{self.i},{self.j}"

    @classmethod
    def parse(cls, rest: str, spec: str, base_dir=None) -> LogitMargin:
        """``I,J``."""
        labels = rest.split(",")
        if ":" in rest or not rest or len(labels) != 2:
            raise ReadoutError(f"readout {spec!r}: labels must be I,J (e.g. margin:1,0)")
        return cls(_int(labels[0], "label i", spec), _int(labels[1], "label j", spec))

    def check(self, model) -> None:
        """Refuses models without a multi-label head and labels out of range."""
        n = getattr(model.cfg, "num_labels", 1)
        if not model.pair_input or not hasattr(model, "classifier"):
            raise ReadoutError(f"readout {self.spec()!r}: a logit margin needs a cross-encoder's classification "
                               "head; this model compares embeddings (no logits)")
        if n < 2:
            raise ReadoutError(f"readout {self.spec()!r}: the model's head has num_labels={n}; a logit margin "
                               "needs num_labels > 1 (use the score)")
        if max(self.i, self.j) >= n:
            raise ReadoutError(f"readout {self.spec()!r}: label out of range for num_labels={n}")

    def final_value(self, model, hidden, attention_mask, query_embedding) -> Float[Array, ""]:
        """``logits[i] - logits[j]`` from one example's final hidden states."""
        from jaxmech.models.bert import NO_HOOKS

        logits = model.readout(hidden, attention_mask, NO_HOOKS).logits
        return logits[self.i] - logits[self.j]

    def run_value(self, model, out, cache, weights, query_embedding) -> np.ndarray:
        """``logits[:, i] - logits[:, j]``."""
        return np.asarray(out.logits[:, self.i] - out.logits[:, self.j])


@final
@dataclasses.dataclass(frozen=True)
class Projection(LayerReadout):
    """``<site[layer][position], direction>`` (reduced over the positions of a type).

    Attributes:
        site: A ``d_model`` site of `PROJECTION_SITES`.
        layer: The layer.
        position: A position or token types.
        direction: ``d_model`` floats.
        reduce: ``"mean"`` (default) or ``"sum"`` over the positions.
        source: Where the direction came from (a ``.npy`` file), for the spec; not compared.
    """

    kind: ClassVar[str] = "proj"
    site: str
    layer: int
    position: Selector
    direction: tuple[float, ...]
    reduce: str = "mean"
    source: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        where = f"readout proj:{self.site}:{self.layer}"
        if self.site not in PROJECTION_SITES:
            raise ReadoutError(f"{where}: site {self.site!r} cannot be projected; choose one of {PROJECTION_SITES}")
        if self.layer < 0:
            raise ReadoutError(f"{where}: layer must be >= 0")
        object.__setattr__(self, "position", _canon_selector(self.position, "position", where))
        d = np.asarray(self.direction, np.float64).ravel()
        if d.size == 0 or not np.isfinite(d).all():
            raise ReadoutError(f"{where}: direction must be a non-empty vector of finite numbers")
        object.__setattr__(self, "direction", tuple(float(x) for x in d.astype(np.float32)))
        _check_reduce(self.reduce, "reduction", where)

    def spec(self) -> str:
        """``"proj:SITE:LAYER:POSITION:FILE:REDUCE"`` (``<d_model floats>`` without a file)."""
        src = self.source or f"<{len(self.direction)} floats>"
        return f"proj:{self.site}:{self.layer}:{self.position}:{src}:{self.reduce}"

    @classmethod
    def parse(cls, rest: str, spec: str, base_dir: str | Path | None = None) -> Projection:
        """``SITE:LAYER:POSITION:FILE.npy[:REDUCE]`` (a relative file is read from ``base_dir``)."""
        parts = rest.split(":") if rest else []
        if len(parts) not in (4, 5):
            raise ReadoutError(f"readout {spec!r}: expected proj:SITE:LAYER:POSITION:FILE.npy[:REDUCE]")
        site, layer, pos, file = parts[0].strip(), _int(parts[1], "layer", spec), parts[2], parts[3].strip()
        path = Path(file)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        if path.suffix != ".npy":
            raise ReadoutError(f"readout {spec!r}: direction file {file!r} must be a .npy file")
        try:
            direction = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ReadoutError(f"readout {spec!r}: direction file {str(path)!r} cannot be read: {err}") from None
        if direction.ndim != 1:
            raise ReadoutError(f"readout {spec!r}: direction file {file!r} holds shape {direction.shape}; "
                               "expected a vector [d_model]")
        try:
            return cls(site, layer, pos, tuple(direction.tolist()), parts[4].strip() if len(parts) == 5 else "mean",
                       source=file)
        except ReadoutError as err:
            raise ReadoutError(f"{err} (in {spec!r})") from None

    @property
    def selectors(self) -> tuple[tuple[Selector, str]]:
        """``((position, reduce),)``."""
        return ((self.position, self.reduce),)

    def check_shape(self, n_layers: int, n_heads: int, d_model: int) -> None:
        """Refuses a layer outside the model and a direction of the wrong size."""
        where = f"readout {self.spec()!r}"
        _check_layer(self.layer, n_layers, where)
        if len(self.direction) != d_model:
            raise ReadoutError(f"{where}: direction has {len(self.direction)} entries; the model's d_model is "
                               f"{d_model}")

    def site_value(self, act: Float[Array, "pos d_model"], weights: Float[Array, "2 pos"]) -> Float[Array, ""]:
        """``sum_t w[t] <act[t], direction>``."""
        import jax.numpy as jnp

        return weights[0] @ (act @ jnp.asarray(self.direction, act.dtype))


SCORE = Score()


def parse_readout(spec: str | None, *, base_dir: str | Path | None = None) -> Readout:
    """A readout from its string form (see the module docstring); ``None``/``""``/``"score"`` is `Score`.

    Args:
        spec: E.g. ``"attn:10.7:CLS->Qplus"``, ``"margin:1,0"``, ``"proj:resid_post:4:CLS:dir.npy"``.
        base_dir: Folder that relative ``.npy`` paths are read from (default: the working directory).

    Raises:
        ReadoutError: Naming the malformed field.
    """
    if spec is None or not str(spec).strip() or str(spec).strip() == "score":
        return SCORE
    spec = str(spec).strip()
    kind, _, rest = spec.partition(":")
    cls = Readout._kinds.get(kind)
    if cls is None:
        kinds = list(Readout._kinds)
        raise ReadoutError(f"readout {spec!r}: unknown kind {kind!r}; choose {', '.join(kinds[:-1])} or {kinds[-1]}")
    return cls.parse(rest, spec, base_dir)


# -- binding to pairs --------------------------------------------------------------------------------------------


def _selector_mask(sel: Selector, pair, where: str) -> np.ndarray:
    """``[len(baseline)]`` bool mask of a selector on one pair's baseline positions."""
    n = len(pair.baseline_ids)
    mask = np.zeros(n, bool)
    if isinstance(sel, int):
        if sel < n:
            mask[sel] = True
        return mask
    if sel.startswith("@"):
        positions = (pair.meta or {}).get(sel[1:])
        if not isinstance(positions, list) or not all(isinstance(i, int) and 0 <= i < n for i in positions):
            raise ReadoutError(f"{where}: pair {pair.name or pair.qid!r} has no list of positions (< {n}) in "
                               f"meta[{sel[1:]!r}] (found {positions!r:.60})")
        mask[positions] = True
        return mask
    if pair.token_types is None:
        raise ReadoutError(f"{where}: pair {pair.name or pair.qid!r} has no token types (a dataset from "
                           "`jaxmech dataset build` has them); select positions by index instead")
    wanted = {t for name in sel.split("|") for t in TYPE_GROUPS.get(name, (name,))}
    return np.array([t in wanted for t in pair.token_types], bool)


def _weights(mask: np.ndarray, reduce: str, T: int) -> np.ndarray:
    w = np.zeros(T, np.float32)
    if not mask.any():
        return np.full(T, np.nan, np.float32)
    w[: len(mask)] = mask
    return w / mask.sum() if reduce == "mean" else w


@dataclasses.dataclass(frozen=True)
class BoundReadout:
    """A readout with its per-pair position weights for one batch.

    Attributes:
        readout: The readout.
        baseline: ``[pair, 2, pos]`` weights on the baseline input (row 0: from / projection positions;
            row 1: to positions); NaN for a pair without such a position.
        perturbed: Same on the perturbed input (the aligned positions).
    """

    readout: Readout
    baseline: np.ndarray | None = None
    perturbed: np.ndarray | None = None

    def oriented(self, reverse: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(patched run's weights, source run's weights)``."""
        return (self.perturbed, self.baseline) if reverse else (self.baseline, self.perturbed)


def bind(readout: Readout, pairs: Sequence, n_pos: int, n_pairs: int | None = None) -> BoundReadout:
    """Per-pair position weights of ``readout`` for a batch of ``pairs`` padded to ``n_pos`` positions.

    Args:
        readout: The readout.
        pairs: The batch's `jaxmech.data.records.AlignedPair` s, in batch order.
        n_pos: The batch's padded length.
        n_pairs: The batch's size with inert filler pairs (copies of the first pair's weights).

    Raises:
        ReadoutError: If a token-type selector meets a pair without token types.
    """
    if readout.layer is None:
        return BoundReadout(readout)
    where = f"readout {readout.spec()!r}"
    base = np.zeros((len(pairs), 2, n_pos), np.float32)
    pert = np.zeros_like(base)
    for p, pair in enumerate(pairs):
        pm = np.asarray(pair.position_map)
        for row, (sel, reduce) in enumerate(readout.selectors):
            mask = _selector_mask(sel, pair, where)
            base[p, row] = _weights(mask, reduce, n_pos)
            pmask = np.zeros(len(pair.perturbed_ids), bool)
            pmask[pm[mask & (pm >= 0)]] = True
            pert[p, row] = _weights(pmask, reduce, n_pos)
    if n_pairs is not None and n_pairs > len(pairs):
        fill = n_pairs - len(pairs)
        base = np.concatenate([base, np.repeat(base[:1], fill, 0)])
        pert = np.concatenate([pert, np.repeat(pert[:1], fill, 0)])
    return BoundReadout(readout, base, pert)


def as_bound(readout) -> BoundReadout:
    """A `BoundReadout` from ``None``, a `Readout` that reads no positions, or a `BoundReadout`.

    Raises:
        ReadoutError: For a layer readout that is not bound to the pairs (see `bind`).
    """
    if readout is None:
        return BoundReadout(SCORE)
    if isinstance(readout, BoundReadout):
        return readout
    if readout.layer is not None:
        raise ReadoutError(f"readout {readout.spec()!r} reads positions: bind it to the batch's pairs first "
                           "(jaxmech.patching.readouts.bind) or use jaxmech.patching.run.run_patching")
    return BoundReadout(readout)


# -- checks ------------------------------------------------------------------------------------------------------


def score_only(readout, where: str) -> None:
    """Refuses a readout other than the score where only the score is implemented (``where`` names it).

    Args:
        readout: None, a `Readout` or a `BoundReadout`.
        where: What measures the score only (e.g. ``"attribution"``).

    Raises:
        ReadoutError: For a readout other than `Score`.
    """
    r = readout.readout if isinstance(readout, BoundReadout) else (SCORE if readout is None else readout)
    if not r.is_score:
        raise ReadoutError(f"readout {r.spec()!r}: {where} measure the score only")


def check_readout(readout: Readout, model=None, *, method: str = "exact") -> None:
    """Checks a readout against a model (when given) and a run's method, before anything is computed.

    Raises:
        ReadoutError: For a readout the model cannot produce (see each readout's ``check``) or a combination
            that is not supported (attribution estimates measure the score only).
    """
    if readout.is_score:
        return
    if method == "attribution":
        raise ReadoutError(f"readout {readout.spec()!r}: attribution estimates measure the score only; use "
                           "--method exact with a readout")
    if model is not None:
        readout.check(model)


__all__ = ["PROJECTION_SITES", "REDUCTIONS", "SCORE", "TYPE_GROUPS", "AttentionWeight", "BoundReadout",
           "FinalReadout", "LayerReadout", "LogitMargin", "Projection", "Readout", "ReadoutError", "Score",
           "as_bound", "bind", "check_readout", "parse_readout", "score_only"]
