"""The one registry of patching families: activation, path and (through ``method``) attribution patching.

Every family declares the sites it patches, the axes of its result, what it measures, its kind (activation,
path or head-group patching) and its methods; `jaxmech families`, the result layout of
`jaxmech.patching.run.run_patching`, the CLI's and configs' checks all read this table. The function that runs
each family is `jaxmech.patching.runners` 's (this module imports no JAX and none of the modules that patch,
which all read it). A new activation family is one row here; a new kind of family is a row here, its kernel
module and its runner in `jaxmech.patching.runners`.

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

from jaxmech.patching.receivers import RECEIVER_INPUTS, check_groups, check_receivers, parse_heads
from jaxmech.sites import get_site

AXIS_NAMES = {"c": "component", "l": "layer", "p": "pos", "h": "head", "g": "group"}
"""Result axis letters of `Family.layout` and their names in `Family.axes`."""
KINDS = ("activation", "path", "group")
"""Kinds of family (`Family.kind`): single-site activation patching, path patching, head-group patching."""

__all__ = ["AXIS_NAMES", "FAMILIES", "KINDS", "PATH_FAMILIES", "RECEIVER_INPUTS", "REGISTRY", "Family",
           "UnknownFamilyError", "check_groups", "check_receivers", "describe_families", "get_family", "parse_heads"]


class UnknownFamilyError(KeyError):
    """A patching family name that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Family:
    """One patching sweep: what it patches, the axes of its result, and how it is run.

    The function that runs a family is `jaxmech.patching.runners.run_family` 's (a callable per family there:
    the registry stays free of JAX and of the modules that patch, which all read it).

    Attributes:
        name: Stable name (CLI ``--family`` and the ``.npz`` key).
        sites: Patched site of each result component (several for the ``*_every`` families and
            ``path_components_to_heads``).
        per_pos: One patch per position (else every position at once).
        per_head: One patch per head (else the whole site).
        layout: Result axes per component: ``"l"``, ``"lp"``, ``"lh"``, ``"lph"``, ``"lhp"`` or ``"g"`` (one
            value per head group); a leading component axis is added when there are several sites.
        description: What it measures.
        kind: One of `KINDS`: ``"activation"`` (one site, restarted), ``"path"`` (path patching through frozen
            heads or receiver heads), ``"group"`` (head groups patched together).
        methods: ``"exact"`` and, where available, ``"attribution"``.
        needs_receivers: Path families that read receiver heads' inputs (``receivers`` required).
        needs_groups: Families that patch head groups (``groups`` required).
        sites_label: How ``jaxmech families`` shows the sites (default: ``sites`` joined by ``+``).
    """

    name: str
    sites: tuple[str, ...]
    per_pos: bool
    per_head: bool
    layout: str
    description: str
    kind: str = "activation"
    methods: tuple[str, ...] = ("exact", "attribution")
    needs_receivers: bool = False
    sites_label: str = ""
    needs_groups: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"family {self.name}: kind {self.kind!r}; choose one of {KINDS}")

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
        return self.kind == "path"

    def key(self, method: str = "exact", receiver_input: str | None = None) -> str:
        """The name of this family's result in a store: ``attribution:<name>`` for estimates,
        ``<name>_<receiver_input>`` for families with receivers, else the name."""
        if method == "attribution":
            return f"attribution:{self.name}"
        if self.needs_receivers and receiver_input:
            return f"{self.name}_{receiver_input}"
        return self.name

    def shape(self, n_layers: int, n_pos: int, n_heads: int, n_groups: int = 0) -> tuple[int, ...]:
        """Result shape for one pair (activation families; path families end at the last receiver layer)."""
        dims = {"c": len(self.sites), "l": n_layers, "p": n_pos, "h": n_heads, "g": n_groups}
        return tuple(dims[c] for c in self.full_layout)

    @property
    def needs_identity_alignment(self) -> bool:
        """Pattern/score sites have a key axis too, so the pair must align one to one."""
        return any(s in ("pattern", "attn_scores") for s in self.sites)


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
               kind="path", methods=("exact", "attribution"), sites_label="z (frozen attention)"),
        Family("path_to_heads", ("z",), False, True, "lh",
               "sender heads to receiver heads' q/k/v (E5); layers below the last receiver",
               kind="path", methods=("exact", "attribution"), needs_receivers=True, sites_label="z -> q|k|v"),
        Family("path_components_to_heads", ("resid_pre", "attn_out", "mlp_out"), True, False, "lp",
               "components by layer and position to receiver heads' inputs (E6)",
               kind="path", methods=exact, needs_receivers=True),
    ]


def _group_families() -> list[Family]:
    return [
        Family("heads_joint", ("z",), False, True, "g",
               "each group of heads' z patched together at every position (groups: lists of LAYER.HEAD)",
               kind="group", methods=("exact",), needs_groups=True, sites_label="z (head groups)"),
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


def describe_families() -> list[dict[str, str]]:
    """One row per family for listings: ``name``, ``sites``, ``axes``, ``methods``, ``description``."""
    return [{"name": f.name, "sites": f.sites_label or "+".join(f.sites), "axes": ",".join(f.axes),
             "methods": ",".join(f.methods), "description": f.description} for f in REGISTRY.values()]
