"""ModernBERT (rotary positions, GeGLU, alternating global / sliding-window attention, pre-LN blocks): fp32
parity with ``transformers`` on the logits and every hookable activation (odd tiny shapes with and without
biases, cls and mean pooling, padded batches; the gte-reranker-modernbert-base shapes when slow), the
pre-LN residual identities (a running sum), strict conversion and its bit-exact inverse."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from arch_checkpoints import RECORDING_ATTENTION, recorded_attention, register_recording_attention
from conftest import PARITY_ATOL

from jaxmech.config import UnsupportedConfigError
from jaxmech.hf.convert import ConversionError
from jaxmech.hf.convert import modernbert_from_hf_state_dict as from_hf_state_dict
from jaxmech.hf.convert import modernbert_to_hf_state_dict as to_hf_state_dict
from jaxmech.models.modernbert import MODERNBERT_SITES, ModernBertConfig
from jaxmech.sites import MASK_VALUE

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

TINY = dict(
    vocab_size=211,
    hidden_size=30,
    num_hidden_layers=4,
    num_attention_heads=5,
    intermediate_size=37,
    max_position_embeddings=64,
    local_attention=6,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
    layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
)
GTE_RERANKER_SHAPES = dict(
    vocab_size=50368,
    hidden_size=768,
    num_hidden_layers=22,
    num_attention_heads=12,
    intermediate_size=1152,
    max_position_embeddings=8192,
    local_attention=128,
)
HOOKED = tuple(MODERNBERT_SITES)  # every site: all are hookable in transformers' ModernBERT


def build(sizes, *, bias: bool, pooling: str, seed: int = 0, init: float = 0.2, num_labels: int = 1):
    from transformers import ModernBertConfig as HFConfig
    from transformers import ModernBertForSequenceClassification

    cfg = HFConfig(
        **sizes,
        num_labels=num_labels,
        norm_bias=bias,
        attention_bias=bias,
        mlp_bias=bias,
        classifier_bias=bias,
        classifier_pooling=pooling,
        initializer_range=init,
    )
    torch.manual_seed(seed)
    hf = ModernBertForSequenceClassification._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # HF draws norms at 1 / biases at 0: perturb them so their conversion is tested
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return hf


def _state(hf):
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def hf_activations(hf, ids, mask, eps):
    """Every activation of a HF ModernBERT that forward hooks reach, stacked per layer."""
    trunk = hf.model
    L = trunk.config.num_hidden_layers
    H = trunk.config.num_attention_heads
    per_layer = (
        "resid_pre",
        "normalized_resid_pre",
        "q",
        "k",
        "v",
        "z",
        "attn_out",
        "resid_mid",
        "normalized_resid_mid",
        "mlp_pre",
        "mlp_pre_linear",
        "mlp_post",
        "mlp_out",
        "resid_post",
    )
    rec = {k: [None] * L for k in per_layer}
    one = {}
    heads = lambda x: x.reshape(*x.shape[:2], H, -1)
    handles = []

    def put(name, l, x):  # returns None: a forward hook's return value would replace the output
        rec[name][l] = x.detach().numpy()

    def put_parts(names, l, x, fn=lambda x: x):
        for name, part in zip(names, x.chunk(len(names), -1), strict=True):
            put(name, l, fn(part))

    for l, layer in enumerate(trunk.layers):
        handles += [
            layer.register_forward_pre_hook(lambda mod, a, l=l: put("resid_pre", l, a[0])),
            layer.attn.register_forward_pre_hook(
                lambda mod, a, kw, l=l: put("normalized_resid_pre", l, a[0] if a else kw["hidden_states"]),
                with_kwargs=True,
            ),
            layer.attn.Wqkv.register_forward_hook(lambda mod, a, o, l=l: put_parts(("q", "k", "v"), l, o, heads)),
            layer.attn.Wo.register_forward_pre_hook(lambda mod, a, l=l: put("z", l, heads(a[0]))),
            layer.attn.Wo.register_forward_hook(lambda mod, a, o, l=l: put("attn_out", l, o)),
            layer.mlp_norm.register_forward_pre_hook(lambda mod, a, l=l: put("resid_mid", l, a[0])),
            layer.mlp_norm.register_forward_hook(lambda mod, a, o, l=l: put("normalized_resid_mid", l, o)),
            layer.mlp.Wi.register_forward_hook(lambda mod, a, o, l=l: put_parts(("mlp_pre", "mlp_pre_linear"), l, o)),
            layer.mlp.Wo.register_forward_pre_hook(lambda mod, a, l=l: put("mlp_post", l, a[0])),
            layer.mlp.Wo.register_forward_hook(lambda mod, a, o, l=l: put("mlp_out", l, o)),
            layer.register_forward_hook(
                lambda mod, a, o, l=l: put("resid_post", l, o[0] if isinstance(o, tuple) else o)
            ),
        ]
    keep = lambda name: lambda mod, a, o: one.__setitem__(name, o.detach().numpy())
    keep_in = lambda name: lambda mod, a: one.__setitem__(name, a[0].detach().numpy())
    handles += [
        trunk.embeddings.tok_embeddings.register_forward_hook(keep("embed")),
        trunk.final_norm.register_forward_pre_hook(keep_in("final_in")),
        hf.head.register_forward_pre_hook(keep_in("pooled")),
        hf.classifier.register_forward_pre_hook(keep_in("pooler_out")),
    ]
    register_recording_attention()
    hf.set_attn_implementation(RECORDING_ATTENTION)
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_attentions=True)
    finally:
        hf.set_attn_implementation("eager")
        for h in handles:
            h.remove()
    acts = {k: np.stack(v, 1) for k, v in rec.items()}
    acts.update(one)
    acts["pattern"] = np.stack([a.numpy() for a in out.attentions], 1)
    acts.update(recorded_attention([layer.attn for layer in trunk.layers], ids.shape))
    acts["logits"] = out.logits.numpy()

    def scale(x):
        x = x.astype(np.float64)
        return np.sqrt(((x - x.mean(-1, keepdims=True)) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32)

    acts["embed_ln_scale"] = scale(acts["embed"])
    acts["ln1_scale"] = scale(acts["resid_pre"])
    acts["ln1_scale"][:, 0] = 1.0  # layer 0 has no attention LayerNorm
    acts["ln2_scale"] = scale(acts["resid_mid"])
    acts["final_ln_scale"] = scale(acts.pop("final_in"))
    return acts


def padded(vocab, lengths, T, pad_id, seed=0):
    rng = np.random.RandomState(seed)
    ids = np.full((len(lengths), T), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.randint(3, vocab, n)
        mask[i, :n] = 1
    return ids, mask


def check_parity(case, hf, model, ids, mask):
    ref = hf_activations(hf, ids, mask, model.cfg.eps)
    out = model(jnp.asarray(ids), None, jnp.asarray(mask), capture=HOOKED)
    ours = dict(out.cache, logits=out.logits)
    allowed = ref.pop("allowed")  # padding and, in sliding-window layers, keys beyond the window are masked
    scores = np.asarray(ours["attn_scores"])
    assert (scores[~allowed] == MASK_VALUE).all() and (~allowed[:, 1]).sum() > (~allowed[:, 0]).sum()
    ours["attn_scores"] = np.where(allowed, scores, np.nan)
    diffs = {}
    for site in (*HOOKED, "logits"):
        got = np.asarray(ours[site])
        assert got.shape == ref[site].shape, f"{case}: {site} {got.shape} != {ref[site].shape}"
        np.testing.assert_allclose(
            got, ref[site], atol=PARITY_ATOL, rtol=0, equal_nan=site == "attn_scores", err_msg=f"{case}: {site}"
        )
        diffs[site] = float(np.nanmax(np.abs(got - ref[site])))
    print(f"\n{case}: max abs diffs " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return out


@pytest.mark.parametrize(("bias", "pooling"), [(False, "cls"), (True, "mean")])
def test_tiny_random_modernbert_matches_hf_on_every_hooked_site_of_a_padded_batch(bias, pooling):
    hf = build(TINY, bias=bias, pooling=pooling)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    ids, mask = padded(211, [17, 9, 4], 17, pad_id=0)
    out = check_parity(f"tiny ModernBERT bias={bias} {pooling}", hf, model, ids, mask)
    # on the unpadded example, sliding-window layers see at most local_attention // 2 = 3 positions to each side
    pattern = np.asarray(out.cache["pattern"])[0]
    far = np.abs(np.arange(17)[:, None] - np.arange(17)[None, :]) > 3
    assert (pattern[1][:, far] == 0).all() and (pattern[0][:, far] > 0).all()


def test_pre_ln_residual_stream_is_a_running_sum():
    hf = build(TINY, bias=True, pooling="cls", seed=1)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    ids, mask = padded(211, [13, 7], 13, pad_id=0, seed=1)
    c = model(jnp.asarray(ids), None, jnp.asarray(mask), capture="all").cache
    pre, mid, post = (np.asarray(c[k]) for k in ("resid_pre", "resid_mid", "resid_post"))
    np.testing.assert_array_equal(pre[:, 1:], post[:, :-1])
    np.testing.assert_allclose(mid, pre + np.asarray(c["attn_out"]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(post, mid + np.asarray(c["mlp_out"]), atol=1e-6, rtol=0)
    total = pre[:, 0] + (np.asarray(c["attn_out"]) + np.asarray(c["mlp_out"])).sum(1)
    np.testing.assert_allclose(post[:, -1], total, atol=1e-5, rtol=0)
    act = np.asarray(c["mlp_pre"])
    gelu = 0.5 * act * (1 + np.vectorize(__import__("math").erf)(act / np.sqrt(2)))
    np.testing.assert_allclose(np.asarray(c["mlp_post"]), gelu * np.asarray(c["mlp_pre_linear"]), atol=1e-5, rtol=0)
    assert set(c) == set(MODERNBERT_SITES)


def test_conversion_round_trips_bit_for_bit_and_transformers_loads_it(tmp_path):
    from safetensors.numpy import save_file
    from transformers import ModernBertForSequenceClassification

    for bias in (False, True):
        hf = build(TINY, bias=bias, pooling="cls", seed=2, num_labels=2)
        state = _state(hf)
        cfg = ModernBertConfig.from_hf_config(hf.config)
        assert ModernBertConfig.from_hf_config(cfg.to_hf_config()) == cfg
        back = to_hf_state_dict(from_hf_state_dict(state, cfg))
        assert sorted(back) == sorted(state)
        for k, v in state.items():
            assert np.array_equal(back[k], v), k
        folder = tmp_path / f"bias{bias}"
        folder.mkdir()
        (folder / "config.json").write_text(
            __import__("json").dumps(
                dict(cfg.to_hf_config(), pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
            )
        )
        save_file(back, str(folder / "model.safetensors"))
        again, info = ModernBertForSequenceClassification.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]


def test_bad_checkpoints_and_options_are_refused_by_name():
    hf = build(TINY, bias=False, pooling="cls", seed=3)
    cfg = ModernBertConfig.from_hf_config(hf.config)
    state = _state(hf)
    with pytest.raises(ConversionError, match=r"model\.layers\.2\.attn\.Wqkv\.weight: missing"):
        from_hf_state_dict({k: v for k, v in state.items() if k != "model.layers.2.attn.Wqkv.weight"}, cfg)
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.attn\.Wqkv\.bias: unexpected tensor"):
        from_hf_state_dict(dict(state, **{"model.layers.0.attn.Wqkv.bias": np.zeros(90, np.float32)}), cfg)
    hf_cfg = hf.config.to_dict()
    bad = dict(
        hf_cfg,
        classifier_pooling="max",
        hidden_activation="swiglu",
        rope_parameters={
            "full_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    with pytest.raises(UnsupportedConfigError) as err:
        ModernBertConfig.from_hf_config(bad, source="mb/config.json")
    for what in ("classifier_pooling='max'", "hidden_activation='swiglu'", "rope_type': 'yarn'"):
        assert what in str(err.value)


@pytest.mark.slow
def test_gte_reranker_modernbert_base_shaped_random_checkpoint_matches_hf():
    """Full depth and width (22 layers, 8 global); the vocabulary is cut to 301 rows (the embedding is a row
    lookup, checked on every tiny model; its 38M parameters only cost time) and the batch to two rows."""
    hf = build(dict(GTE_RERANKER_SHAPES, vocab_size=301, pad_token_id=0), bias=False, pooling="mean", seed=4,
               init=0.02)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    assert (model.cfg.n_layers, sum(model.cfg.global_layers), model.cfg.d_model) == (22, 8, 768)
    assert sum(p.size for p in to_hf_state_dict(model).values()) == sum(p.numel() for p in hf.parameters())
    ids, mask = padded(301, [150, 9], 150, pad_id=0, seed=4)  # 150 > 128: the window matters
    check_parity("gte-reranker-modernbert-base shapes, random", hf, model, ids, mask)


def test_site_table_for_a_modernbert_folder_states_the_running_sum(tmp_path):
    from jaxmech.architectures import site_table_for

    build(TINY, bias=False, pooling="mean", seed=5).save_pretrained(tmp_path)
    table = site_table_for(tmp_path)
    assert "modernbert (ModernBertForSequenceClassification), 4 layers (2 global, 2 sliding-window of 6)" in table
    assert "resid_pre[l+1] = resid_post[l] (pre-LN: the residual stream is a running sum)" in table
    assert "| `mlp_pre_linear` | `[4, pos, 37]` |" in table and "mean pooling" in table


def test_a_saved_folder_loads_with_load_modernbert_and_load_model(tmp_path):
    """`load_modernbert` and `load_model` give the same cross-encoder (scores as transformers); what ModernBERT
    cannot be (a bi-encoder, a fresh classifier head) is refused by name."""
    from jaxmech.hf.loading import load_model, load_modernbert
    from jaxmech.models.modernbert import ModernBertCrossEncoder

    hf = build(TINY, bias=False, pooling="cls", seed=6)
    hf.save_pretrained(tmp_path)
    model, tokenizer = load_modernbert(tmp_path)
    assert tokenizer is None
    ids, mask = padded(211, [9, 5], 9, pad_id=0, seed=6)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), None, jnp.asarray(mask)).logits), ref,
                               atol=PARITY_ATOL, rtol=0)
    lm = load_model(tmp_path)
    assert isinstance(lm.model, ModernBertCrossEncoder) and lm.kind == "cross" and lm.tokenizer is None
    assert lm.model.cfg == model.cfg
    np.testing.assert_array_equal(np.asarray(lm.model(jnp.asarray(ids), None, jnp.asarray(mask)).logits),
                                  np.asarray(model(jnp.asarray(ids), None, jnp.asarray(mask)).logits))
    with pytest.raises(UnsupportedConfigError, match="kind='bi' is not available for model_type='modernbert'"):
        load_model(tmp_path, kind="bi")
    with pytest.raises(UnsupportedConfigError, match="init_missing_head_seed is not available for model_type="):
        load_model(tmp_path, kind="cross", init_missing_head_seed=0)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_model(tmp_path, require_tokenizer=True)


def test_a_folder_with_a_modernbert_style_tokenizer_scores_pairs_as_transformers(tmp_path):
    """A local byte-level BPE tokenizer saved as ModernBERT's (``[CLS] q [SEP] d [SEP]``, special tokens at the
    end of the vocabulary, no token types): `load_modernbert` reads its pair layout and scores padded pairs as
    ``transformers`` does with ``AutoTokenizer`` on the same folder, truncation included."""
    from arch_checkpoints import modernbert_tokenizer
    from transformers import AutoTokenizer

    from jaxmech.hf.loading import load_modernbert

    hf_tok = modernbert_tokenizer(tmp_path)
    ids = {t: hf_tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    sizes = dict(TINY, vocab_size=len(hf_tok), pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"],
                 sep_token_id=ids["[SEP]"], bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"])
    build(sizes, bias=False, pooling="mean", seed=8).save_pretrained(tmp_path)
    model, tok = load_modernbert(tmp_path)
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (ids["[CLS]"], ids["[SEP]"], ids["[PAD]"])
    assert tok.format.middle == (ids["[SEP]"],) and tok.format.n_special == 3
    queries = ["what is the capital of france", "a cat", "how many people live in paris"]
    docs = ["paris is the capital and largest city of france", "a cat sat on a mat",
            "the population of france is about sixty eight million a lazy afternoon"]
    hf = build(sizes, bias=False, pooling="mean", seed=8)
    ref_tok = AutoTokenizer.from_pretrained(str(tmp_path))
    for max_length in (64, 16):  # 16 truncates the longer pairs (longest_first)
        tok.max_length = max_length
        enc = tok.encode_pairs(queries, docs)
        ref = ref_tok(queries, docs, padding=True, truncation="longest_first", max_length=max_length,
                      return_tensors="pt")
        T = ref["input_ids"].shape[1]
        np.testing.assert_array_equal(enc.input_ids[:, :T], ref["input_ids"].numpy())
        assert (enc.input_ids[:, T:] == ids["[PAD]"]).all() and bool(enc.truncations) == (max_length == 16)
        ours = np.asarray(model(*map(jnp.asarray, enc.arrays)).score)
        with torch.no_grad():
            theirs = hf(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits[:, 0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=PARITY_ATOL, rtol=0)
    assert np.ptp(theirs) > 1e-3, "the pairs must get different scores"


def test_full_width_modernbert_attn_scores_match_hf_across_the_window():
    """gte-reranker-modernbert-base's per-layer shapes (768 wide, 12 heads, GeGLU 1152, window 128) in a
    global + sliding-window pair of layers with a small vocabulary: every site, ``attn_scores`` and ``rot_q`` /
    ``rot_k`` included, on a padded batch of 150 > 128 tokens, in seconds (full depth: the slow test above)."""
    sizes = dict(GTE_RERANKER_SHAPES, num_hidden_layers=2, vocab_size=301, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, cls_token_id=1, sep_token_id=2, layer_types=["full_attention", "sliding_attention"])
    hf = build(sizes, bias=False, pooling="mean", seed=4, init=0.02)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    assert (model.cfg.d_model, model.cfg.n_heads, model.cfg.d_mlp, model.cfg.local_attention) == (768, 12, 1152, 128)
    ids, mask = padded(301, [150, 41], 150, pad_id=0, seed=4)
    out = check_parity("gte-reranker-modernbert-base width, 2 layers", hf, model, ids, mask)
    far = np.abs(np.arange(150)[:, None] - np.arange(150)[None, :]) > 64
    assert (np.asarray(out.cache["attn_scores"])[0, 1][:, far] == MASK_VALUE).all()


def test_full_size_modernbert_site_shapes_by_eval_shape():
    """gte-reranker-modernbert-base at full size, traced abstractly (nothing allocated)."""
    import jax
    from flax import nnx

    from jaxmech.models.modernbert import ModernBertCrossEncoder

    cfg = ModernBertConfig.from_hf_config(dict(GTE_RERANKER_SHAPES, model_type="modernbert"))

    def forward(ids):
        model = ModernBertCrossEncoder(cfg, rngs=nnx.Rngs(0))
        return model(ids, None, jnp.ones_like(ids), capture=("attn_scores", "pattern", "rot_q", "mlp_pre_linear"))

    out = nnx.eval_shape(forward, jax.ShapeDtypeStruct((2, 150), jnp.int32))
    assert out.cache["attn_scores"].shape == out.cache["pattern"].shape == (2, 22, 12, 150, 150)
    assert out.cache["rot_q"].shape == (2, 22, 150, 12, 64) and out.cache["mlp_pre_linear"].shape == (2, 22, 150, 1152)
    assert sum(cfg.global_layers) == 8 and out.logits.shape == (2, 1)
