"""Position groups for span-aware edges on IR pairs, from the paper's token types (`jaxmech.data.token_types`).

A span-aware edge ``s -> r @ g`` patches the edge's input change only at the positions of group ``g`` (the
residual stream is position-wise, so these are the positions where the sender's output changed and where the
receiver reads it: "head 2.9 at the query term -> head 5.7's keys"). The groups partition the real positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

SPAN_GROUPS = {
    "CLS": ("CLS",),
    "query_term": ("Qplus",),
    "query_other": ("Qsub",),
    "doc_matches": ("Dplus", "Dsub"),
    "injected": ("Dinj",),
    "doc_other": ("Dother",),
    "SEP": ("SEP1", "SEP2"),
}
"""Group name -> the token types it holds (CLS, query term, other query words, the query words' copies in the
document, the injected term, the rest of the document, separators)."""


def span_masks(pairs: Sequence, n_pos: int) -> Float[np.ndarray, "pair group pos"]:
    """0/1 ``[pair, group, pos]`` masks of `SPAN_GROUPS` from each pair's ``token_types``.

    Raises:
        ValueError: Naming the pair, when it has no token types.
    """
    out = np.zeros((len(pairs), len(SPAN_GROUPS), n_pos), np.float32)
    for i, p in enumerate(pairs):
        if p.token_types is None:
            raise ValueError(f"span-aware edges: pair {p.name!r} has no token_types")
        for g, types in enumerate(SPAN_GROUPS.values()):
            out[i, g, : len(p.token_types)] = np.isin(p.token_types, types)
    return out


__all__ = ["SPAN_GROUPS", "span_masks"]
