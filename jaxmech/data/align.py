"""Position alignment of a baseline and a perturbed token sequence: the one alignment module of jaxmech.

Used by the dataset builders (`jaxmech.data.diagnostic`) and by patching from raw text
(`align_with_filler`, `align_texts_with_filler`); both produce `jaxmech.data.records.AlignedPair`.

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

import dataclasses
import difflib
from collections.abc import Sequence

from jaxmech.data.records import AlignedPair

FILLER = "a"
"""The paper's filler token (id 1037 in BERT's vocabulary)."""


class AlignmentError(ValueError):
    """Two inputs cannot be aligned for patching."""


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


def _where(name: str) -> str:
    return f"pair {name!r}: " if name else ""


def align_with_filler(tokenizer, query: str, baseline_doc: str, perturbed_doc: str, *, name: str = "") -> AlignedPair:
    """Tokenises a (query, baseline, perturbed) triple and equalises lengths with filler tokens.

    The shorter document gets copies of `FILLER` just before its final ``[SEP]`` (attention mask 1, token type
    1), so both inputs have the same length and the position map is the identity (the paper's scheme).

    Args:
        tokenizer: A `jaxmech.hf.tokenizer.PairTokenizer`.
        query: Query text.
        baseline_doc: The document of the run that gets patched.
        perturbed_doc: The document whose activations are patched in.
        name: Label of the pair.

    Returns:
        An `AlignedPair` of ``[CLS] q [SEP] d [SEP]`` inputs with ``query`` and the documents set.

    Raises:
        AlignmentError: If the query or a document is empty, or the aligned pair would exceed the
            tokenizer's ``max_length`` (never truncated: a truncated perturbation is not the perturbation).
    """
    where = _where(name)
    q, b, p = tokenizer.word_pieces([query, baseline_doc, perturbed_doc])
    for text, pieces, what in ((query, q, "query"), (baseline_doc, b, "baseline document"),
                               (perturbed_doc, p, "perturbed document")):
        if not pieces:
            raise AlignmentError(f"{where}the {what} {text!r} is empty (no word pieces)")
    filler = tokenizer.filler_id  # the tokenizer's own piece for "a" in running text (RoBERTa: Ġa)
    n = max(len(b), len(p))
    total = len(q) + n + tokenizer.format.n_special
    if total > tokenizer.max_length:
        raise AlignmentError(
            f"{where}{total} tokens after alignment exceed max_length={tokenizer.max_length}; the perturbation "
            f"would be truncated, so the pair cannot be patched (shorten the document)"
        )
    b_ids, b_tt = tokenizer.pair_ids(q, b + [filler] * (n - len(b)))
    p_ids, p_tt = tokenizer.pair_ids(q, p + [filler] * (n - len(p)))
    return AlignedPair(b_ids, b_tt, p_ids, p_tt, list(range(len(b_ids))), name, query=query,
                       baseline_doc=baseline_doc, perturbed_doc=perturbed_doc)


def align_texts_with_filler(tokenizer, baseline_doc: str, perturbed_doc: str, *, name: str = "",
                            query: str = "") -> AlignedPair:
    """Bi-encoder version of `align_with_filler`: ``[CLS] d [SEP]`` inputs, the shorter padded with fillers
    before ``[SEP]``; ``query`` is kept on the pair (a bi-encoder embeds it separately).

    Raises:
        AlignmentError: On an empty document or a pair longer than ``max_length``.
    """
    where = _where(name)
    b, p = tokenizer.word_pieces([baseline_doc, perturbed_doc])
    for text, pieces, what in ((baseline_doc, b, "baseline"), (perturbed_doc, p, "perturbed")):
        if not pieces:
            raise AlignmentError(f"{where}the {what} document {text!r} is empty (no word pieces)")
    n = max(len(b), len(p))
    n_special = len(tokenizer.format.single(()))
    if n + n_special > tokenizer.max_length:
        raise AlignmentError(f"{where}{n + n_special} tokens exceed max_length={tokenizer.max_length}; the "
                             f"perturbation would be truncated")
    filler = tokenizer.filler_id
    wrap = lambda d: tokenizer.format.single([*d, *[filler] * (n - len(d))])
    b_ids, p_ids = wrap(b), wrap(p)
    return AlignedPair(b_ids, [0] * len(b_ids), p_ids, [0] * len(p_ids), list(range(len(b_ids))), name,
                       query=query, baseline_doc=baseline_doc, perturbed_doc=perturbed_doc)


def document_only(pair: AlignedPair, layout) -> AlignedPair:
    """Turns a cross-encoder pair into a bi-encoder document pair: ``[CLS] q [SEP] d [SEP]`` into
    ``[CLS] d [SEP]``, ``<s> q </s></s> d </s>`` into ``<s> d </s>`` (RoBERTa / XLM-R), keeping the position map
    and token types of the document tokens and every other field.

    Args:
        pair: An aligned cross-encoder pair.
        layout: The tokenizer's `jaxmech.hf.tokenizer.PairFormat` (or a `PairTokenizer`, whose ``format`` is
            used); a bare ``sep_id`` int means BERT's ``[CLS] q [SEP] d [SEP]`` (one separator in the middle).

    Raises:
        ValueError: If an input does not have the layout's special tokens where they belong, or the layout's
            single-text suffix differs from its pair suffix (the document's end could not be carried over).
    """
    from jaxmech.hf.tokenizer import PairFormat

    fmt = getattr(layout, "format", None) or getattr(layout, "sep_id", layout)
    if isinstance(fmt, int):
        head = (pair.baseline_ids[0],)
        fmt = PairFormat(prefix=head, middle=(fmt,), suffix=(fmt,), single_prefix=head, single_suffix=(fmt,),
                         types=(0, 0, 0, 1, 1))
    if tuple(fmt.single_suffix) != tuple(fmt.suffix) or len(fmt.single_prefix) > len(fmt.prefix):
        raise ValueError(f"{_where(pair.name)}document_only needs a single-text layout that ends like the pair "
                         f"(suffix {list(fmt.suffix)} vs {list(fmt.single_suffix)}) and a prefix no longer than "
                         f"the pair's")

    def split(ids, which):
        try:
            q, d = fmt.split(ids)
        except ValueError as e:
            raise ValueError(f"{_where(pair.name)}the {which} input is not a pair of this layout: {e}") from None
        return len(fmt.prefix) + len(q) + len(fmt.middle), fmt.single(d)

    ob, b_ids = split(pair.baseline_ids, "baseline")
    op, p_ids = split(pair.perturbed_ids, "perturbed")
    s = len(fmt.single_prefix)
    pmap = [i if pair.position_map[i] == i else -1 for i in range(s)]
    for i in range(ob, len(pair.baseline_ids)):
        m = pair.position_map[i]
        pmap.append(m - op + s if m >= op else -1)
    types = pair.token_types
    if types is not None:
        types = [*types[:s], *types[ob:]]
    return dataclasses.replace(pair, baseline_ids=b_ids, baseline_token_type_ids=[0] * len(b_ids),
                               perturbed_ids=p_ids, perturbed_token_type_ids=[0] * len(p_ids), position_map=pmap,
                               token_types=types)
