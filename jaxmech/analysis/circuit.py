"""Circuit roles from patching arrays, and an attention-based matching-head detector (paper-notes §4, MICE).

The paper's circuit (information flows document -> query -> [CLS]):

1. **relevance-scoring heads** write relevance into [CLS]: the heads with the largest path-patching effect
   on the score (E4, ``path_to_score``, ``[layer, head]``);
2. **contextual-query-representation heads** feed them: path patching from every earlier head to the
   scoring heads' keys/values (E5, ``path_to_heads`` with the scoring heads as receivers);
3. **matching heads** feed those: E5 again with the contextual-query heads as receivers.

`circuit_from_effects` assigns the roles from given (mean) effect arrays with thresholds passed as
arguments, so it can be checked on planted arrays and run on a stored sweep; `discover_circuit` runs the
three patching stages on a model (exact path patching: a 6-layer model's 72 senders take seconds per batch).

`match_scores` is the attention-based detector: for every query token that occurs in the document, the
attention it pays to the document positions holding the *same token*, minus what a head spreading that
token's document attention uniformly would pay (``mass_to_doc * n_matches / n_doc``); averaged over tokens
and inputs it is ~0 for heads indifferent to matches and up to 1 for a head that attends only to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from jaxmech.analysis.common import DEFAULT_BATCH, PairInputs, attention_to, head_name, model_label, unwrap

ROLES = ("relevance_scoring", "contextual_query", "matching")
DEFAULT_THRESHOLDS = {"relevance_scoring": 0.05, "contextual_query": 0.01, "matching": 0.005}
RELATIVE_FLOOR = 0.1
"""A head joins a stage only if its (absolute) effect is at least this fraction of the stage's largest: the
absolute thresholds alone let a stage whose strongest sender is itself negligible fill up with noise."""
DETECTOR_FLOOR = 0.1
"""A matching head must put at least this much more of its query-term attention on the term's document copies
than a uniform spread would (`match_scores`); real exact-match heads score 0.3-0.5, others ~0."""
STAGE_FAMILIES = {
    "relevance_scoring": "path_to_score",
    "contextual_query": "path_to_heads_scoring",
    "matching": "path_to_heads_contextual",
}
"""The ``effects`` entry of the circuit JSON each role is selected from."""


# -- the detector -------------------------------------------------------------------------------------------
def match_targets(ids: Sequence[int], token_types: Sequence[str], *, include_final_sep: bool = False) -> np.ndarray:
    """``[len, len]`` weights: +1 on (query token, document position with the same id), minus the uniform
    share ``n_matches / n_doc`` on every document position of that row (rows without matches are 0)."""
    ids = np.asarray(ids)
    t = np.asarray(token_types)
    q = np.isin(t, ("Qplus", "Qsub"))
    d = np.isin(t, ("Dinj", "Dplus", "Dsub", "Dother") + (("SEP2",) if include_final_sep else ()))
    match = (ids[:, None] == ids[None, :]) & q[:, None] & d[None, :]
    n_match = match.sum(1, keepdims=True)
    return match.astype(np.float32) - (n_match / max(int(d.sum()), 1)) * d[None, :].astype(np.float32)


def match_scores(model, inputs: PairInputs, *, batch_size: int = DEFAULT_BATCH) -> Float[np.ndarray, "layer head"]:
    """Exact-match attention score of every head (see the module docstring), averaged over inputs.

    Raises:
        ValueError: If no query token of any input occurs in its document.
    """
    targets = [match_targets(i, t) for i, t in zip(inputs.ids, inputs.token_types, strict=True)]
    rows = [np.flatnonzero((tg > 0).any(1)) for tg in targets]
    if not any(len(r) for r in rows):
        raise ValueError("match_scores: no query token occurs in its document in any input")
    mass, _ = attention_to(model, inputs.ids, inputs.types, targets, batch_size=batch_size)
    per_input = np.full(mass.shape[:3], np.nan)
    for i, r in enumerate(rows):
        if len(r):
            per_input[i] = mass[i][..., r].mean(-1)
    return np.nanmean(per_input, axis=0)


def top_heads_of(scores: Float[np.ndarray, "layer head"], k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the highest scores, best first."""
    flat = np.where(np.isfinite(scores), scores, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(int(i // scores.shape[1]), int(i % scores.shape[1])) for i in order]


# -- roles from effects -------------------------------------------------------------------------------------
def select_heads(
    effect: Float[np.ndarray, "layer head"],
    *,
    threshold: float,
    use_abs: bool = False,
    max_heads: int | None = None,
    min_heads: int = 0,
    exclude: Sequence[tuple[int, int]] = (),
    relative_floor: float = 0.0,
) -> list[tuple[int, int, float]]:
    """Heads whose effect (or ``|effect|``) is at least ``threshold``, strongest first.

    Args:
        effect: Mean effect per head (NaN = not measured).
        threshold: Inclusion threshold.
        use_abs: Rank and threshold by magnitude (path effects into keys/values can be negative).
        max_heads: Keep at most this many.
        min_heads: Keep at least this many (the strongest), even below the thresholds.
        exclude: Heads not eligible (e.g. the receivers themselves).
        relative_floor: Also require at least this fraction of the largest eligible (absolute) effect.

    Returns:
        ``[(layer, head, effect)]``.
    """
    e = np.asarray(effect, np.float64)
    key = np.abs(e) if use_abs else e
    key = np.where(np.isfinite(key), key, -np.inf)
    for layer, head in exclude:
        if layer < key.shape[0]:
            key[layer, head] = -np.inf
    order = np.argsort(-key.ravel(), kind="stable")
    top = key.ravel()[order[0]] if key.size else -np.inf
    floor = max(threshold, relative_floor * top) if np.isfinite(top) else threshold
    out = []
    for i in order:
        layer, head = divmod(int(i), e.shape[1])
        if not np.isfinite(key[layer, head]):
            break
        if key[layer, head] < floor and len(out) >= min_heads:
            break
        out.append((layer, head, float(e[layer, head])))
        if max_heads is not None and len(out) >= max_heads:
            break
    return out


def _stage_mean(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return np.nanmean(a, axis=0) if a.ndim == 3 else a


def _head_entry(layer: int, head: int, role: str, effect: float, det, detector_floor) -> dict:
    entry = {"layer": layer, "head": head, "role": role, "effect": effect}
    if det is not None:
        entry["detector_score"] = float(det[layer, head])
        entry["exact_match"] = bool(detector_floor is not None and det[layer, head] >= detector_floor)
    return entry


def circuit_from_effects(
    score_effect: np.ndarray,
    contextual_effect: np.ndarray | None = None,
    matching_effect: np.ndarray | None = None,
    *,
    thresholds: dict | None = None,
    max_heads: dict | None = None,
    min_heads: int = 0,
    use_abs: bool = True,
    relative_floor: float = RELATIVE_FLOOR,
    detector: np.ndarray | None = None,
    detector_floor: float | None = DETECTOR_FLOOR,
    model: str = "",
    extra: dict | None = None,
) -> dict:
    """Circuit roles from patching arrays.

    Args:
        score_effect: E4 ``path_to_score`` effects, ``[layer, head]`` (or ``[pair, layer, head]``: averaged).
        contextual_effect: E5 effects into the relevance-scoring heads, ``[receiver_layer, head]`` (summed
            over receiver inputs by the caller); None stops after stage 1.
        matching_effect: E5 effects into the contextual-query heads; None stops after stage 2.
        thresholds: Per role (`ROLES`) the inclusion threshold; defaults `DEFAULT_THRESHOLDS`.
        max_heads: Per role, the most heads kept.
        min_heads: Keep at least this many heads per stage (the strongest), except matching heads that fail
            the detector check.
        use_abs: Select contextual-query and matching heads by ``|effect|`` (scoring heads by signed effect).
        relative_floor: Per stage, heads below this fraction of the stage's largest effect are left out
            (`RELATIVE_FLOOR`; 0 = the absolute thresholds only, the rule before it).
        detector: `match_scores` ``[layer, head]``; with ``detector_floor``, a stage-3 head is a matching head
            only if its score reaches the floor (else it is listed under ``rejected``), and every head gets
            ``detector_score`` and ``exact_match`` (score >= floor).
        detector_floor: See ``detector`` (`DETECTOR_FLOOR`; None = no check).
        model: Model label.
        extra: Merged into the output (e.g. the effect arrays).

    Returns:
        The ``circuit`` JSON object: ``heads`` [{layer, head, role, effect[, detector_score, exact_match]}],
        ``thresholds``, ``roles`` {role: ["L.H", ...]}, ``stages_run`` (the roles whose stage ran),
        ``rule`` (the selection settings) and ``rejected`` (stage-3 heads failing the detector check).
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    unknown = sorted(set(th) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown roles in thresholds: {unknown}; roles are {ROLES}")
    mx = max_heads or {}
    det = None if detector is None else np.asarray(detector, np.float64)
    stages = [
        ("relevance_scoring", score_effect, False),
        ("contextual_query", contextual_effect, use_abs),
        ("matching", matching_effect, use_abs),
    ]
    heads, taken, rejected, ran = [], [], [], []
    for role, eff, absolute in stages:
        if eff is None:
            break
        ran.append(role)
        sel = select_heads(_stage_mean(eff), threshold=th[role], use_abs=absolute, max_heads=mx.get(role),
                           min_heads=min_heads, exclude=taken, relative_floor=relative_floor)
        for layer, h, v in sel:
            entry = _head_entry(layer, h, role, v, det, detector_floor)
            if role == "matching" and det is not None and detector_floor is not None and not entry["exact_match"]:
                rejected.append({**entry, "why": f"detector score {det[layer, h]:.3f} < {detector_floor}"})
            else:
                heads.append(entry)
        taken += [(layer, h) for layer, h, _ in sel]
    return {
        "analysis": "circuit",
        "model": model,
        "heads": heads,
        "thresholds": th,
        "roles": {r: [head_name(x["layer"], x["head"]) for x in heads if x["role"] == r] for r in ROLES},
        "stages_run": ran,
        "rule": {"relative_floor": relative_floor, "detector_floor": detector_floor if det is not None else None,
                 "min_heads": min_heads, "max_heads": dict(mx)},
        "rejected": rejected,
        **({"detector": det} if det is not None else {}),
        **(extra or {}),
    }


# -- running the patching stages ----------------------------------------------------------------------------
def _path_effects(fn, min_denominator: float) -> tuple[np.ndarray, int]:
    res = fn()
    eff = res.effect("normalized", min_denominator=min_denominator)
    return eff.mean(), eff.n_flagged


def discover_circuit(
    lm, pairs, *, queries: Sequence[str] | None = None, thresholds: dict | None = None,
    max_heads: dict | None = None, min_heads: int = 1, receiver_inputs: Sequence[str] = ("k", "v"),
    min_denominator: float = 1e-3, chunk_size: int | None = None, detector_inputs: PairInputs | None = None,
    method: str = "exact", verify_top_k: int = 10, relative_floor: float = RELATIVE_FLOOR,
    detector_floor: float | None = DETECTOR_FLOOR,
) -> dict:
    """Runs E4 and two E5 stages on aligned pairs and assigns circuit roles.

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel` or a bare model.
        pairs: `jaxmech.data.records.AlignedPair` list (cross-encoder inputs; bi-encoders get their documents and need
            ``queries``).
        queries: Query texts per pair (bi-encoders: encoded for the similarity).
        thresholds: Per-role thresholds (`circuit_from_effects`).
        max_heads: Per-role caps.
        min_heads: At least this many heads per stage (so a weak model still yields a chain to inspect).
        receiver_inputs: Receiver inputs whose E5 effects are summed (the paper: keys/values).
        min_denominator: Pairs with ``|perturbed - baseline|`` below this are flagged and left out.
        chunk_size: Items per vmapped step.
        detector_inputs: If given, `match_scores` on them is added (``detector``) and each head gets its
            detector score.
        method: ``"exact"`` (every sender path-patched) or ``"attribution"``: each stage's estimates for every
            sender, then exact path patches of its ``verify_top_k`` senders with the largest mean estimated effect
            (`jaxmech.patching.path_attribution.verified_path_patch`); the heads verified per stage are listed in
            ``verified``.
        verify_top_k: With ``method="attribution"``: senders verified exactly per stage.
        relative_floor: Per stage, the fraction of its largest effect a head needs (`circuit_from_effects`).
        detector_floor: With ``detector_inputs``: the exact-match score a matching head needs.

    Returns:
        The ``circuit`` JSON object with ``effects`` (the three mean arrays) and ``n_pairs``/``n_flagged``.
    """
    from jaxmech.patching.inputs import batch_pairs

    model, tok = unwrap(lm)
    pairs, q_emb = _encoder_inputs(model, tok, pairs, queries)
    batch = batch_pairs(pairs, max_length=model.cfg.n_ctx)
    to_score, to_heads, verified = _stage_runners(model, batch, method, verify_top_k, q_emb, chunk_size)
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    sel = dict(thresholds=th, max_heads=max_heads, min_heads=min_heads, relative_floor=relative_floor)
    e4, e5a, e5b, flagged = _stages(to_score, to_heads, sel, receiver_inputs, min_denominator)
    effects = {"path_to_score": e4, "path_to_heads_scoring": e5a, "path_to_heads_contextual": e5b}
    det = None if detector_inputs is None else match_scores(model, detector_inputs)
    out = circuit_from_effects(
        e4,
        None if e5a is None else _pad(e5a, e4.shape),
        None if e5b is None else _pad(e5b, e4.shape),
        **sel,
        detector=det,
        detector_floor=detector_floor,
        model=model_label(lm),
        extra={
            "effects": effects,
            "n_pairs": batch.n_pairs,
            "n_flagged": flagged,
            "receiver_inputs": list(receiver_inputs),
            **({"method": "attribution", "verify_top_k": verify_top_k, "verified": verified}
               if method == "attribution" else {}),
        },
    )
    if e5a is not None and e5b is None:
        out["stage_note"] = "stage 3 not run: every contextual-query head is in layer 0 (nothing upstream)"
    if det is not None:
        out["detector"] = det
        out["detector_top"] = [head_name(*h) for h in top_heads_of(det, 10)]
    return out


def _encoder_inputs(model, tok, pairs, queries):
    """``(pairs, query_embedding)``: a cross-encoder's pairs as given (no embedding); a bi-encoder's
    documents (`jaxmech.data.align.document_only`) and its encoded queries."""
    if model.pair_input:
        return pairs, None
    from jaxmech.analysis.common import encode_batched
    from jaxmech.data.align import document_only

    if tok is None or queries is None:
        raise ValueError("discover_circuit on a bi-encoder needs the tokenizer and the queries")
    pairs = [document_only(p, tok) for p in pairs]
    qp = tok.word_pieces(list(queries))
    return pairs, encode_batched(model, [[tok.cls_id, *q, tok.sep_id] for q in qp])


def _stage_runners(model, batch, method: str, verify_top_k: int, q_emb, chunk_size: int | None):
    """``(to_score(), to_heads(receivers, receiver_input), verified)``: each stage's path patch, exact, or by
    attribution with its ``verify_top_k`` senders verified exactly (recorded in ``verified`` per stage)."""
    from jaxmech.patching.path import path_to_heads, path_to_score

    verified: dict[str, list[str]] = {}
    if method == "exact":
        kw = dict(chunk_size=chunk_size, query_embedding=q_emb)
        return (lambda: path_to_score(model, batch, **kw),
                lambda receivers, r: path_to_heads(model, batch, receivers, r, **kw), verified)
    if method != "attribution":
        raise ValueError(f"discover_circuit: method={method!r}; choose 'exact' or 'attribution'")
    from jaxmech.patching.path_attribution import verified_path_patch

    def fast(family, receivers=(), receiver_input="k", stage=""):
        res, heads = verified_path_patch(model, batch, family, k=verify_top_k, receivers=receivers,
                                         receiver_input=receiver_input, query_embedding=q_emb)
        verified[stage] = [head_name(*h) for h in heads]
        return res

    def to_heads(receivers, r):
        return fast("path_to_heads", receivers, r,
                    stage=f"path_to_heads_{r}:{','.join(head_name(*h) for h in receivers)}")

    return lambda: fast("path_to_score", stage="path_to_score"), to_heads, verified


def _stages(to_score, to_heads, sel: dict, receiver_inputs: Sequence[str], min_denominator: float):
    """``(E4, E5 into the scoring heads, E5 into the contextual-query heads, flagged pairs)``: a stage with no
    receivers above layer 0 is None (a layer-0 head reads the embeddings only: nothing upstream of it)."""
    e4, flagged = _path_effects(to_score, min_denominator)
    stage1 = circuit_from_effects(e4, **sel)
    scoring = [(h["layer"], h["head"]) for h in stage1["heads"]]
    e5a = e5b = None
    if scoring and max(layer for layer, _ in scoring) > 0:
        e5a = sum(_path_effects(lambda r=r: to_heads(scoring, r), min_denominator)[0] for r in receiver_inputs)
        stage2 = circuit_from_effects(e4, _pad(e5a, e4.shape), **sel)
        contextual = [
            (h["layer"], h["head"]) for h in stage2["heads"] if h["role"] == "contextual_query" and h["layer"] > 0
        ]
        if contextual:
            e5b = sum(_path_effects(lambda r=r: to_heads(contextual, r), min_denominator)[0]
                      for r in receiver_inputs)
    return e4, e5a, e5b, flagged


def _pad(effect: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An E5 array ``[receiver_layer, head]`` padded with NaN to ``[layer, head]`` (later layers: no sender)."""
    out = np.full(shape, np.nan)
    out[: effect.shape[0]] = effect
    return out


__all__ = [
    "DEFAULT_THRESHOLDS",
    "ROLES",
    "circuit_from_effects",
    "discover_circuit",
    "match_scores",
    "match_targets",
    "select_heads",
    "top_heads_of",
]
