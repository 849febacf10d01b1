"""The report on a real run directory of the results store (`jaxmech sweep`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmech import results

CONFIG = """
[run]
name = "report_test"

[model]
path = "{model}"

[[datasets]]
kind = "tfc1"
source = "demo"
sample = 3
seed = 0

[[families]]
name = "block_every"

[[families]]
name = "head_by_pos_z"
method = "attribution"

[[families]]
name = "path_to_score"

[[families]]
name = "path_to_heads"
receivers = ["5.0"]
receiver_input = "k"

[patching]
metric = "normalized"

[chunking]
pairs_per_chunk = 2
"""


@pytest.fixture(scope="module")
def store_run(tmp_path_factory, minilm_path):
    from jaxmech.sweeps import run_sweep

    folder = tmp_path_factory.mktemp("sweep")
    cfg = folder / "sweep.toml"
    cfg.write_text(CONFIG.format(model=minilm_path))
    run_sweep(cfg, out=folder / "run", quiet=True)
    return folder / "run"


@pytest.mark.slow  # one small sweep of the packaged model
def test_report_of_a_store_run(store_run, capsys):
    from jaxmech.cli import main
    from jaxmech.results.source import open_results

    src = open_results(store_run)
    run = results.open(store_run)
    assert set(src.families) == {"block_every", "attribution:head_by_pos_z", "path_to_score", "path_to_heads_k"}
    assert src.meta["n_layers"] == 6 and src.meta["kind"] == "bi" and src.meta["weights_hash"].startswith("sha256:")
    mean, n = src.pair_mean("path_to_score")
    keep = ~np.asarray(run.pairs["flagged"], bool)
    np.testing.assert_allclose(
        mean.values, np.nanmean(np.asarray(run["path_to_score"], np.float64)[keep], 0), atol=1e-12
    )
    assert n == int(keep.sum())
    (store_run / "analyses").mkdir(exist_ok=True)
    from jaxmech.report.synthetic import synthetic_run

    (store_run / "analyses" / "idf_svd.json").write_text(json.dumps(synthetic_run().analyses["idf_svd"]))
    assert main(["report", str(store_run), "--no-demo-score"]) == 0
    page = store_run / "report" / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text()
    for fid in (
        "fig-block_every",
        "fig-attribution-head_by_pos_z",
        "fig-path_to_score",
        "fig-path_to_heads_k",
        "fig-idf_svd_bars",
    ):
        assert f'id="{fid}"' in html, fid
    numbers = json.loads((page.parent / "numbers.json").read_text())
    assert numbers["run"]["dataset"].startswith("tfc1") and numbers["run"]["n_pairs"] == 3
    assert numbers["families"]["path_to_heads_k"]["dims"] == ["layer", "head"]
    assert numbers["families"]["path_to_heads_k"]["shape"] == [5, 12]
    v = {c["key"]: c["verdict"] for c in numbers["comparisons"]}
    assert v["block_every"] == "not comparable"  # a bi-encoder has no query tokens
    assert v["u0_idf"] == "agrees in kind"  # the planted idf_svd analysis: U_0 strongest and negative


@pytest.mark.slow
def test_plot_titles_receivers_of_a_store_run(store_run):
    from jaxmech import plot as jp

    title = " ".join(jp.plot(store_run, "path_to_heads_k")._suptitle.get_text().split())
    assert "E5 path patching" in title and "(receiver 5.0, input k)" in title
    title = " ".join(jp.plot(store_run, "attribution:head_by_pos_z")._suptitle.get_text().split())
    assert "(attribution estimate)" in title
