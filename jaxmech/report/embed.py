"""Figures as self-contained inline SVG: the PNG as a data URI plus one transparent, titled rect per heatmap
cell, so hovering a cell shows its value, layer, head and token type with no script and no network."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure

from jaxmech.plot.style import heatmap_cells


def render_png(fig: Figure, dpi: int) -> bytes:
    """The figure as PNG bytes at ``dpi`` (the figure's dpi is set to it, so cell geometry matches)."""
    fig.set_dpi(dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def cell_rects(fig: Figure) -> list[tuple[float, float, float, float, str]]:
    """``(x, y, width, height, title)`` in PNG pixels (origin top left) of every registered heatmap cell.

    Call after `render_png` (the layout is final once drawn).
    """
    H = fig.bbox.height
    out = []
    for grid in heatmap_cells(fig):
        tr = grid.ax.transData
        n_rows, n_cols = grid.values.shape
        for r in range(n_rows):
            for c in range(n_cols):
                (x0, y0), (x1, y1) = tr.transform([(c - 0.5, r - 0.5), (c + 0.5, r + 0.5)])
                x, w = min(x0, x1), abs(x1 - x0)
                y, h = H - max(y0, y1), abs(y1 - y0)
                out.append((x, y, w, h, grid.label(r, c)))
    return out


def figure_svg(fig: Figure, *, dpi: int = 100, label: str = "") -> tuple[str, bytes]:
    """Inline SVG of a figure (embedded PNG + hover cells) and the PNG bytes.

    Args:
        fig: The figure.
        dpi: Resolution of the embedded PNG.
        label: Accessible name of the image.

    Returns:
        ``(svg_markup, png_bytes)``.
    """
    png = render_png(fig, dpi)
    W, H = fig.bbox.width, fig.bbox.height
    data = base64.b64encode(png).decode("ascii")
    parts = [
        f'<svg class="fig" viewBox="0 0 {W:.0f} {H:.0f}" width="{W:.0f}" height="{H:.0f}" role="img" '
        f'aria-label="{html.escape(label)}">',
        f'<image width="{W:.0f}" height="{H:.0f}" href="data:image/png;base64,{data}"/>',
    ]
    for x, y, w, h, title in cell_rects(fig):
        if not all(np.isfinite((x, y, w, h))):
            continue
        t = html.escape(title)
        parts.append(
            f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" data-t="{t}">'
            f"<title>{t}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts), png
