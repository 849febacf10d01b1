"""Activation-patching families: which sites a sweep patches and the shape of its result.

Names and result shapes follow TransformerLens's ``patching`` module (``get_act_patch_block_every`` is
``block_every`` with shape ``[3, layer, pos]``, ``get_act_patch_attn_head_out_by_pos`` is ``head_by_pos_z``
with ``[layer, pos, head]``, ...). "Head out" in TransformerLens means ``z``; the paper's head experiment (E2)
patches ``v`` at every position (``head_all_pos_v``).

Family names are stable; scripts may rely on them.
"""

from __future__ import annotations

import dataclasses

from jaxmech.sites import get_site


class UnknownFamilyError(KeyError):
    """A patching family name that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Family:
    """One activation-patching sweep.

    Attributes:
        name: Stable name (CLI ``--family`` and the ``.npz`` key).
        sites: Patched site of each result component (several for the ``*_every`` families).
        per_pos: One patch per position (else every position at once).
        per_head: One patch per head (else the whole site).
        layout: Result axes per component: ``"l"``, ``"lp"``, ``"lh"``, ``"lph"`` or ``"lhp"``; a leading
            component axis is added when there are several sites.
        description: What it measures.
    """

    name: str
    sites: tuple[str, ...]
    per_pos: bool
    per_head: bool
    layout: str
    description: str

    def shape(self, n_layers: int, n_pos: int, n_heads: int) -> tuple[int, ...]:
        """Result shape for one pair."""
        dims = {"l": n_layers, "p": n_pos, "h": n_heads}
        one = tuple(dims[c] for c in self.layout)
        return (len(self.sites), *one) if len(self.sites) > 1 else one

    @property
    def needs_identity_alignment(self) -> bool:
        """Pattern/score sites have a key axis too, so the pair must align one to one."""
        return any(s in ("pattern", "attn_scores") for s in self.sites)


def _make_families() -> dict[str, Family]:
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
    for f in fams:
        for s in f.sites:
            get_site(s)
    return {f.name: f for f in fams}


FAMILIES: dict[str, Family] = _make_families()
PATH_FAMILIES = ("path_to_score", "path_to_heads", "path_components_to_heads")


def get_family(name: str) -> Family:
    """Looks up an activation-patching family.

    Raises:
        UnknownFamilyError: Listing the known names.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown patching family {name!r}; known: {sorted(FAMILIES) + list(PATH_FAMILIES)}"
        ) from None
