"""Soft-TF analyses (paper-notes §5): matching heads' attention from query-term tokens to their document matches.

The paper's soft TF of a query token ``i`` and head ``h`` is the attention it pays to the document,
``sum_j pattern_h[i, j]``; these analyses restrict the keys to the term's *matches* and follow that
attention as the perturbation varies, per head, with Student-t 95% confidence intervals over inputs:

* ``tfc2`` (saturation): the selected term's occurrences in a five-sentence answer restored one by one
  (tf 0..5, notes §3.4; answers with exactly five occurrences). Attention from the query term (``Qplus``
  rows) to all document occurrences (``Dplus`` keys). A head that splits attention evenly between the
  query copy and ``tf`` document copies gives ``tf / (tf + 1)``: growth that saturates.
* ``lnc1`` (length): the answer's first sentence (one occurrence) followed by 0..4 non-relevant sentences of
  another query's answer (notes §3.5). Attention from the query term to its one match as the document grows.
  Each document runs at its **natural length**, without the LNC1 builder's fillers: the filler-aligned
  pairs have equal token counts and compare added *content* with fillers, not a short document with a long
  one (see `jaxmech.data.analysis_kinds`, which offers ``realign(..., align="diff")`` for patching).
* ``stmc1`` (exact vs semantic match): the same document with ``"a"`` (filler), the related word (STMC1's
  synonym) or the term itself appended; attention from the query term to the appended word's pieces.

Which heads: the given ones, or (``heads=None``) the ``n_heads`` heads with the highest exact-match score of
`jaxmech.analysis.circuit.match_scores` on the TFC1 inputs (the attention-based matching-head detector).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from jaxmech.analysis.common import (
    DEFAULT_BATCH,
    PairInputs,
    attention_to,
    head_name,
    mean_ci,
    model_label,
    parse_head_names,
    unwrap,
)
from jaxmech.data.records import DiagnosticSource

EXPERIMENTS = ("tfc2", "lnc1", "stmc1")
GROUPS = "_groups"
"""Key of the inputs' info holding each input's document (one document's conditions share it; not written)."""
PAIRED = {"tfc2": (1, 5), "lnc1": (0, 4), "stmc1": ("filler", "synonym")}
"""Per experiment, the two conditions whose per-document difference ``paired_change`` reports (TFC2 from tf 1:
tf 0 has no copy to attend to)."""


def term_attention(
    model,
    inputs: PairInputs,
    *,
    src: Sequence[str] = ("Qplus",),
    dst: Sequence[str] = ("Dplus",),
    batch_size: int = DEFAULT_BATCH,
) -> Float[np.ndarray, "n layer head"]:
    """Mean over ``src`` rows of the attention mass each puts on ``dst`` keys, per layer and head.

    Args:
        model: The encoder.
        inputs: Tokenised inputs with token types.
        src: Token types of the rows (query positions) averaged.
        dst: Token types of the keys summed over.
        batch_size: Inputs per forward.

    Returns:
        ``[n, layer, head]``; NaN for inputs without a ``src`` position.
    """
    mass, _ = attention_to(model, inputs.ids, inputs.types, inputs.targets(src, dst), batch_size=batch_size)
    out = np.full(mass.shape[:3], np.nan, np.float64)
    for i, types in enumerate(inputs.token_types):
        rows = np.flatnonzero(np.isin(np.asarray(types), src))
        if len(rows):
            out[i] = mass[i][..., rows].mean(-1)
    return out


def head_curves(
    values: Float[np.ndarray, "n layer head"],
    x: Sequence,
    x_values: Sequence,
    heads: Sequence[tuple[int, int]],
    *,
    level: float = 0.95,
) -> dict:
    """Per head, the mean and confidence interval of ``values`` at each ``x_values`` entry.

    Returns:
        ``{"L.H": {"mean": [...], "lo": [...], "hi": [...], "n": [...]}}`` and, under ``"_all"``, the
        ``[len(x_values), layer, head]`` means of every head.
    """
    x = np.asarray(x, dtype=object)
    means, los, his, ns = [], [], [], []
    for xv in x_values:
        sel = values[np.array([v == xv for v in x], bool)]
        m, lo, hi = mean_ci(sel, axis=0, level=level)
        means.append(m)
        los.append(lo)
        his.append(hi)
        ns.append(np.isfinite(sel).sum(0))
    means, los, his, ns = map(np.stack, (means, los, his, ns))
    curves = {
        head_name(l, h): {"mean": means[:, l, h], "lo": los[:, l, h], "hi": his[:, l, h], "n": ns[:, l, h]}
        for l, h in heads
    }
    return {"heads": curves, "_all": means}


def paired_change(
    values: Float[np.ndarray, "n layer head"],
    x: Sequence,
    groups: Sequence[int],
    first,
    last,
    heads: Sequence[tuple[int, int]],
    *,
    level: float = 0.95,
) -> dict:
    """Per head, the mean and paired confidence interval of ``value(last) - value(first)`` over the documents
    (``groups``) that have both conditions: the conditions are the same document, so their difference, not two
    independent intervals, is what varies.

    Returns:
        ``{"from": first, "to": last, "heads": {"L.H": {"mean", "lo", "hi", "n"}}}``.
    """
    at: dict[int, dict] = defaultdict(dict)
    for i, (xv, g) in enumerate(zip(x, groups, strict=True)):
        at[g][xv] = i
    both = [(d[first], d[last]) for d in at.values() if first in d and last in d]
    diff = np.stack([values[b] - values[a] for a, b in both]) if both else np.full((0, *values.shape[1:]), np.nan)
    m, lo, hi = mean_ci(diff, axis=0, level=level)
    return {"from": first, "to": last, "heads": {
        head_name(l, h): {"mean": m[l, h], "lo": lo[l, h], "hi": hi[l, h], "n": len(both)} for l, h in heads}}


# -- the three experiments' inputs --------------------------------------------------------------------------
def tfc2_inputs(
    source: DiagnosticSource, tokenizer, *, max_tf: int = 5, limit: int | None = None
) -> tuple[PairInputs, list[int], dict]:
    """TFC2 documents at tf 0..max_tf (answers with exactly ``max_tf`` occurrences), natural length."""
    from jaxmech.data.diagnostic import count_occurrences, tfc2_variants

    qs, ds, ts, xs, gs = [], [], [], [], []
    used, skipped = 0, 0
    for qid, answers in source.answers.items():
        term, pronoun = source.terms.get(qid), source.pronouns.get(qid)
        if term is None or pronoun is None:
            continue
        for _, doc in answers:
            if count_occurrences(doc, term) != max_tf or (limit is not None and used >= limit):
                skipped += 1
                continue
            used += 1
            for k, variant in enumerate(tfc2_variants(doc, term, pronoun, max_tf=max_tf)):
                qs.append(source.queries[qid])
                ds.append(variant)
                ts.append(term)
                xs.append(k)
                gs.append(used)
    inputs = PairInputs(tokenizer, qs, ds, ts)
    return inputs, [xs[i] for i in inputs.kept], {"answers": used, "answers_skipped": skipped,
                                                  GROUPS: [gs[i] for i in inputs.kept]}


def lnc1_inputs(
    source: DiagnosticSource, tokenizer, *, seed: int = 0, n_max: int = 4, limit: int | None = None
) -> tuple[PairInputs, list[int], dict]:
    """LNC1 documents with 0..n_max added sentences (the builder's seeded partners), natural length."""
    from jaxmech.data.diagnostic import build_lnc1

    res = build_lnc1(source, tokenizer, seed=seed, n_max=n_max)
    groups: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    query_of, term_of = {}, {}
    for p in res.pairs:
        key = (p.qid, p.doc_id)
        groups[key][0] = p.baseline_doc
        groups[key][int(p.meta["n_sentences"])] = p.perturbed_doc
        query_of[key], term_of[key] = p.query, p.term
    qs, ds, ts, xs, gs = [], [], [], [], []
    for g, key in enumerate(list(groups)[:limit]):
        for n, doc in sorted(groups[key].items()):
            qs.append(query_of[key])
            ds.append(doc)
            ts.append(term_of[key])
            xs.append(n)
            gs.append(g)
    inputs = PairInputs(tokenizer, qs, ds, ts)
    return inputs, [xs[i] for i in inputs.kept], {"documents": len(groups), "seed": seed,
                                                  GROUPS: [gs[i] for i in inputs.kept]}


def appended_inputs(
    source: DiagnosticSource,
    tokenizer,
    conditions: dict[str, str],
    *,
    docs_per_query: int = 3,
    limit: int | None = None,
) -> tuple[PairInputs, list[str], dict]:
    """Each document with one word appended per condition (``{"exact": "term", "synonym": "related",
    "filler": "a"}``: which word, by source table), the appended pieces marked ``Dinj``."""
    from jaxmech.data.token_types import word_piece_ids

    qs, ds, ts, xs, base, gs = [], [], [], [], [], []
    n_docs = 0
    for qid, docs in source.docs.items():
        term = source.terms.get(qid)
        if term is None:
            continue
        for doc in list(docs.values())[:docs_per_query]:
            if limit is not None and n_docs >= limit:
                break
            words = {"exact": term, "synonym": source.related.get(qid), "filler": "a"}
            if any(words.get(conditions[c]) is None for c in conditions):
                continue
            n_docs += 1
            for cond, which in conditions.items():
                qs.append(source.queries[qid])
                ds.append(f"{doc} {words[which]}")
                ts.append(term)
                xs.append(cond)
                base.append(doc)
                gs.append(n_docs)
    base_len = {
        d: len(ids)
        for d, ids in zip(dict.fromkeys(base), word_piece_ids(tokenizer, list(dict.fromkeys(base))), strict=True)
    }
    full = dict(zip(dict.fromkeys(ds), word_piece_ids(tokenizer, list(dict.fromkeys(ds))), strict=True))
    changed = [list(range(base_len[b], len(full[d]))) for b, d in zip(base, ds, strict=True)]
    inputs = PairInputs(tokenizer, qs, ds, ts, changed=changed)
    return inputs, [xs[i] for i in inputs.kept], {"documents": n_docs, GROUPS: [gs[i] for i in inputs.kept]}


# -- the analysis -------------------------------------------------------------------------------------------
def default_matching_heads(
    model,
    tokenizer,
    source: DiagnosticSource,
    *,
    n_heads: int = 8,
    docs_per_query: int = 2,
    batch_size: int = DEFAULT_BATCH,
) -> tuple[list, np.ndarray]:
    """The ``n_heads`` heads with the highest exact-match score on TFC1-perturbed inputs, and the scores."""
    from jaxmech.analysis.circuit import match_scores, top_heads_of

    if source.docs:
        inputs, _, _ = appended_inputs(source, tokenizer, {"exact": "exact"}, docs_per_query=docs_per_query)
    else:
        inputs, _, _ = tfc2_inputs(source, tokenizer)
    scores = match_scores(model, inputs, batch_size=batch_size)
    return top_heads_of(scores, n_heads), scores


def soft_tf(
    lm,
    source: DiagnosticSource,
    *,
    heads: Sequence[str | tuple[int, int]] | None = None,
    n_heads: int = 8,
    experiments: Sequence[str] = EXPERIMENTS,
    docs_per_query: int = 3,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    level: float = 0.95,
) -> dict:
    """Soft-TF curves of matching heads: TFC2 saturation, LNC1 length, STMC1 exact vs synonym.

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel` (bi-encoders run their trunk on the concatenated pair).
        source: The diagnostic source (answers for TFC2/LNC1, documents and related words for STMC1).
        heads: Heads to report (``"L.H"``); None: the detector's top ``n_heads``.
        n_heads: How many detected heads when ``heads`` is None.
        experiments: Any of `EXPERIMENTS`.
        docs_per_query: STMC1 documents per query.
        limit: At most this many answers / documents per experiment.
        seed: LNC1 partner permutation seed.
        batch_size: Inputs per forward.
        level: Confidence level of the intervals.

    Returns:
        The ``soft_tf`` JSON object: per experiment ``{x_label, x, heads: {"L.H": {mean, lo, hi,
        n}}, mean_all, n_inputs, ...}``, and ``matching_heads`` with their detector scores.

    Raises:
        ValueError: On an unknown experiment or a bad head, before any computation.
    """
    model, tok = unwrap(lm)
    if tok is None:
        raise ValueError("soft_tf needs the model's tokenizer")
    bad = [e for e in experiments if e not in EXPERIMENTS]
    if bad:
        raise ValueError(f"soft_tf: unknown experiments {bad}; choose from {EXPERIMENTS}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    detector = None
    if heads is None:
        chosen, detector = default_matching_heads(model, tok, source, n_heads=n_heads, batch_size=batch_size)
    else:
        chosen = parse_head_names(heads, L, H, where="soft_tf heads")
    out = {
        "analysis": "soft_tf",
        "model": model_label(lm),
        "matching_heads": [head_name(*h) for h in chosen],
        "level": level,
        "measure": "attention from the query term's pieces (Qplus) to its document matches",
    }
    if detector is not None:
        out["detector_scores"] = {head_name(l, h): detector[l, h] for l, h in chosen}
    for exp in experiments:
        out[exp] = _experiment(exp, model, tok, source, chosen, docs_per_query=docs_per_query, limit=limit,
                               seed=seed, batch_size=batch_size, level=level)
    return out


def _experiment(exp: str, model, tok, source: DiagnosticSource, chosen, *, docs_per_query: int,
                limit: int | None, seed: int, batch_size: int, level: float) -> dict:
    """One experiment's JSON: the heads' curves over its x values, the paired change and its build info."""
    inputs, x, info, values, x_values, label = _experiment_values(
        exp, model, tok, source, docs_per_query=docs_per_query, limit=limit, seed=seed, batch_size=batch_size)
    if not len(inputs):
        raise ValueError(f"soft_tf {exp}: the source yields no inputs (missing answers/documents?)")
    curves = head_curves(values, x, x_values, chosen, level=level)
    groups = info.pop(GROUPS)
    return {
        "paired_change": paired_change(values, x, groups, *PAIRED[exp], chosen, level=level),
        "x_label": label,
        "x": x_values,
        "heads": curves["heads"],
        "mean_all": curves["_all"],
        "n_inputs": len(inputs),
        **info,
    }


def _experiment_values(exp: str, model, tok, source: DiagnosticSource, *, docs_per_query: int,
                       limit: int | None, seed: int, batch_size: int):
    """``(inputs, x, info, attention values, x values, x label)`` of one experiment."""
    if exp == "tfc2":
        inputs, x, info = tfc2_inputs(source, tok, limit=limit)
        values = term_attention(model, inputs, dst=("Dplus",), batch_size=batch_size)
        return inputs, x, info, values, list(range(6)), "term frequency (occurrences restored)"
    if exp == "lnc1":
        inputs, x, info = lnc1_inputs(source, tok, seed=seed, limit=limit)
        values = term_attention(model, inputs, dst=("Dplus",), batch_size=batch_size)
        x_values = list(range(5))
        info["doc_length"] = [
            float(np.mean([len(inputs.doc_pieces[i]) for i in range(len(x)) if x[i] == v])) if v in x else None
            for v in x_values
        ]
        return inputs, x, info, values, x_values, "non-relevant sentences added"
    conds = {"filler": "filler", "synonym": "synonym", "exact": "exact"}
    inputs, x, info = appended_inputs(source, tok, conds, docs_per_query=docs_per_query, limit=limit)
    values = term_attention(model, inputs, dst=("Dinj",), batch_size=batch_size)
    return inputs, x, info, values, list(conds), "appended word"


__all__ = ["EXPERIMENTS", "appended_inputs", "head_curves", "lnc1_inputs", "paired_change", "soft_tf", "term_attention",
           "tfc2_inputs"]
