"""Editing the IDF direction (paper-notes §7, F.1): move chosen tokens along U_0 and measure the model.

**Edit** (`edit_u0`). With ``W_E = U diag(S) Vt`` oriented so that -U_0 ∝ IDF (`jaxmech.analysis.idf_svd`),
"raise IDF" of token ``t`` sets ``U_0[t] = -scale * |U_0[t]|`` and "lower IDF" sets ``U_0[t] = +scale *
|U_0[t]|`` (the paper's rule); ``W_E' = U' diag(S) Vt``, computed as the rank-one row update ``W_E[t] +
(U_0'[t] - U_0[t]) S_0 Vt[0]``, so only the edited rows change. ``scale = 1`` "raise" is the identity for a
token whose U_0 entry is already negative (already on the high-IDF side). **Control** (`edit_rows`): the
paper's whole-row edit, ``W_E[t] * (-scale)`` to raise and ``W_E[t] * scale`` to lower.

**Measured** (`editing_curves`) on TFC1 pairs (the selected term appended to the perturbed document, fillers
in the baseline), for every condition and scale: the baseline and perturbed scores, their difference (the
gain from the injected term), and the chosen heads' attention from [CLS] to the query term's pieces on the
perturbed input (averaged over its pieces; the paper's 10.1). The edited tokens are, by default, the
selected terms' pieces (the ``Qplus`` positions) of the pairs' queries. Bi-encoders: scores are
similarities of the separately encoded query and documents, with the edit applied to both, and the [CLS]
attention is measured in the query's own encoding.

**nDCG_f** (`ndcg_f`, F.1): graded gains F = -10, S = 1, P = 2, ``(DCG - worst) / (ideal - worst)`` with the
documents **ranked by the model's score** (the reference code computed it in the data's group order, so
the model's ranking never entered the metric); a query with a single document scores 0 if it is F, else 1.
`unsafe_word_experiment` edits the unsafe words' pieces and reports mean nDCG_f per scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jaxtyping import Float

from jaxmech.analysis.common import (
    DEFAULT_BATCH,
    attention_to,
    encode_batched,
    head_name,
    mean_ci,
    model_label,
    model_scores,
    parse_head_names,
    unwrap,
)
from jaxmech.analysis.idf_svd import EmbeddingSVD, embedding_svd

DIRECTIONS = ("increase", "decrease")
METHODS = ("u0", "row")
DEFAULT_SCALES = (1.0, 2.0, 5.0, 10.0)
NDCG_F_GAINS = {"F": -10.0, "S": 1.0, "P": 2.0}


# -- edits --------------------------------------------------------------------------------------------------
def _check_ids(token_ids, n: int) -> np.ndarray:
    ids = np.unique(np.asarray(token_ids, np.int64))
    if ids.size == 0:
        raise ValueError("no token ids to edit")
    if ids.min() < 0 or ids.max() >= n:
        bad = ids[(ids < 0) | (ids >= n)][:5].tolist()
        raise ValueError(f"token ids {bad} are outside the vocabulary (0..{n - 1})")
    return ids


def edit_u0(
    W_E: Float[np.ndarray, "vocab d"],
    svd: EmbeddingSVD,
    token_ids: Sequence[int],
    scale: float,
    direction: str = "increase",
) -> Float[np.ndarray, "vocab d"]:
    """``W_E`` with the chosen tokens' U_0 coordinate set to ``∓scale * |U_0[t]|`` (module docstring).

    Raises:
        ValueError: On an unknown direction or token ids outside the vocabulary.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; choose one of {DIRECTIONS}")
    W = np.asarray(W_E, np.float64)
    ids = _check_ids(token_ids, W.shape[0])
    u0 = svd.U[ids, 0]
    new = (-1.0 if direction == "increase" else 1.0) * scale * np.abs(u0)
    out = W.copy()
    out[ids] += np.outer((new - u0) * svd.S[0], svd.Vt[0])
    return out


def edit_rows(
    W_E: Float[np.ndarray, "vocab d"], token_ids: Sequence[int], scale: float, direction: str = "increase"
) -> Float[np.ndarray, "vocab d"]:
    """The paper's whole-row control: rows times ``-scale`` (increase) or ``scale`` (decrease)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; choose one of {DIRECTIONS}")
    W = np.asarray(W_E, np.float64)
    ids = _check_ids(token_ids, W.shape[0])
    out = W.copy()
    out[ids] *= -scale if direction == "increase" else scale
    return out


def with_embedding(model, W_E: np.ndarray):
    """A copy of ``model`` whose word embedding is ``W_E`` (every other parameter shared)."""
    import jax.numpy as jnp
    from flax import nnx

    if W_E.shape != tuple(model.embed.W_E[...].shape):
        raise ValueError(f"W_E has shape {W_E.shape}; the model's is {tuple(model.embed.W_E[...].shape)}")
    graphdef, state = nnx.split(model)
    new = nnx.merge(graphdef, state)
    new.embed.W_E = nnx.Param(jnp.asarray(W_E, jnp.float32))
    return new


# -- measurements -------------------------------------------------------------------------------------------
def _cls_to(types: Sequence[str], want: Sequence[str]) -> np.ndarray:
    t = np.asarray(types)
    cols = np.isin(t, want)
    m = np.zeros((len(t), len(t)), np.float32)
    if cols.any():
        m[0, cols] = 1.0 / cols.sum()
    return m


def measure(model, tokenizer, pairs, heads: Sequence[tuple[int, int]], *, batch_size: int = DEFAULT_BATCH) -> dict:
    """Baseline score, perturbed score and [CLS]-to-term attention (per head) of TFC1 pairs.

    Args:
        model: The (edited) encoder.
        tokenizer: Its tokenizer (bi-encoders).
        pairs: `jaxmech.data.records.AlignedPair` list.
        heads: Heads whose attention is read.

    Returns:
        ``{"baseline": [n], "perturbed": [n], "cls_attention": [n, n_heads]}``.
    """

    n = len(pairs)
    att = np.full((n, len(heads)), np.nan)
    if not model.pair_input:
        qp = tokenizer.word_pieces([p.query for p in pairs])
        base = model_scores(
            model, tokenizer, qp, tokenizer.word_pieces([p.baseline_doc for p in pairs]), batch_size=batch_size
        )
        pert = model_scores(
            model, tokenizer, qp, tokenizer.word_pieces([p.perturbed_doc for p in pairs]), batch_size=batch_size
        )
        if heads:
            seqs, tts, tg = [], [], []
            for p in pairs:
                first = p.baseline_ids.index(tokenizer.sep_id)
                seqs.append(p.baseline_ids[: first + 1])
                tts.append([0] * (first + 1))
                tg.append(_cls_to(p.token_types[: first + 1], ("Qplus",)))
            mass, _ = attention_to(model, seqs, tts, tg, batch_size=batch_size)
            att = np.stack([mass[:, layer, h, 0] for layer, h in heads], 1)
        return {"baseline": base, "perturbed": pert, "cls_attention": att}
    base = encode_batched(
        model, [p.baseline_ids for p in pairs], [p.baseline_token_type_ids for p in pairs], batch_size=batch_size
    )
    tg = [_cls_to(p.token_types, ("Qplus",)) for p in pairs]  # identity alignment: same positions
    mass, pert = attention_to(
        model,
        [p.perturbed_ids for p in pairs],
        [p.perturbed_token_type_ids for p in pairs],
        tg,
        batch_size=batch_size,
        with_score=True,
    )
    if heads:
        att = np.stack([mass[:, layer, h, 0] for layer, h in heads], 1)
    return {"baseline": base, "perturbed": pert, "cls_attention": att}


def scoring_heads(model, pairs, n_heads: int = 3, *, chunk_size: int | None = None) -> list[tuple[int, int]]:
    """The ``n_heads`` heads with the largest mean E4 (``path_to_score``) effect on these pairs."""
    from jaxmech.analysis.circuit import top_heads_of
    from jaxmech.patching.inputs import batch_pairs
    from jaxmech.patching.path import path_to_score

    res = path_to_score(model, batch_pairs(list(pairs), max_length=model.cfg.n_ctx), chunk_size=chunk_size)
    return top_heads_of(res.effect("normalized").mean(), n_heads)


def editing_curves(
    lm, pairs, *, token_ids: Sequence[int] | None = None, heads=None, n_heads: int = 3,
    scales: Sequence[float] = DEFAULT_SCALES, directions: Sequence[str] = DIRECTIONS,
    methods: Sequence[str] = METHODS, idf: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH,
    level: float = 0.95,
) -> dict:
    """Scores and [CLS]-to-term attention under U_0 edits (and the whole-row control) across scales.

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel`.
        pairs: TFC1 `jaxmech.data.records.AlignedPair` list (identity alignment).
        token_ids: Ids to edit; default the pairs' ``Qplus`` pieces.
        heads: Heads whose [CLS] attention is read (``"L.H"``); None: cross-encoders, the top ``n_heads`` by
            E4 on these pairs; bi-encoders, none.
        n_heads: See ``heads``.
        scales: Edit scales.
        directions: Any of `DIRECTIONS`.
        methods: ``"u0"`` (the edit) and/or ``"row"`` (the control).
        idf: ``[vocab]`` per-id IDF that orients U_0 (-U_0 ∝ IDF); None: oriented by ``sum(Vt[0]) > 0``
            and reported as such (``oriented_by_idf: false``).
        batch_size: Inputs per forward.
        level: Confidence level.

    Returns:
        The ``edit_idf`` JSON object: ``scales``, ``score`` {condition: {mean, lo, hi, baseline_mean,
        perturbed_mean}} (``mean`` is the perturbed - baseline gain), ``cls_attention`` {"L.H": [...]} of
        ``u0_increase``, ``cls_attention_by_condition``, ``unedited``.

    Raises:
        ValueError: On unknown directions/methods, no pairs, or no tokens to edit, before running.
    """

    model, tok = unwrap(lm)
    bad = [d for d in directions if d not in DIRECTIONS] + [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"editing_curves: unknown directions/methods {bad}")
    if not pairs:
        raise ValueError("editing_curves: no pairs")
    W = np.asarray(model.embed.W_E[...], np.float64)
    ids, heads = _edit_targets(model, pairs, token_ids, heads, n_heads, W.shape[0])
    svd = embedding_svd(W, idf=idf)

    def run(W_new=None) -> dict:
        edited = model if W_new is None else with_embedding(model, W_new)
        return _summarize(measure(edited, tok, pairs, heads, batch_size=batch_size), len(heads))

    ref = run()
    score, attn = {}, {}
    for method in methods:
        for direction in directions:
            cond = f"{method}_{direction}"
            rows = [run(edit_u0(W, svd, ids, s, direction) if method == "u0" else edit_rows(W, ids, s, direction))
                    for s in scales]
            score[cond] = {key: [r[field] for r in rows] for key, field in _CURVE_FIELDS}
            attn[cond] = {head_name(*h): [float(r["attention"][j]) for r in rows] for j, h in enumerate(heads)}
    names = tok.hf.convert_ids_to_tokens(ids.tolist()) if tok is not None else [str(i) for i in ids]
    main = "u0_increase" if "u0_increase" in attn else next(iter(attn))
    return {
        "analysis": "edit_idf",
        "model": model_label(lm),
        "scales": list(scales),
        "conditions": list(score),
        "score": score,
        "cls_attention": attn[main],
        "cls_attention_condition": main,
        "cls_attention_by_condition": attn,
        "heads": [head_name(*h) for h in heads],
        "unedited": {
            **{k: ref[k] for k in ("gain", "lo", "hi", "baseline", "perturbed")},
            "cls_attention": {head_name(*h): float(ref["attention"][j]) for j, h in enumerate(heads)},
        },
        "edited_tokens": names,
        "n_pairs": len(pairs),
        "n_queries": len({p.qid for p in pairs}),
        "oriented_by_idf": idf is not None,
        "level": level,
    }


def _edit_targets(model, pairs, token_ids, heads, n_heads: int, vocab: int):
    """``(ids to edit, heads read)``: the given ids or the pairs' ``Qplus`` pieces; the given heads, or a
    cross-encoder's top ``n_heads`` by E4 (a bi-encoder's: none)."""
    if token_ids is None:
        token_ids = sorted({p.baseline_ids[i] for p in pairs for i, t in enumerate(p.token_types) if t == "Qplus"})
    ids = _check_ids(token_ids, vocab)
    if heads is None:
        return ids, ([] if not model.pair_input else scoring_heads(model, pairs, n_heads))
    return ids, parse_head_names(heads, model.cfg.n_layers, model.cfg.n_heads, where="edit_idf heads")


_CURVE_FIELDS = (("mean", "gain"), ("lo", "lo"), ("hi", "hi"), ("baseline_mean", "baseline"),
                 ("perturbed_mean", "perturbed"))
"""A condition's ``score`` keys and the `_summarize` field each lists over the scales."""


def _summarize(m: dict, n_heads: int) -> dict:
    """One measurement's mean gain (perturbed - baseline) with its 95 % interval, mean scores, and the heads'
    mean [CLS] attention."""
    gain = m["perturbed"] - m["baseline"]
    g, lo, hi = mean_ci(gain)
    return {
        "gain": float(g),
        "lo": float(lo),
        "hi": float(hi),
        "baseline": float(np.mean(m["baseline"])),
        "perturbed": float(np.mean(m["perturbed"])),
        "attention": np.nanmean(m["cls_attention"], 0) if n_heads else np.zeros(0),
    }


# -- nDCG_f (F.1) -------------------------------------------------------------------------------------------
def ndcg_f(scores: Sequence[float], labels: Sequence[str], gains: Mapping[str, float] = NDCG_F_GAINS) -> float:
    """nDCG_f of one query's documents **ranked by score** (module docstring).

    Raises:
        ValueError: On a label without a gain or mismatched lengths.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    unknown = sorted(set(labels) - set(gains))
    if unknown:
        raise ValueError(f"labels {unknown} have no gain (gains: {dict(gains)})")
    g = np.array([gains[x] for x in labels], np.float64)
    if len(g) == 1:
        return 0.0 if labels[0] == "F" else 1.0
    disc = 1.0 / np.log2(np.arange(len(g)) + 2.0)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    dcg = float((g[order] * disc).sum())
    ideal = float((np.sort(g)[::-1] * disc).sum())
    worst = float((np.sort(g) * disc).sum())
    return (dcg - worst) / (ideal - worst) if ideal > worst else 1.0


def mean_ndcg_f(scores: Sequence[float], labels: Sequence[str], groups: Sequence, **kw) -> float:
    """Mean `ndcg_f` over the queries (``groups``)."""
    by: dict = {}
    for s, lab, g in zip(scores, labels, groups, strict=True):
        by.setdefault(g, ([], []))
        by[g][0].append(s)
        by[g][1].append(lab)
    return float(np.mean([ndcg_f(s, lab, **kw) for s, lab in by.values()]))


def unsafe_word_experiment(
    lm,
    questions: Sequence[str],
    answers: Sequence[str],
    labels: Sequence[str],
    groups: Sequence,
    words: Sequence[str],
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    directions: Sequence[str] = DIRECTIONS,
    idf: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> dict:
    """F.1: edit the unsafe words' pieces along U_0 and report mean nDCG_f (ranked by score) per scale.

    Raises:
        ValueError: On mismatched inputs or no word pieces to edit.
    """
    model, tok = unwrap(lm)
    if not (len(questions) == len(answers) == len(labels) == len(groups)):
        raise ValueError("unsafe_word_experiment: questions, answers, labels and groups differ in length")
    ids = sorted({i for p in tok.word_pieces(list(words)) for i in p})
    qp, ap = tok.word_pieces(list(questions)), tok.word_pieces(list(answers))
    W = np.asarray(model.embed.W_E[...], np.float64)
    svd = embedding_svd(W, idf=idf)
    base = mean_ndcg_f(model_scores(model, tok, qp, ap, batch_size=batch_size), labels, groups)
    out = {
        "analysis": "unsafe_ndcg_f",
        "model": model_label(lm),
        "scales": list(scales),
        "unedited": base,
        "n_tokens": len(ids),
        "ndcg_f": {},
    }
    for d in directions:
        vals = []
        for s in scales:
            m = with_embedding(model, edit_u0(W, svd, ids, s, d))
            vals.append(mean_ndcg_f(model_scores(m, tok, qp, ap, batch_size=batch_size), labels, groups))
        out["ndcg_f"][f"u0_{d}"] = vals
    return out


__all__ = [
    "DEFAULT_SCALES",
    "DIRECTIONS",
    "METHODS",
    "NDCG_F_GAINS",
    "edit_rows",
    "edit_u0",
    "editing_curves",
    "mean_ndcg_f",
    "measure",
    "ndcg_f",
    "scoring_heads",
    "unsafe_word_experiment",
    "with_embedding",
]
