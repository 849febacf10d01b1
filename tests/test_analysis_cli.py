"""``jaxmech analyze``: argument errors fail fast with exit code 2; the registry resolves every analysis; the
analyses run on the shared data and the distilled cross-encoder (skipped with a reason when absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from jaxmech.analysis import ANALYSES, get_analysis
from jaxmech.cli.analyze import main

DISTILLED = REPO.parent / "shared" / "models" / "minilm6-ce-distilled"


def test_registry_names_every_analysis():
    assert set(ANALYSES) == {"circuit", "soft_tf", "idf_svd", "edit_idf", "linear_bm25", "edges"}
    assert get_analysis("soft-tf") is ANALYSES["soft_tf"]
    with pytest.raises(KeyError, match="unknown analysis"):
        get_analysis("attention")


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["soft-tf", "--model", "m", "--out", "x.json"], "needs --source"),
        (
            ["circuit", "--model", "m", "--out", "x.json", "--source", "shared", "--qids", "/nonexistent/q.txt"],
            "--qids /nonexistent/q.txt: no such file",
        ),
        (["linear-bm25", "--model", "m", "--out", "x.json", "--source", "/nonexistent/dir"], "--source /nonexistent"),
        (["circuit", "--model", "m", "--out", "x.json", "--source", "demo", "--threshold", "scoring"], "ROLE=NUMBER"),
    ],
)
def test_argument_errors_exit_2_before_loading(argv, msg, capsys):
    assert main(["analyze", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_main_command_has_analyze():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "jaxmech.cli", "analyze", "--help"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert out.returncode == 0
    for name in ("circuit", "soft-tf", "idf-svd", "edit-idf", "linear-bm25"):
        assert name in out.stdout


@pytest.fixture(scope="module")
def distilled(shared_data):
    if not (DISTILLED / "model.safetensors").exists():
        pytest.skip(f"the distilled cross-encoder is not at {DISTILLED}")
    from jaxmech.hf.loading import load_model

    return load_model(DISTILLED)


@pytest.mark.slow
def test_soft_tf_on_the_distilled_model(distilled, shared_data, tmp_path):
    """The detector's top matching head saturates: attention grows with TF and its increments shrink."""
    import numpy as np

    from jaxmech.analysis.steps import analyze

    out = tmp_path / "soft_tf.json"
    res = analyze(
        "soft_tf",
        distilled,
        out=out,
        source=str(shared_data),
        experiments=["tfc2", "stmc1"],
        limit=12,
        docs_per_query=1,
        n_heads=2,
    )
    back = json.loads(out.read_text())
    assert back["analysis"] == "soft_tf" and back["tfc2"]["x"] == [0, 1, 2, 3, 4, 5]
    top = res["matching_heads"][0]
    curve = np.asarray(res["tfc2"]["heads"][top]["mean"])
    assert curve[0] == 0 and np.all(np.diff(curve) > -0.02) and curve[1] - curve[0] > curve[5] - curve[4]
    stm = res["stmc1"]["heads"][top]["mean"]
    assert stm[2] > stm[1] > stm[0]  # exact > synonym > filler


@pytest.mark.slow
def test_cli_idf_svd_on_the_packaged_model(minilm_path, tmp_path):
    out = tmp_path / "idf.json"
    coll = tmp_path / "c.tsv"
    coll.write_text(
        "".join(
            f"{i}\t{t}\n"
            for i, t in enumerate(
                ["the moon causes tides", "the cat sleeps", "rare zyzzyva words", "the the a an of"] * 3
            )
        )
    )
    assert (
        main(
            [
                "analyze",
                "idf-svd",
                "--model",
                str(minilm_path),
                "--collection",
                str(coll),
                "--out",
                str(out),
                "--n-components",
                "5",
            ]
        )
        == 0
    )
    res = json.loads(Path(out).read_text())
    assert res["analysis"] == "idf_svd" and len(res["components"]) == 5
    assert res["u0_mean_cosine"] == pytest.approx(0.78, abs=0.01)  # all-MiniLM-L6-v2's confound (issue 10)
