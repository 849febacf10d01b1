"""The report shows a run's edge circuit (`jaxmech.report.edges`): its figure in the Analyses section with the
analysis's numbers in the caption, and an edges JSON that lacks the graph is named in the error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmech.analysis.edge_export import to_eap_ig_json
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.report.build import build_report
from jaxmech.results.source import ResultsError


def _edges_json(threshold: bool) -> dict:
    g = EdgeGraph(6, 12)  # the paper's model's shape: its roles are marked
    names = [g.edge_name(e) for e in range(g.n_edges)]
    circuit = np.zeros(g.n_edges, bool)
    for n in ("a2.h9->a5.h7<k>", "a1.h1->a5.h1<v>", "a5.h7->logits", "m5->logits"):
        circuit[names.index(n)] = True
    out = {"analysis": "edges", "method": "eap-ig-inputs", "steps": 5, "n_pairs": 16, "n_edges": g.n_edges,
           "verified_spearman": 0.912, "top_recall": 0.88, "top_recall_scope": "verified edges", "recall_n": 50,
           "n_verified": 100, "ablation": "both", "cpr": 0.95, "cmd": 0.06, "smallest_80": {"n_edges": 617},
           "baseline_score": -0.41, "empty_score": 0.264, "perturbed_score": 0.228,
           "circuit": {"rule": "smallest_80", "n_edges": 4},
           "mean_ablation": {"cpr": 0.71, "cmd": 0.3, "smallest_80": None},
           "eap_ig_graph": to_eap_ig_json(g, np.linspace(-1, 1, g.n_edges), circuit, d_model=384)}
    if threshold:
        out["circuit"] = {"rule": "threshold", "n_edges": 4}
        out["threshold_circuit"] = {"threshold": 0.05, "n_edges": 4, "fraction": 4 / g.n_edges, "recovery": 0.42}
    return out


def test_the_report_shows_the_edge_circuit_with_its_numbers(tmp_path):
    from test_plot import write_patch_npz

    npz = tmp_path / "r.npz"
    write_patch_npz(npz, single=True)
    folder = tmp_path / "analyses"
    folder.mkdir()
    (folder / "edges.json").write_text(json.dumps(_edges_json(threshold=True)))
    page = build_report(npz, tmp_path / "out", analyses=folder, score_demo=False).read_text()
    assert 'id="fig-edges"' in page and (tmp_path / "out" / "figures" / "edges.png").stat().st_size > 1000
    for text in ("Spearman 0.91", "recall of the exact top 50 0.88", "|effect| &gt;= 0.05, 4 of 7588 edges (0.1%)",
                 "recovery 0.42", "CPR 0.95", "Mean ablation: CPR 0.71", "not reached"):
        assert text in page, text
    numbers = json.loads((tmp_path / "out" / "numbers.json").read_text())
    assert numbers["analyses"]["edges"]["verified_spearman"] == pytest.approx(0.912)
    bad = _edges_json(threshold=False)
    del bad["eap_ig_graph"]
    (folder / "edges.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=r"analyses/edges\.json: cannot draw the edge circuit"):
        build_report(npz, tmp_path / "out2", analyses=folder, score_demo=False)
