"""The report: every figure of a run and every result beside the paper's, in one self-contained page.

* `build_report(run_dir, out_dir=None) -> Path` writes report.html, report.md, numbers.json, figures/*.png.
* `jaxmech.report.compare`: the paper's numbers and the computed verdicts.
* `jaxmech.report.synthetic`: an in-memory run with planted results (tests, trying the report).
"""

from __future__ import annotations

from jaxmech.lazy import lazy_exports

# imported on first use, so `jaxmech.cli.report` loads without matplotlib
_EXPORTS = {
    "jaxmech.report.build": ("build_report",),
    "jaxmech.report.compare": ("PAPER", "compare_all"),
    "jaxmech.report.synthetic": ("synthetic_run",),
}
__all__, __getattr__, __dir__ = lazy_exports("jaxmech.report", _EXPORTS, globals())
