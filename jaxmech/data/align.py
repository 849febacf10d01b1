"""Position alignment of a baseline and a perturbed token sequence.

Activation patching is position-wise, so every pair needs a map from baseline positions to perturbed ones.
Three situations occur:

* **Filler alignment (exact).** When the perturbed document is the baseline document plus extra pieces at its
  end (TFC1/STMC1 append, LNC1) or start (TFC1 prepend), the baseline is padded with filler pieces (``"a"``,
  id 1037) at the same place, just before the final [SEP] or just after the first one. Both sequences then
  have the same length and the map is the identity; the fillers face the added pieces. This is the paper's
  construction (notes §1, §3.2).
* **Diff alignment (exact, lengths may differ).** TFC2 swaps a pronoun for the term in the middle of the
  text, and the two rarely have the same number of pieces, so padding at the end would shift every later
  position. `diff_alignment` aligns the two id sequences with ``difflib.SequenceMatcher`` (no junk heuristic):
  pieces in matching blocks map to each other; a replaced block of equal length on both sides maps one to
  one (a substitution, e.g. ``it`` -> a one-piece term); any other replaced or deleted baseline piece maps to
  ``-1``. When term and pronoun have the same number of pieces the result is the identity and the lengths
  are equal.
* **Paper alignment (inexact, opt-in).** The paper's code pads the shorter sequence with fillers at the end
  and patches position by position regardless (notes §12.3 [U]); ``align="paper"`` of
  `jaxmech.data.diagnostic.build_pairs` reproduces that for comparison: identity map, positions after the
  first length change are misaligned.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def diff_alignment(base: Sequence[int], pert: Sequence[int]) -> list[int]:
    """Maps each baseline position to the perturbed position holding the same token (``-1`` if none).

    Args:
        base: Baseline ids.
        pert: Perturbed ids.

    Returns:
        ``position_map`` with ``len(base)`` entries.
    """
    out = [-1] * len(base)
    sm = difflib.SequenceMatcher(None, list(base), list(pert), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for k in range(i2 - i1):
                out[i1 + k] = j1 + k
    return out


def is_suffix_extension(base_doc: Sequence[int], pert_doc: Sequence[int]) -> bool:
    """Whether the perturbed document pieces are the baseline's followed by more pieces."""
    return len(pert_doc) >= len(base_doc) and list(pert_doc[: len(base_doc)]) == list(base_doc)


def is_prefix_extension(base_doc: Sequence[int], pert_doc: Sequence[int]) -> bool:
    """Whether the perturbed document pieces are more pieces followed by the baseline's."""
    n = len(pert_doc) - len(base_doc)
    return n >= 0 and list(pert_doc[n:]) == list(base_doc)
