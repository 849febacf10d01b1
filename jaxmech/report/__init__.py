"""The report: every figure of a run and every result beside the paper's, in one self-contained page.

* `build_report(run_dir, out_dir=None) -> Path` writes report.html, report.md, numbers.json, figures/*.png.
* `jaxmech.report.compare`: the paper's numbers and the computed verdicts.
* `jaxmech.report.synthetic`: an in-memory run with planted results (tests, trying the report).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"build_report": "build", "compare_all": "compare", "PAPER": "compare", "synthetic_run": "synthetic"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # imported on first use, so `jaxmech.cli.report` loads without matplotlib
        return getattr(importlib.import_module(f"jaxmech.report.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxmech.report' has no attribute {name!r}")
