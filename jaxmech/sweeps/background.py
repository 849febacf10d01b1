"""``[background]`` of a sweep config: heads ablated in every run of the sweep (see
`jaxmech.patching.background`)::

    [background]
    ablate = ["1.7", "5.9", "7.9"]   # heads LAYER.HEAD
    ablation = "zero"                # or "mean": the mean over all of the sweep's pairs, computed once
    site = "z"                       # or "result"

An empty ``ablate`` (the default) is no background; the table then does not enter the config's fingerprint, so
runs of configs without it resume as before.
"""

from __future__ import annotations

import dataclasses

from jaxmech.patching.background import KINDS, SITES, Ablation


@dataclasses.dataclass(frozen=True)
class BackgroundSection:
    """``[background]``.

    Attributes:
        ablate: Heads ``["LAYER.HEAD", ...]`` ablated in both runs (empty: no background).
        ablation: ``"zero"`` or ``"mean"``.
        site: ``"z"`` or ``"result"``.
    """

    ablate: list = dataclasses.field(default_factory=list)
    ablation: str = "zero"
    site: str = "z"

    def __post_init__(self):
        if self.ablation not in KINDS:
            raise ValueError(f"ablation={self.ablation!r}; choose one of {list(KINDS)}")
        if self.site not in SITES:
            raise ValueError(f"site={self.site!r}; choose one of {list(SITES)}")
        if self.ablate:
            self.to_ablation()  # malformed or repeated heads fail here, before anything is computed

    @property
    def empty(self) -> bool:
        """No head is ablated."""
        return not self.ablate

    def to_ablation(self) -> Ablation | None:
        """The `Ablation` (None when empty)."""
        return Ablation(tuple(str(h) for h in self.ablate), self.ablation, self.site) if self.ablate else None
