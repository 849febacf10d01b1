"""Figures of the analysis JSON (`jaxmech.analysis.registry.ANALYSES`): soft-TF / length curves, SVD-IDF bars
and scatter, IDF-editing curves, the semantic-BM25 regression scatter and the circuit map.

Each function takes the analysis dict (as in ``<run_dir>/analyses/<name>.json``) or results holding it
(a run directory, run object or `ResultsSource`) and returns a Figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxmech.plot.style import LINESTYLES, OKABE_ITO, new_figure, suptitle
from jaxmech.results.source import ResultsError, open_results, read_analysis

PAPER_LINEAR_R = 0.8157
PAPER_BM25_R = 0.42
ROLE_COLOURS = {"matching": "#0072B2", "contextual_query": "#E69F00", "relevance_scoring": "#D55E00"}
ROLE_NAMES = {"matching": "matching", "contextual_query": "contextual query", "relevance_scoring": "relevance scoring"}


def analysis_dict(data: Any, name: str) -> dict:
    """The analysis ``name`` from a dict or from results.

    Raises:
        ResultsError: If it is missing or names a different analysis.
    """
    if isinstance(data, dict):
        obj = data
        where = f"{name} analysis"
    else:
        source = open_results(data)
        obj = read_analysis(source, name)
        where = f"{source.path}/analyses/{name}.json"
    got = obj.get("analysis", name)
    if got != name:
        raise ResultsError(f"{where}: is analysis {got!r}, expected {name!r}")
    return obj


def _need(obj: dict, key: str, name: str):
    if key not in obj:
        raise ResultsError(f"{name} analysis: missing key {key!r} (has: {', '.join(sorted(obj))})")
    return obj[key]


def _floats(x, what: str) -> np.ndarray:
    try:
        return np.asarray(x, np.float64).ravel()
    except (TypeError, ValueError):
        raise ResultsError(f"{what}: expected a list of numbers") from None


def _style(i: int) -> dict:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)]}


SOFT_TF_TITLES = {
    "tfc2": "TFC2: term-frequency saturation",
    "lnc1": "LNC1: document length",
    "stmc1": "STMC1: semantic matches",
}


def soft_tf_curves(data: Any, *, max_heads: int = 8, experiments: Sequence[str] | None = None) -> Figure:
    """Soft-TF and length curves: attention from query-term positions to the document by condition, per head,
    with the confidence band the analysis gives.

    Args:
        data: The ``soft_tf`` analysis dict or results holding it.
        max_heads: Heads per panel (those whose mean changes most across x).
        experiments: Which experiments (default: every one present, in the order tfc2, lnc1, stmc1).

    Returns:
        One panel per experiment.
    """
    obj = analysis_dict(data, "soft_tf")
    order = [e for e in ("tfc2", "lnc1", "stmc1") if e in obj] + [
        k for k, v in obj.items() if isinstance(v, dict) and "heads" in v and k not in ("tfc2", "lnc1", "stmc1")
    ]
    names = list(experiments) if experiments is not None else order
    if not names:
        raise ResultsError("soft_tf analysis: no experiments (expected tfc2, lnc1 or stmc1 entries)")
    fig = new_figure(0.6 + 4.2 * len(names), 3.6)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    every = sorted({h for n in names if isinstance(obj.get(n), dict) for h in obj[n].get("heads", {})}, key=_head_key)
    style_of = {h: _style(j) for j, h in enumerate(every)}  # one colour per head across panels
    for ax, name in zip(axes, names, strict=True):
        exp = _need(obj, name, "soft_tf")
        raw_x = list(_need(exp, "x", f"soft_tf.{name}"))
        categorical = any(isinstance(v, str) for v in raw_x)
        x = np.arange(len(raw_x), dtype=np.float64) if categorical else _floats(raw_x, f"soft_tf.{name}.x")
        if categorical:
            ax.set_xticks(x, [str(v) for v in raw_x])
        elif x.size <= 12 and np.all(np.isfinite(x)) and np.all(x == np.round(x)):
            ax.set_xticks(x)
        heads = _need(exp, "heads", f"soft_tf.{name}")
        spread = {}
        for h, d in heads.items():
            m = _floats(d["mean"], f"soft_tf.{name}.heads.{h}.mean")
            spread[h] = float(np.nanmax(m) - np.nanmin(m)) if np.isfinite(m).any() else 0.0
        shown = sorted(sorted(spread, key=lambda h: -spread[h])[:max_heads], key=_head_key)
        for h in shown:
            d = heads[h]
            m = _floats(d["mean"], f"soft_tf.{name}.heads.{h}.mean")
            if m.size != x.size:
                raise ResultsError(f"soft_tf.{name}.heads.{h}: {m.size} means for {x.size} x values")
            st = dict(style_of[h])
            ax.plot(x, m, marker="o", markersize=3, label=h, **st)
            if "lo" in d and "hi" in d:
                ax.fill_between(x, _floats(d["lo"], h), _floats(d["hi"], h), color=st["color"], alpha=0.15, linewidth=0)
        ax.set_xlabel(exp.get("x_label", "x"))
        ax.set_ylabel("attention from query term to document")
        ax.set_title(SOFT_TF_TITLES.get(name, name), fontsize=10)
        ax.grid(alpha=0.3)
    # One legend for the figure, outside the panels (the same heads in every panel, same colour per head).
    by_label = {}
    for ax in axes:
        for line in ax.get_lines():
            by_label.setdefault(line.get_label(), line)
    fig.legend(
        list(by_label.values()), list(by_label), title="head", loc="outside right upper", fontsize=8, title_fontsize=8
    )
    extra = (
        f" (the {max_heads} heads changing most per panel)"
        if any(len(obj[n]["heads"]) > max_heads for n in names)
        else ""
    )
    suptitle(fig, f"Soft term frequency: mean with confidence band{extra}", fontsize=11)
    return fig


def _head_key(h: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(h).split("."))
    except ValueError:
        return (10**9,)


def svd_correlation_bars(data: Any, *, max_components: int = 50) -> Figure:
    """Pearson correlation of each singular component U_k of the embedding matrix with IDF (k = 0..49).

    Args:
        data: The ``idf_svd`` analysis dict or results holding it.
        max_components: Components shown.

    Returns:
        The figure (U_0 drawn in a contrasting colour).
    """
    obj = analysis_dict(data, "idf_svd")
    comps = _need(obj, "components", "idf_svd")[:max_components]
    if not comps:
        raise ResultsError("idf_svd analysis: empty components list")
    k = np.array([c["k"] for c in comps])
    r = np.array([c["pearson"] for c in comps], np.float64)
    fig = new_figure(7.5, 3.4)
    ax = fig.subplots()
    colours = [OKABE_ITO[3] if kk == 0 else OKABE_ITO[0] for kk in k]
    ax.bar(k, r, color=colours, width=0.8, label="pearson(U_k, IDF)")
    if all("pearson_centered" in c for c in comps):
        rc = np.array([c["pearson_centered"] for c in comps], np.float64)
        ax.plot(k, rc, "o", color="black", markersize=3, label="centred embeddings")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("singular component k of W_E")
    ax.set_ylabel("Pearson r with IDF")
    ax.set_ylim(-1, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    u0 = obj.get("u0_idf_pearson", r[k == 0][0] if (k == 0).any() else float("nan"))
    suptitle(fig, f"IDF in the embedding matrix: corr(U_k, IDF); U_0: r = {u0:+.3f}", fontsize=11)
    return fig


def u0_idf_scatter(data: Any) -> Figure:
    """U_0 (first left singular vector of W_E) against token IDF for a sample of tokens.

    Args:
        data: The ``idf_svd`` analysis dict or results holding it.

    Returns:
        The figure.
    """
    obj = analysis_dict(data, "idf_svd")
    sc = _need(obj, "scatter", "idf_svd")
    u0 = _floats(_need(sc, "u0", "idf_svd.scatter"), "idf_svd.scatter.u0")
    idf = _floats(_need(sc, "idf", "idf_svd.scatter"), "idf_svd.scatter.idf")
    if u0.size != idf.size or u0.size == 0:
        raise ResultsError(f"idf_svd.scatter: {u0.size} u0 values for {idf.size} idf values")
    fig = new_figure(4.8, 4.0)
    ax = fig.subplots()
    ax.scatter(idf, u0, s=5, alpha=0.4, color=OKABE_ITO[0], linewidths=0)
    ax.set_xlabel("IDF of the token")
    ax.set_ylabel("U_0 entry of the token")
    ax.grid(alpha=0.3)
    r = obj.get("u0_idf_pearson", float(np.corrcoef(u0, idf)[0, 1]))
    suptitle(fig, f"U_0 against IDF ({u0.size} tokens), r = {r:+.3f}", fontsize=11)
    return fig


def editing_curves(data: Any) -> Figure:
    """IDF editing: score and [CLS] attention of the scoring heads as the U_0 edit scale grows.

    Args:
        data: The ``edit_idf`` analysis dict or results holding it.

    Returns:
        Two panels: scores per edited-token set (and control), attention per head.
    """
    obj = analysis_dict(data, "edit_idf")
    scales = _floats(_need(obj, "scales", "edit_idf"), "edit_idf.scales")
    score = _need(obj, "score", "edit_idf")
    att = obj.get("cls_attention", {})
    fig = new_figure(9.0 if att else 5.0, 3.6)
    axes = fig.subplots(1, 2 if att else 1, squeeze=False)[0]
    for i, (name, d) in enumerate(score.items()):
        m = _floats(d["mean"] if isinstance(d, dict) else d, f"edit_idf.score.{name}")
        if m.size != scales.size:
            raise ResultsError(f"edit_idf.score.{name}: {m.size} values for {scales.size} scales")
        st = _style(i)
        if "control" in name or name.startswith(("full", "row")):  # the whole-row control edit
            st["linestyle"] = "--"
        axes[0].plot(scales, m, marker="o", markersize=3, label=name, **st)
        if isinstance(d, dict) and "lo" in d and "hi" in d:
            axes[0].fill_between(
                scales, _floats(d["lo"], name), _floats(d["hi"], name), color=st["color"], alpha=0.15, linewidth=0
            )
    axes[0].set_xlabel("edit scale")
    gain = any(isinstance(d, dict) and "baseline_mean" in d for d in score.values())
    axes[0].set_ylabel("score gain (perturbed − baseline)" if gain else "score (raw logit)")
    axes[0].set_title("score gain of appending the term" if gain else "score", fontsize=10)
    axes[0].legend(fontsize=7, loc="best", framealpha=0.9)
    axes[0].grid(alpha=0.3)
    if att:
        for i, (h, vals) in enumerate(sorted(att.items(), key=lambda kv: _head_key(kv[0]))):
            v = _floats(vals["mean"] if isinstance(vals, dict) else vals, f"edit_idf.cls_attention.{h}")
            if v.size != scales.size:
                raise ResultsError(f"edit_idf.cls_attention.{h}: {v.size} values for {scales.size} scales")
            axes[1].plot(scales, v, marker="o", markersize=3, label=h, **_style(i))
        axes[1].set_xlabel("edit scale")
        axes[1].set_ylabel("[CLS] → query-term attention")
        cond = obj.get("cls_attention_condition")
        axes[1].set_title("attention of scoring heads" + (f" ({cond})" if cond else ""), fontsize=10)
        axes[1].legend(title="head", fontsize=7, title_fontsize=7)
        axes[1].grid(alpha=0.3)
    suptitle(fig, "Editing the IDF direction U_0 of the query term's embedding", fontsize=11)
    return fig


def regression_scatter(data: Any) -> Figure:
    """Semantic BM25: the linear model's predicted score against the cross-encoder score on the test split.

    Args:
        data: The ``linear_bm25`` analysis dict or results holding it.

    Returns:
        The figure, with our r, BM25's and the random-feature control beside the paper's.
    """
    obj = analysis_dict(data, "linear_bm25")
    tp = _need(obj, "test_predictions", "linear_bm25")
    y = _floats(_need(tp, "y_true", "linear_bm25.test_predictions"), "y_true")
    p = _floats(_need(tp, "y_pred", "linear_bm25.test_predictions"), "y_pred")
    if y.size != p.size or y.size == 0:
        raise ResultsError(f"linear_bm25.test_predictions: {y.size} y_true for {p.size} y_pred")
    fig = new_figure(5.2, 4.6)
    ax = fig.subplots()
    ax.scatter(y, p, s=8 if y.size > 300 else 22, alpha=0.6, color=OKABE_ITO[0], linewidths=0, label="test pairs")
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--", label="y = x")
    ax.set_xlabel("cross-encoder score (raw logit)")
    ax.set_ylabel("linear semantic-BM25 prediction")
    ax.grid(alpha=0.3)
    lines = [f"linear r = {obj.get('test_pearson', float('nan')):.3f} (paper {PAPER_LINEAR_R})"]
    if "bm25_test_pearson" in obj:
        lines.append(f"BM25 r = {obj['bm25_test_pearson']:.3f} (paper {PAPER_BM25_R})")
    if "random_features_test_pearson" in obj:
        lines.append(f"random features r = {obj['random_features_test_pearson']:.3f}")
    if "n_train" in obj and "n_features" in obj:
        lines.append(f"{obj['n_features']} features, {obj['n_train']} training pairs")
        if obj["n_features"] >= obj["n_train"]:
            lines.append("(underdetermined: more features than pairs)")
    ax.text(
        0.02,
        0.98,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#999999"},
    )
    ax.legend(fontsize=7, loc="lower right")
    suptitle(fig, f"Linear semantic BM25 on the test split ({y.size} pairs)", fontsize=11)
    return fig


def circuit_map(data: Any, *, n_layers: int | None = None, n_heads: int | None = None) -> Figure:
    """The circuit's heads on the layer x head grid, coloured by role, with their effect written in.

    Args:
        data: The ``circuit`` analysis dict or results holding it.
        n_layers: Grid rows (default: the largest layer + 1).
        n_heads: Grid columns (default: the largest head + 1).

    Returns:
        The figure.
    """
    obj = analysis_dict(data, "circuit")
    heads = _need(obj, "heads", "circuit")
    try:
        cells = [(int(h["layer"]), int(h["head"]), str(h["role"]), float(h.get("effect", np.nan))) for h in heads]
    except (KeyError, TypeError, ValueError) as err:
        raise ResultsError(f"circuit analysis: each head needs layer, head and role ({err})") from None
    L = n_layers or (max([c[0] for c in cells], default=0) + 1)
    H = n_heads or (max([c[1] for c in cells], default=0) + 1)
    fig = new_figure(1.4 + 0.45 * H, 1.6 + 0.36 * L)
    ax = fig.subplots()
    ax.set_xlim(-0.5, H - 0.5)
    ax.set_ylim(-0.5, L - 0.5)
    import matplotlib.patches as mpatches

    for layer, head, role, eff in cells:
        colour = ROLE_COLOURS.get(role, "#999999")
        ax.add_patch(mpatches.Rectangle((head - 0.5, layer - 0.5), 1, 1, color=colour))
        if np.isfinite(eff):
            ax.text(
                head,
                layer,
                f"{eff:.2f}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="black" if role == "contextual_query" else "white",
            )  # contrast on orange
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xticks(np.arange(-0.5, H, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, L, 1), minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(labelsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    present = sorted({c[2] for c in cells}, key=lambda r: list(ROLE_COLOURS).index(r) if r in ROLE_COLOURS else 9)
    ax.legend(
        handles=[mpatches.Patch(color=ROLE_COLOURS.get(r, "#999999"), label=ROLE_NAMES.get(r, r)) for r in present],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    suptitle(fig, f"Circuit: {len(cells)} heads by role (number: effect)", fontsize=11)
    return fig
