"""Shared figure style: colour maps, palettes, the heatmap drawer and the hover-cell registry.

Effects are drawn with ColorBrewer's RdBu (reversed: positive red, negative blue), a colour-blind-safe
diverging map, on a scale symmetric about zero so white always means "no effect"; NaN cells (nothing
patched) are light grey. Lines use the Okabe-Ito palette. Every heatmap drawn here records its cells on
the figure (`heatmap_cells`) so the HTML report can put a hover title on each one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
METRIC_LABELS = {
    "normalized": "normalized patching effect\n(patched − baseline) / (perturbed − baseline)",
    "difference": "score difference (patched − baseline)",
    "raw": "patched score",
}


def diverging_cmap() -> matplotlib.colors.Colormap:
    """RdBu reversed, with NaN drawn light grey."""
    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")


def symmetric_norm(*arrays: np.ndarray, floor: float = 1e-6) -> Normalize:
    """A colour scale symmetric about zero covering every finite value of ``arrays``."""
    finite = [np.abs(a[np.isfinite(a)]) for a in map(np.asarray, arrays)]
    vmax = max([float(f.max()) for f in finite if f.size] + [floor])
    return Normalize(-vmax, vmax)


def metric_label(metric: str) -> str:
    """Colour-bar label naming the metric."""
    return METRIC_LABELS.get(metric, metric)


def new_figure(width: float, height: float) -> Figure:
    """A figure with constrained layout (not attached to pyplot's state, so nothing leaks between calls)."""
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    fig.heatmap_cells = []  # type: ignore[attr-defined]
    return fig


@dataclasses.dataclass
class HeatmapCells:
    """The cells of one drawn heatmap, for hover labels.

    Attributes:
        ax: The axes the heatmap is on.
        values: ``[row, col]`` values as drawn.
        row_name: What rows are (``"layer"``).
        col_name: What columns are (``"head"``, ``"token type"``).
        row_labels: Label of each row.
        col_labels: Label of each column.
        panel: Panel title (``"resid_pre"``), empty if none.
        metric: The metric's short name.
    """

    ax: Axes
    values: np.ndarray
    row_name: str
    col_name: str
    row_labels: list[str]
    col_labels: list[str]
    panel: str = ""
    metric: str = "normalized"

    def label(self, r: int, c: int) -> str:
        """Hover text of cell ``(r, c)``."""
        v = self.values[r, c]
        val = "not patched" if not np.isfinite(v) else f"{v:.4f}"
        parts = [f"{self.metric} effect {val}" if self.metric != "raw" else f"score {val}"]
        if self.panel:
            parts.append(self.panel)
        parts += [f"{self.row_name} {self.row_labels[r]}", f"{self.col_name} {self.col_labels[c]}"]
        return " · ".join(parts)


def cell_format(vmax: float):
    """Formatter of cell annotations: enough decimals for the largest value to show two significant digits
    (2 to 4), and no "-0.00"."""
    decimals = 2 if vmax <= 0 or not np.isfinite(vmax) else int(min(4, max(2, 1 - np.floor(np.log10(vmax)))))

    def fmt(v: float) -> str:
        text = f"{v:.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text

    return fmt


def suptitle(fig: Figure, text: str, *, fontsize: float = 11) -> None:
    """A figure title wrapped to the figure's width (long titles are not cut off at the edges)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    lines = [textwrap.fill(line, width) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def heatmap_cells(fig: Figure) -> list[HeatmapCells]:
    """The heatmaps drawn on ``fig`` by this package."""
    return list(getattr(fig, "heatmap_cells", []))


def tick_step(ax: Axes, labels: Sequence[str], *, along: str, rotated: bool, fontsize: float = 8) -> int:
    """Label every ``step``-th tick so that the labels fit the axes side without overlapping (1: all).

    A label takes its text's width along ``x`` (about 0.6 em per character, plus a gap), or one line's height
    when it is rotated or along ``y``."""
    n = len(labels)
    if n <= 1:
        return 1
    box = ax.get_position()
    fig = ax.get_figure()
    side_pt = 72 * (box.width * fig.get_figwidth() if along == "x" else box.height * fig.get_figheight())
    longest = max(len(str(label)) for label in labels)
    per_label = 1.4 * fontsize if (rotated or along == "y") else 0.62 * fontsize * longest + 4
    return max(1, int(np.ceil(n * per_label / max(side_pt, 1.0))))


def draw_heatmap(
    ax: Axes,
    values: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    row_name: str,
    col_name: str,
    norm: Normalize,
    metric: str = "normalized",
    panel: str = "",
    annotate: bool | None = None,
    highlight: Sequence[tuple[int, int]] = (),
    rotate_cols: bool | None = None,
):
    """Draws ``values[row, col]`` with row 0 at the bottom and records its cells for hover labels.

    Args:
        ax: Target axes.
        values: ``[row, col]`` array.
        row_labels: Tick label of each row.
        col_labels: Tick label of each column.
        row_name: Axis label of rows.
        col_name: Axis label of columns.
        norm: Colour scale (use `symmetric_norm`).
        metric: Metric name for hover text.
        panel: Panel name for hover text.
        annotate: Write values in cells (default: when there are at most 160 cells).
        highlight: ``(row, col)`` cells outlined in black (e.g. the paper's heads).
        rotate_cols: Rotate column labels (default: when any is longer than 3 characters).

    Returns:
        The image artist (for a colour bar).
    """
    values = np.asarray(values, np.float64)
    im = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=diverging_cmap(),
        norm=norm,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
    )
    if rotate_cols is None:
        rotate_cols = any(len(str(c)) > 3 for c in col_labels)
    _label_axes(ax, values.shape, row_labels, col_labels, row_name, col_name, rotate_cols)
    if annotate is None:
        annotate = values.size <= 160
    if annotate:
        _annotate_cells(ax, values, norm)
    for r, c in highlight:
        ax.add_patch(
            matplotlib.patches.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6)
        )
    fig = ax.figure
    if not hasattr(fig, "heatmap_cells"):
        fig.heatmap_cells = []
    fig.heatmap_cells.append(
        HeatmapCells(
            ax, values, row_name, col_name, [str(x) for x in row_labels], [str(x) for x in col_labels], panel, metric
        )
    )
    return im


def _label_axes(
    ax: Axes,
    shape: tuple[int, int],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    row_name: str,
    col_name: str,
    rotate_cols: bool,
) -> None:
    """Tick labels that fit (every ``tick_step``-th), axis names, and a white grid between the cells."""
    n_rows, n_cols = shape
    step_c = tick_step(ax, col_labels, along="x", rotated=rotate_cols)
    step_r = tick_step(ax, row_labels, along="y", rotated=False)
    ax.set_xticks(range(0, n_cols, step_c), list(col_labels)[::step_c])
    ax.set_yticks(range(0, n_rows, step_r), list(row_labels)[::step_r])
    if rotate_cols:
        ax.tick_params(axis="x", labelrotation=60)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")
    ax.set_xlabel(col_name)
    ax.set_ylabel(row_name)
    ax.tick_params(labelsize=8)
    ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)


def _annotate_cells(ax: Axes, values: np.ndarray, norm: Normalize) -> None:
    """Writes each finite value in its cell, white on the darker colours."""
    vmax = max(abs(norm.vmin), abs(norm.vmax))
    fmt = cell_format(vmax)
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            v = values[r, c]
            if np.isfinite(v):
                ax.text(
                    c,
                    r,
                    fmt(v),
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if abs(v) > 0.6 * vmax else "black",
                )


def colorbar(fig: Figure, im, axes, metric: str):
    """A colour bar for ``im`` beside ``axes`` that names the metric."""
    cb = fig.colorbar(im, ax=axes, shrink=0.9, pad=0.02)
    cb.set_label(metric_label(metric), fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def close(fig: Figure) -> None:
    """Releases a figure (figures here are not registered with pyplot, so this is only for symmetry)."""
    plt.close(fig)
