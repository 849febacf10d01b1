"""Every analysis, registered in one place: name -> (Options class, step function, description).

`ANALYSES` lists the names a sweep config's ``[[analyses]]`` and the command ``jaxmech analyze NAME`` use.
An entry is an `Analysis`: its typed, frozen options (`jaxmech.analysis.options`), its step
``step(run_or_model, options) -> dict`` (`jaxmech.analysis.steps`) and a one-line description. Options
arrive as keywords or a table and are checked against the Options class before anything is loaded
(`parse_options`; a sweep config calls `check_options` when it is read). `analyze` runs one analysis and
writes its JSON; `analyze_run` runs one on a finished sweep run.

To add an analysis: its module (the computation), its ``Options`` dataclass in `jaxmech.analysis.options`,
its step in `jaxmech.analysis.steps`, one entry in `ANALYSES`, and tests. Importing this module imports no JAX.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jaxmech.analysis import options as opt
from jaxmech.analysis import steps


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One registered analysis.

    Attributes:
        name: The name (``idf_svd``; the command spells it ``idf-svd``).
        options: Its `jaxmech.analysis.options.AnalysisOptions` subclass.
        step: ``step(run_or_model, options) -> dict``, the JSON object the report reads
            (`jaxmech.analysis.common.write_json`).
        description: One line for help texts.
    """

    name: str
    options: type[opt.AnalysisOptions]
    step: Callable[[Any, Any], dict]
    description: str

    def parse(self, options: Mapping[str, Any] | opt.AnalysisOptions | None = None) -> opt.AnalysisOptions:
        """``options`` as this analysis' Options (a mapping is checked key by key; see `parse_options`)."""
        if isinstance(options, opt.AnalysisOptions):
            if not isinstance(options, self.options):
                raise ValueError(f"analysis {self.name!r}: expected {self.options.__name__}, got "
                                 f"{type(options).__name__}")
            return options
        return self.options.from_mapping(options)

    def __call__(self, run_or_model, options: Mapping[str, Any] | opt.AnalysisOptions | None = None, /,
                 **kw: Any) -> dict:
        """Runs the step on ``run_or_model`` with ``options`` (Options or a mapping) or keyword options."""
        return self.step(run_or_model, self.parse(_one_of(options, kw)))


def _one_of(options, kw: dict):
    if options is not None and kw:
        raise ValueError(f"give options or keywords, not both (keywords: {', '.join(kw)})")
    return kw if options is None else options


ANALYSES: dict[str, Analysis] = {a.name: a for a in (
    Analysis("circuit", opt.CircuitOptions, steps.circuit_step,
             "relevance-scoring, contextual-query and matching heads (E4, E5)"),
    Analysis("soft_tf", opt.SoftTfOptions, steps.soft_tf_step,
             "matching heads' attention to term matches: TFC2, LNC1, STMC1"),
    Analysis("idf_svd", opt.IdfSvdOptions, steps.idf_svd_step,
             "SVD of the word embeddings vs IDF (raw and centred)"),
    Analysis("edit_idf", opt.EditIdfOptions, steps.edit_idf_step,
             "raise/lower tokens' U_0 coordinate; scores and [CLS] attention"),
    Analysis("linear_bm25", opt.LinearBm25Options, steps.linear_bm25_step,
             "linear semantic BM25 vs tuned BM25 and random features"),
    Analysis("edges", opt.EdgesOptions, steps.edges_step,
             "edge-level circuits (exact edge patching, EAP, EAP-IG) and their faithfulness"),
)}
"""Analysis name -> `Analysis`."""


def get_analysis(name: str) -> Analysis:
    """The analysis of a name (``-`` and ``_`` are interchangeable).

    Raises:
        KeyError: Listing the known names.
    """
    key = name.replace("-", "_")
    if key not in ANALYSES:
        raise KeyError(f"unknown analysis {name!r}; known: {sorted(ANALYSES)}")
    return ANALYSES[key]


def parse_options(name: str, options: Mapping[str, Any] | opt.AnalysisOptions | None = None) -> opt.AnalysisOptions:
    """The Options of analysis ``name`` from a mapping (or Options, returned as they are).

    Raises:
        KeyError: If ``name`` is not an analysis.
        ValueError: One line naming the analysis, an unknown key and the known keys.
    """
    return get_analysis(name).parse(options)


def check_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Checks a sweep config's ``[[analyses]]`` entry: when ``name`` is an analysis, its ``options`` must be
    keys of its Options class (other steps, e.g. ``summary``, are not analyses and pass).

    Raises:
        ValueError: One line naming the analysis, the unknown key and the known keys.
    """
    if name.replace("-", "_") in ANALYSES:
        parse_options(name, options)


def analyze(name: str, model, options: Mapping[str, Any] | opt.AnalysisOptions | None = None, *,
            out: str | os.PathLike | None = None, **kw: Any) -> dict:
    """Runs one analysis on a model and writes its JSON (atomically) if ``out`` is given.

    Args:
        name: An analysis of `ANALYSES`.
        model: What the step takes (a loaded model, a model folder / id / ``"packaged"``, or a run).
        options: The analysis' Options, or a mapping of them; or give them as keywords ``kw``.
        out: The JSON file to write.

    Raises:
        ValueError: An unknown option (before anything is loaded).
    """
    entry = get_analysis(name)
    parsed = entry.parse(_one_of(options, kw))
    result = entry.step(model, parsed)
    if out is not None:
        from jaxmech.analysis.common import write_json

        write_json(out, result)
    return result


def analyze_run(name: str, run_dir: str | os.PathLike, **options: Any) -> Path:
    """Runs analysis ``name`` on a finished sweep run (its model, and its arrays where the analysis reads them)
    and writes ``<run_dir>/analyses/<name>.json``, where ``run.analyses`` and the report find it."""
    from jaxmech import results
    from jaxmech.analysis.common import write_json

    entry = get_analysis(name)
    parsed = entry.parse(options)
    return write_json(Path(run_dir) / "analyses" / f"{name}.json", entry.step(results.open(run_dir), parsed))


__all__ = ["ANALYSES", "Analysis", "analyze", "analyze_run", "check_options", "get_analysis", "parse_options"]
