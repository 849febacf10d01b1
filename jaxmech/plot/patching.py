"""Figures of patching results: block (E1), head (E2/E4), head by position (E3) and path patching (E5/E6).

Every function takes a `Labeled` array, a plain array with ``dims``, or results (a ``.npz`` path, a run
directory, a run object or a `ResultsSource`) and a family name, averages over pairs (ignoring NaN: flagged
pairs and unpatched positions), aggregates positions by the paper's token types when they are known
(``by="auto"``), and returns a matplotlib Figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxmech.plot.style import colorbar, draw_heatmap, new_figure, suptitle, symmetric_norm
from jaxmech.results.source import (
    Labeled,
    ResultsError,
    ResultsSource,
    base_family,
    family_dims,
    family_info,
    open_results,
)

TITLES = {
    "block_every": "E1 block patching",
    "head_all_pos_v": "E2 head patching (v, all positions)",
    "head_all_pos_z": "head patching (z, all positions)",
    "head_by_pos_z": "E3 head patching by position (z)",
    "head_by_pos_pattern": "E3 head patching by position (pattern row)",
    "path_to_score": "E4 path patching: sender heads → score",
    "path_to_heads": "E5 path patching: sender heads → receiver heads",
    "path_components_to_heads": "E6 path patching: components → receiver heads",
}
_TOKEN_AXIS = {"token_type": "token type", "pos": "position"}


def _title(family: str, n_pairs: int | None, receivers: str = "", meta: dict | None = None) -> str:
    base = TITLES.get(base_family(family), family)
    if family.startswith("attribution:"):
        base += " (attribution estimate)"
    if receivers:
        base += f" {receivers}"
    label = (meta or {}).get("aggregate_label")  # a judged view (jaxmech.plot.view) names its statistic
    if label:
        base += f"\n{label}"
    elif n_pairs is not None:
        base += f"\nmean over {n_pairs} pair{'s' if n_pairs != 1 else ''}"
    return base


def resolve(
    data: Any, family: str, dims: Sequence[str] | None = None, *, by: str = "auto", metric: str | None = None
) -> tuple[Labeled, int | None, dict]:
    """Turns any accepted input into a pair-averaged `Labeled` result.

    Args:
        data: `Labeled`, array (with ``dims``, or the family's axes with or without a leading pair axis),
            or results (path, run object, `ResultsSource`).
        family: Family name (which array to read; default axes for plain arrays).
        dims: Axis names of a plain array.
        by: ``"token_type"``, ``"pos"`` or ``"auto"`` (token types when known).
        metric: Overrides the metric name.

    Returns:
        ``(labeled, n_pairs, meta)``; ``n_pairs`` is None when the input had no pair axis.

    Raises:
        ResultsError: For a missing family, mismatched axes or ``by="token_type"`` without token types.
    """
    if by not in ("auto", "token_type", "pos"):
        raise ResultsError(f"by={by!r}: expected 'auto', 'token_type' or 'pos'")
    meta: dict = {}
    n_pairs: int | None = None
    if isinstance(data, Labeled):
        lab = data
    elif isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and not isinstance(data, str)):
        values = np.asarray(data, np.float64)
        if dims is None:
            base = family_dims(family)
            dims = ("pair", *base) if values.ndim == len(base) + 1 else base
        from jaxmech.results.source import coords_for

        lab = Labeled(values, tuple(dims), coords_for(family, dims), name=family)
    else:
        source: ResultsSource = open_results(data)
        meta = source.meta
        mean, n_pairs = source.pair_mean(family)  # unflagged pairs, NaN ignored
        lab = None
        if by in ("auto", "token_type") and "pos" in mean.dims:
            lab = source.by_token_type(family)
            if lab is None and by == "token_type":
                raise ResultsError(
                    f"{source.path}: no token types for {family!r} (run `jaxmech patch --dataset` "
                    "on a dataset file, or pass by='pos')"
                )
        if lab is None:
            lab = mean
            tokens = source.pairs.get("tokens")
            if tokens is not None and len(tokens) == 1 and "pos" in lab.dims:
                n_pos = lab.values.shape[lab.axis("pos")]
                toks = [str(t) for t in list(tokens[0])][:n_pos]
                toks += [str(i) for i in range(len(toks), n_pos)]
                lab = Labeled(lab.values, lab.dims, {**lab.coords, "pos": toks}, lab.name, lab.metric)
    if "pair" in lab.dims:
        n_pairs = lab.values.shape[lab.axis("pair")]
        lab = lab.mean_over("pair")
    if by == "token_type" and "token_type" not in lab.dims and "pos" in lab.dims:
        raise ResultsError(f"{family}: by='token_type' needs token-type aggregated results")
    if metric is not None:
        lab = Labeled(lab.values, lab.dims, lab.coords, lab.name, metric)
    return lab, n_pairs, meta


def _pos_dim(lab: Labeled) -> str:
    return "token_type" if "token_type" in lab.dims else "pos"


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def block_patching(
    data: Any,
    *,
    family: str = "block_every",
    dims: Sequence[str] | None = None,
    by: str = "auto",
    title: str | None = None,
) -> Figure:
    """E1: layer x token type (or position) heatmaps, one panel per component (resid_pre, attn_out, mlp_out).

    Args:
        data: ``[pair?, component, layer, pos]`` (or token-type aggregated) effects or results.
        family: ``block_every``, ``path_components_to_heads`` or a single-site ``*_by_pos`` family.
        dims: Axis names of a plain array.
        by: Token types or positions along x (see `resolve`).
        title: Figure title (default: the experiment name).

    Returns:
        The figure.
    """
    lab, n_pairs, meta = resolve(data, family, dims, by=by)
    pos = _pos_dim(lab)
    comps = lab.labels("component") if "component" in lab.dims else [base_family(family).removesuffix("_by_pos")]
    panels = [lab.select("component", c) for c in comps] if "component" in lab.dims else [lab]
    for p in panels:
        if set(p.dims) != {"layer", pos}:
            raise ResultsError(f"{family}: expected axes (layer, {pos}) per panel, got {p.dims}")
    cols = lab.values.shape[lab.axis(pos)]
    n_layers = lab.values.shape[lab.axis("layer")]
    fig = new_figure(
        min(3.2 + 0.42 * cols, 7.5) * len(panels) / (1.6 if len(panels) > 1 else 1) + 1.0, 1.6 + 0.32 * n_layers
    )
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    norm = symmetric_norm(*(p.values for p in panels))
    im = None
    for ax, name, p in zip(axes, comps, panels, strict=True):
        v = np.moveaxis(p.values, p.axis(pos), -1) if p.axis(pos) == 0 else p.values
        im = draw_heatmap(
            ax,
            v,
            row_labels=[str(i) for i in range(n_layers)],
            col_labels=p.labels(pos),
            row_name="layer",
            col_name=_TOKEN_AXIS[pos],
            norm=norm,
            metric=lab.metric,
            panel=name,
            annotate=v.size <= 120,
        )
        ax.set_title(name, fontsize=10)
    for ax in axes[1:]:
        ax.set_ylabel("")
    colorbar(fig, im, list(axes), lab.metric)
    suptitle(
        fig,
        title or _title(family, n_pairs, _receivers(meta, family) if base_family(family).startswith("path") else "",
                        meta),
        fontsize=11,
    )
    return fig


def _receivers(meta: dict, family: str) -> str:
    """``(receiver 10.1, input k)`` for a path family with receivers, else empty."""
    if not isinstance(meta, dict) or not meta:
        return ""
    info = family_info(meta, family)
    rec = info["receivers"]
    if not rec:
        return ""
    inp = info["receiver_input"]
    rec = ", ".join(map(str, rec)) if isinstance(rec, (list, tuple)) else str(rec)
    return f"(receiver {rec}{', input ' + inp if inp else ''})"


def _parse_heads(heads: Sequence[str | tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for h in heads:
        if isinstance(h, str):
            layer, head = h.split(".")
            out.append((int(layer), int(head)))
        else:
            out.append((int(h[0]), int(h[1])))
    return out


def head_heatmap(
    data: Any,
    *,
    family: str = "head_all_pos_v",
    dims: Sequence[str] | None = None,
    highlight: Sequence[str | tuple[int, int]] = (),
    component: str | None = None,
    title: str | None = None,
) -> Figure:
    """E2/E4/E5: layer x head heatmap of a per-head family.

    Args:
        data: ``[pair?, (component,) layer, head]`` effects or results.
        family: ``head_all_pos_*``, ``path_to_score`` or ``path_to_heads``.
        dims: Axis names of a plain array.
        highlight: Heads (``"10.1"`` or ``(10, 1)``) outlined in black, e.g. the paper's heads.
        component: For ``head_all_pos_every``: the site to draw (default: one panel each).
        title: Figure title.

    Returns:
        The figure.
    """
    lab, n_pairs, meta = resolve(data, family, dims)
    if component is not None:
        lab = lab.select("component", component)
    comps = lab.labels("component") if "component" in lab.dims else [""]
    panels = [lab.select("component", c) for c in comps] if "component" in lab.dims else [lab]
    for p in panels:
        if p.dims != ("layer", "head"):
            raise ResultsError(f"{family}: expected axes (layer, head), got {p.dims}")
    n_layers, n_heads = panels[0].values.shape
    marks = [(r, c) for r, c in _parse_heads(highlight) if r < n_layers and c < n_heads]
    rows, cols = _grid(len(panels))
    fig = new_figure(1.2 + cols * (1.6 + 0.42 * n_heads), rows * (1.3 + 0.36 * n_layers))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    norm = symmetric_norm(*(p.values for p in panels))
    im = None
    for ax, name, p in zip(axes, comps, panels, strict=False):
        im = draw_heatmap(
            ax,
            p.values,
            row_labels=[str(i) for i in range(n_layers)],
            col_labels=[str(i) for i in range(n_heads)],
            row_name="layer",
            col_name="head",
            norm=norm,
            metric=lab.metric,
            panel=name,
            highlight=marks,
        )
        if name:
            ax.set_title(name, fontsize=10)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    colorbar(fig, im, list(axes[: len(panels)]), lab.metric)
    sub = title or _title(family, n_pairs, _receivers(meta, family) if base_family(family) == "path_to_heads" else "",
                          meta)
    if marks:
        sub += "\n(outlined: the paper's heads)"
    suptitle(fig, sub, fontsize=11)
    return fig


def head_by_position(
    data: Any,
    *,
    family: str = "head_by_pos_z",
    dims: Sequence[str] | None = None,
    heads: Sequence[str | tuple[int, int]] | None = None,
    top_k: int = 10,
    by: str = "auto",
    component: str = "z",
    title: str | None = None,
) -> Figure:
    """E3: selected heads x token type (or position).

    Args:
        data: ``[pair?, layer, pos, head]`` (``head_by_pos_pattern``: ``[pair?, layer, head, pos]``) or results.
        family: ``head_by_pos_*``.
        dims: Axis names of a plain array.
        heads: Heads to show (default: the ``top_k`` with the largest absolute effect at any position).
        top_k: How many heads by default.
        by: Token types or positions along x.
        component: For ``head_by_pos_every``: the site to draw.
        title: Figure title.

    Returns:
        The figure.
    """
    lab, n_pairs, meta = resolve(data, family, dims, by=by)
    if "component" in lab.dims:
        lab = lab.select("component", component)
    pos = _pos_dim(lab)
    if set(lab.dims) != {"layer", "head", pos}:
        raise ResultsError(f"{family}: expected axes (layer, {pos}, head), got {lab.dims}")
    v = np.transpose(lab.values, (lab.axis("layer"), lab.axis("head"), lab.axis(pos)))  # [layer, head, col]
    n_layers, n_heads, _ = v.shape
    if heads is None:
        score = np.nanmax(np.where(np.isfinite(v), np.abs(v), -np.inf), axis=-1).ravel()
        order = [i for i in np.argsort(score)[::-1] if np.isfinite(score[i])][:top_k]
        chosen = sorted((i // n_heads, i % n_heads) for i in order)
    else:
        chosen = _parse_heads(heads)
        bad = [f"{a}.{b}" for a, b in chosen if a >= n_layers or b >= n_heads]
        if bad:
            raise ResultsError(f"{family}: heads {bad} outside {n_layers} layers x {n_heads} heads")
    grid = np.array([v[a, b] for a, b in chosen]).reshape(len(chosen), -1)
    cols = lab.labels(pos)
    fig = new_figure(2.6 + 0.45 * len(cols), 1.4 + 0.32 * max(len(chosen), 3))
    ax = fig.subplots()
    im = draw_heatmap(
        ax,
        grid,
        row_labels=[f"{a}.{b}" for a, b in chosen],
        col_labels=cols,
        row_name="head (layer.head)",
        col_name=_TOKEN_AXIS[pos],
        norm=symmetric_norm(grid),
        metric=lab.metric,
        annotate=grid.size <= 120,
    )
    colorbar(fig, im, ax, lab.metric)
    sel = "" if heads is not None else f" (top {len(chosen)} heads)"
    suptitle(fig, title or _title(family, n_pairs, meta=meta) + sel, fontsize=11)
    return fig


def path_patching(
    data: Any,
    *,
    family: str = "path_to_heads",
    dims: Sequence[str] | None = None,
    highlight: Sequence[str | tuple[int, int]] = (),
    by: str = "auto",
    title: str | None = None,
) -> Figure:
    """E4-E6: path patching into the score or into receiver heads.

    ``path_to_score`` / ``path_to_heads`` are sender layer x head heatmaps; ``path_components_to_heads`` is
    drawn like block patching (component panels of layer x token type).

    Args:
        data: Effects or results.
        family: One of the path families.
        dims: Axis names of a plain array.
        highlight: Heads outlined (layer x head families).
        by: Token types or positions (components family).
        title: Figure title.

    Returns:
        The figure.
    """
    if base_family(family) == "path_components_to_heads":
        return block_patching(data, family=family, dims=dims, by=by, title=title)
    if base_family(family) not in ("path_to_score", "path_to_heads"):
        raise ResultsError(f"{family!r} is not a path-patching family")
    return head_heatmap(data, family=family, dims=dims, highlight=highlight, title=title)
