"""ELECTRA, RoBERTa and XLM-RoBERTa: strict conversion and its inverse through ``transformers``, exact shapes of
the public rerankers, and fp32 parity with ``transformers`` on the logits and every exposed activation, on odd
tiny shapes and on the real models' shapes (random weights), padded batches included."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from arch_checkpoints import (
    EXTRA_SITES,
    REAL_SHAPES,
    TINY_ARCHS,
    arch_checkpoint,
    build_hf_model,
    hf_all_activations,
    hf_config,
    padded_batch,
)
from conftest import PARITY_ATOL
from test_parity import SITES_COMPARED

from jaxmech.config import EncoderConfig, UnsupportedConfigError
from jaxmech.hf.convert import ConversionError, from_hf_state_dict, hf_shapes, to_hf_state_dict
from jaxmech.hf.loading import load_model, save_pretrained
from jaxmech.sites import MASK_VALUE

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ALL_SITES = SITES_COMPARED + EXTRA_SITES
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _state(hf_model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in hf_model.state_dict().items() if not k.endswith(BUFFERS)}


def check_all_sites(case: str, hf_model, jm_model, ids, tt, mask) -> dict[str, float]:
    """Asserts parity on every site of `ALL_SITES` and the logits; returns the max abs diffs."""
    ref = hf_all_activations(hf_model, ids, tt, mask, jm_model.cfg.eps)
    out = jm_model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask), capture=ALL_SITES)
    ours = dict(out.cache, logits=out.logits)
    # HF computes arange position embeddings once for the batch ([1, pos, d]); ours are per example
    ref["pos_embed"] = np.broadcast_to(ref["pos_embed"], (len(ids), *ref["pos_embed"].shape[1:]))
    allowed = ref.pop("allowed")
    scores = np.asarray(ours["attn_scores"])
    assert (scores[~allowed] == MASK_VALUE).all(), f"{case}: masked keys must hold MASK_VALUE"
    ours["attn_scores"] = np.where(allowed, scores, np.nan)
    diffs = {}
    for site in (*ALL_SITES, "logits"):
        got = np.asarray(ours[site])
        assert got.shape == ref[site].shape, f"{case}: {site} shape {got.shape} != {ref[site].shape}"
        np.testing.assert_allclose(got, ref[site], atol=PARITY_ATOL, rtol=0, equal_nan=site == "attn_scores",
                                   err_msg=f"{case}: {site}")
        diffs[site] = float(np.nanmax(np.abs(got - ref[site])))
    print(f"\n{case}: max abs diffs " + json.dumps({k: f"{v:.1e}" for k, v in diffs.items()}))
    return diffs


@pytest.fixture(scope="module", params=sorted(TINY_ARCHS))
def tiny_arch(request, tmp_path_factory):
    """(name, HF folder, HF model) of a tiny random checkpoint with odd sizes and large weights."""
    from transformers import AutoModelForSequenceClassification

    model_type, sizes = TINY_ARCHS[request.param]
    path = arch_checkpoint(tmp_path_factory.mktemp(request.param), model_type, sizes, seed=3, init=0.2)
    hf = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    return request.param, path, hf


def test_tiny_random_checkpoint_matches_hf_on_every_site_of_a_padded_batch(tiny_arch):
    name, path, hf = tiny_arch
    lm = load_model(path, use_cache=False)
    cfg = lm.model.cfg
    assert cfg.model_type == TINY_ARCHS[name][0] and lm.kind == "cross"
    ids, tt, mask = padded_batch(cfg.d_vocab, [17, 9, 4], 17, pad_id=cfg.pad_token_id,
                                 two_types=cfg.n_token_types == 2)
    check_all_sites(f"tiny {name}", hf, lm.model, ids, tt, mask)


def test_positions_of_padding_offset_models_start_after_the_pad_id(tiny_arch):
    """RoBERTa-family position ids: pad + 1, pad + 2, ... on real tokens, pad on padding; plain arange else."""
    name, path, _ = tiny_arch
    model = load_model(path, use_cache=False).model
    pad = model.cfg.pad_token_id
    tokens = jnp.asarray([5, 6, 7, pad, pad])
    got = np.asarray(model.embed.position_ids(tokens)).tolist()
    expected = [pad + 1, pad + 2, pad + 3, pad, pad] if model.cfg.positions == "padding_offset" else [0, 1, 2, 3, 4]
    assert got == expected


def test_conversion_round_trips_through_transformers_bit_for_bit(tiny_arch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    name, _, hf = tiny_arch
    state = _state(hf)
    model, report = from_hf_state_dict(state, EncoderConfig.from_hf_config(hf.config), "cross")
    assert sorted(report.consumed) == sorted(state) and not report.ignored and not report.initialized
    back = to_hf_state_dict(model)
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        assert np.array_equal(back[k], v), f"{name}: {k} changed in the round trip"
    folder = save_pretrained(model, tmp_path / "saved")
    again, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True,
                                                                    attn_implementation="eager")
    assert type(again) is type(hf)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, tt, mask = padded_batch(model.cfg.d_vocab, [11, 6], 11, pad_id=model.cfg.pad_token_id,
                                 two_types=model.cfg.n_token_types == 2, seed=1)
    inputs = dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt), attention_mask=torch.tensor(mask))
    with torch.no_grad():
        assert torch.equal(again.eval()(**inputs).logits, hf(**inputs).logits)


@pytest.mark.parametrize("model_type", ["electra", "roberta", "xlm-roberta"])
def test_multilabel_heads_match_hf(tmp_path, model_type):
    from transformers import AutoModelForSequenceClassification

    sizes = TINY_ARCHS[model_type][1]
    path = arch_checkpoint(tmp_path, model_type, sizes, seed=5, num_labels=3, init=0.1)
    hf = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    lm = load_model(path, use_cache=False, score_label=2)
    assert lm.model.cfg.num_labels == 3
    ids, tt, mask = padded_batch(lm.model.cfg.d_vocab, [9, 13], 13, pad_id=lm.model.cfg.pad_token_id,
                                 two_types=model_type == "electra", seed=2)
    check_all_sites(f"tiny {model_type} 3 labels", hf, lm.model, ids, tt, mask)
    out = lm.model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(out.score), np.asarray(out.logits)[:, 2])


@pytest.mark.parametrize("model_type", ["electra", "xlm-roberta"])
def test_bare_trunk_loads_as_a_bi_encoder_matching_hf(tmp_path, model_type):
    from transformers import AutoModel

    sizes = TINY_ARCHS["electra-proj" if model_type == "electra" else model_type][1]
    hf = build_hf_model(model_type, sizes, seed=2, init=0.2, bare=True)
    model, report = from_hf_state_dict(_state(hf), EncoderConfig.from_hf_config(hf.config), "bi")
    ids, tt, mask = padded_batch(model.cfg.d_vocab, [12, 5], 12, pad_id=model.cfg.pad_token_id,
                                 two_types=model_type == "electra", seed=3)
    ref = hf_all_activations(hf, ids, tt, mask, model.cfg.eps)
    out = model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask), capture=(*SITES_COMPARED, "pooled"))
    pooled = (ref["normalized_resid_post"][:, -1] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)  # mean pooling + Normalize, the default
    np.testing.assert_allclose(np.asarray(out.cache["pooled"]), pooled, atol=PARITY_ATOL, rtol=0)
    for site in SITES_COMPARED:
        np.testing.assert_allclose(np.asarray(out.cache[site]), ref[site], atol=PARITY_ATOL, rtol=0, err_msg=site)
    hf.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), type(hf))
    if model_type == "xlm-roberta":  # RobertaModel carries a pooler that bi-encoders do not use
        assert set(report.ignored) == {"pooler.dense.weight", "pooler.dense.bias"}


def test_encoder_only_roberta_checkpoint_gets_a_seeded_head_and_its_pooler_is_ignored():
    hf = build_hf_model("xlm-roberta", TINY_ARCHS["xlm-roberta"][1], seed=4, bare=True)
    cfg = EncoderConfig.from_hf_config(hf.config)
    with pytest.raises(ConversionError, match="classifier.dense.weight: missing"):
        from_hf_state_dict(_state(hf), cfg, "cross", source="enc")
    model, report = from_hf_state_dict(_state(hf), cfg, "cross", init_missing_head_seed=1)
    assert sorted(report.initialized) == ["classifier.W", "classifier.b", "pooler.W", "pooler.b"]
    assert set(report.ignored) == {"pooler.dense.weight", "pooler.dense.bias"}


def test_bad_checkpoints_are_refused_naming_the_tensor():
    hf = build_hf_model("electra", TINY_ARCHS["electra-proj"][1], seed=1)
    cfg = EncoderConfig.from_hf_config(hf.config)
    state = _state(hf)
    extra = dict(state, **{"electra.encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"electra\.encoder\.layer\.0\.attention\.self\.rotary\.weight: "
                                              r"unexpected tensor"):
        from_hf_state_dict(extra, cfg, "cross", source="ckpt")
    missing = {k: v for k, v in state.items() if k != "electra.embeddings_project.weight"}
    with pytest.raises(ConversionError, match="embeddings_project.weight: missing"):
        from_hf_state_dict(missing, cfg, "cross")
    wrong = dict(state, **{"classifier.out_proj.weight": np.zeros((1, 29), np.float32)})
    with pytest.raises(ConversionError, match="classifier.out_proj.weight"):
        from_hf_state_dict(wrong, cfg, "cross")
    ignored = dict(state, **{"discriminator_predictions.dense.weight": np.zeros((30, 30), np.float32)})
    assert "discriminator_predictions.dense.weight" in from_hf_state_dict(ignored, cfg, "cross")[1].ignored


def test_unsupported_options_are_refused_by_name():
    base = hf_config("roberta", TINY_ARCHS["roberta"][1]).to_dict()
    with pytest.raises(UnsupportedConfigError) as err:
        EncoderConfig.from_hf_config(dict(base, position_embedding_type="relative_key_query", embedding_size=16,
                                          is_decoder=True), source="roberta/config.json")
    msg = str(err.value)
    assert msg.startswith("roberta/config.json:")
    for what in ("position_embedding_type='relative_key_query'", "embedding_size=16", "is_decoder=True"):
        assert what in msg
    for model_type in ("modernbert", "deberta-v2", "camembert"):
        with pytest.raises(UnsupportedConfigError, match=f"model_type='{model_type}'"):
            EncoderConfig.from_hf_config(dict(base, model_type=model_type))
    with pytest.raises(UnsupportedConfigError, match="positions='rotary'"):
        EncoderConfig(positions="rotary")


def test_config_round_trips_through_its_hf_dict():
    for model_type, sizes in TINY_ARCHS.values():
        cfg = EncoderConfig.from_hf_config(hf_config(model_type, sizes))
        assert EncoderConfig.from_hf_config(cfg.to_hf_config()) == cfg
        assert cfg.max_length == 48  # ELECTRA: n_ctx 48; RoBERTa-family: n_ctx 50 less pad_token_id + 1


@pytest.mark.parametrize("name", sorted(REAL_SHAPES))
def test_real_reranker_shapes_match_transformers_tensor_for_tensor(name):
    """Every tensor of the public model's ``*ForSequenceClassification`` (built on the meta device from its
    config values, nothing allocated) has the shape jaxmech's key map expects, and the parameter counts agree."""
    from transformers import AutoModelForSequenceClassification

    model_type, sizes = REAL_SHAPES[name]
    cfg_hf = hf_config(model_type, sizes)
    with torch.device("meta"):
        hf = AutoModelForSequenceClassification.from_config(cfg_hf)
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items() if not k.endswith(BUFFERS)}
    cfg = EncoderConfig.from_hf_config(cfg_hf)
    assert hf_shapes(cfg) == theirs
    assert cfg.n_params == sum(p.numel() for p in hf.parameters())
    assert cfg.max_length == 512 if name != "BAAI/bge-reranker-v2-m3" else cfg.max_length == 8192


def _real_shape_parity(name, tokens_per_pair=(37, 21, 8)):
    model_type, sizes = REAL_SHAPES[name]
    hf = build_hf_model(model_type, sizes, seed=7)
    model, _ = from_hf_state_dict(_state(hf), EncoderConfig.from_hf_config(hf.config), "cross", source=name)
    cfg = model.cfg
    ids, tt, mask = padded_batch(cfg.d_vocab, list(tokens_per_pair), max(tokens_per_pair),
                                 pad_id=cfg.pad_token_id, two_types=cfg.n_token_types == 2, seed=4)
    hf.set_attn_implementation("eager")
    check_all_sites(f"{name} shapes, random", hf, model, ids, tt, mask)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cross-encoder/ms-marco-electra-base", "BAAI/bge-reranker-base",
                                  "cross-encoder/stsb-roberta-base"])
def test_real_shaped_random_checkpoint_matches_hf(name):
    _real_shape_parity(name)


@pytest.mark.slow
def test_bge_reranker_v2_m3_shaped_random_checkpoint_matches_hf():
    """568M parameters (~7 GB of host memory while both copies exist)."""
    _real_shape_parity("BAAI/bge-reranker-v2-m3", (29, 12))


@pytest.mark.parametrize("name", ["cross-encoder/ms-marco-electra-base", "BAAI/bge-reranker-base"])
def test_full_width_attn_scores_and_result_match_hf(name):
    """The real rerankers' per-layer shapes (768 wide, 12 heads of 64, 3072 MLP) in a two-layer random model
    with a small vocabulary: every site, ``attn_scores`` and ``result`` included, on a padded batch, in a few
    seconds (the full-depth, full-vocabulary checks are the slow tests above: ~40 s each on two CPU cores)."""
    model_type, sizes = REAL_SHAPES[name]
    sizes = dict(sizes, num_hidden_layers=2, vocab_size=301)
    hf = build_hf_model(model_type, sizes, seed=7)
    model, _ = from_hf_state_dict(_state(hf), EncoderConfig.from_hf_config(hf.config), "cross", source=name)
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (768, 12, 64, 3072)
    ids, tt, mask = padded_batch(cfg.d_vocab, [37, 21, 8], 37, pad_id=cfg.pad_token_id,
                                 two_types=cfg.n_token_types == 2, seed=4)
    hf.set_attn_implementation("eager")
    diffs = check_all_sites(f"{name} width, 2 layers", hf, model, ids, tt, mask)
    assert {"attn_scores", "result"} <= set(diffs)


@pytest.mark.parametrize("name", sorted(REAL_SHAPES))
def test_full_size_attn_scores_and_result_have_the_real_shapes(name):
    """At the real models' full size, traced abstractly (nothing allocated): the shapes of ``attn_scores``,
    ``pattern`` and ``result`` on a padded batch."""
    import jax
    from flax import nnx

    from jaxmech.hf.convert import build_model

    model_type, sizes = REAL_SHAPES[name]
    cfg = EncoderConfig.from_hf_config(hf_config(model_type, sizes))
    ids = jax.ShapeDtypeStruct((3, 37), jnp.int32)

    def forward(ids):
        model = build_model(cfg)
        return model(ids, jnp.zeros_like(ids), jnp.ones_like(ids), capture=("attn_scores", "pattern", "result"))

    out = nnx.eval_shape(forward, ids)
    L, H = cfg.n_layers, cfg.n_heads
    assert out.cache["attn_scores"].shape == out.cache["pattern"].shape == (3, L, H, 37, 37)
    assert out.cache["result"].shape == (3, L, 37, H, cfg.d_model)
    assert out.logits.shape == (3, 1)
