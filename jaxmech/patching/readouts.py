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

**How the engine computes a layer readout.** A readout at layer ``L`` (attention weight, projection) needs
the patched run's ``resid_pre[L]`` at *every* row (the attention at ``L`` reads every key), then block ``L``
itself (with the patch applied when the patch is at ``L``). The kernels therefore stop the restarted engine
after layer ``L`` (`jaxmech.patching.engines.post_ln.patched_hidden` with ``stop_layer=L``, full rows; the [CLS]-only
last block is never used), and a patch above ``L`` reads the baseline value. Path to the score with frozen
attention propagates every row to ``L`` and freezes block ``L``'s ``z`` too; path families through receiver
heads read the readout in their second stage. Attribution (gradient) estimates are refused for readouts other
than the score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxmech.data.records import TOKEN_TYPES
from jaxmech.models.bert import NO_HOOKS, Hooks, layer_slice
from jaxmech.patching.caches import SweepData

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


@dataclasses.dataclass(frozen=True)
class Score:
    """The model's score (the default; results are bit-identical to patching without a readout)."""

    layer = None
    site = None

    def spec(self) -> str:
        """``"score"``."""
        return "score"

    def check(self, model) -> None:
        """Always computable."""

    def final_value(self, model, hidden, attention_mask, query_embedding) -> Float[Array, ""]:
        """The score from one example's final hidden states."""
        return model.score_hidden(hidden, attention_mask, query_embedding)


@dataclasses.dataclass(frozen=True)
class LogitMargin:
    """``logits[i] - logits[j]`` of a multi-label cross-encoder head.

    Attributes:
        i: First label.
        j: Second label.
    """

    i: int
    j: int
    layer = None
    site = None

    def __post_init__(self):
        if self.i == self.j:
            raise ReadoutError(f"readout {self.spec()!r}: labels i and j must differ")
        if min(self.i, self.j) < 0:
            raise ReadoutError(f"readout {self.spec()!r}: labels must be >= 0")

    def spec(self) -> str:
        """``"margin:I,J"``."""
        return f"margin:{self.i},{self.j}"

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
        logits = model.readout(hidden, attention_mask, NO_HOOKS).logits
        return logits[self.i] - logits[self.j]


@dataclasses.dataclass(frozen=True)
class AttentionWeight:
    """Head ``layer.head``'s attention from ``from_`` positions to ``to`` positions.

    Attributes:
        layer: The head's layer.
        head: The head.
        from_: Query (destination) positions: a position or token types (see the module docstring).
        to: Key (source) positions.
        from_reduce: ``"sum"`` (default, the paper's E7) or ``"mean"`` over the from rows.
        to_reduce: ``"mean"`` (default, the paper's E7) or ``"sum"`` over the to columns.
    """

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

    @property
    def selectors(self) -> tuple[tuple[Selector, str], tuple[Selector, str]]:
        """``((from, reduce), (to, reduce))``."""
        return (self.from_, self.from_reduce), (self.to, self.to_reduce)

    def check(self, model) -> None:
        """Refuses a head outside the model."""
        where = f"readout {self.spec()!r}"
        _check_layer(self.layer, model.cfg.n_layers, where)
        if self.head >= model.cfg.n_heads:
            raise ReadoutError(f"{where}: head {self.head} is out of range (heads 0..{model.cfg.n_heads - 1})")

    def reduce(self, act: Float[Array, "head_index query_pos key_pos"], weights: Float[Array, "2 pos"]
               ) -> Float[Array, ""]:
        """``from_weights @ pattern[head] @ to_weights``."""
        return weights[0] @ act[self.head] @ weights[1]


@dataclasses.dataclass(frozen=True)
class Projection:
    """``<site[layer][position], direction>`` (reduced over the positions of a type).

    Attributes:
        site: A ``d_model`` site of `PROJECTION_SITES`.
        layer: The layer.
        position: A position or token types.
        direction: ``d_model`` floats.
        reduce: ``"mean"`` (default) or ``"sum"`` over the positions.
        source: Where the direction came from (a ``.npy`` file), for the spec; not compared.
    """

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

    @property
    def selectors(self) -> tuple[tuple[Selector, str]]:
        """``((position, reduce),)``."""
        return ((self.position, self.reduce),)

    def check(self, model) -> None:
        """Refuses a layer outside the model and a direction of the wrong size."""
        where = f"readout {self.spec()!r}"
        _check_layer(self.layer, model.cfg.n_layers, where)
        if len(self.direction) != model.cfg.d_model:
            raise ReadoutError(f"{where}: direction has {len(self.direction)} entries; the model's d_model is "
                               f"{model.cfg.d_model}")

    def reduce_value(self, act: Float[Array, "pos d_model"], weights: Float[Array, "2 pos"]) -> Float[Array, ""]:
        """``sum_t w[t] <act[t], direction>``."""
        return weights[0] @ (act @ jnp.asarray(self.direction, act.dtype))


Readout = Score | LogitMargin | AttentionWeight | Projection
SCORE = Score()


def reduce_site(readout, act: Array, weights: Float[Array, "2 pos"]) -> Float[Array, ""]:
    """The scalar a layer readout makes of its site's activation at its layer (one example)."""
    if isinstance(readout, AttentionWeight):
        return readout.reduce(act, weights)
    return readout.reduce_value(act, weights)


# -- parsing ----------------------------------------------------------------------------------------------------


def _int(text: str, field: str, spec: str) -> int:
    t = text.strip()
    if not t.lstrip("-").isdigit():
        raise ReadoutError(f"readout {spec!r}: {field} {t!r} is not an integer")
    return int(t)


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
    parts = rest.split(":") if rest else []
    if kind == "margin":
        labels = rest.split(",")
        if len(parts) != 1 or len(labels) != 2:
            raise ReadoutError(f"readout {spec!r}: labels must be I,J (e.g. margin:1,0)")
        return LogitMargin(_int(labels[0], "label i", spec), _int(labels[1], "label j", spec))
    if kind == "attn":
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
            return AttentionWeight(layer, head, src, dst, *reduces)
        except ReadoutError as err:
            raise ReadoutError(f"{err} (in {spec!r})") from None
    if kind == "proj":
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
            return Projection(site, layer, pos, tuple(direction.tolist()),
                              parts[4].strip() if len(parts) == 5 else "mean", source=file)
        except ReadoutError as err:
            raise ReadoutError(f"{err} (in {spec!r})") from None
    raise ReadoutError(f"readout {spec!r}: unknown kind {kind!r}; choose score, attn, margin or proj")


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


# -- what the kernels read ---------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ReadoutData(SweepData):
    """`SweepData` with the patched run's readout weights.

    Attributes:
        read_weights: ``[pair, 2, pos]`` (see `BoundReadout`).
    """

    read_weights: Array = None


def with_weights(data: SweepData, bound: BoundReadout, reverse: bool) -> SweepData:
    """``data`` with the patched run's readout weights when the readout reads positions (else unchanged)."""
    if bound.readout.layer is None:
        return data
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(SweepData)}
    return ReadoutData(**fields, read_weights=jnp.asarray(bound.oriented(reverse)[0]))


class ReadHooks(Hooks):
    """Block hooks that apply a layer-local patch (when ``active``), optionally freeze ``z`` to a cached value,
    and record the readout's site.

    Args:
        read_site: The site to record.
        spec: A layer-local `jaxmech.interventions.PatchSpec` (source with a length-1 layer axis), or None.
        active: Traced bool: whether the patch is at this layer.
        frozen_z: Cached ``z`` of this layer to freeze every head to (the sender's patch then applies on it).
    """

    def __init__(self, read_site: str, spec=None, active=False, frozen_z=None):
        self.read_site, self.spec, self.active, self.frozen_z = read_site, spec, active, frozen_z
        self.value = None

    def wants(self, name: str) -> bool:
        """The read site, the patched site and a frozen ``z``."""
        return name == self.read_site or (self.spec is not None and name == self.spec.site) or (
            name == "z" and self.frozen_z is not None)

    def __call__(self, name: str, x: Array) -> Array:
        """Freeze, patch, record."""
        if name == "z" and self.frozen_z is not None:
            x = self.frozen_z
        if self.spec is not None and name == self.spec.site:
            x = jnp.where(self.active, self.spec.apply(x, 0), x)
        if name == self.read_site:
            self.value = x
        return x


def read_block(model, readout, x: Float[Array, "pos d_model"], key_mask, weights, *, spec=None, active=False,
               frozen_z=None) -> Float[Array, ""]:
    """Runs block ``readout.layer`` on ``x = resid_pre[layer]`` (every row) and reduces its read site.

    Args:
        model: The encoder.
        readout: A layer readout.
        x: The run's ``resid_pre`` at the readout's layer.
        key_mask: ``[pos]`` real tokens.
        weights: ``[2, pos]`` the run's readout weights.
        spec: A layer-local patch applied in this block when ``active``.
        active: Traced bool (the patch is at the readout's layer).
        frozen_z: Freeze this block's ``z`` (frozen-attention path patching).
    """
    hooks = ReadHooks(readout.site, spec, active, frozen_z)
    layer_slice(model.blocks, readout.layer)(x, key_mask, hooks)
    return reduce_site(readout, hooks.value, weights)


def layer_value(model, readout, data: SweepData, pair, layer, key_mask, patched_resid, *, spec=None,
                frozen_z=None) -> Float[Array, ""]:
    """A layer readout of a run patched at ``layer``: ``patched_resid()`` gives ``resid_pre[readout.layer]``
    when the patch is below the readout's layer (it is not computed otherwise: the baseline's is read)."""
    L = readout.layer
    x = jax.lax.cond(layer < L, patched_resid, lambda: data.cache.resid_pre[pair, L])
    return read_block(model, readout, x, key_mask, data.read_weights[pair], spec=spec, active=layer == L,
                      frozen_z=frozen_z)


# -- the unpatched runs' values ----------------------------------------------------------------------------------


def run_values(model, inputs, readout: Readout, weights: np.ndarray | None, query_embedding) -> np.ndarray:
    """``[pair]`` readout values of unpatched runs (a full forward capturing the readout's site).

    Args:
        model: The encoder.
        inputs: ``(input_ids, token_type_ids, attention_mask)`` ``[pair, pos]``.
        readout: The readout.
        weights: ``[pair, 2, pos]`` the run's readout weights (layer readouts).
        query_embedding: ``[pair, d_model]`` (bi-encoders' score).
    """
    from jaxmech.patching.caches import run_cached

    capture = frozenset() if readout.layer is None else frozenset({readout.site})
    out, cache = run_cached(model, *map(jnp.asarray, inputs), capture=capture)
    if isinstance(readout, Score):
        return np.asarray(model.relevance(out, query_embedding))
    if isinstance(readout, LogitMargin):
        return np.asarray(out.logits[:, readout.i] - out.logits[:, readout.j])
    act = cache[readout.site][:, readout.layer]
    return np.asarray(jax.vmap(lambda a, w: reduce_site(readout, a, w))(act, jnp.asarray(weights)))


def finish_result(result, model, prep, bound: BoundReadout, reverse: bool):
    """A `jaxmech.patching.results.SweepResult` whose baseline and perturbed values are the readout's (the
    unpatched runs of ``prep``, already swapped when ``reverse``); unchanged for the score."""
    if isinstance(bound.readout, Score):
        return result
    w_patched, w_source = bound.oriented(reverse)
    base = run_values(model, prep.batch.baseline, bound.readout, w_patched, prep.query_embedding)
    pert = run_values(model, prep.batch.perturbed, bound.readout, w_source, prep.query_embedding)
    return dataclasses.replace(result, baseline_score=base.astype(np.float32), perturbed_score=pert.astype(np.float32))


def score_only(readout, where: str) -> None:
    """Refuses a readout other than the score where only the score is implemented (``where`` names it).

    Raises:
        ReadoutError: For a readout other than `Score`.
    """
    r = as_bound(readout).readout if not isinstance(readout, (AttentionWeight, Projection)) else readout
    if not isinstance(r, Score):
        raise ReadoutError(f"readout {r.spec()!r}: {where} measure the score only")


def check_readout(readout: Readout, model=None, *, method: str = "exact") -> None:
    """Checks a readout against a model (when given) and a run's method, before anything is computed.

    Raises:
        ReadoutError: For a readout the model cannot produce (see each readout's ``check``) or a combination
            that is not supported (attribution estimates measure the score only).
    """
    if isinstance(readout, Score):
        return
    if method == "attribution":
        raise ReadoutError(f"readout {readout.spec()!r}: attribution estimates measure the score only; use "
                           "--method exact with a readout")
    if model is not None:
        readout.check(model)


__all__ = ["PROJECTION_SITES", "REDUCTIONS", "SCORE", "TYPE_GROUPS", "AttentionWeight", "BoundReadout",
           "LogitMargin", "Projection", "Readout", "ReadoutError", "Score", "as_bound", "bind", "check_readout",
           "finish_result", "parse_readout", "run_values"]
