"""The edge circuit in the report: the figure of a run's ``edges`` analysis (`jaxmech.analysis.edges`) and the
numbers it is read with.

`edge_figures` draws `jaxmech.plot.edges.edge_circuit_graph` (nodes by layer, edges by weight, the paper's
matching and scoring heads marked when the model has their layers and heads) for ``analyses/edges.json`` and
writes a caption with the analysis's headline numbers: the method, how well it agreed with exact edge patches,
the exported circuit's size and recovery, CPR and CMD (and the mean-ablation curve's when it was run).
`jaxmech.report.build` adds the figures to the page's Analyses section.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from jaxmech.plot.edges import DEFAULT_ROLES, edge_circuit_graph
from jaxmech.results.source import ResultsError

TITLE = "Edge circuit"
SECTION = "Analyses"


def _num(x: Any, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _circuit_sentence(result: dict) -> str:
    n_edges = result["n_edges"]
    circuit = result.get("circuit") or {"rule": "smallest_80",
                                        "n_edges": (result.get("smallest_80") or {}).get("n_edges")}
    n = circuit["n_edges"]
    size = f"{n} of {n_edges} edges ({n / n_edges:.1%})" if n is not None else "no circuit reached 80 %"
    if circuit["rule"] == "threshold":
        thr = result["threshold_circuit"]
        return f"Circuit: every edge with |effect| >= {thr['threshold']:g}, {size}, recovery {_num(thr['recovery'])}."
    return f"Circuit: the smallest recovering 80 % of the normalized score, {size}."


def _primary_ablation(result: dict) -> str:
    """The ablation of the headline curve: ``both`` reports the perturbed one first, the mean one apart."""
    ablation = result.get("ablation", "perturbed")
    return "perturbed" if ablation == "both" else ablation


def edge_caption(result: dict) -> str:
    """The caption of the circuit figure: the analysis's headline numbers (see the module docstring)."""
    method = result["method"] + (f" ({result['steps']} steps)" if result["method"].startswith("eap-ig") else "")
    parts = [
        f"Edges of {result['n_pairs']} pairs by {method}; verified against {result.get('n_verified', 'n/a')} exact "
        f"edge patches: Spearman {_num(result.get('verified_spearman'))}, recall of the exact top "
        f"{result.get('recall_n', 'n/a')} {_num(result.get('top_recall'))} ({result.get('top_recall_scope', '')}).",
        _circuit_sentence(result),
        f"Faithfulness ({_primary_ablation(result)} ablation): CPR {_num(result.get('cpr'))}, "
        f"CMD {_num(result.get('cmd'))}; scores: full {_num(result.get('baseline_score'), '.3f')}, "
        f"empty circuit {_num(result.get('empty_score'), '.3f')}, perturbed run "
        f"{_num(result.get('perturbed_score'), '.3f')}.",
    ]
    mean = result.get("mean_ablation")
    if mean:
        small = (mean.get("smallest_80") or {}).get("n_edges")
        parts.append(f"Mean ablation: CPR {_num(mean.get('cpr'))}, CMD {_num(mean.get('cmd'))}, smallest 80 % "
                     f"circuit: {f'{small} edges' if small is not None else 'not reached'}.")
    parts.append("Width: |effect|; red raises the score when patched, blue lowers it; edges into a query, key or value "
                 "solid/dashed/dotted, into an MLP or the score dash-dotted (legend below the graph).")
    return " ".join(parts)


def edge_figures(analyses: dict[str, Any], where: str = "") -> list[tuple[str, str, str, str, Figure]]:
    """``(id, title, section, caption, figure)`` of the ``edges`` analysis in ``analyses`` (none without one).

    Args:
        analyses: The run's analyses by name (`jaxmech.results.source.ResultsSource.analyses`).
        where: The run's path, for error messages.

    Raises:
        ResultsError: If ``analyses/edges.json`` lacks what the figure or caption needs (the file is named).
    """
    result = analyses.get("edges")
    if result is None:
        return []
    try:
        cfg = result["eap_ig_graph"]["cfg"]
        roles = DEFAULT_ROLES if cfg["n_layers"] > 5 and cfg["n_heads"] > 9 else {}
        fig = edge_circuit_graph(result, roles=roles)
        caption = edge_caption(result)
    except (KeyError, TypeError, ValueError) as err:
        raise ResultsError(f"{where}: analyses/edges.json: cannot draw the edge circuit ({type(err).__name__}: "
                           f"{err})") from None
    return [("fig-edges", TITLE, SECTION, caption, fig)]


__all__ = ["edge_caption", "edge_figures"]
