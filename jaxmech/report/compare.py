"""The paper's numbers (paper-notes §4-§11) and the comparison of a run's results with them.

Every verdict is computed from the run by a stated criterion (``Comparison.criterion``); nothing is
hard-coded. Verdicts:

* ``agrees`` / ``partly agrees`` / ``disagrees``: the same model as the paper, compared numerically or by
  head identity.
* ``agrees in kind`` / ``differs in kind``: a different model (head indices and values do not carry over),
  compared on the claim's structure (e.g. "the top score-path heads sit in the last layers").
* ``not comparable``: nothing to compare (e.g. a bi-encoder's cosine against the paper's logit).
* ``not in this run``: the run lacks the family or analysis.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmech.results.source import ResultsError, ResultsSource, base_family

PAPER_MODEL = "cross-encoder/ms-marco-MiniLM-L-12-v2"
PAPER = {
    "model": PAPER_MODEL,
    "n_layers": 12,
    "n_heads": 12,
    "demo": {
        "query": "what is the acceptance rate at wellesley",
        "baseline_doc": "College acceptance rates in the USA are becoming more competitive.",
        "perturbed_doc": "College acceptance rates in the USA are becoming more competitive. wellesley",
        "score_baseline": -5.6513,
        "score_perturbed": 4.3892,
        "length": 22,
    },
    "path_to_score": {"10.10": 0.17, "10.1": 0.16, "10.7": 0.12, "10.4": 0.07},
    "scoring_heads": ["10.1", "10.10", "10.7", "10.4"],
    "head_all_pos_v": {"10.1": 0.15, "10.10": 0.15, "10.7": 0.11},
    "matching_heads": ["7.9", "8.1", "4.9", "2.1", "8.8", "6.5", "1.7", "5.7", "5.9", "3.1", "8.0", "6.3", "0.8"],
    "block_every": {
        "resid_pre_dinj_early": 1.0,
        "resid_pre_qplus_middle": "0.45-0.7",
        "resid_pre_cls_last": 1.0,
        "attn_out_cls_layer10": 0.8,
    },
    "linear_test_pearson": 0.8157,
    "bm25_test_pearson": 0.42,
    "u0_idf": "U_0 is the component most correlated with IDF (negatively in the code's sign); value not readable",
    "edit_idf": "raising U_0-IDF of the query term raises the perturbed score and head 10.1's [CLS] attention",
    "soft_tf": "matching-head attention to the document grows with term count and saturates (TFC2); falls with "
    "document length (LNC1)",
}
DEMO_ATOL = 2e-3  # the paper's logits are printed to 4 decimals from an MPS run
LINEAR_TOL = 0.05  # |r_ours - r_paper| for numeric agreement of correlations
PAPER_TOP_SHARE = {"path_to_score": 0.84, "head_all_pos_v": 0.5}
"""Share of the positive effect the paper's top heads carry, as read from its figures (E4: the top 4, the rest
≈0; E2: the top 3, with 7 more heads at 0.05-0.08)."""
SHARE_FRACTION = 0.6
IN_KIND_R_GAP = 0.2
"""A correlation claim holds in kind when our r is within this of the paper's (a fit as strong in kind)."""
SEMANTIC_SHARE = 0.1
"""STMC1: a head matches semantically when the synonym's attention gain over a filler is at least this share of
the exact term's."""
SATURATION_RATIO = 0.5  # saturates: the last step at most this fraction of the first (tf/(tf+1) from tf 1: 0.2)


@dataclasses.dataclass
class Comparison:
    """One result beside the paper's.

    Attributes:
        key: Stable id (``"demo_logits"``, ``"scoring_heads"``, ...).
        item: What is compared, in words.
        paper: The paper's value, in words.
        ours: Ours, in words.
        verdict: See the module docstring.
        criterion: How the verdict was decided.
        figure: Anchor of the figure that shows it (``"fig-path_to_score"``), empty if none.
        values: Our numbers, for numbers.json.
    """

    key: str
    item: str
    paper: str
    ours: str
    verdict: str
    criterion: str
    figure: str = ""
    values: dict = dataclasses.field(default_factory=dict)


def same_model(meta: dict) -> bool:
    """Whether the run used the paper's model (by its id in ``meta["model"]``)."""
    return PAPER_MODEL.lower() in str(meta.get("model", "")).lower()


def model_shape(source: ResultsSource) -> tuple[int | None, int | None]:
    """``(n_layers, n_heads)`` from the meta, else from the first per-head family."""
    L, H = source.meta.get("n_layers"), source.meta.get("n_heads")
    if L and H:
        return int(L), int(H)
    for fam in source.families:
        try:
            lab = source.pair_mean(fam)[0]
        except ResultsError:
            continue
        if "layer" in lab.dims and "head" in lab.dims and base_family(fam) != "path_to_heads":
            return lab.values.shape[lab.axis("layer")], lab.values.shape[lab.axis("head")]
    for fam in source.families:
        if base_family(fam) in ("block_every", "head_by_pos_z"):
            lab = source.pair_mean(fam)[0]
            return lab.values.shape[lab.axis("layer")], None
    return None, None


def ranked_heads(values: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` heads with the largest value of a ``[layer, head]`` array (NaN last)."""
    flat = np.where(np.isfinite(values), values, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    H = values.shape[1]
    return [(f"{i // H}.{i % H}", float(flat[i])) for i in order if np.isfinite(flat[i])]


def _heads_str(heads: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{h} ({v:.3f})" for h, v in heads)


def _not_in_run(key: str, item: str, paper: str, what: str, figure: str = "") -> Comparison:
    return _judge(key, item, paper, figure)(f"— ({what} not in this run)", "not in this run", f"needs {what}")


def _in_kind(verdict: str) -> str:
    """A same-model verdict restated for a different model (compared on the claim's structure)."""
    return {"agrees": "agrees in kind", "partly agrees": "partly agrees in kind"}.get(verdict, "differs in kind")


def _judge(key: str, item: str, paper: str, figure: str = "") -> Any:
    """The `Comparison` maker of one item: ``judge(ours, verdict, criterion, values=None)``."""

    def judge(ours: str, verdict: str, criterion: str, values: dict | None = None) -> Comparison:
        return Comparison(key, item, paper, ours, verdict, criterion, figure, dict(values or {}))

    return judge


def _model_note(meta: dict, L: int | None) -> str:
    return f"{meta.get('model', 'unknown model')}" + (f", {L} layers" if L else "")


# ---------------------------------------------------------------------------------------------------------------


def compare_demo(scores: dict | None, meta: dict) -> Comparison:
    """Demo logits (notes §11): baseline -5.6513, perturbed 4.3892 on the paper's model.

    Args:
        scores: ``{"score_baseline", "score_perturbed", "kind"}`` of the run's model on the demo pair, or
            ``{"error": why}``, or None when not scored.
        meta: Run meta.
    """
    d = PAPER["demo"]
    key, item = "demo_logits", "demo pair logits (baseline / perturbed)"
    paper = f"{d['score_baseline']} / {d['score_perturbed']}"
    judge = _judge(key, item, paper)
    if scores is None or "error" in scores:
        why = scores["error"] if scores else "the report was built without scoring the demo pair"
        return judge(f"— ({why})", "not in this run", "needs the run's model")
    b, p = float(scores["score_baseline"]), float(scores["score_perturbed"])
    ours = f"{b:.4f} / {p:.4f}"
    vals = {"score_baseline": b, "score_perturbed": p}
    if scores.get("kind") == "bi":
        why = "a bi-encoder scores by cosine similarity, the paper's model by a raw logit"
        return judge(ours + " (cosine similarities)", "not comparable", why, vals)
    if same_model(meta):
        ok = abs(b - d["score_baseline"]) <= DEMO_ATOL and abs(p - d["score_perturbed"]) <= DEMO_ATOL
        return judge(ours, "agrees" if ok else "disagrees", f"both logits within {DEMO_ATOL} of the paper's", vals)
    crit = "different model: logits differ in scale; in kind = the perturbed document (term appended) scores higher "
    return judge(ours, "agrees in kind" if p > b else "differs in kind", crit + "than the baseline", vals)


def compare_block(source: ResultsSource, L: int | None) -> Comparison:
    """E1 block patching: Dinj early -> Qplus in the middle -> [CLS] at the end (notes §4 E1, §11)."""
    key, item, fig = "block_every", "E1 block patching: where the signal flows", "fig-block_every"
    paper = (
        "resid_pre ≈1 at the injected token (layers 0–2), ≈0.45–0.7 at the query-term copy in middle layers, "
        "≈1 at [CLS] in layer 11; attn_out at [CLS] in layer 10 ≈0.8"
    )
    if "block_every" not in source.families:
        return _not_in_run(key, item, paper, "block_every", fig)
    judge = _judge(key, item, paper, fig)
    lab = source.by_token_type("block_every")
    if lab is None:
        return judge("— (no token types: patch a dataset file)", "not comparable", "needs token-type aggregation")
    types = lab.labels("token_type")
    rp = lab.select("component", "resid_pre").values  # [layer, type]
    ao = lab.select("component", "attn_out").values
    n = rp.shape[0]
    early = slice(0, max(1, math.ceil(n / 4)))
    middle = slice(max(1, math.ceil(n / 4)), max(2, n - 1))

    def at(a, rows, t):
        if t not in types:
            return float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmax(a[rows, types.index(t)]))

    checks = {
        "resid_pre at Dinj, early layers (max)": (at(rp, early, "Dinj"), 0.5),
        "resid_pre at Qplus, middle layers (max)": (at(rp, middle, "Qplus"), 0.3),
        "[CLS]: resid_pre last layer or attn_out last two layers (max)": (
            max(at(rp, slice(n - 1, n), "CLS"), at(ao, slice(max(0, n - 2), n), "CLS")),
            0.5,
        ),
    }
    passed = [k for k, (v, th) in checks.items() if np.isfinite(v) and v >= th]
    ours = "; ".join(f"{k}: {v:.2f}" if np.isfinite(v) else f"{k}: absent" for k, (v, _) in checks.items())
    vals = {k: (None if not np.isfinite(v) else v) for k, (v, _) in checks.items()}
    if source.meta.get("kind") == "bi":
        why = "a bi-encoder encodes the document alone and pools its tokens: the query-term and [CLS] stages"
        return judge(ours, "not comparable", why + " of the paper's flow do not exist in it", vals)
    crit = "each ≥ its threshold (" + ", ".join(f"{th}" for _, th in checks.values()) + ")"
    if source.meta.get("merge_pieces") not in (None, "mean"):
        crit += f"; a split term's pieces merged by {source.meta['merge_pieces']}"
    if source.meta.get("aggregate_label"):
        crit += f"; {source.meta['aggregate_label']}"
    if len(passed) == len(checks):
        verdict = "agrees"
    elif passed:
        verdict = "partly agrees"
    else:
        verdict = "disagrees"
    if not same_model(source.meta):
        verdict = _in_kind(verdict)
        crit = "different model, compared in kind with layers scaled to its depth: " + crit
    return judge(ours, verdict, crit, vals)


def _head_set_verdict(ours: list[str], paper: list[str], n_match_full: int, n_match_part: int) -> str:
    hit = len(set(ours) & set(paper))
    return "agrees" if hit >= n_match_full else "partly agrees" if hit >= n_match_part else "disagrees"


def _last_layers_in_kind(heads: list[tuple[str, float]], L: int) -> bool:
    return bool(heads) and all(int(h.split(".")[0]) >= L - 2 for h, _ in heads)


def compare_top_heads(source: ResultsSource, family: str, L: int | None) -> Comparison:
    """E4 (``path_to_score``) or E2 (``head_all_pos_v``): the top heads against the paper's layer-10 heads."""
    fig = f"fig-{family}"
    if family == "path_to_score":
        key, item = "scoring_heads", "E4 path patching: heads → score (relevance scoring heads)"
        ref = PAPER["path_to_score"]
    else:
        key, item = "head_all_pos_v", "E2 head patching (v): top heads"
        ref = PAPER["head_all_pos_v"]
    paper = ", ".join(f"{h} ≈{v}" for h, v in ref.items()) + "; the rest ≈0"
    if family not in source.families:
        return _not_in_run(key, item, paper, family, fig)
    judge = _judge(key, item, paper, fig)
    mean = source.pair_mean(family)[0].values
    k = len(ref)
    top = ranked_heads(mean, k)
    ours = _heads_str(top)
    finite = mean[np.isfinite(mean)]
    share = float(sum(max(v, 0) for _, v in top) / max(np.clip(finite, 0, None).sum(), 1e-12))
    vals = {"top_heads": [[h, v] for h, v in top], "top_share_of_positive_effect": share}
    ours += f"; top {k} carry {share:.0%} of the positive effect"
    if same_model(source.meta):
        verdict = _head_set_verdict([h for h, _ in top], list(ref), k - 1, 1)
        return judge(ours, verdict, f"our top {k} heads vs the paper's: agrees if ≥{k - 1} shared, partly if ≥1", vals)
    n = L or mean.shape[0]
    # One rule for both "top heads" claims: in the last two layers and concentrated, i.e. carrying at least
    # SHARE_FRACTION of the share the paper's top k carry (E4 top 4 ~84%, E2 top 3 about half).
    need = SHARE_FRACTION * PAPER_TOP_SHARE[family]
    ok = _last_layers_in_kind(top, n) and share >= need
    crit = (f"different model ({n} layers): in kind = our top {k} heads all in the last two layers and carrying "
            f"≥{need:.0%} of the positive effect ({SHARE_FRACTION} × the paper's top-{k} share "
            f"{PAPER_TOP_SHARE[family]:.0%}; one rule for E2 and E4)")
    return judge(
        ours, "agrees in kind" if ok else "differs in kind", crit + " (the paper's are in layer 10 of 12)", vals
    )


def _circuit_heads(source: ResultsSource, role: str) -> list[str] | None:
    c = source.analyses.get("circuit")
    if not isinstance(c, dict) or "heads" not in c:
        return None
    return [f"{int(h['layer'])}.{int(h['head'])}" for h in c["heads"] if h.get("role") == role]


def _stage_ran(c: dict, role: str) -> tuple[bool, str]:
    """Whether the circuit analysis ran the stage of ``role``, and if not, why (older files: from ``effects``)."""
    if isinstance(c.get("stages_run"), list):
        ran = role in c["stages_run"]
    else:
        from jaxmech.analysis.circuit import STAGE_FAMILIES

        eff = c.get("effects")
        ran = isinstance(eff, dict) and eff.get(STAGE_FAMILIES[role]) is not None
    why = str(c.get("stage_note") or f"the circuit analysis did not run the {role} stage (E5)")
    return ran, why


def _matching_evidence(c: dict, detector_floor: float) -> dict:
    """Matching heads of a circuit JSON checked against the exact-match detector, and where the detector's
    own exact-match heads sit in the circuit."""
    heads = [h for h in c.get("heads", []) if isinstance(h, dict)]
    name = lambda h: f"{int(h['layer'])}.{int(h['head'])}"  # noqa: E731
    matching = [h for h in heads if h.get("role") == "matching"]
    has_det = any("detector_score" in h for h in heads) or c.get("detector") is not None
    det = np.asarray(c["detector"], np.float64) if c.get("detector") is not None else None

    def score(h):
        if h.get("detector_score") is not None:
            return float(h["detector_score"])
        return float(det[int(h["layer"]), int(h["head"])]) if det is not None else float("nan")

    confirmed = [name(h) for h in matching if score(h) >= detector_floor]
    exact = []  # the detector's exact-match heads anywhere in the circuit
    if det is not None:
        role_of = {name(h): h.get("role") for h in heads}
        for lay, hd in zip(*np.nonzero(np.nan_to_num(det, nan=-1.0) >= detector_floor), strict=True):
            exact.append((f"{lay}.{hd}", float(det[lay, hd]), role_of.get(f"{lay}.{hd}", "not in the circuit")))
    else:  # per-head scores only: the circuit's own heads
        exact = [(name(h), score(h), str(h.get("role"))) for h in heads if score(h) >= detector_floor]
    exact.sort(key=lambda t: -t[1])
    rejected = [f"{name(h)} (effect {float(h['effect']):.3f}, detector {score(h):.3f})"
                for h in c.get("rejected", []) if isinstance(h, dict)]
    return {"matching": [(name(h), float(h.get("effect", float("nan"))), score(h)) for h in matching],
            "confirmed": confirmed, "has_detector": has_det, "exact_match_heads": exact, "rejected": rejected}


def compare_matching(source: ResultsSource, L: int | None) -> Comparison:
    """Matching heads of the circuit analysis: the paper's 13 (same model), or a third stage of heads that are
    exact-match heads by the attention detector (in kind)."""
    from jaxmech.analysis.circuit import DETECTOR_FLOOR

    key, item, fig = "matching_heads", "matching heads (circuit analysis, stage 3)", "fig-circuit"
    ref = PAPER["matching_heads"]
    paper = ", ".join(ref) + f" ({len(ref)} heads), feeding the contextual-query heads: three stages"
    c = source.analyses.get("circuit")
    if not isinstance(c, dict) or "heads" not in c:
        return _not_in_run(key, item, paper, "the circuit analysis", fig)
    judge = _judge(key, item, paper, fig)
    ran, why = _stage_ran(c, "matching")
    if not ran:
        return judge(f"— ({why})", "not in this run", "needs the circuit's third stage (E5 into the "
                     "contextual-query heads)")
    ev = _matching_evidence(c, DETECTOR_FLOOR)
    listed = ", ".join(f"{h} (effect {e:.3f}, detector {d:.3f})" for h, e, d in ev["matching"]) or "none"
    ours = f"stage 3: {listed}"
    if ev["rejected"]:
        more = len(ev["rejected"]) - 4
        ours += (f"; {len(ev['rejected'])} left out by the detector check: " + ", ".join(ev["rejected"][:4])
                 + (f" and {more} more" if more > 0 else ""))
    if ev["exact_match_heads"]:
        ours += "; the detector's exact-match heads: " + ", ".join(
            f"{h} ({d:.2f}, {r})" for h, d, r in ev["exact_match_heads"])
    vals = {"heads": [h for h, _, _ in ev["matching"]], "confirmed": ev["confirmed"],
            "exact_match_heads": [[h, d, r] for h, d, r in ev["exact_match_heads"]]}
    crit_det = (f"a matching head must be an exact-match head by the attention detector (score ≥ {DETECTOR_FLOOR}: "
                "its query-term attention on the term's document copies beyond a uniform spread)")
    if same_model(source.meta):
        hit = sorted(set(vals["heads"]) & set(ref), key=lambda h: tuple(map(int, h.split("."))))
        vals["shared_with_paper"] = hit
        verdict = "agrees" if len(hit) >= 9 else "partly agrees" if len(hit) >= 4 else "disagrees"
        return judge(ours + f"; {len(hit)} shared", verdict, "shared heads: agrees if ≥9 of 13, partly if ≥4", vals)
    if not ev["has_detector"]:
        verdict = "partly agrees in kind" if ev["matching"] else "differs in kind"
        return judge(ours + " (no detector scores in this run)", verdict, "different model: stage-3 heads found "
                     "(partly: without detector scores they cannot be confirmed as exact-match heads); "
                     "none found differs", vals)
    if ev["confirmed"]:
        verdict = "agrees in kind"
        ours += f" → {len(ev['confirmed'])} confirmed: three stages"
    else:
        verdict = "differs in kind"
        early = [h for h, _, r in ev["exact_match_heads"] if r == "contextual_query"]
        ours += (f" → no confirmed matching head; the exact-match heads {', '.join(early)} are in stage 2 "
                 "and feed the scoring heads directly: the circuit has two stages, not three") if early else \
            " → no confirmed matching head"
    rel = (c.get("rule") or {}).get("relative_floor")
    floor = f"and ≥ {rel} × the stage's largest" if rel else "(an older analysis: no relative floor)"
    crit = ("different model: in kind = at least one stage-3 head (its effect ≥ the stage's absolute threshold "
            f"{floor}) that is an exact-match head; " + crit_det)
    return judge(ours, verdict, crit, vals)


def compare_scoring_circuit(source: ResultsSource) -> Comparison:
    """Head 10.1 as a relevance scoring head (circuit analysis)."""
    key, item, fig = "head_10_1", "head 10.1 is a relevance scoring head", "fig-circuit"
    paper = "10.1 (canonical; with 10.10, 10.7, 10.4)"
    heads = _circuit_heads(source, "relevance_scoring")
    if heads is None:
        return _not_in_run(key, item, paper, "the circuit analysis", fig)
    ours = ", ".join(heads) or "none"
    judge = _judge(key, item, paper, fig)
    if same_model(source.meta):
        verdict = "agrees" if "10.1" in heads else "disagrees"
        return judge(ours, verdict, "10.1 among the circuit's relevance_scoring heads", {"heads": heads})
    return judge(ours, "not comparable", "different model: head indices do not correspond", {"heads": heads})


def compare_idf_svd(source: ResultsSource) -> Comparison:
    """U_0 of the embedding SVD as the component most (negatively) correlated with IDF."""
    key, item, fig = "u0_idf", "U_0 of W_E encodes IDF", "fig-idf_svd_bars"
    paper = PAPER["u0_idf"]
    a = source.analyses.get("idf_svd")
    if not isinstance(a, dict):
        return _not_in_run(key, item, paper, "the idf_svd analysis", fig)
    try:
        r0 = float(a["u0_idf_pearson"])
        comps = {int(c["k"]): float(c["pearson"]) for c in a.get("components", [])}
    except (KeyError, TypeError, ValueError) as err:
        raise ResultsError(f"{source.path}: analyses/idf_svd.json: malformed ({type(err).__name__}: {err})") from None
    others = [abs(v) for k, v in comps.items() if k != 0]
    strongest = not others or abs(r0) > max(others)
    ours = f"r(U_0, IDF) = {r0:+.3f}" + (f"; strongest other |r| = {max(others):.3f}" if others else "")
    free = a.get("u0_idf_pearson_sign_free")
    crit = "|r(U_0, IDF)| larger than every other U_k's (k < 50)"
    if free is None:  # older files: the stored sign is oriented by IDF, so testing it would be a tautology
        verdict = "agrees" if strongest else "disagrees"
        crit += "; sign not tested (this run's r is oriented by IDF, negative by construction)"
    else:
        free = float(free)
        ours += f"; sign-free r(U_0·ΣVt_0, IDF) = {free:+.3f}"
        verdict = "agrees" if strongest and free < 0 else "partly agrees" if strongest else "disagrees"
        crit += (" and negative in the sign-free measure corr(U_0·ΣVt_0, IDF) (agrees), positive (partly); the r "
                 "shown first is oriented by IDF and negative by construction")
    b = a.get("base")
    if isinstance(b, dict) and b.get("u0_abs_cosine") is not None:
        ours += (f"; base model {b.get('base')}: |cos(U_0, U_0 base)| = {float(b['u0_abs_cosine']):.3f}, W_E differs "
                 f"by {float(b['w_e_relative_difference']):.2%}, "
                 f"base r(U_0, IDF) = {float(b['base_u0_idf_pearson']):+.3f}"
                 " (U_0 inherited from pre-training when the cosine is near 1)")
    if not same_model(source.meta):
        verdict = _in_kind(verdict)
        crit = "different model, same criterion: " + crit
    return _judge(key, item, paper, fig)(ours, verdict, crit, {"u0_idf_pearson": r0})


def compare_linear(source: ResultsSource) -> list[Comparison]:
    """Linear semantic BM25 (r = 0.8157) and tuned BM25 (r = 0.42) against the CE score."""
    fig = "fig-linear_bm25"
    p_lin, p_bm = PAPER["linear_test_pearson"], PAPER["bm25_test_pearson"]
    lin_item, bm_item = "linear semantic-BM25 fit, test Pearson r", "BM25 against the CE score, Pearson r"
    a = source.analyses.get("linear_bm25")
    if not isinstance(a, dict):
        return [
            _not_in_run(key, it, str(ref), "the linear_bm25 analysis", fig)
            for key, it, ref in (("linear_r", lin_item, p_lin), ("bm25_r", bm_item, p_bm))
        ]
    judge_lin, judge_bm = _judge("linear_r", lin_item, str(p_lin), fig), _judge("bm25_r", bm_item, str(p_bm), fig)
    try:
        r = float(a["test_pearson"])
        rb = float(a["bm25_test_pearson"]) if "bm25_test_pearson" in a else float("nan")
        rr = float(a["random_features_test_pearson"]) if "random_features_test_pearson" in a else float("nan")
    except (KeyError, TypeError, ValueError) as err:
        raise ResultsError(
            f"{source.path}: analyses/linear_bm25.json: malformed ({type(err).__name__}: {err})"
        ) from None
    same = same_model(source.meta)
    n_train, n_feat = a.get("n_train"), a.get("n_features")
    if isinstance(n_train, int) and isinstance(n_feat, int) and n_feat >= n_train:
        why = (
            f"underdetermined fit: {n_feat} features for {n_train} training pairs (the paper: 135 features, "
            "~8,000 training pairs); its test r is no evidence either way"
        )
        return [
            judge_lin(f"{r:.4f}", "not comparable", why, {"test_pearson": r, "n_train": n_train, "n_features": n_feat}),
            judge_bm(
                f"{rb:.4f}" if np.isfinite(rb) else "—",
                "not comparable",
                "compared only beside a determined linear fit",
                {"bm25_test_pearson": rb if np.isfinite(rb) else None},
            ),
        ]
    beats = np.isfinite(rb) and r > rb + 0.1 and (not np.isfinite(rr) or r > rr + 0.1)
    if same:
        v1 = "agrees" if abs(r - p_lin) <= LINEAR_TOL else "partly agrees" if beats else "disagrees"
        c1 = f"|r − {p_lin}| ≤ {LINEAR_TOL} (agrees); else beating BM25 and random features by >0.1 (partly)"
    else:
        strong = r >= p_lin - IN_KIND_R_GAP
        v1 = "agrees in kind" if beats and strong else "partly agrees in kind" if beats else "differs in kind"
        c1 = (f"different model: in kind = r ≥ {p_lin} − {IN_KIND_R_GAP} (as strong a fit) and beating BM25 and "
              "random features by >0.1 in r; beating them with a weaker fit is partly")
    ours = f"{r:.4f}" + (f" (random features {rr:.3f})" if np.isfinite(rr) else "")
    out = [
        judge_lin(ours, v1, c1, {"test_pearson": r, "random_features_test_pearson": rr if np.isfinite(rr) else None})
    ]
    rb_text = f"{rb:.4f}" + _bm25_notes(a)
    if not np.isfinite(rb):
        out.append(_not_in_run("bm25_r", bm_item, str(p_bm), "bm25_test_pearson", fig))
    elif same:
        v2 = "agrees" if abs(rb - p_bm) <= LINEAR_TOL else "disagrees"
        out.append(judge_bm(rb_text, v2, f"|r − {p_bm}| ≤ {LINEAR_TOL}", {"bm25_test_pearson": rb}))
    else:
        v2 = "agrees in kind" if rb < r else "differs in kind"
        c2 = "different model: in kind = BM25 fits the model worse than the linear features"
        out.append(judge_bm(rb_text, v2, c2, {"bm25_test_pearson": rb}))
    return out


def _bm25_notes(a: dict) -> str:
    """The BM25 baseline's IDF-0 rule, its tuned (k1, b) and where they sit on the grid, and the other rule's r."""
    parts = []
    if a.get("bm25_fallback"):
        parts.append(f"IDF-0 rule: {a['bm25_fallback']}")
    if a.get("bm25_k1") is not None:
        parts.append(f"tuned k1 = {a['bm25_k1']:g}, b = {a.get('bm25_b', float('nan')):g}; on the grid: "
                     f"{a.get('bm25_grid_edge', 'not recorded')}")
    other = a.get("bm25_other_fallback")
    if isinstance(other, dict) and other.get("test_pearson") is not None:
        parts.append(f"with IDF-0 rule {other.get('fallback')}: r = {float(other['test_pearson']):.4f}")
    return f" ({'; '.join(parts)})" if parts else ""


def _trend(mean: Sequence[float]) -> tuple[float, bool]:
    """Change from the first to the last finite value, and whether the curve saturates: its last step at most
    half its first (callers drop conditions that are fixed by construction, such as tf = 0, first)."""
    m = np.asarray([np.nan if v is None else v for v in mean], np.float64)
    m = m[np.isfinite(m)]
    if m.size < 2:
        return float("nan"), False
    d = np.diff(m)
    saturating = len(d) >= 2 and abs(d[-1]) <= SATURATION_RATIO * abs(d[0])
    return float(m[-1] - m[0]), bool(saturating)


def _from_tf1(exp: dict, d: dict) -> dict:
    """A TFC2 head curve without its tf = 0 condition: with no document copy of the term the attention to its
    copies is 0 by construction, so a first step from there would make any rising curve look saturating."""
    xs = list(exp.get("x", []))
    keep = [i for i, x in enumerate(xs) if not (isinstance(x, (int, float)) and x == 0)]
    if not xs or len(keep) == len(xs):
        return d
    return {k: [v[i] for i in keep] if isinstance(v, list) and len(v) == len(xs) else v for k, v in d.items()}


def _ci_halfwidth(d: dict, idx: Sequence[int] | None = None) -> float:
    """Mean half-width of a curve's confidence band at two points (default: its finite ends; 0 without a band)."""
    if "lo" not in d or "hi" not in d:
        return 0.0
    lo = np.asarray([np.nan if v is None else v for v in d["lo"]], np.float64)
    hi = np.asarray([np.nan if v is None else v for v in d["hi"]], np.float64)
    half = (hi - lo) / 2
    if idx is None:
        ok = np.flatnonzero(np.isfinite(half))
        idx = [ok[0], ok[-1]] if ok.size else []
    vals = [half[i] for i in idx if np.isfinite(half[i])]
    return float(np.mean(vals)) if vals else 0.0


def _paired(exp: dict) -> dict[str, tuple[float, float]]:
    """``{head: (mean change, paired half-width)}`` from a soft-TF experiment's ``paired_change`` (else empty)."""
    pc = exp.get("paired_change")
    if not isinstance(pc, dict) or not isinstance(pc.get("heads"), dict):
        return {}
    out = {}
    for h, d in pc["heads"].items():
        m, lo, hi = (np.nan if d.get(k) is None else float(d[k]) for k in ("mean", "lo", "hi"))
        if np.isfinite(m):
            out[h] = (m, (hi - lo) / 2 if np.isfinite(hi - lo) else 0.0)
    return out


def compare_soft_tf(source: ResultsSource) -> list[Comparison]:
    """Soft-TF: TFC2 attention rises and saturates; LNC1 attention falls with length."""
    fig = "fig-soft_tf"
    a = source.analyses.get("soft_tf")
    out = []
    specs = (
        ("tfc2", "soft TF saturates with term count (TFC2)", "rises with the count and saturates", 1),
        ("lnc1", "attention falls with document length (LNC1)", "falls as sentences are appended", -1),
    )
    for exp, item, paper, sign in specs:
        key = f"soft_tf_{exp}"
        if not isinstance(a, dict) or exp not in a:
            out.append(_not_in_run(key, item, paper, f"soft_tf.{exp}", fig))
            continue
        judge = _judge(key, item, paper, fig)
        heads = a[exp].get("heads", {})
        if exp == "tfc2":
            heads = {h: _from_tf1(a[exp], d) for h, d in heads.items()}
        trends = {h: _trend(d["mean"]) for h, d in heads.items() if len(d.get("mean", [])) >= 2}
        if not trends:
            out.append(judge("— (no heads)", "not comparable", "needs head curves"))
            continue
        margin = {h: _ci_halfwidth(heads[h]) for h in trends}
        paired = _paired(a[exp])
        if paired:  # the same documents in every condition: the change's own (paired) interval
            trends = {h: (paired[h][0], sat) for h, (_, sat) in trends.items() if h in paired}
            margin = {h: paired[h][1] for h in trends}
        good = [h for h, (delta, sat) in trends.items() if sign * delta > margin[h] and (sat or sign < 0)]
        frac = len(good) / len(trends)
        verdict = "agrees" if frac > 0.5 else "partly agrees" if good else "disagrees"
        crit = (
            "share of heads whose mean "
            + ("rises from tf = 1 to the largest tf" if sign > 0 else "falls from the first to the last condition")
            + " by more than its confidence half-width"
            + (f" and saturates (its last step ≤ {SATURATION_RATIO} × its step from tf = 1 to 2; tf = 0 is left out: "
               "0 by construction)" if sign > 0 else "")
            + ": >50% agrees, any partly"
            + ("; the change and its interval are paired (per document)" if paired else
               "; intervals of the two conditions (unpaired: this analysis stored no paired change)")
        )
        if not same_model(source.meta):
            verdict = _in_kind(verdict)
        changes = ", ".join(f"{h} {trends[h][0]:+.3f}" for h in list(trends)[:8])
        ours = f"{len(good)} of {len(trends)} heads ({', '.join(good) or 'none'}); change {changes}"
        out.append(judge(ours, verdict, crit, {"heads_following": good, "n_heads": len(trends),
                                                "change": {h: t[0] for h, t in trends.items()}}))
    return out


def compare_stmc1(source: ResultsSource) -> Comparison:
    """STMC1: matching heads attend to an appended synonym more than to an appended filler."""
    key, item, fig = "soft_tf_stmc1", "matching heads also match semantically (STMC1)", "fig-soft_tf"
    paper = "matching heads attend to semantically similar words too (soft/semantic TF)"
    a = source.analyses.get("soft_tf")
    exp = a.get("stmc1") if isinstance(a, dict) else None
    if not isinstance(exp, dict):
        return _not_in_run(key, item, paper, "soft_tf.stmc1", fig)
    judge = _judge(key, item, paper, fig)
    xs = [str(x) for x in exp.get("x", [])]
    if "synonym" not in xs or "filler" not in xs:
        return judge(f"— (conditions {xs})", "not comparable", "needs the filler and synonym conditions")
    i_f, i_s = xs.index("filler"), xs.index("synonym")
    i_e = xs.index("exact") if "exact" in xs else None
    paired = _paired(exp)
    good, n, ratios = [], 0, {}
    for h, d in exp.get("heads", {}).items():
        m = [np.nan if v is None else float(v) for v in d.get("mean", [])]
        if len(m) != len(xs) or not (np.isfinite(m[i_f]) and np.isfinite(m[i_s])):
            continue
        n += 1
        gain = m[i_s] - m[i_f]
        if i_e is not None and np.isfinite(m[i_e]) and m[i_e] - m[i_f] > 0:
            ratios[h] = gain / (m[i_e] - m[i_f])  # the synonym's gain as a share of the exact match's
        big = h not in ratios or ratios[h] >= SEMANTIC_SHARE
        margin = _ci_halfwidth(d, [i_f, i_s])
        if h in paired:
            gain, margin = paired[h]
        if gain > margin and big:
            good.append(h)
    if not n:
        return judge("— (no heads)", "not comparable", "needs head curves")
    verdict = "agrees" if len(good) / n > 0.5 else "partly agrees" if good else "disagrees"
    if not same_model(source.meta):
        verdict = _in_kind(verdict)
    ours = f"{len(good)} of {n} heads attend to the synonym by more than a filler"
    if ratios:
        med = float(np.median(list(ratios.values())))
        ours += (f"; the synonym's gain over a filler is {med:.1%} of the exact match's (median over heads; "
                 f"range {min(ratios.values()):.1%} to {max(ratios.values()):.1%})")
    crit = "synonym mean − filler mean > the confidence half-width"
    if ratios:
        crit += f" and ≥ {SEMANTIC_SHARE:.0%} of exact − filler (an effect size, not only a sign)"
    return judge(ours, verdict, crit + ": >50% of heads agrees, any partly",
                 {"heads_following": good, "n_heads": n, "synonym_share_of_exact": ratios})


def _is_control(cond: str) -> bool:
    c = cond.lower()
    return "control" in c or c.startswith(("full", "row"))  # the control edit scales the whole row


def compare_edit(source: ResultsSource) -> Comparison:
    """IDF editing: raising U_0-IDF raises the score gain and the scoring head's [CLS] attention; lowering it
    lowers the gain (controls, the whole-row edit, are not judged)."""
    key, item, fig = "edit_idf", "editing U_0 (IDF up) raises score gain and [CLS] attention", "fig-edit_idf"
    paper = PAPER["edit_idf"]
    a = source.analyses.get("edit_idf")
    if not isinstance(a, dict):
        return _not_in_run(key, item, paper, "the edit_idf analysis", fig)
    judge = _judge(key, item, paper, fig)
    score = a.get("score", {})
    edits = {k: v for k, v in score.items() if not _is_control(k)}
    up = {k: v for k, v in edits.items() if "decrease" not in k.lower()}
    down = {k: v for k, v in edits.items() if "decrease" in k.lower()}
    if not up:
        return judge("— (no IDF-increase curve)", "not comparable", "needs score curves")

    def change(v) -> tuple[float, float]:
        d = v if isinstance(v, dict) else {"mean": v}
        return _trend(d["mean"])[0], _ci_halfwidth(d)

    deltas = {k: change(v) for k, v in {**up, **down}.items()}
    att = a.get("cls_attention", {})
    att_heads = {h: v for h, v in att.items() if h == "10.1"} if same_model(source.meta) and "10.1" in att else att
    att_d = {h: _trend(v["mean"] if isinstance(v, dict) else v)[0] for h, v in att_heads.items()}
    up_score = all(deltas[k][0] > deltas[k][1] for k in up) and all(deltas[k][0] < -deltas[k][1] for k in down)
    up_att = bool(att_d) and all(d > 0 for d in att_d.values())
    ours = (
        "score change "
        + ", ".join(f"{k} {d:+.3f}" for k, (d, _) in deltas.items())
        + ("; attention change " + ", ".join(f"{h} {d:+.4f}" for h, d in att_d.items()) if att_d else "")
    )
    verdict = "agrees" if up_score and up_att else "partly agrees" if up_score or up_att else "disagrees"
    if not same_model(source.meta):
        verdict = _in_kind(verdict)
    return judge(
        ours,
        verdict,
        "from the smallest to the largest scale, the score of IDF-increase edits rises and of IDF-decrease edits "
        "falls by more than the confidence half-width, and the [CLS] attention of the scoring heads rises "
        "(agrees); one of the two (partly); whole-row control edits are not judged",
        {"score_change": {k: d for k, (d, _) in deltas.items()}, "attention_change": att_d},
    )


def _labelled(c: Comparison, label: str) -> Comparison:
    """A patching comparison of one dataset: key ``key[label]``, item and figure suffixed."""
    if not label:
        return c
    fig = f"{c.figure}__{label}" if c.figure else ""
    return dataclasses.replace(c, key=f"{c.key}[{label}]", item=f"{c.item} — {label}", figure=fig)


def compare_patching(source: ResultsSource, L: int | None, label: str = "") -> list[Comparison]:
    """E1, E4 and E2 on one view of the run (one dataset's pairs: ``label``)."""
    out = [
        compare_block(source, L),
        compare_top_heads(source, "path_to_score", L),
        compare_top_heads(source, "head_all_pos_v", L),
    ]
    return [_labelled(c, label) for c in out]


def compare_all(
    source: ResultsSource | Any,
    demo_scores: dict | None = None,
    *,
    views: Sequence[tuple[str, ResultsSource]] | None = None,
) -> list[Comparison]:
    """Every comparison the run allows, in the order of the paper's checklist (notes §11).

    Args:
        source: Results (a `ResultsSource`, run object, run directory or ``.npz``).
        demo_scores: The run's model on the demo pair (`jaxmech.report.demo.score_demo_pair`), or None.
        views: ``[(label, view)]`` the patching results are judged on, one per dataset
            (`jaxmech.plot.view.PairView`); default the whole run, unlabelled.
    """
    from jaxmech.results.source import open_results

    source = open_results(source)
    L, _ = model_shape(source)
    patching = [c for label, view in (views or [("", source)]) for c in compare_patching(view, L, label)]
    out = [
        compare_demo(demo_scores, source.meta),
        *patching,
        compare_scoring_circuit(source),
        compare_matching(source, L),
        compare_idf_svd(source),
        compare_edit(source),
        *compare_linear(source),
        *compare_soft_tf(source),
        compare_stmc1(source),
    ]
    return out


def summary_counts(comparisons: Sequence[Comparison]) -> dict[str, int]:
    """How many comparisons have each verdict."""
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    return counts


def to_jsonable(x: Any) -> Any:
    """Numbers, arrays and dataclasses as plain JSON values (NaN -> None)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return to_jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x
