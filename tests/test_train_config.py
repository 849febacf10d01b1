"""The TOML training config: strict reading (missing file, unknown tables and keys, wrong types, bad choices
are errors naming the file and the key), fingerprints, and the repository's example configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxmech.train.config import ConfigError, TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("train_*.toml"))

MINIMAL = """
[run]
name = "t"
[data]
source = "demo"
[teacher]
kind = "bm25"
[train]
steps = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return p


def test_minimal_config_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.run.name == "t" and cfg.train.steps == 3 and cfg.optim.trainable == "all"
    assert cfg.out_dir == Path("runs/t")
    assert cfg.source.endswith("cfg.toml")


def test_missing_config_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.toml: invalid TOML"):
        load_config(write(tmp_path, "[run\nname = 1"))


def test_unknown_key_is_an_error_naming_the_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.toml: \[optim\] lrr: unknown key \(known: .*lr.*\)"):
        load_config(write(tmp_path, MINIMAL + "[optim]\nlrr = 1e-3\n"))


def test_unknown_table_is_an_error_naming_the_table(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.toml: \[optimiser\]: unknown table"):
        load_config(write(tmp_path, MINIMAL + "[optimiser]\nlr = 1e-3\n"))


def test_unknown_random_model_field_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[model\.random\] unknown key\(s\) \['n_layer'\]"):
        load_config(write(tmp_path, MINIMAL + "[model.random]\nn_layer = 2\n"))


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[train\] steps: expected int, got str"):
        load_config(write(tmp_path, MINIMAL.replace("steps = 3", 'steps = "3"')))
    with pytest.raises(ConfigError, match=r"\[optim\] lr: expected float, got bool"):
        load_config(write(tmp_path, MINIMAL + "[optim]\nlr = true\n"))


def test_value_outside_its_choices_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[loss\].*kind='listnet'; choose one of"):
        load_config(write(tmp_path, MINIMAL + '[loss]\nkind = "listnet"\n'))


def test_required_keys_are_enforced(tmp_path):
    with pytest.raises(ConfigError, match=r"\[train\]: missing table"):
        load_config(write(tmp_path, '[run]\nname = "t"\n'))
    with pytest.raises(ConfigError, match=r"\[run\].*name is required"):
        load_config(write(tmp_path, MINIMAL.replace('name = "t"', "seed = 1")))


def test_shared_data_without_a_teacher_is_refused(tmp_path):
    text = MINIMAL.replace('source = "demo"', 'source = "shared"').replace('kind = "bm25"', 'kind = "none"')
    with pytest.raises(ConfigError, match="no relevance labels"):
        load_config(write(tmp_path, text))


def test_fingerprint_ignores_bookkeeping_but_not_the_trajectory(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.replace(run={"out_dir": "elsewhere"}, train={"log_every": 7}).fingerprint() == cfg.fingerprint()
    assert cfg.replace(optim={"lr": 1e-3}).fingerprint() != cfg.fingerprint()
    assert cfg.replace(run={"seed": 1}).fingerprint() != cfg.fingerprint()


def test_replace_is_checked_like_a_file(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.replace(train={"stepz": 2})
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_repository_configs_load(path):
    cfg = load_config(path)
    assert cfg.train.steps >= 1
