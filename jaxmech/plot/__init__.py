"""Figures of patching results and analyses (matplotlib, Agg backend).

* Patching: `block_patching` (E1), `head_heatmap` (E2/E4), `head_by_position` (E3), `path_patching` (E4-E6).
* Analyses: `soft_tf_curves`, `svd_correlation_bars`, `u0_idf_scatter`, `editing_curves`,
  `regression_scatter`, `circuit_map`.
* `plot(results, name)` draws the default figure of a family or analysis; `save_figure` writes it atomically.

Every function takes arrays (`Labeled`, or a numpy array with axis names) or results (a ``jaxmech patch``
``.npz``, a results-store run directory or run object) and returns a `matplotlib.figure.Figure`.
"""

from __future__ import annotations

import importlib

# Names are imported on first use, so `jaxmech.cli.plot` (the CLI hook) loads without matplotlib.
_EXPORTS = {
    "circuit_map": "analyses",
    "editing_curves": "analyses",
    "regression_scatter": "analyses",
    "soft_tf_curves": "analyses",
    "svd_correlation_bars": "analyses",
    "u0_idf_scatter": "analyses",
    "ANALYSIS_FIGURES": "dispatch",
    "plot": "dispatch",
    "save_figure": "dispatch",
    "draw_to_file": "dispatch",
    "block_patching": "patching",
    "head_by_position": "patching",
    "head_heatmap": "patching",
    "path_patching": "patching",
    "Labeled": "jaxmech.results.source",
    "NpzSource": "jaxmech.results.source",
    "ResultsError": "jaxmech.results.source",
    "ResultsSource": "jaxmech.results.source",
    "StoreSource": "jaxmech.results.source",
    "open_results": "jaxmech.results.source",
    "HeatmapCells": "style",
    "heatmap_cells": "style",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _EXPORTS[name]  # a module of jaxmech.plot, or a full name (the results sources)
        return getattr(importlib.import_module(module if "." in module else f"jaxmech.plot.{module}"), name)
    raise AttributeError(f"module 'jaxmech.plot' has no attribute {name!r}")
