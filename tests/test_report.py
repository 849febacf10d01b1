"""The report: files written atomically, numbers.json keys, verdicts computed from the run (planted
agreements and disagreements), the different-model statement, no network references, hover cells, errors
that name the file, and a report of a real `jaxmech patch` run of the packaged model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from jaxmech.report.build import build_report
from jaxmech.report.compare import PAPER, compare_all
from jaxmech.report.synthetic import synthetic_run
from jaxmech.results.source import ResultsError

NUMBERS_KEYS = {
    "jaxmech_report_version",
    "generated",
    "run",
    "paper",
    "demo_scores",
    "comparisons",
    "verdicts",
    "circuit",
    "families",
    "analyses",
    "figures",
    "not_drawn",
    "pairs_left_out",
}


@pytest.fixture(scope="module")
def agree_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("agree")
    page = build_report(synthetic_run(n_pairs=4, seq=12), out, score_demo=False)
    return out, page


def verdicts(numbers: dict) -> dict[str, str]:
    return {c["key"]: c["verdict"] for c in numbers["comparisons"]}


def test_files_and_numbers(agree_report):
    out, page = agree_report
    assert page == out / "report.html"
    numbers = json.loads((out / "numbers.json").read_text())
    assert set(numbers) == NUMBERS_KEYS
    assert numbers["run"]["same_model_as_paper"] is True and numbers["run"]["n_pairs"] == 4
    assert numbers["paper"]["linear_test_pearson"] == 0.8157 and numbers["paper"]["demo"]["score_baseline"] == -5.6513
    ids = [f["id"] for f in numbers["figures"]]
    assert {"fig-block_every", "fig-path_to_score", "fig-circuit", "fig-linear_bm25", "fig-idf_svd_bars"} <= set(ids)
    for f in numbers["figures"]:
        assert (out / f["file"]).stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert "| linear semantic-BM25 fit, test Pearson r | 0.8157 |" in md and "![E1 block patching]" in md
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # hidden temporary files included
    assert numbers["families"]["path_to_score"]["top_heads"][0][0] in PAPER["scoring_heads"]


def test_planted_agreement_gives_agrees(agree_report):
    numbers = json.loads((agree_report[0] / "numbers.json").read_text())
    v = verdicts(numbers)
    assert v.pop("demo_logits") == "not in this run"  # built without scoring the demo pair
    assert set(v.values()) == {"agrees"}, v


def test_planted_disagreement_is_found():
    run = synthetic_run(n_pairs=4, seq=12, agree=False)
    v = {c.key: c.verdict for c in compare_all(run, {"score_baseline": 1.0, "score_perturbed": 0.5, "kind": "cross"})}
    for key in (
        "demo_logits",
        "scoring_heads",
        "head_all_pos_v",
        "head_10_1",
        "matching_heads",
        "u0_idf",
        "edit_idf",
        "linear_r",
        "bm25_r",
        "soft_tf_tfc2",
        "soft_tf_lnc1",
        "soft_tf_stmc1",
    ):
        assert v[key] == "disagrees", (key, v[key])
    # the block check fails at [CLS] only: partly
    assert v["block_every"] == "partly agrees"


def test_demo_logits_verdict_uses_the_numbers():
    run = synthetic_run(n_pairs=2, seq=10, analyses=False)
    close = {"score_baseline": -5.6510, "score_perturbed": 4.3895, "kind": "cross"}
    far = {"score_baseline": -5.60, "score_perturbed": 4.3892, "kind": "cross"}
    assert compare_all(run, close)[0].verdict == "agrees"
    assert compare_all(run, far)[0].verdict == "disagrees"


def test_a_different_model_is_said_plainly_and_judged_in_kind(tmp_path):
    run = synthetic_run(n_pairs=3, seq=10, n_layers=6, model="my/minilm-l6-cross")
    page = build_report(run, tmp_path, score_demo=False)
    text = page.read_text()
    assert (
        "Different model: this run used my/minilm-l6-cross (cross-encoder, 6 layers × 12 heads), not the "
        "paper&#x27;s cross-encoder/ms-marco-MiniLM-L-12-v2" in text
    )
    v = verdicts(json.loads((tmp_path / "numbers.json").read_text()))
    assert v["head_10_1"] == "not comparable"
    assert all(
        x in ("agrees in kind", "differs in kind", "partly agrees in kind", "not comparable", "not in this run")
        for x in v.values()
    ), v
    # planted heads 10.x wrap to layer 4 of 6 (the last two layers) with most of the effect
    assert v["scoring_heads"] == "agrees in kind"


def test_page_is_self_contained_with_hover_cells(agree_report):
    html = agree_report[1].read_text()
    assert not re.search(r"https?://|<link\b|\bsrc\s*=|@import|url\(", html, re.I)
    assert html.count("data:image/png;base64,") == len(re.findall(r"<figure ", html))
    # a hover title on the planted scoring head's cell
    assert re.search(r"<title>normalized effect 0\.1[0-9]{3} · layer 10 · head 1</title>", html)
    assert "token type Dinj</title>" in html
    # the circuit table links to figures that exist on the page
    links = set(re.findall(r'<tr id="head-10\.1">.*?</tr>', html, re.S)[0].split('href="#')[1:])
    targets = {x.split('"')[0] for x in links}
    assert targets and all(f'id="{t}"' in html for t in targets)


def test_malformed_analysis_is_named(tmp_path):
    run = synthetic_run(n_pairs=2, seq=10)
    run.analyses["linear_bm25"] = {"analysis": "linear_bm25", "test_pearson": "high"}
    with pytest.raises(ResultsError, match=r"analyses/linear_bm25\.json: malformed"):
        build_report(run, tmp_path, score_demo=False)
    run.analyses["linear_bm25"] = {"analysis": "linear_bm25", "test_pearson": 0.8, "bm25_test_pearson": 0.4}
    with pytest.raises(ResultsError, match=r"analyses/linear_bm25\.json: cannot draw.*test_predictions"):
        build_report(run, tmp_path, score_demo=False)
    assert not (tmp_path / "report.html").exists()


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    from jaxmech.cli import main

    assert main(["report", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.npz: no such results file or run directory" in err[0]


@pytest.fixture(scope="module")
def packaged_npz(tmp_path_factory, minilm_path):
    """A real `jaxmech patch` run of the packaged bi-encoder on two demo TFC1 pairs."""
    from jaxmech.cli import main

    d = tmp_path_factory.mktemp("patch")
    ds, out = d / "demo.jsonl", d / "r.npz"
    assert main(["dataset", "build", "--kind", "tfc1", "--source", "demo", "--limit", "2", "--out", str(ds)]) == 0
    assert (
        main(
            [
                "patch",
                "--model",
                "packaged",
                "--dataset",
                str(ds),
                "--family",
                "block_every",
                "--family",
                "path_to_score",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.mark.slow  # one real patch sweep of the packaged model (~15 s alone; a minute on a busy 2-core machine)
def test_report_of_a_real_patch_run(packaged_npz, capsys):
    from jaxmech.cli import main

    capsys.readouterr()
    assert main(["report", str(packaged_npz)]) == 0
    page = packaged_npz.parent / "r_report" / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    numbers = json.loads((page.parent / "numbers.json").read_text())
    assert numbers["run"]["kind"] == "bi" and numbers["run"]["n_layers"] == 6 and numbers["run"]["n_pairs"] == 2
    demo = numbers["demo_scores"]
    assert demo["kind"] == "bi" and demo["score_perturbed"] > demo["score_baseline"]  # " wellesley" appended
    v = verdicts(numbers)
    assert v["demo_logits"] == "not comparable" and v["linear_r"] == "not in this run"
    assert v["block_every"] == "not comparable"  # no query tokens in a bi-encoder's input
    assert "bi-encoder encodes the document without the query" in page.read_text()
    # resid_pre at the injected token in layer 0 restores the perturbed score (normalized effect ~1)
    block = [c for c in numbers["comparisons"] if c["key"] == "block_every"][0]
    assert block["values"]["resid_pre at Dinj, early layers (max)"] == pytest.approx(1.0, abs=0.25)
    top = numbers["families"]["path_to_score"]["top_heads"]
    assert len(top) == 10 and np.isfinite(top[0][1])


def test_analyses_folder_is_read_and_malformed_json_is_located(tmp_path):
    from test_plot import write_patch_npz

    npz = tmp_path / "r.npz"
    write_patch_npz(npz, single=False)
    folder = tmp_path / "analyses"
    folder.mkdir()
    run = synthetic_run(n_pairs=2, seq=10)
    (folder / "linear_bm25.json").write_text(json.dumps(run.analyses["linear_bm25"]))
    page = build_report(npz, tmp_path / "out", analyses=folder, score_demo=False)
    v = verdicts(json.loads((page.parent / "numbers.json").read_text()))
    assert v["linear_r"] == "agrees in kind"  # some/model is not the paper's; r 0.82 beats BM25 0.40 by > 0.1
    assert 'id="fig-linear_bm25"' in page.read_text()
    (folder / "soft_tf.json").write_text('{"analysis": "soft_tf",\n  "tfc2": [1, 2,]}')
    with pytest.raises(ResultsError, match=r"soft_tf\.json:2:17: malformed JSON"):
        build_report(npz, tmp_path / "out2", analyses=folder, score_demo=False)
    assert not (tmp_path / "out2" / "report.html").exists()


def test_an_analysis_of_another_model_is_flagged(tmp_path):
    run = synthetic_run(n_pairs=2, seq=10)
    run.analyses["idf_svd"] = {**run.analyses["idf_svd"], "model": "/models/other-model"}
    run.arrays = {"path_to_score": run.arrays["path_to_score"]}  # the other families' figures: only tests' time
    page = build_report(run, tmp_path, score_demo=False)
    numbers = json.loads((tmp_path / "numbers.json").read_text())
    assert numbers["run"]["warnings"] == [
        "analyses/idf_svd.json was computed on /models/other-model, not on this run's model "
        "cross-encoder/ms-marco-MiniLM-L-12-v2"
    ]
    assert 'class="notice warn">analyses/idf_svd.json was computed on /models/other-model' in page.read_text()
    assert "> **Warning:** analyses/idf_svd.json" in (tmp_path / "report.md").read_text()


def test_an_underdetermined_linear_fit_is_not_judged():
    run = synthetic_run(n_pairs=2, seq=10)
    run.analyses["linear_bm25"] = {**run.analyses["linear_bm25"], "n_train": 69, "n_features": 135}
    linear = {c.key: c for c in compare_all(run)}["linear_r"]
    assert linear.verdict == "not comparable" and "135 features for 69 training pairs" in linear.criterion
    run.analyses["linear_bm25"]["n_train"] = 8000
    assert {c.key: c for c in compare_all(run)}["linear_r"].verdict == "agrees"
