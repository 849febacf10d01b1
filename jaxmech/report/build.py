"""`build_report`: one self-contained page (report.html), report.md and numbers.json for a run.

The page embeds every figure (PNG data URIs inside inline SVG, with a hover title on each heatmap cell),
sets every result beside the paper's with a computed verdict (`jaxmech.report.compare`), says plainly when
the model is not the paper's, and links the circuit table to its figures. No server, no network, no
external script or style sheet. Files are written atomically, report.html last, so a folder with a
report.html is complete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxmech.files import check_writable_folder
from jaxmech.plot import analyses as A
from jaxmech.plot import patching as P
from jaxmech.plot.dispatch import family_figure
from jaxmech.plot.view import DEFAULT_MERGE, DEFAULT_RELATIVE_FLOOR, DEFAULT_STATISTIC, PairView, datasets_of
from jaxmech.report.compare import (
    PAPER,
    PAPER_MODEL,
    Comparison,
    compare_all,
    model_shape,
    ranked_heads,
    same_model,
    summary_counts,
    to_jsonable,
)
from jaxmech.report.edges import edge_figures
from jaxmech.report.embed import figure_svg
from jaxmech.results.source import ResultsError, ResultsSource, base_family, open_results, read_analyses_dir

REPORT_VERSION = 1
ANALYSIS_STEMS = ("circuit", "soft_tf", "idf_svd_bars", "idf_svd_scatter", "edit_idf", "linear_bm25")
ROLE_FIGURES = {
    "relevance_scoring": ("path_to_score", "head_all_pos_v", "head_by_pos_z", "edit_idf", "circuit"),
    "contextual_query": ("path_to_heads", "path_components_to_heads", "head_by_pos_z", "circuit"),
    "matching": ("head_by_pos_z", "path_to_heads", "soft_tf", "circuit"),
    "score path (E4)": ("path_to_score", "head_by_pos_z"),
}


@dataclasses.dataclass
class FigureEntry:
    """A drawn figure of the report."""

    id: str
    title: str
    section: str
    caption: str
    fig: Figure


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Writes bytes or UTF-8 text through the project's one atomic writer (`jaxmech.files.atomic_write`)."""
    from jaxmech.files import atomic_write

    payload = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))


def default_out_dir(path: Path) -> Path:
    """``RUN_DIR/report`` for a run directory, ``<stem>_report`` beside a ``.npz``."""
    return path.parent / f"{path.stem}_report" if path.is_file() else path / "report"


# ---------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------

CAPTIONS = {
    "block_every": "Each cell: patching one component's output at one layer and position from the perturbed run into "
    "the baseline run, averaged over the positions of a token type and over pairs. The paper sees the "
    "signal at the injected token (Dinj) early, at the query-term copy (Qplus) in middle layers and at "
    "[CLS] at the end.",
    "head_all_pos_v": "One head's value vectors at every position patched in (paper E2).",
    "head_by_pos_z": "One head's output z at one position patched in, averaged by token type (paper E3); the heads "
    "with the largest effect anywhere are shown.",
    "path_to_score": "Sender head z patched with every other head's z frozen: the head's direct path to the score "
    "and through MLPs only (paper E4).",
    "path_to_heads": "Sender head z into the receiver heads' chosen input only (paper E5). The paper finds the "
    "contextual query representation heads this way, and, recursing, the matching heads.",
    "path_components_to_heads": "A component at one layer and position, into the receivers' inputs (paper E6, "
    "without the reference code's double patch).",
    "circuit": "Heads of the circuit analysis by role.",
    "soft_tf": "Attention of matching heads from query-term positions to the document, by condition.",
    "idf_svd_bars": "Correlation of each left singular vector U_k of the embedding matrix with IDF (paper §4.4).",
    "idf_svd_scatter": "U_0 entries of a sample of tokens against their IDF.",
    "edit_idf": "Scaling the query term's U_0 component (IDF direction) and the control edit of the whole row.",
    "linear_bm25": "The linear semantic-BM25 model's prediction against the cross-encoder's score on the test split.",
}


def figure_id(key: str) -> str:
    """HTML id / file stem of a family's figure (``attribution:head_by_pos_z`` -> ``fig-attribution-head_by_pos_z``)."""
    return "fig-" + key.replace(":", "-")


def _highlight(source: ResultsSource, family: str) -> list[str]:
    family = base_family(family)
    if not same_model(source.meta):
        return []
    if family in ("path_to_score", "head_all_pos_v"):
        return list(PAPER["scoring_heads"])
    if family == "path_to_heads":
        return list(PAPER["matching_heads"])
    return []


def _caption(source: ResultsSource, family: str) -> str:
    """A family's caption, true to what the figure shows (outlines, merged word pieces, the statistic)."""
    base = base_family(family)
    text = CAPTIONS.get(base, "")
    if base in ("path_to_score", "head_all_pos_v", "path_to_heads"):
        outlined = _highlight(source, family)
        who = "relevance scoring" if base != "path_to_heads" else "matching"
        text += (f" Outlined: the paper's {who} heads ({', '.join(outlined)})." if outlined else
                 " Nothing is outlined: the paper's heads are of another model.")
    merge = source.meta.get("merge_pieces")
    if merge and merge != "mean" and "pos" in family_dims_of(family):
        text += (f" A query term split into word pieces counts once per occurrence: its pieces' effects are "
                 f"merged by {merge} (Qplus, Dinj, Dplus), then occurrences averaged.")
    label = source.meta.get("aggregate_label")
    if label:
        text += f" Aggregate over pairs: {label}."
    return text


def family_dims_of(family: str) -> tuple[str, ...]:
    """A family's axes, empty for an unknown one."""
    from jaxmech.results.source import family_dims

    try:
        return family_dims(family)
    except ResultsError:
        return ()


def family_figures(source: ResultsSource, label: str = "") -> tuple[list[FigureEntry], list[str]]:
    """One figure per patching family with a drawable result; the skipped families with why. ``label`` (a
    dataset) suffixes ids (``fig-block_every__tfc1``) and titles."""
    out, skipped = [], []
    for fam in source.families:
        try:
            fn = family_figure(fam)
        except ResultsError as err:
            skipped.append(f"{fam}: {err}")
            continue
        kwargs: dict[str, Any] = {"family": fam}
        base = base_family(fam)
        if fn in (P.head_heatmap, P.path_patching) and base != "path_components_to_heads":
            kwargs["highlight"] = _highlight(source, fam)
        fig = fn(source, **kwargs)
        title = P.TITLES.get(base, base) + (" (attribution estimate)" if fam.startswith("attribution:") else "")
        fid = figure_id(fam) + (f"__{label}" if label else "")
        section = f"Patching — {label}" if label else "Patching"
        out.append(FigureEntry(fid, title + (f" — {label}" if label else ""), section, _caption(source, fam), fig))
    return out, skipped


def analysis_figures(source: ResultsSource) -> list[FigureEntry]:
    """Figures of the analyses the run has (circuit, soft_tf, idf_svd, edit_idf, linear_bm25).

    Raises:
        ResultsError: If an analysis JSON lacks what its figure needs (the message names the file).
    """
    L, H = model_shape(source)
    specs: list[tuple[str, str, Callable[..., Figure], dict]] = [
        ("circuit", "circuit", A.circuit_map, {"n_layers": L, "n_heads": H}),
        ("soft_tf", "soft_tf", A.soft_tf_curves, {}),
        ("idf_svd", "idf_svd_bars", A.svd_correlation_bars, {}),
        ("idf_svd", "idf_svd_scatter", A.u0_idf_scatter, {}),
        ("edit_idf", "edit_idf", A.editing_curves, {}),
        ("linear_bm25", "linear_bm25", A.regression_scatter, {}),
    ]
    titles = {
        "circuit": "Circuit",
        "soft_tf": "Soft term frequency",
        "idf_svd_bars": "IDF in the embedding matrix",
        "idf_svd_scatter": "U_0 against IDF",
        "edit_idf": "IDF editing",
        "linear_bm25": "Linear semantic BM25",
    }
    out = []
    for name, fid, fn, kw in specs:
        if name not in source.analyses:
            continue
        try:
            fig = fn(source.analyses[name], **kw)
        except (ResultsError, KeyError, TypeError, ValueError) as err:
            raise ResultsError(
                f"{source.path}: analyses/{name}.json: cannot draw {fid} ({type(err).__name__}: {err})"
            ) from None
        out.append(FigureEntry(f"fig-{fid}", titles[fid], "Analyses", CAPTIONS.get(fid, ""), fig))
    return out


# ---------------------------------------------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------------------------------------------


def judged_views(source: ResultsSource, *, aggregate: str = DEFAULT_STATISTIC,
                 relative_floor: float | None = DEFAULT_RELATIVE_FLOOR, wrong_sign: bool = True,
                 merge_pieces: str = DEFAULT_MERGE, per_dataset: bool = True) -> list[tuple[str, PairView]]:
    """``[(dataset, view)]`` the patching results are judged on: one per dataset when the run has several (and
    ``per_dataset``), else one unlabelled view of every pair (`jaxmech.plot.view.PairView`)."""
    kw = dict(statistic=aggregate, relative_floor=relative_floor, wrong_sign=wrong_sign, merge_pieces=merge_pieces)
    names = datasets_of(source) if per_dataset else []
    if len(names) > 1:
        return [(d, PairView(source, dataset=d, **kw)) for d in names]
    return [("", PairView(source, **kw))]


def circuit_rows(source: ResultsSource, figure_ids: set[str]) -> tuple[list[dict], str]:
    """Rows of the circuit table and where they come from (the circuit analysis, else the E4 top heads)."""
    c = source.analyses.get("circuit")
    rows = []
    if isinstance(c, dict) and isinstance(c.get("heads"), list):
        n = f" on its own {c['n_pairs']} pairs" if isinstance(c.get("n_pairs"), int) else ""
        origin = (f"the circuit analysis (analyses/circuit.json){n}, stages run: "
                  f"{', '.join(c.get('stages_run') or ['not recorded'])}. Its relevance-scoring heads pass its "
                  "thresholds on its own inputs; the E4 rows above rank the sweep's patched pairs per dataset "
                  "with the report's statistic, so the two lists can differ")
        if c.get("stage_note"):
            origin += f". {c['stage_note']}"
        order = list(ROLE_FIGURES)
        for h in c["heads"]:
            role = str(h.get("role", ""))
            rows.append(
                {
                    "head": f"{int(h['layer'])}.{int(h['head'])}",
                    "layer": int(h["layer"]),
                    "head_index": int(h["head"]),
                    "role": role,
                    "effect": h.get("effect"),
                    "detector_score": h.get("detector_score"),
                }
            )
        rows.sort(key=lambda r: (order.index(r["role"]) if r["role"] in order else 9, -r["layer"], r["head_index"]))
    elif "path_to_score" in source.families:
        origin = (
            "no circuit analysis in this run: the 5 heads with the largest mean effect in path patching to the score"
        )
        mean = source.pair_mean("path_to_score")[0].values
        for name, v in ranked_heads(mean, 5):
            a, b = name.split(".")
            rows.append({"head": name, "layer": int(a), "head_index": int(b), "role": "score path (E4)", "effect": v})
    else:
        return [], "no circuit analysis and no path_to_score results in this run"
    by_base: dict[str, list[str]] = {}
    for fid in sorted(figure_ids):
        stem = fid.removeprefix("fig-").split("__")[0]  # a dataset's figure: fig-<family>__<dataset>
        by_base.setdefault(stem if stem in ANALYSIS_STEMS else base_family(stem.replace("-", ":", 1)), []).append(fid)
    for r in rows:
        r["figures"] = [fid for f in ROLE_FIGURES.get(r["role"], ("circuit",)) for fid in by_base.get(f, [])]
        r["paper_role"] = _paper_role(r["head"]) if same_model(source.meta) else None
    return rows, origin


def _paper_role(head: str) -> str:
    if head in PAPER["scoring_heads"]:
        return "relevance_scoring"
    if head in PAPER["matching_heads"]:
        return "matching"
    return ""


def _path_receivers(source: ResultsSource) -> tuple[Any, Any]:
    """Receivers and receiver input of the run's path families (a sweep's config lists them per family)."""
    from jaxmech.results.source import family_info

    m = source.meta
    if m.get("receivers"):
        return m.get("receivers"), m.get("receiver_input")
    recs, inputs = [], []
    for fam in source.families:
        info = family_info(m, fam)
        if info["receivers"]:
            recs.append(f"{fam}: {', '.join(map(str, info['receivers']))}")
            inputs.append(f"{fam}: {info['receiver_input']}")
    return (recs or None), (inputs or None)


def run_summary(source: ResultsSource, views: list[tuple[str, Any]] | None = None) -> dict:
    """Model, data, config, device and timings of the run (what its meta records), and per view (dataset) the
    pairs aggregated and left out."""
    m = source.meta
    L, H = model_shape(source)
    pairs = source.pairs
    n_pairs = None
    for key in ("score_baseline", "name", "qid"):
        if key in pairs and pairs[key] is not None:
            n_pairs = len(np.atleast_1d(pairs[key]))
            break
    flagged = pairs.get("flagged")
    receivers, receiver_input = _path_receivers(source)
    per_view = {label or "all": v.flags.counts() for label, v in (views or [])}
    if per_view:
        flagged = None
    return {
        "path": str(source.path),
        "model": m.get("model"),
        "weights_hash": m.get("weights_hash") or m.get("model_hash"),
        "kind": m.get("kind"),
        "n_layers": L,
        "n_heads": H,
        "same_model_as_paper": same_model(m),
        "paper_model": PAPER_MODEL,
        "dataset": m.get("dataset"),
        "dataset_hash": m.get("dataset_hash"),
        "n_pairs": n_pairs,
        "n_flagged": (sum(c["pairs"] - c["kept"] for c in per_view.values()) if per_view
                      else int(np.sum(flagged)) if flagged is not None else None),
        "pairs_by_dataset": per_view or None,
        "aggregate": (views[0][1].meta.get("aggregate") if views else "mean"),
        "analysis_inputs": _analysis_inputs(source),
        "metric": m.get("metric"),
        "readout": m.get("readout") or "score",  # what each patched run measured (jaxmech.patching.readouts)
        "method": m.get("method"),
        "receivers": receivers,
        "receiver_input": receiver_input,
        "config": m.get("config"),
        "device": m.get("device"),
        "precision": m.get("precision"),
        "timings": m.get("timings"),
        "jaxmech_version": m.get("jaxmech_version") or m.get("version"),
        "families": list(source.families),
        "analyses": sorted(source.analyses),
        "warnings": analysis_model_warnings(source),
    }


def _analysis_inputs(source: ResultsSource) -> dict[str, Any]:
    """What each analysis ran on (its own inputs, not the patched pairs): pairs, inputs or training pairs."""
    out: dict[str, Any] = {}
    for name, a in sorted(source.analyses.items()):
        if not isinstance(a, dict):
            continue
        for key in ("n_pairs", "n_inputs", "n_train", "n_test"):
            if isinstance(a.get(key), int):
                out.setdefault(name, {})[key] = a[key]
        for exp in ("tfc2", "lnc1", "stmc1"):
            if isinstance(a.get(exp), dict) and isinstance(a[exp].get("n_inputs"), int):
                out.setdefault(name, {})[f"{exp} inputs"] = a[exp]["n_inputs"]
    return out


def family_numbers(source: ResultsSource) -> dict:
    """Per family: axes and shape of one pair's result, pairs averaged, and the top heads of per-head results."""
    out = {}
    for fam in source.families:
        mean, n = source.pair_mean(fam)
        entry: dict[str, Any] = {"dims": list(mean.dims), "shape": list(mean.values.shape), "pairs_averaged": n}
        if set(mean.dims) == {"layer", "head"}:
            entry["top_heads"] = [[h, v] for h, v in ranked_heads(mean.values, 10)]
        finite = mean.values[np.isfinite(mean.values)]
        if finite.size:
            entry["max"] = float(finite.max())
            entry["min"] = float(finite.min())
        out[fam] = entry
    return out


RUN_KEYS = ("path", "model", "weights_hash", "kind", "n_layers", "n_heads", "dataset", "dataset_hash", "n_pairs",
            "n_flagged", "pairs_by_dataset", "aggregate", "analysis_inputs", "metric", "readout", "method", "receivers",
            "receiver_input", "precision", "jaxmech_version",
            "families", "analyses")
"""The run summary's rows, in the order the page's Run table lists them."""
_HTML_ONLY_RUN_KEYS = ("receivers", "receiver_input", "families", "analyses")  # report.md lists the rest


def analysis_numbers(source: ResultsSource) -> dict:
    """The headline numbers of each analysis (scalars only)."""
    out = {}
    for name, obj in source.analyses.items():
        if isinstance(obj, dict):
            out[name] = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return out


def _model_keys(name: Any) -> set[str]:
    """Last path component / hub-id part of a model description (a string, or a run meta's model dict)."""
    names = [name.get("id"), name.get("folder")] if isinstance(name, dict) else [name]
    return {str(n).rstrip("/").rsplit("/", 1)[-1].lower() for n in names if n}


def receiver_warnings(source: ResultsSource, views: list[tuple[str, Any]] | None = None) -> list[str]:
    """E5 families whose receivers are not among the run's own E4 scoring heads (its top heads by
    ``path_to_score``, per dataset view): their result says nothing about the scoring heads' inputs."""
    from jaxmech.results.source import family_info

    if "path_to_score" not in source.families:
        return []
    out = []
    for label, view in views or [("", source)]:
        top = [h for h, _ in ranked_heads(view.pair_mean("path_to_score")[0].values, len(PAPER["scoring_heads"]))]
        for fam in source.families:
            recs = [str(r) for r in family_info(source.meta, fam)["receivers"]]
            off = [r for r in recs if r not in top]
            if base_family(fam).startswith("path") and off:
                out.append(f"{fam}: receivers {', '.join(off)} are not among this run's E4 top heads "
                           f"({', '.join(top)}{'; ' + label if label else ''}); choose receivers from the run's "
                           "own E4 (path_to_score) for E5 to follow its scoring heads")
    return out


def analysis_model_warnings(source: ResultsSource) -> list[str]:
    """Analyses whose ``model`` is not the run's (compared by the last path component or hub-id part of the
    run's model id or folder)."""
    run_keys = _model_keys(source.meta.get("model")) | _model_keys(source.meta.get("model_folder"))
    out = []
    for name, obj in sorted(source.analyses.items()):
        m = obj.get("model") if isinstance(obj, dict) else None
        if m and run_keys and not (_model_keys(m) & run_keys):
            out.append(f"analyses/{name}.json was computed on {m}, not on this run's model {source.meta.get('model')}")
    return out


def model_notice(summary: dict) -> str:
    """The plain statement of which model was used, and whether it is the paper's."""
    if summary["same_model_as_paper"]:
        return f"This run used the paper's model, {PAPER_MODEL}."
    shape = f"{summary['n_layers']} layers × {summary['n_heads']} heads" if summary["n_layers"] else "unknown shape"
    kind = {"bi": "bi-encoder", "cross": "cross-encoder"}.get(str(summary["kind"]), str(summary["kind"] or "model"))
    text = (
        f"Different model: this run used {summary['model']} ({kind}, {shape}), not the paper's {PAPER_MODEL} "
        "(cross-encoder, 12 layers × 12 heads). Head indices and values do not carry over between models; rows "
        "marked “in kind” compare the structure of each claim instead."
    )
    if summary["kind"] == "bi":
        text += (
            " A bi-encoder encodes the document without the query, so the query-side token types (Qplus, "
            "Qsub, SEP1) do not occur in its inputs and its score is a cosine similarity, not a logit."
        )
    return text


# ---------------------------------------------------------------------------------------------------------------
# HTML / Markdown
# ---------------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:1.2em;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.notice{padding:.7em 1em;border-left:5px solid #D55E00;background:#fff4ec;margin:1em 0}
.notice.same{border-color:#009E73;background:#eefaf5}
.notice.warn{border-color:#CC79A7;background:#fbeef6}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3} tr:nth-child(even) td{background:#fafafa}
.verdict{display:inline-block;padding:.1em .5em;border-radius:.8em;font-weight:600;white-space:nowrap;font-size:.85em}
.v-agrees{background:#cdeee2;color:#00513a} .v-partly{background:#fde9c4;color:#6b4500}
.v-disagrees{background:#f8d3c4;color:#7a2800} .v-kind{background:#d3e6f5;color:#003d66}
.v-kindno{background:#ecdcea;color:#5a2450} .v-none{background:#e6e6e6;color:#444}
.crit{color:#555;font-size:.85em}
figure{margin:1.2em 0;padding:.6em;border:1px solid #e3e3e3;border-radius:6px;background:#fff}
figure svg.fig{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#333;margin-top:.3em}
.readout{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;color:#003d66;min-height:1.3em}
rect.cell{fill:transparent;cursor:crosshair} rect.cell:hover{stroke:#000;stroke-width:2}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em}
nav a{margin-right:1em} .muted{color:#666}
"""

SCRIPT = """
document.querySelectorAll('figure').forEach(function(f){
  var out=f.querySelector('.readout'); var svg=f.querySelector('svg');
  if(!out||!svg){return;}
  svg.addEventListener('mouseover',function(e){
    var t=e.target; if(t&&t.classList&&t.classList.contains('cell')){out.textContent=t.getAttribute('data-t');}
  });
});
"""


def _verdict_class(v: str) -> str:
    if v in ("agrees",):
        return "v-agrees"
    if v.startswith("partly"):
        return "v-partly"
    if v == "disagrees":
        return "v-disagrees"
    if v in ("agrees in kind",):
        return "v-kind"
    if v == "differs in kind":
        return "v-kindno"
    return "v-none"


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.4f}"
    if v is None:
        return "—"
    return str(v)


def render_html(
    summary: dict,
    comparisons: list[Comparison],
    circuit: tuple[list[dict], str],
    figures: list[tuple[FigureEntry, str]],
    skipped: list[str],
    generated: str,
) -> str:
    """The page."""
    fig_ids = {f.id for f, _ in figures}
    h = _html_head(summary, generated)
    h += _comparison_html(comparisons, summary_counts(comparisons), fig_ids)
    h += _left_out_html(summary)
    h += _circuit_html(*circuit, paper_col=summary["same_model_as_paper"])
    h += _figures_html(figures, skipped)
    h += _run_table_html(summary)
    h.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(h)


def _html_head(summary: dict, generated: str) -> list[str]:
    """The document head, the title, the model notice, the warnings and the navigation bar."""
    notice_cls = "notice same" if summary["same_model_as_paper"] else "notice"
    return [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>jaxmech report — {_e(summary['model'])}</title><style>{CSS}</style></head><body>",
        f"<h1>jaxmech report: {_e(summary['model'])}</h1>",
        f'<p class="muted">{_e(_pairs_line(summary))} · {_e(summary["kind"])} · generated {_e(generated)}</p>',
        f'<div class="{notice_cls}" id="model-notice">{_e(model_notice(summary))}</div>',
        *(f'<div class="notice warn">{_e(w)}</div>' for w in summary.get("warnings", [])),
        '<nav><a href="#comparison">Beside the paper</a><a href="#circuit">Circuit</a>'
        '<a href="#figures">Figures</a><a href="#run">Run</a></nav>',
    ]


def _comparison_html(comparisons: list[Comparison], counts: dict[str, int], fig_ids: set[str]) -> list[str]:
    """The verdict counts and the table of results beside the paper's (a link to each result's figure)."""
    h = [
        '<h2 id="comparison">Results beside the paper</h2>',
        "<p>"
        + " · ".join(f'<span class="verdict {_verdict_class(k)}">{_e(k)}</span> {n}' for k, n in sorted(counts.items()))
        + "</p>",
        "<table><thead><tr><th>result</th><th>paper</th><th>ours</th><th>verdict</th></tr></thead><tbody>",
    ]
    for c in comparisons:
        link = f' <a href="#{_e(c.figure)}">figure</a>' if c.figure in fig_ids else ""
        h.append(
            f'<tr id="cmp-{_e(c.key)}"><td>{_e(c.item)}{link}</td><td>{_e(c.paper)}</td><td>{_e(c.ours)}</td>'
            f'<td><span class="verdict {_verdict_class(c.verdict)}">{_e(c.verdict)}</span>'
            f'<div class="crit">{_e(c.criterion)}</div></td></tr>'
        )
    h.append("</tbody></table>")
    return h


def _circuit_html(rows: list[dict], origin: str, *, paper_col: bool) -> list[str]:
    """The circuit's heads by role, folded when there are more than 24 (``paper_col``: the paper's role too)."""
    h = [f'<h2 id="circuit">Circuit</h2><p class="muted">Source: {_e(origin)}.</p>']
    if not rows:
        return h
    roles: dict[str, int] = {}
    for r in rows:
        roles[r["role"]] = roles.get(r["role"], 0) + 1
    h.append(
        f"<details{' open' if len(rows) <= 24 else ''}><summary>{len(rows)} heads: "
        + ", ".join(f"{_e(k)} {n}" for k, n in roles.items())
        + "</summary>"
    )
    h.append(
        "<table><thead><tr><th>head</th><th>role</th><th>effect</th><th>exact-match detector</th>"
        + ("<th>paper's role</th>" if paper_col else "")
        + "<th>figures</th></tr></thead><tbody>"
    )
    for r in rows:
        links = " ".join(f'<a href="#{_e(f)}">{_e(f.removeprefix("fig-"))}</a>' for f in r["figures"])
        h.append(
            f'<tr id="head-{_e(r["head"])}"><td>{_e(r["head"])}</td><td>{_e(r["role"])}</td>'
            f"<td>{_e(_fmt(r['effect']))}</td><td>{_e(_fmt(r.get('detector_score')))}</td>"
            + (f"<td>{_e(r['paper_role'] or '—')}</td>" if paper_col else "")
            + f"<td>{links}</td></tr>"
        )
    h.append("</tbody></table></details>")
    return h


def _figures_html(figures: list[tuple[FigureEntry, str]], skipped: list[str]) -> list[str]:
    """The figures (inline SVG) under a heading per section, and what was not drawn."""
    h = [
        '<h2 id="figures">Figures</h2><p class="muted">Hover a heatmap cell for its value, layer, head and '
        "token type. Colour scales are symmetric about zero (white: no effect; red: restores the perturbed "
        "score; blue: moves away from it; grey: not patched, or a token type the pairs do not have).</p>"
    ]
    section = None
    for entry, svg in figures:
        if entry.section != section:
            section = entry.section
            h.append(f"<h3>{_e(section)}</h3>")
        h.append(
            f'<figure id="{_e(entry.id)}">{svg}<div class="readout" aria-live="polite"></div>'
            f"<figcaption><b>{_e(entry.title)}.</b> {_e(entry.caption)}</figcaption></figure>"
        )
    if skipped:
        h.append("<p class='muted'>Not drawn: " + "; ".join(_e(s) for s in skipped) + "</p>")
    return h


def _run_table_html(summary: dict) -> list[str]:
    """The run's settings (`RUN_KEYS`), device, timings and config."""
    h = ['<h2 id="run">Run</h2><table><tbody>']
    for k in RUN_KEYS:
        v = summary.get(k)
        h.append(
            f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v) if not isinstance(v, list) else ', '.join(map(str, v)))}</td></tr>"
        )
    for k in ("device", "timings", "config"):
        v = summary.get(k)
        body = "not recorded" if v is None else f"<pre>{_e(json.dumps(v, indent=1, default=str))}</pre>"
        h.append(f"<tr><th>{_e(k)}</th><td>{body}</td></tr>")
    h.append("</tbody></table>")
    return h


def _pairs_line(summary: dict) -> str:
    """The header's pair count: patched pairs (per dataset, kept of all) and the analyses' own inputs."""
    text = f"{summary['n_pairs']} patched pairs"
    per = summary.get("pairs_by_dataset") or {}
    if per:
        text += " (" + ", ".join(f"{k}: {c['kept']} of {c['pairs']} kept" for k, c in per.items()) + ")"
    inputs = summary.get("analysis_inputs") or {}
    if inputs:
        text += "; analyses on their own inputs: " + "; ".join(
            f"{a} " + ", ".join(f"{k} {v}" for k, v in d.items()) for a, d in inputs.items())
    return text


LEFT_OUT_RULE = (
    "A pair is left out of the patching results when its score change |perturbed − baseline| is below the floor "
    "(a fraction of the run's score spread: its normalized effect divides by almost nothing), or has the opposite "
    "sign to its dataset's median change (its normalized effect reverses meaning), or the run flagged it."
)


def _left_out_html(summary: dict) -> list[str]:
    left = summary.get("left_out") or {}
    if not left:
        return []
    h = ['<h3 id="left-out">Pairs left out</h3>', f'<p class="muted">{_e(LEFT_OUT_RULE)}</p>',
         "<table><thead><tr><th>dataset</th><th>pairs</th><th>kept</th><th>small change</th><th>wrong sign</th>"
         "<th>run's flag</th><th>floor (spread)</th><th>aggregate</th><th>left out (first 20)</th></tr></thead><tbody>"]
    for label, d in left.items():
        pairs = "; ".join(f"{p['pair']} ({p['change']:+.4f}: {p['why']})" for p in d["left_out"]) or "—"
        h.append(f"<tr><td>{_e(label)}</td><td>{d['pairs']}</td><td>{d['kept']}</td>"
                 f"<td>{d['flagged_small_change']}</td><td>{d['flagged_wrong_sign']}</td><td>{d['flagged_stored']}</td>"
                 f"<td>{_e(_fmt(d['floor']))} ({_e(_fmt(d['spread']))})</td><td>{_e(d['aggregate'])}</td>"
                 f"<td>{_e(pairs)}</td></tr>")
    h.append("</tbody></table>")
    return h


def _left_out_md(summary: dict) -> list[str]:
    left = summary.get("left_out") or {}
    if not left:
        return []
    md = ["", "### Pairs left out", "", LEFT_OUT_RULE, "",
          "| dataset | pairs | kept | small change | wrong sign | run's flag | floor (spread) | aggregate |",
          "|---|---|---|---|---|---|---|---|"]
    for label, d in left.items():
        md.append(f"| {label} | {d['pairs']} | {d['kept']} | {d['flagged_small_change']} | {d['flagged_wrong_sign']} "
                  f"| {d['flagged_stored']} | {_fmt(d['floor'])} ({_fmt(d['spread'])}) | {_md_cell(d['aggregate'])} |")
    return md


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(
    summary: dict,
    comparisons: list[Comparison],
    circuit: tuple[list[dict], str],
    figures: list[FigureEntry],
    generated: str,
) -> str:
    """report.md (figures as files under ``figures/``)."""
    rows, origin = circuit
    md = [
        f"# jaxmech report: {summary['model']}",
        "",
        f"{_pairs_line(summary)} · {summary['kind']} · generated {generated}",
        "",
        f"> {model_notice(summary)}",
        *(line for w in summary.get("warnings", []) for line in ("", f"> **Warning:** {w}")),
        "",
        "## Results beside the paper",
        "",
        "| result | paper | ours | verdict | criterion |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        md.append(
            "| " + " | ".join(_md_cell(x) for x in (c.item, c.paper, c.ours, f"**{c.verdict}**", c.criterion)) + " |"
        )
    md += _left_out_md(summary)
    md += ["", "## Circuit", "", f"Source: {origin}.", ""]
    if rows:
        md += ["| head | role | effect | exact-match detector | figures |", "|---|---|---|---|---|"]
        for r in rows:
            md.append(
                f"| {r['head']} | {r['role']} | {_fmt(r['effect'])} | {_fmt(r.get('detector_score'))} | "
                + ", ".join(f.removeprefix("fig-") for f in r["figures"])
                + " |"
            )
    md += ["", "## Figures", ""]
    for f in figures:
        md += [f"### {f.title}", "", f"![{f.title}](figures/{f.id.removeprefix('fig-')}.png)", "", f.caption, ""]
    md += ["## Run", ""]
    for k in RUN_KEYS:
        if k in _HTML_ONLY_RUN_KEYS:
            continue
        md.append(f"- **{k}**: {_fmt(summary.get(k))}")
    for k in ("device", "timings", "config"):
        v = summary.get(k)
        md.append(f"- **{k}**: " + ("not recorded" if v is None else f"`{json.dumps(v, default=str)}`"))
    return "\n".join(md) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def _demo_scores(source: ResultsSource) -> dict:
    """The run's model on the paper's demo pair (`jaxmech.report.demo.score_demo_pair`)."""
    from jaxmech.report.demo import score_demo_pair

    folder = source.meta.get("model_folder")
    ref = folder if folder and Path(folder).is_dir() else source.meta.get("model", "")
    return score_demo_pair(str(ref), source.path)


def _render_figures(entries: list[FigureEntry], out: Path, dpi: int) -> list[tuple[FigureEntry, str]]:
    """Each figure as inline SVG for the page, its PNG written under ``out/figures``."""
    rendered = []
    for entry in entries:
        svg, png = figure_svg(entry.fig, dpi=dpi, label=entry.title)
        _atomic_write(out / "figures" / f"{entry.id.removeprefix('fig-')}.png", png)
        rendered.append((entry, svg))
        entry.fig.clear()
    return rendered


def _all_figures(source: ResultsSource, views: list[tuple[str, PairView]]) -> tuple[list[FigureEntry], list[str]]:
    """Every view's family figures, then the analyses' figures; and what was not drawn."""
    fam_figs, skipped = [], []
    for label, view in views:
        figs, skip = family_figures(view, label)
        fam_figs += figs
        skipped += [f"{label}: {x}" if label else x for x in skip]
    edges = [FigureEntry(*f) for f in edge_figures(source.analyses, str(source.path))]
    return fam_figs + analysis_figures(source) + edges, skipped


def _judged_summary(source: ResultsSource, views: list[tuple[str, PairView]]) -> dict:
    """`run_summary` with the receiver warnings and, per view, the pairs left out and why."""
    summary = run_summary(source, views)
    summary["warnings"] = summary["warnings"] + receiver_warnings(source, views)
    summary["left_out"] = {label or "all": {**v.flags.counts(), "floor": v.flags.floor, "spread": v.flags.spread,
                                            "aggregate": v.meta["aggregate_label"], "left_out": v.flagged_pairs()}
                           for label, v in views}
    return summary


def _check_out_dir(run_dir: str | Path | Any, out_dir: str | Path | None) -> None:
    """Checks that the report's folder can be written, before any work (a missing run is `open_results`'s
    error; an in-memory run's folder is checked when written)."""
    if not isinstance(run_dir, (str, os.PathLike)):
        return
    run = Path(run_dir)
    if out_dir or run.exists():
        default = run / "report" if run.is_dir() else run.parent
        check_writable_folder(out_dir or default, what="--out" if out_dir else "report folder")


def build_report(
    run_dir: str | Path | Any,
    out_dir: str | Path | None = None,
    *,
    analyses: str | Path | None = None,
    score_demo: bool = True,
    dpi: int = 100,
    aggregate: str = DEFAULT_STATISTIC,
    relative_floor: float | None = DEFAULT_RELATIVE_FLOOR,
    wrong_sign: bool = True,
    merge_pieces: str = DEFAULT_MERGE,
    per_dataset: bool = True,
) -> Path:
    """Writes report.html, report.md, numbers.json and figures/*.png for a run.

    Patching results are judged and drawn per dataset (`judged_views`): pairs whose score change is below
    ``relative_floor`` times the run's score spread, or against their dataset's direction, are flagged, counted
    and listed; the rest are aggregated by ``aggregate``. ``aggregate="mean", relative_floor=None,
    wrong_sign=False, merge_pieces="mean", per_dataset=False`` is the report before these rules.

    Args:
        run_dir: A results-store run directory, a ``jaxmech patch`` ``.npz``, or a run object.
        out_dir: Output folder (default: ``RUN_DIR/report``, or ``<stem>_report`` beside a ``.npz``).
        analyses: A folder of analysis JSON files to add (e.g. for a ``.npz``, which holds none); a store run
            directory's own ``analyses/`` is read anyway.
        score_demo: Load the run's model (when it is available here) to score the paper's demo pair.
        dpi: Resolution of the figures.
        aggregate: Statistic over pairs (`jaxmech.patching.summaries.STATISTICS`), stated on every figure.
        relative_floor: Flag pairs whose ``|perturbed - baseline|`` is below this fraction of the run's score
            spread (None: the run's own flags only).
        wrong_sign: Flag pairs whose score change goes against their dataset's median change.
        merge_pieces: How a split term's pieces are merged in token-type means (``"mean"``: not merged).
        per_dataset: One set of patching results and figures per dataset of the run.

    Returns:
        The path of report.html.

    Raises:
        ResultsError: If the results cannot be read or an analysis JSON is malformed (the message names it).
        ValueError: If the output folder cannot be written (checked before any work).
    """
    _check_out_dir(run_dir, out_dir)
    source = open_results(run_dir)
    if analyses is not None:
        source.analyses = {**source.analyses, **read_analyses_dir(analyses)}
    views = judged_views(source, aggregate=aggregate, relative_floor=relative_floor, wrong_sign=wrong_sign,
                         merge_pieces=merge_pieces, per_dataset=per_dataset)
    if out_dir is None:
        if str(source.path).startswith("<"):
            raise ResultsError("build_report: give out_dir for an in-memory run")
        out_dir = default_out_dir(source.path)
    out = Path(out_dir)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    demo = _demo_scores(source) if score_demo else None
    comparisons = compare_all(source, demo, views=views)
    entries, skipped = _all_figures(source, views)
    summary = _judged_summary(source, views)
    rendered = _render_figures(entries, out, dpi)
    circuit = circuit_rows(source, {e.id for e in entries})
    numbers = {
        "jaxmech_report_version": REPORT_VERSION,
        "generated": generated,
        "run": summary,
        "paper": PAPER,
        "demo_scores": demo,
        "comparisons": [dataclasses.asdict(c) for c in comparisons],
        "verdicts": summary_counts(comparisons),
        "circuit": {"origin": circuit[1], "heads": circuit[0]},
        "families": family_numbers(source),
        "analyses": analysis_numbers(source),
        "figures": [{"id": e.id, "title": e.title, "file": f"figures/{e.id[4:]}.png"} for e in entries],
        "not_drawn": skipped,
        "pairs_left_out": summary["left_out"],
    }
    _atomic_write(out / "numbers.json", json.dumps(to_jsonable(numbers), indent=2, default=str))
    _atomic_write(out / "report.md", render_markdown(summary, comparisons, circuit, entries, generated))
    page = out / "report.html"
    _atomic_write(page, render_html(summary, comparisons, circuit, rendered, skipped, generated))
    return page
