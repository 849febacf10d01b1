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


def test_a_misspelt_option_is_refused_before_the_model_is_loaded():
    """Keywords are checked against the analysis' Options: one line naming the analysis, the key, the known keys."""
    from jaxmech.analysis.registry import analyze

    with pytest.raises(ValueError) as err:
        analyze("circuit", "/nonexistent/model", source="demo", tresholds={"matching": 0.1})
    msg = str(err.value)
    assert msg.startswith("analysis 'circuit': unknown option 'tresholds' (known: source, dataset, qids,")
    assert "thresholds" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="analysis 'edges': unknown option 'step'"):
        ANALYSES["edges"]("/nonexistent/model", step=3)


def test_every_command_argument_is_an_option_of_its_analysis():
    """The command builds each analysis' Options from its arguments (defaults included): no argument is dropped."""
    import argparse

    from jaxmech.cli.analyze import options_from_args, register

    parser = argparse.ArgumentParser(prog="jaxmech")
    register(parser.add_subparsers(dest="command", required=True))
    for name, entry in ANALYSES.items():
        args = parser.parse_args(["analyze", name.replace("_", "-"), "--model", "m", "--out", "x.json"])
        assert isinstance(options_from_args(args), entry.options), name
    args = parser.parse_args(["analyze", "circuit", "--model", "m", "--out", "x.json", "--threshold", "matching=0.2",
                              "--receiver-inputs", "q"])
    opts = options_from_args(args)
    assert opts.thresholds == {"matching": 0.2} and opts.receiver_inputs == ["q"] and opts.limit == 200


def test_the_command_refuses_a_misspelt_option(capsys):
    with pytest.raises(SystemExit) as err:
        main(["analyze", "circuit", "--model", "m", "--out", "x.json", "--source", "demo", "--tresholds", "a=1"])
    assert err.value.code == 2 and "unrecognized arguments: --tresholds" in capsys.readouterr().err


def test_a_sweep_config_with_a_misspelt_analysis_option_fails_when_read(tmp_path):
    """``[[analyses]] options`` are checked when the config is read, before any compute; steps that are not
    analyses (``summary``) keep their options."""
    from jaxmech.sweeps.config import ConfigError, load_sweep_config

    base = ('[run]\nname = "x"\n[[datasets]]\nkind = "tfc1"\nsource = "demo"\nsample = 4\n'
            '[[families]]\nname = "block_every"\n[[analyses]]\nname = "summary"\noptions = { top_k = 3 }\n')
    good = tmp_path / "good.toml"
    good.write_text(base + '[[analyses]]\nname = "soft_tf"\noptions = { source = "demo", n_heads = 2 }\n')
    assert [a.name for a in load_sweep_config(good).analyses] == ["summary", "soft_tf"]
    bad = tmp_path / "bad.toml"
    bad.write_text(base + '[[analyses]]\nname = "soft_tf"\noptions = { source = "demo", n_head = 2 }\n')
    with pytest.raises(ConfigError) as err:
        load_sweep_config(bad)
    assert str(err.value).startswith(f"{bad}: [[analyses]][1]: analysis 'soft_tf': unknown option 'n_head' (known:")
    assert "n_heads" in str(err.value) and "\n" not in str(err.value)


def test_option_choices_are_the_analyses_own_and_refuse_other_values():
    """The Options' choices (kept JAX-free) equal the analysis modules' constants; a value outside them is refused."""
    from jaxmech.analysis import editing, linear_bm25, soft_tf
    from jaxmech.analysis import options as opt
    from jaxmech.data.idf import IDF_FORMULAS
    from jaxmech.patching.edge_attribution import METHODS

    assert opt.SoftTfOptions.choices["experiments"] == soft_tf.EXPERIMENTS
    assert opt.EditIdfOptions.choices["methods"] == editing.METHODS
    assert opt.LinearBm25Options.choices["split"] == linear_bm25.SPLITS
    assert set(opt.LinearBm25Options.choices["bm25_fallback"]) == {*linear_bm25.BM25_FALLBACKS, "none"}
    assert opt.IdfSvdOptions.choices["formula"] == IDF_FORMULAS
    assert opt.EdgesOptions.choices["method"] == ("exact", *METHODS)
    from jaxmech.analysis.edges import ABLATIONS

    assert opt.EdgesOptions.choices["ablation"] == ABLATIONS
    with pytest.raises(ValueError, match=r"^analysis 'circuit': method='fast'; choose from exact, attribution$"):
        get_analysis("circuit").parse({"method": "fast"})
    with pytest.raises(ValueError, match=r"analysis 'soft_tf': experiments=\['tfc2', 'tfc9'\]"):
        opt.SoftTfOptions(experiments=["tfc2", "tfc9"])


def test_analysis_options_are_checked_without_importing_jax():
    code = ("import sys; from jaxmech.analysis.registry import check_options\n"
            "try:\n    check_options('linear_bm25', {'n_head': 2})\nexcept ValueError as e:\n    print(e)\n"
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.splitlines()[-1] == "False", out
    assert "analysis 'linear_bm25': unknown option 'n_head'" in out.stdout


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

    from jaxmech.analysis.registry import analyze

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
