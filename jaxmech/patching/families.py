"""The one registry of patching families: activation, path and (through ``method``) attribution patching.

Every family declares the sites it patches, the axes of its result, what it measures and the function that
runs it; `jaxmech families`, the result layout of `jaxmech.patching.run.run_patching` and the CLI's checks all
read this table.

Names and result shapes follow TransformerLens's ``patching`` module (``get_act_patch_block_every`` is
``block_every`` with shape ``[3, layer, pos]``, ``get_act_patch_attn_head_out_by_pos`` is ``head_by_pos_z``
with ``[layer, pos, head]``, ...). "Head out" in TransformerLens means ``z``; the paper's head experiment (E2)
patches ``v`` at every position (``head_all_pos_v``). Activation families run exactly or as attribution
estimates (``method="attribution"``); so do ``path_to_score`` and ``path_to_heads``
(`jaxmech.patching.path_attribution`); ``path_components_to_heads`` and ``heads_joint`` run exactly.

Family names are stable; scripts may rely on them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

from jaxmech.sites import get_site

AXIS_NAMES = {"c": "component", "l": "layer", "p": "pos", "h": "head", "g": "group"}
RECEIVER_INPUTS = ("q", "k", "v")
"""Which input of the receiver heads path families patch."""
"""Result axis letters of `Family.layout` and their names in `Family.axes`."""


class UnknownFamilyError(KeyError):
    """A patching family name that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Family:
    """One patching sweep: what it patches, the axes of its result, and the function that runs it.

    Attributes:
        name: Stable name (CLI ``--family`` and the ``.npz`` key).
        sites: Patched site of each result component (several for the ``*_every`` families and
            ``path_components_to_heads``).
        per_pos: One patch per position (else every position at once).
        per_head: One patch per head (else the whole site).
        layout: Result axes per component: ``"l"``, ``"lp"``, ``"lh"``, ``"lph"``, ``"lhp"`` or ``"g"`` (one
            value per head group); a leading component axis is added when there are several sites.
        description: What it measures.
        runner: ``"module:function"`` that runs the family on a `jaxmech.patching.inputs.PairBatch` and
            returns a `jaxmech.patching.results.SweepResult` (resolved on first use, see `Family.run`).
        methods: ``"exact"`` and, where available, ``"attribution"``.
        needs_receivers: Path families that read receiver heads' inputs (``receivers`` required).
        path: A path-patching family.
        needs_groups: Families that patch head groups (``groups`` required).
        sites_label: How ``jaxmech families`` shows the sites (default: ``sites`` joined by ``+``).
    """

    name: str
    sites: tuple[str, ...]
    per_pos: bool
    per_head: bool
    layout: str
    description: str
    runner: str = "jaxmech.patching.activation:run_activation_family"
    methods: tuple[str, ...] = ("exact", "attribution")
    needs_receivers: bool = False
    sites_label: str = ""
    path: bool = False
    needs_groups: bool = False

    @property
    def full_layout(self) -> str:
        """Result axis letters after the pair axis, the component axis ``"c"`` included."""
        return ("c" if len(self.sites) > 1 else "") + self.layout

    @property
    def axes(self) -> tuple[str, ...]:
        """Result axis names after the pair axis, e.g. ``("component", "layer", "pos")``."""
        return tuple(AXIS_NAMES[c] for c in self.full_layout)

    @property
    def is_path(self) -> bool:
        """Whether this is a path-patching family."""
        return self.path

    def shape(self, n_layers: int, n_pos: int, n_heads: int, n_groups: int = 0) -> tuple[int, ...]:
        """Result shape for one pair (activation families; path families end at the last receiver layer)."""
        dims = {"c": len(self.sites), "l": n_layers, "p": n_pos, "h": n_heads, "g": n_groups}
        return tuple(dims[c] for c in self.full_layout)

    @property
    def needs_identity_alignment(self) -> bool:
        """Pattern/score sites have a key axis too, so the pair must align one to one."""
        return any(s in ("pattern", "attn_scores") for s in self.sites)

    def run(self, model, batch, **options):
        """Runs the family (``self.runner``) on one batch of pairs.

        Args:
            model: The encoder.
            batch: A `jaxmech.patching.inputs.PairBatch`.
            **options: ``method``, ``reverse``, ``chunk_size``, ``query_embedding``, ``receivers``,
                ``receiver_input``, ``mesh`` (see `jaxmech.patching.run.run_patching`).

        Returns:
            A `jaxmech.patching.results.SweepResult`.
        """
        runner = self.runner  # the runners ask the model's engine (`jaxmech.patching.engines.engine_of`)
        module, fn = runner.split(":")
        runner: Callable = getattr(importlib.import_module(module), fn)
        return runner(model, batch, self, **options)


def _activation_families() -> list[Family]:
    fams = [
        Family("block_every", ("resid_pre", "attn_out", "mlp_out"), True, False, "lp",
               "resid_pre, attn_out and mlp_out at one layer and position (TransformerLens block_every)"),
    ]
    for site in ("resid_pre", "resid_mid", "resid_post", "normalized_resid_mid", "normalized_resid_post",
                 "attn_out", "mlp_out"):
        fams.append(Family(f"{site}_by_pos", (site,), True, False, "lp", f"{site} at one layer and position"))
        fams.append(Family(f"{site}_all_pos", (site,), False, False, "l", f"{site} at one layer, every position"))
    for site in ("z", "q", "k", "v", "result"):
        fams.append(Family(f"head_all_pos_{site}", (site,), False, True, "lh",
                           f"one head's {site} at every position"))
        fams.append(Family(f"head_by_pos_{site}", (site,), True, True, "lph",
                           f"one head's {site} at one position"))
    fams.append(Family("head_all_pos_pattern", ("pattern",), False, True, "lh",
                       "one head's whole attention pattern"))
    fams.append(Family("head_by_pos_pattern", ("pattern",), True, True, "lhp",
                       "one head's attention-pattern row of one query (destination) position"))
    fams.append(Family("head_all_pos_every", ("z", "q", "k", "v", "pattern"), False, True, "lh",
                       "head_all_pos for z, q, k, v and pattern"))
    fams.append(Family("head_by_pos_every", ("z", "q", "k", "v", "pattern"), True, True, "lph",
                       "head_by_pos for z, q, k, v and pattern (pattern by destination position)"))
    return fams


def _path_families() -> list[Family]:
    exact = ("exact",)
    return [
        Family("path_to_score", ("z",), False, True, "lh",
               "sender heads to the score, every other head's z frozen (paper E4)",
               runner="jaxmech.patching.path:run_path_to_score", methods=("exact", "attribution"),
               sites_label="z (frozen attention)", path=True),
        Family("path_to_heads", ("z",), False, True, "lh",
               "sender heads to receiver heads' q/k/v (E5); layers below the last receiver",
               runner="jaxmech.patching.path:run_path_to_heads", methods=("exact", "attribution"),
               needs_receivers=True, sites_label="z -> q|k|v", path=True),
        Family("path_components_to_heads", ("resid_pre", "attn_out", "mlp_out"), True, False, "lp",
               "components by layer and position to receiver heads' inputs (E6)",
               runner="jaxmech.patching.path:run_path_components_to_heads", methods=exact, needs_receivers=True,
               path=True),
    ]


def _group_families() -> list[Family]:
    return [
        Family("heads_joint", ("z",), False, True, "g",
               "each group of heads' z patched together at every position (groups: lists of LAYER.HEAD)",
               runner="jaxmech.patching.joint:run_heads_joint", methods=("exact",), needs_groups=True,
               sites_label="z (head groups)"),
    ]


def _registry() -> dict[str, Family]:
    fams = _activation_families() + _path_families() + _group_families()
    for f in fams:
        for s in f.sites:
            get_site(s)
    return {f.name: f for f in fams}


REGISTRY: dict[str, Family] = _registry()
"""Every family, by name."""
FAMILIES: dict[str, Family] = {n: f for n, f in REGISTRY.items() if not f.is_path}
"""The activation-patching families (single sites, and the head-group family ``heads_joint``)."""
PATH_FAMILIES: tuple[str, ...] = tuple(n for n, f in REGISTRY.items() if f.is_path)
"""Names of the path-patching families."""


def get_family(name: str | Family) -> Family:
    """Looks up a family of any kind (a `Family` is returned as is).

    Raises:
        UnknownFamilyError: Listing the known names.
    """
    if isinstance(name, Family):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownFamilyError(f"unknown patching family {name!r}; known: {sorted(FAMILIES) + list(PATH_FAMILIES)}"
                                 ) from None


def parse_heads(heads: Sequence[str | tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``["10.1", (9, 4)]`` to ``((10, 1), (9, 4))``.

    Raises:
        ValueError: On a malformed head name.
    """
    out = []
    for h in heads:
        if isinstance(h, str):
            parts = h.split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"head {h!r} is not LAYER.HEAD (e.g. 4.1)")
            h = (int(parts[0]), int(parts[1]))
        out.append((int(h[0]), int(h[1])))
    return tuple(out)


def check_receivers(receivers, receiver_input: str, n_layers: int | None = None,
                    n_heads: int | None = None) -> tuple[tuple[int, int], ...]:
    """Parses and checks receiver heads (against the model's shape when ``n_layers``/``n_heads`` are given).

    Args:
        receivers: ``["4.1", (3, 2)]``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        n_layers: Layers of the model.
        n_heads: Heads per layer.

    Returns:
        ``((layer, head), ...)``.

    Raises:
        ValueError: On a malformed head, an unknown receiver input, no receivers, or a head out of range
            (receivers need a layer above 0: their senders sit below them).
    """
    receivers = parse_heads(receivers or ())
    if receiver_input not in RECEIVER_INPUTS:
        raise ValueError(f"receiver input {receiver_input!r}; choose one of {RECEIVER_INPUTS}")
    if not receivers:
        raise ValueError("no receiver heads given")
    for layer, head in receivers:
        if n_layers is not None and n_heads is not None and not (0 < layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"receiver head {layer}.{head} is out of range (layers 1..{n_layers - 1}, heads "
                             f"0..{n_heads - 1})")
    return receivers


def check_groups(groups, n_layers: int | None = None, n_heads: int | None = None
                 ) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Parses and checks head groups (against the model's shape when given).

    Args:
        groups: ``[["9.1", "9.2"], ["10.1"]]`` (a group may also be one ``"9.1,9.2"`` string).
        n_layers: Layers of the model.
        n_heads: Heads per layer.

    Returns:
        ``(((layer, head), ...), ...)``, one tuple per group.

    Raises:
        ValueError: On no groups, an empty group, a malformed head, a head twice in a group, or one out of range.
    """
    out = []
    for i, group in enumerate(groups or ()):
        items = group.split(",") if isinstance(group, str) else list(group)
        heads = parse_heads([h.strip() if isinstance(h, str) else h for h in items if not isinstance(h, str)
                             or h.strip()])
        if not heads:
            raise ValueError(f"head group {i} is empty")
        if len(set(heads)) != len(heads):
            raise ValueError(f"head group {i} lists a head twice: {group}")
        for layer, head in heads:
            if n_layers is not None and n_heads is not None and not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"head {layer}.{head} of group {i} is out of range (layers 0..{n_layers - 1}, "
                                 f"heads 0..{n_heads - 1})")
        out.append(heads)
    if not out:
        raise ValueError("no head groups given (e.g. groups [['9.1', '9.2'], ['10.1']] or --group 9.1,9.2)")
    return tuple(out)


def describe_families() -> list[dict[str, str]]:
    """One row per family for listings: ``name``, ``sites``, ``axes``, ``methods``, ``description``."""
    return [{"name": f.name, "sites": f.sites_label or "+".join(f.sites), "axes": ",".join(f.axes),
             "methods": ",".join(f.methods), "description": f.description} for f in REGISTRY.values()]
