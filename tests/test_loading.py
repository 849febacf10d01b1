"""Loading and conversion: strictness, bad inputs, the converted-parameter cache, hub ids, round trips."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PARITY_ATOL, TINY_ODD, hf_checkpoint
from safetensors.numpy import load_file, save_file

from jaxmech import (
    ConversionError,
    EncoderConfig,
    ModelNotFoundError,
    UnsupportedConfigError,
    WeightsError,
    from_hf_state_dict,
    load_model,
    save_pretrained,
    to_hf_state_dict,
)
from jaxmech.hf.loading import flat_params


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "jaxmech-cache"
    monkeypatch.setenv("JAXMECH_CACHE", str(d))
    return d


def _state(path):
    return load_file(str(path / "model.safetensors"))


def _cfg(path):
    return EncoderConfig.from_hf_config(json.loads((path / "config.json").read_text()))


def test_conversion_consumes_every_tensor_and_round_trips_exactly(tiny_cross_dir):
    state = _state(tiny_cross_dir)
    model, report = from_hf_state_dict(state, _cfg(tiny_cross_dir), "cross")
    assert set(report.consumed) | set(report.ignored) == set(state)
    back = to_hf_state_dict(model)
    assert set(back) == set(state) - set(report.ignored)
    for k, v in back.items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


def test_unexpected_missing_and_misshapen_tensors_are_all_listed(tiny_cross_dir):
    state = dict(_state(tiny_cross_dir))
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    del state["bert.encoder.layer.2.output.dense.bias"]
    state["bert.embeddings.word_embeddings.weight"] = state["bert.embeddings.word_embeddings.weight"][:-1]
    with pytest.raises(ConversionError) as err:
        from_hf_state_dict(state, _cfg(tiny_cross_dir), "cross", source="x.safetensors")
    msg = str(err.value)
    assert "x.safetensors: 3 problem(s)" in msg
    assert "rotary.weight: unexpected tensor" in msg
    assert "encoder.layer.2.output.dense.bias: missing" in msg
    assert "word_embeddings.weight: converted shape" in msg


def test_encoder_only_checkpoint_needs_an_explicit_head_seed(tmp_path):
    path = hf_checkpoint(tmp_path, TINY_ODD, arch="model")
    with pytest.raises(ConversionError, match="classifier.weight: missing"):
        load_model(path, kind="cross", use_cache=False)
    lm = load_model(path, kind="cross", init_missing_head_seed=3, use_cache=False)
    assert lm.report.initialized == ["classifier.W", "classifier.b"]
    assert "pooler.dense.weight" in lm.report.consumed
    again = load_model(path, kind="cross", init_missing_head_seed=3, use_cache=False)
    np.testing.assert_array_equal(again.model.classifier.W[...], lm.model.classifier.W[...])


def test_unsupported_config_options_are_refused_with_a_list():
    hf = dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              position_embedding_type="relative_key", is_decoder=True, hidden_act="silu")
    with pytest.raises(UnsupportedConfigError) as err:
        EncoderConfig.from_hf_config(hf, source="cfg.json")
    msg = str(err.value)
    assert msg.startswith("cfg.json:")
    for what in ("position_embedding_type='relative_key'", "is_decoder=True", "hidden_act='silu'"):
        assert what in msg
    with pytest.raises(UnsupportedConfigError, match="model_type='deberta-v2'"):
        EncoderConfig.from_hf_config(dict(hf, model_type="deberta-v2", position_embedding_type="absolute",
                                          is_decoder=False, hidden_act="gelu"))


def test_folder_without_weights_is_an_error_naming_it(tmp_path, tiny_cross_dir):
    shutil.copy(tiny_cross_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match=f"{tmp_path}: no weights found"):
        load_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_truncated_safetensors_is_an_error_naming_the_file(tmp_path, tiny_cross_dir):
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_cross_dir / f, tmp_path / f)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="model.safetensors: cannot read safetensors file"):
        load_model(tmp_path, use_cache=False)


def test_sharded_index_with_missing_shard_is_an_error(tmp_path, tiny_cross_dir):
    shutil.copy(tiny_cross_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    with pytest.raises(WeightsError, match="shard-1.safetensors"):
        load_model(tmp_path)


@pytest.mark.torch
def test_pytorch_bin_checkpoints_load_with_torch(tmp_path, tiny_cross_dir):
    torch = pytest.importorskip("torch")
    shutil.copy(tiny_cross_dir / "config.json", tmp_path / "config.json")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in _state(tiny_cross_dir).items()},
               tmp_path / "pytorch_model.bin")
    a = load_model(tmp_path, use_cache=False)
    b = load_model(tiny_cross_dir, use_cache=False)
    for k, v in flat_params(a.model).items():
        np.testing.assert_array_equal(v, flat_params(b.model)[k])


def test_pytorch_bin_without_torch_says_so(tmp_path, tiny_cross_dir, monkeypatch):
    import builtins

    shutil.copy(tiny_cross_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    real_import = builtins.__import__

    def no_torch(name, *a, **kw):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="pytorch_model.bin is a PyTorch pickle; reading it needs torch"):
        load_model(tmp_path, use_cache=False)


def test_converted_parameters_are_cached_and_invalidated(tmp_path, tiny_cross_dir, cache_dir):
    folder = tmp_path / "m"
    shutil.copytree(tiny_cross_dir, folder)
    first = load_model(folder)
    assert not first.from_cache and list((cache_dir / "converted").glob("*.safetensors"))
    second = load_model(folder)
    assert second.from_cache
    for k, v in flat_params(first.model).items():
        np.testing.assert_array_equal(v, flat_params(second.model)[k])
    # new weights (different size/mtime) are converted afresh
    state = _state(folder)
    state["classifier.bias"] = state["classifier.bias"] + 1
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    third = load_model(folder)
    assert not third.from_cache
    np.testing.assert_allclose(third.model.classifier.b[...], first.model.classifier.b[...] + 1, rtol=0, atol=0)


def test_hub_id_that_is_not_cached_fails_promptly_offline(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        load_model("cross-encoder/ms-marco-MiniLM-L-12-v2")
    assert time.perf_counter() - t < 10
    msg = str(err.value)
    assert "cross-encoder/ms-marco-MiniLM-L-12-v2" in msg and "local folder" in msg


def test_hub_id_resolves_through_the_huggingface_cache(monkeypatch, tmp_path, tiny_cross_dir):
    """A snapshot laid out as huggingface_hub stores it loads by id, offline."""
    hub = tmp_path / "hub"
    repo = hub / "models--someone--tiny-cross"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in tiny_cross_dir.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub), raising=False)
    lm = load_model("someone/tiny-cross", use_cache=False)
    assert lm.kind == "cross" and lm.folder.resolve() == snap.resolve()


@pytest.mark.torch
def test_saved_folder_loads_in_transformers_with_identical_logits(tmp_path, tiny_model):
    torch = pytest.importorskip("torch")
    from transformers import BertForSequenceClassification

    out = save_pretrained(tiny_model, tmp_path / "export")
    hf = BertForSequenceClassification.from_pretrained(out).eval()
    rng = np.random.RandomState(0)
    ids = rng.randint(1, TINY_ODD["vocab_size"], (2, 10))
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    tt = np.zeros_like(ids)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(tt)).logits.numpy()
    ours = np.asarray(tiny_model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask)).logits)
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)
    with pytest.raises(FileExistsError):
        save_pretrained(tiny_model, out)
    assert not list(tmp_path.glob("export.tmp-*")), "no half-written folder is left behind"


def test_bi_encoder_settings_are_read_from_the_folder(minilm_path):
    lm = load_model(minilm_path, use_cache=False)
    assert lm.kind == "bi"
    p = lm.model.pooling
    assert (p.mode, p.normalize, p.similarity) == ("mean", True, "cosine")
    assert set(lm.report.ignored) == {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


def test_hub_ids_with_dots_are_looked_up_as_ids(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        load_model("someone/reranker-v2.5")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model("./local/model-v2.5")


def test_cached_load_keeps_the_conversion_report(tmp_path, cache_dir):
    """A randomly initialised head is still reported when the parameters come from the cache (issue 13.9)."""
    path = hf_checkpoint(tmp_path / "enc", TINY_ODD, arch="model")
    first = load_model(path, kind="cross", init_missing_head_seed=3)
    second = load_model(path, kind="cross", init_missing_head_seed=3)
    assert not first.from_cache and second.from_cache
    assert first.report.initialized == second.report.initialized == ["classifier.W", "classifier.b"]
    assert second.report.consumed == first.report.consumed and second.report.ignored == first.report.ignored
    # an entry without a stored report (an older cache) is converted afresh, never read with an empty report
    (entry,) = (cache_dir / "converted").glob("*.safetensors")
    save_file(load_file(str(entry)), str(entry))
    third = load_model(path, kind="cross", init_missing_head_seed=3)
    assert not third.from_cache and third.report.initialized == ["classifier.W", "classifier.b"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_folders_and_cache_entries_respect_the_umask(tmp_path, tiny_cross_dir, cache_dir, umask):
    """Exported folders and cached parameters get the usual permissions under the umask, not the private ones
    of temporary files (issue 13.16)."""
    import os
    import stat

    old = os.umask(umask)
    try:
        lm = load_model(tiny_cross_dir)
        out = save_pretrained(lm.model, tmp_path / "export", tokenizer=lm.tokenizer)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(out) == 0o777 & ~umask
    assert {mode(f) for f in out.iterdir() if f.is_file()} == {0o666 & ~umask}
    assert {mode(f) for f in (cache_dir / "converted").glob("*.safetensors")} == {0o666 & ~umask}
