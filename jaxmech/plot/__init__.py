"""Figures of patching results and analyses (matplotlib, Agg backend).

* Patching: `block_patching` (E1), `head_heatmap` (E2/E4), `head_by_position` (E3), `path_patching` (E4-E6).
* Analyses: `soft_tf_curves`, `svd_correlation_bars`, `u0_idf_scatter`, `editing_curves`,
  `regression_scatter`, `circuit_map`.
* `plot(results, name)` draws the default figure of a family or analysis; `save_figure` writes it atomically.

Every function takes arrays (`Labeled`, or a numpy array with axis names) or results (a ``jaxmech patch``
``.npz``, a results-store run directory or run object) and returns a `matplotlib.figure.Figure`.
"""

from __future__ import annotations

from jaxmech.lazy import lazy_exports

# Names are imported on first use, so `jaxmech.cli.plot` (the CLI hook) loads without matplotlib.
_EXPORTS = {
    "jaxmech.plot.analyses": ("circuit_map", "editing_curves", "regression_scatter", "soft_tf_curves",
                              "svd_correlation_bars", "u0_idf_scatter"),
    "jaxmech.plot.dispatch": ("ANALYSIS_FIGURES", "draw_to_file", "plot", "save_figure"),
    "jaxmech.plot.patching": ("block_patching", "head_by_position", "head_heatmap", "path_patching"),
    "jaxmech.results.source": ("Labeled", "NpzSource", "ResultsError", "ResultsSource", "StoreSource",
                               "open_results"),
    "jaxmech.plot.style": ("HeatmapCells", "heatmap_cells"),
}
__all__, __getattr__, __dir__ = lazy_exports("jaxmech.plot", _EXPORTS, globals())
