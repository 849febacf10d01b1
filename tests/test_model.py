"""The forward: activation identities, static capture, functional transforms, full-size shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL
from flax import nnx

from jaxmech import MINILM_L6_H384, MINILM_L12_H384, EncoderConfig, UnknownSiteError, build_model, parse_tl_name
from jaxmech.models.bert import BiEncoder, CrossEncoder, PoolingConfig
from jaxmech.sites import LAYER_SITES, SITES, get_site, site_table_markdown

IDENTITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 200, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    tt = np.zeros_like(ids)
    tt[:, 4:] = 1
    return jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask)


def test_every_site_is_captured_with_its_documented_shape(tiny_model, batch):
    cfg = tiny_model.cfg
    out = tiny_model(*batch, capture="all")
    dims = {"pos": 9, "query_pos": 9, "key_pos": 9, "d_model": cfg.d_model, "head_index": cfg.n_heads,
            "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "one": 1, "n_labels": cfg.num_labels, "d_embed": cfg.embed_width}
    for name, site in SITES.items():
        if name == "pooled":  # bi-encoder readout
            continue
        expected = (2, *((cfg.n_layers,) if site.per_layer else ()), *(dims[d] for d in site.dims))
        assert out.cache[name].shape == expected, name


def test_activation_identities_hold(tiny_model, batch):
    c = tiny_model(*batch, capture="all").cache
    b_O = np.asarray(tiny_model.blocks.attn.b_O[...])  # [layer, d_model]
    np.testing.assert_allclose(c["resid_mid"], c["resid_pre"] + c["attn_out"], atol=IDENTITY_ATOL, rtol=0)
    np.testing.assert_allclose(c["attn_out"], c["result"].sum(-2) + b_O[None, :, None, :], atol=IDENTITY_ATOL,
                               rtol=0)
    np.testing.assert_allclose(c["resid_pre"][:, 1:], c["normalized_resid_post"][:, :-1], atol=0, rtol=0)
    np.testing.assert_allclose(c["resid_post"], c["normalized_resid_mid"] + c["mlp_out"], atol=IDENTITY_ATOL,
                               rtol=0)
    # LayerNorm scale: normalized = (x - mean) / scale * w + b
    w, b = np.asarray(tiny_model.blocks.ln1.w[...]), np.asarray(tiny_model.blocks.ln1.b[...])
    x = np.asarray(c["resid_mid"])
    manual = (x - x.mean(-1, keepdims=True)) / np.asarray(c["ln1_scale"]) * w[None, :, None] + b[None, :, None]
    np.testing.assert_allclose(c["normalized_resid_mid"], manual, atol=IDENTITY_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(c["pattern"]).sum(-1), 1.0, atol=IDENTITY_ATOL, rtol=0)
    # padding keys get exactly zero attention
    assert float(np.abs(np.asarray(c["pattern"])[1, :, :, :, 6:]).max()) == 0.0


def test_unrequested_activations_are_not_returned_or_computed(tiny_model, batch):
    out = tiny_model(*batch, capture=("z",))
    assert set(out.cache) == {"z"}
    jaxpr = str(jax.make_jaxpr(lambda m, b: m(*b).score)(tiny_model, batch))
    jaxpr_result = str(jax.make_jaxpr(lambda m, b: m(*b, capture=("result",)).score)(tiny_model, batch))
    # per-head `result` ([pos, head, d_model]) only exists in the program when it is asked for
    H, d = tiny_model.cfg.n_heads, tiny_model.cfg.d_model
    assert f"{H},{d}]" not in jaxpr and f"{H},{d}]" in jaxpr_result


def test_unknown_site_names_are_refused(tiny_model, batch):
    with pytest.raises(UnknownSiteError, match="resid_pre"):
        tiny_model(*batch, capture=("resid_pree",))
    with pytest.raises(UnknownSiteError):
        get_site("blocks.0.hook_nothing")


def test_transformerlens_names_map_to_sites():
    assert parse_tl_name("blocks.3.attn.hook_z") == ("z", 3)
    assert parse_tl_name("blocks.11.hook_resid_pre") == ("resid_pre", 11)
    assert parse_tl_name("embed.hook_embed") == ("embed", None)
    with pytest.raises(UnknownSiteError):
        parse_tl_name("blocks.1.attn.hook_nope")
    assert all(s in site_table_markdown() for s in LAYER_SITES)


def test_jit_vmap_and_grad_apply_to_the_model_pytree(tiny_model, batch):
    eager = tiny_model(*batch).score
    jitted = jax.jit(lambda m, b: m(*b).score)(tiny_model, batch)
    np.testing.assert_allclose(jitted, eager, atol=ENGINE_ATOL, rtol=0)
    per_example = jax.vmap(lambda t, tt, m: tiny_model.forward_one(t, tt, m).score)(*batch)
    np.testing.assert_allclose(per_example, eager, atol=ENGINE_ATOL, rtol=0)
    grads = jax.grad(lambda m: m(*batch).score.sum())(tiny_model)
    assert isinstance(grads, CrossEncoder)
    g = nnx.to_flat_state(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(v.get_value())).all() for _, v in g)
    assert float(np.abs(np.asarray(grads.classifier.W[...])).sum()) > 0
    # grad flows to the embedding rows of the tokens used, and nowhere else
    gE = np.asarray(grads.embed.W_E[...])
    used = np.unique(np.asarray(batch[0]))
    assert np.abs(gE[used]).sum() > 0 and np.abs(np.delete(gE, used, 0)).sum() == 0


def test_full_size_configs_have_the_paper_shapes_without_allocating():
    for cfg, n_params in ((MINILM_L12_H384, 33_360_385), (MINILM_L6_H384, None)):
        model = nnx.eval_shape(lambda cfg=cfg: build_model(cfg, "cross"))
        leaves = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        total = sum(int(np.prod(x.shape)) for x in leaves)
        assert total == cfg.n_params
        if n_params:
            assert total == n_params
        ids = jax.ShapeDtypeStruct((4, 128), jnp.int32)
        out = jax.eval_shape(lambda m, i: m(i, i, i, capture="all"), model, ids)
        assert out.logits.shape == (4, 1)
        assert out.cache["pattern"].shape == (4, cfg.n_layers, 12, 128, 128)
        assert out.cache["result"].shape == (4, cfg.n_layers, 128, 12, 384)


def test_bi_encoder_pools_only_real_tokens(batch):
    cfg = EncoderConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=24, d_vocab=300, n_ctx=16)
    model = BiEncoder(cfg, rngs=nnx.Rngs(0), pooling=PoolingConfig("mean", True, "cosine"))
    ids, tt, mask = batch
    emb = model(ids, tt, mask).embedding
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, atol=1e-6, rtol=0)
    # changing a padding token does not change the embedding
    ids2 = ids.at[1, 7].set(5)
    np.testing.assert_allclose(model(ids2, tt, mask).embedding, emb, atol=0, rtol=0)
    sim = model.similarity(emb[0], emb[1])
    assert -1.0 <= float(sim) <= 1.0
