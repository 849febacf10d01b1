"""The default figure of a family or analysis (`plot`), and writing figures atomically (`save_figure`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from jaxmech.plot import analyses as A
from jaxmech.plot import patching as P
from jaxmech.results.source import ResultsError, family_dims, open_results

# analysis name -> figure functions drawn for it (in the report, in this order).
ANALYSIS_FIGURES: dict[str, tuple[Callable[..., Figure], ...]] = {
    "circuit": (A.circuit_map,),
    "soft_tf": (A.soft_tf_curves,),
    "idf_svd": (A.svd_correlation_bars, A.u0_idf_scatter),
    "edit_idf": (A.editing_curves,),
    "linear_bm25": (A.regression_scatter,),
}
FIGURE_NAMES = {
    A.circuit_map: "circuit",
    A.soft_tf_curves: "soft_tf",
    A.svd_correlation_bars: "idf_svd_bars",
    A.u0_idf_scatter: "idf_svd_scatter",
    A.editing_curves: "edit_idf",
    A.regression_scatter: "linear_bm25",
}


def family_figure(family: str) -> Callable[..., Figure]:
    """The figure function for a patching family, chosen from its result axes.

    Raises:
        ResultsError: For an unknown family.
    """
    if family.startswith("path_"):
        return P.path_patching
    dims = set(family_dims(family))
    if dims >= {"head", "pos"}:
        return P.head_by_position
    if "head" in dims:
        return P.head_heatmap
    if "pos" in dims:
        return P.block_patching
    raise ResultsError(f"{family!r}: no figure for a result with axes {sorted(dims)} (per-layer only)")


def plot(results: Any, name: str, **kwargs) -> Figure:
    """Draws the default figure of a patching family or an analysis of a run.

    Args:
        results: A ``jaxmech patch`` ``.npz``, a run directory, a run object or a `ResultsSource`.
        name: A family (``block_every``, ``path_to_score``, ...) or an analysis (``soft_tf``,
            ``idf_svd``, ``idf_svd_scatter``, ``edit_idf``, ``linear_bm25``, ``circuit``).
        **kwargs: Passed to the figure function.

    Raises:
        ResultsError: If the run has neither a family nor an analysis of that name.
    """
    source = open_results(results)
    by_name = {v: k for k, v in FIGURE_NAMES.items()}
    if name in by_name:
        return by_name[name](source, **kwargs)
    if name in ANALYSIS_FIGURES:
        return ANALYSIS_FIGURES[name][0](source, **kwargs)
    if name not in source.families:
        have = list(source.families) + sorted(source.analyses)
        raise ResultsError(f"{source.path}: no family or analysis {name!r} (this run has: {', '.join(have) or 'none'})")
    return family_figure(name)(source, family=name, **kwargs)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Writes a figure (format from the suffix: .png, .svg, .pdf) atomically.

    Returns:
        The path written.
    """
    from jaxmech.files import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt), suffix=".tmp" + path.suffix)


def draw_to_file(results: Any, name: str, out: str | Path, *, by: str = "auto", dpi: int = 110) -> Path:
    """Draws `plot(results, name)` and writes it to ``out`` (the one call behind ``jaxmech plot``).

    Args:
        results: Results (see `plot`).
        name: Family or analysis name.
        out: Image path; its suffix picks the format.
        by: Position axis for position-resolved families (``auto``, ``token_type``, ``pos``).
        dpi: Resolution of raster output.

    Returns:
        The path written.
    """
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ResultsError(f"{out}: the output must end in .png, .svg or .pdf")
    source = open_results(results)
    kwargs = {}
    if name in source.families and "pos" in family_dims(name):
        kwargs["by"] = by
    fig = plot(source, name, **kwargs)
    try:
        return save_figure(fig, out, dpi=dpi)
    finally:
        fig.clear()
