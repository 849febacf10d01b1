"""Edge circuits: faithfulness anchors, verification statistics, EAP-IG export, connections, the command."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from edge_reference import edge_batch, planted_model, planted_pairs

from jaxmech.analysis.edge_export import connections, to_eap_ig_json
from jaxmech.analysis.edges import check_method, circuit_mask, faithfulness, recovery, verify
from jaxmech.cli.analyze import main
from jaxmech.patching.edge_graph import EdgeGraph
from jaxmech.patching.edges import edge_data, edges_patched_scores, exact_edge_scores, mean_ablated


@pytest.fixture(scope="module")
def setup(tiny_model):
    data = edge_data(tiny_model, edge_batch(tiny_model))
    g = EdgeGraph(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    exact = (exact_edge_scores(tiny_model, data) - np.asarray(data.baseline_score)[:, None]).mean(0)
    return data, g, exact


def test_faithfulness_anchors_and_curve(tiny_model, setup):
    data, g, exact = setup
    f = faithfulness(tiny_model, data, exact, grid=(1, 5, 20))
    rec = {p["n_edges"]: p["recovery"] for p in f["curve"]}
    assert rec[0] == pytest.approx(0.0, abs=1e-6) and rec[g.n_edges] == pytest.approx(1.0, abs=1e-5)
    assert f["full_score"] == pytest.approx(float(np.mean(data.baseline_score)), abs=1e-6)
    # the circuit of the top edge: everything else patched, by hand
    keep = np.zeros((2, g.n_edges), np.float32)
    keep[:, np.argmax(np.abs(exact))] = 1
    m = float(np.mean(edges_patched_scores(tiny_model, data, jnp.asarray(keep))))
    assert rec[1] == pytest.approx((m - f["empty_score"]) / (f["full_score"] - f["empty_score"]), abs=1e-5)
    small = f["smallest"]
    assert rec[small["n_edges"]] >= 0.8 and all(r < 0.8 for n, r in rec.items() if n < small["n_edges"])
    assert 0 < f["cpr"] < 1.5 and f["cmd"] >= 0


def test_mean_ablation_patches_to_the_mean_token(tiny_model, setup):
    data, g, _ = setup
    mean = mean_ablated(data)
    mask = np.asarray(data.mask, bool)
    base = np.asarray(data.res_base).transpose(0, 2, 1, 3, 4)  # [pair, pos, layer, head, d]
    got = np.asarray(mean.res_pert).transpose(0, 2, 1, 3, 4)
    want = base[mask].mean(0)  # over every real token of every pair
    np.testing.assert_allclose(got[mask], np.broadcast_to(want, got[mask].shape), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[~mask], base[~mask])  # padding keeps the baseline
    emb = np.asarray(data.emb_base)[mask].mean(0)
    np.testing.assert_allclose(np.asarray(mean.emb_pert)[mask], np.broadcast_to(emb, (mask.sum(), emb.size)),
                               rtol=0, atol=1e-6)
    assert (~mask).any() and np.array_equal(np.asarray(mean.patchable), mask)
    keep = jnp.ones((2, g.n_edges))
    np.testing.assert_allclose(edges_patched_scores(tiny_model, mean, keep), data.baseline_score, rtol=0, atol=1e-5)


def test_mean_ablation_and_perturbed_patching_differ_where_planted(tiny_model):
    """Weak components, a perturbation of one document token, a score that reads [CLS] alone: patching
    ``input->logits`` to its perturbed value changes nothing (the [CLS] row does not move), mean-ablating it
    replaces the [CLS] embedding by the mean token's and must change the score most of all edges; the one-edge
    circuit it makes then recovers a large share of the score under mean ablation."""
    model = planted_model(tiny_model, 0.1)
    data = edge_data(model, planted_pairs(at_cls=False))
    mean = mean_ablated(data)
    g = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    direct = [g.edge_name(e) for e in range(g.n_edges)].index("input->logits")
    base = np.asarray(data.baseline_score)[:, None]
    perturbed = np.abs(exact_edge_scores(model, data) - base).mean(0)
    by_mean = np.abs(exact_edge_scores(model, mean) - base).mean(0)
    assert perturbed[direct] < 1e-6 and np.count_nonzero(perturbed > 1e-4) > 20
    assert int(np.argmax(by_mean)) == direct and by_mean[direct] > perturbed.max()
    f = faithfulness(model, mean, by_mean, grid=(1,))
    rec = {p["n_edges"]: p["recovery"] for p in f["curve"]}
    assert rec[0] == pytest.approx(0.0, abs=1e-6) and rec[g.n_edges] == pytest.approx(1.0, abs=1e-5)
    assert rec[1] > 0.25  # one edge of 351 holds a large share of the mean-ablated score (0.44 here)
    empty_perturbed = float(np.mean(edges_patched_scores(model, data, jnp.zeros((2, g.n_edges)))))
    assert abs(f["empty_score"] - empty_perturbed) > 1e-2


def test_threshold_circuits(tiny_model, setup):
    data, g, exact = setup
    thr = float(np.sort(np.abs(exact))[-7])  # the seventh largest |effect|: a 7-edge circuit
    circuit = circuit_mask(exact, threshold=thr)
    assert circuit.sum() == 7 and np.array_equal(circuit, circuit_mask(exact, n=7))
    f = faithfulness(tiny_model, data, exact, grid=(7,))
    rec = {p["n_edges"]: p["recovery"] for p in f["curve"]}
    assert recovery(tiny_model, data, circuit, (f["full_score"], f["empty_score"])) == pytest.approx(rec[7], abs=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        circuit_mask(exact, n=3, threshold=0.1)
    with pytest.raises(ValueError, match="ablation 'zero': expected one of perturbed, mean, both"):
        check_method("eap", 1, "zero")
    with pytest.raises(ValueError, match="threshold=-0.1 must be"):
        check_method("eap", 1, threshold=-0.1)


def test_verify_ranks_exact_perfectly_and_noise_poorly(tiny_model, setup):
    data, g, exact = setup
    good = verify(tiny_model, data, exact, k=10, n_random=20, recall_n=10, exact_all=exact)
    assert good["spearman"] == pytest.approx(1.0) and good["recall"] == 1.0 and good["recall_scope"] == "all edges"
    noise = np.random.RandomState(1).normal(size=g.n_edges)
    bad = verify(tiny_model, data, noise, k=10, n_random=20, recall_n=10, exact_all=exact)
    assert abs(bad["spearman"]) < 0.6 and bad["recall"] < 0.5
    run = verify(tiny_model, data, exact, k=4, n_random=4, recall_n=4)  # runs its own exact patches
    np.testing.assert_allclose(run["exact"], exact[run["edges"]], rtol=0, atol=1e-5)


def test_eap_ig_export_and_connections():
    g = EdgeGraph(3, 2)
    circuit = np.zeros(g.n_edges, bool)
    names = [g.edge_name(e) for e in range(g.n_edges)]
    for n in ("input->a0.h1<q>", "a0.h1->a1.h0<k>", "a1.h0->a2.h1<v>", "a2.h1->logits"):
        circuit[names.index(n)] = True
    out = to_eap_ig_json(g, np.arange(g.n_edges) / 10, circuit, d_model=8)
    assert out["cfg"] == {"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8}
    assert len(out["edges"]) == g.n_edges and sum(e["in_graph"] for e in out["edges"].values()) == 4
    assert out["edges"]["a0.h1->a1.h0<k>"]["score"] == pytest.approx(names.index("a0.h1->a1.h0<k>") / 10)
    assert [n for n, v in out["nodes"].items() if v["in_graph"]] == ["input", "a0.h1", "a1.h0", "a2.h1", "logits"]
    c = connections(g, circuit, ["0.1", "1.1"], ["2.1", "1.0"])
    assert c["direct"] == ["a0.h1->a1.h0<k>"]
    assert c["paths"] == {"a0.h1->a2.h1": True, "a0.h1->a1.h0": True, "a1.h1->a2.h1": False, "a1.h1->a1.h0": False}
    assert c["in_circuit"]["a1.h1"] is False


def test_command_writes_the_edges_json(minilm_path, tmp_path, capsys):
    from conftest import save_tiny_cross

    model_dir = save_tiny_cross(tmp_path / "tiny", minilm_path)
    out, graph = tmp_path / "edges.json", tmp_path / "graph.json"
    argv = ["analyze", "edges", "--model", str(model_dir), "--source", "demo", "--limit", "2", "--method", "eap",
            "--verify-top-k", "5", "--n-random", "5", "--exact-all", "--out", str(out), "--eap-ig-json", str(graph),
            "--spans", "--ablation", "both", "--prune-threshold", "0.01"]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["n_edges"] == EdgeGraph(2, 2).n_edges and res["top_recall_scope"] == "all edges"
    assert -1 <= res["verified_spearman"] <= 1 and 0 <= res["top_recall"] <= 1
    assert res["faithfulness"][0] == {"n_edges": 0, "recovery": pytest.approx(0.0, abs=1e-6)}
    assert json.loads(graph.read_text())["cfg"]["n_layers"] == 2
    mean_curve = {p["n_edges"]: p["recovery"] for p in res["mean_ablation"]["faithfulness"]}
    assert mean_curve[0] == pytest.approx(0.0, abs=1e-6) and mean_curve[res["n_edges"]] == pytest.approx(1.0, abs=1e-5)
    assert res["ablation"] == "both" and res["mean_ablation"]["empty_score"] != res["empty_score"]
    scores = {n: e for n, e in res["eap_ig_graph"]["edges"].items()}
    chosen = {n for n, e in scores.items() if abs(e["score"]) >= 0.01}
    assert chosen == {n for n, e in scores.items() if e["in_graph"]} and 0 < len(chosen) < res["n_edges"]
    thr = res["threshold_circuit"]
    assert res["circuit"] == {"rule": "threshold", "n_edges": len(chosen)} and thr["n_edges"] == len(chosen)
    assert np.isfinite(thr["recovery"]) and np.isfinite(thr["recovery_mean"])
    spans = res["top_span_edges"]
    assert len(spans) == 20 and "@" in spans[0]["edge"] and abs(spans[0]["estimate"]) >= abs(spans[-1]["estimate"])
    assert '"verified_spearman"' in capsys.readouterr().out
    assert main(["analyze", "edges", "--model", str(model_dir), "--source", "demo", "--method", "eap",
                 "--steps", "0", "--out", str(out)]) == 2


def test_circuit_graph_figure(tmp_path):
    from jaxmech.plot.edges import edge_circuit_graph

    g = EdgeGraph(3, 2)
    names = [g.edge_name(e) for e in range(g.n_edges)]
    circuit = np.zeros(g.n_edges, bool)
    for n in ("input->a0.h1<q>", "a0.h1->a1.h0<k>", "a1.h0->a2.h1<v>", "a2.h1->logits", "m1->logits"):
        circuit[names.index(n)] = True
    scores = np.linspace(-1, 1, g.n_edges)
    fig = edge_circuit_graph({"method": "eap", "eap_ig_graph": to_eap_ig_json(g, scores, circuit, d_model=8)},
                             roles={"matching": ["0.1"], "scoring": ["2.1"]})
    ax = fig.axes[0]
    assert len(ax.lines) == 5 and "5 edges" in ax.get_title()
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="eap_ig_graph"):
        edge_circuit_graph({"method": "eap"})


def test_circuit_graph_legend_names_the_line_styles_and_roles_below_the_nodes():
    from jaxmech.plot.edges import QKV_STYLE, edge_circuit_graph

    g = EdgeGraph(2, 2)
    circuit = np.zeros(g.n_edges, bool)
    circuit[:3] = True
    graph = {"eap_ig_graph": to_eap_ig_json(g, np.linspace(-1, 1, g.n_edges), circuit, d_model=8)}
    fig = edge_circuit_graph(graph, roles={"matching": ["0.1"], "scoring": ["1.0"]})
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "into query (q)", "into key (k)", "into value (v)", "into MLP / score", "raises score", "lowers score",
        "matching", "scoring"]
    styles = [h.get_linestyle() for h in legend.legend_handles[:4]]
    assert styles == ["-", "--", ":", "-."] and len(set(QKV_STYLE.values())) == 4
    fig.draw_without_rendering()
    assert legend.get_window_extent().y1 <= ax.get_window_extent().y0  # below the axes: covers no node
    bare = edge_circuit_graph(graph, roles={}).axes[0].get_legend()
    assert [t.get_text() for t in bare.get_texts()][-1] == "lowers score"
