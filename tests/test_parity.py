"""fp32 parity with Hugging Face PyTorch on logits and every exposed activation, padded batches included.

Cases: a tiny random checkpoint with odd sizes (catches transposes), a random checkpoint with the exact
ms-marco-MiniLM-L-12-v2 shapes, and the real pretrained MiniLM-L6 weights (as a cross-encoder with a seeded
head, and as the bi-encoder), on real MS MARCO query-passage pairs when the shared data is present.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MINILM_L12_SHAPES, PARITY_ATOL, TINY_ODD, hf_checkpoint

from jaxmech.hf.loading import load_model

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

MAX_DIFFS: dict[str, dict[str, float]] = {}


def hf_activations(hf_model, ids, tt, mask):
    """Every activation of a HF BERT-family model (BERT, ELECTRA, RoBERTa, XLM-R) we can hook, stacked per
    layer ``[batch, layer, ...]``."""
    bert = hf_model.base_model  # BertModel, ElectraModel, RobertaModel, ... (itself for bare trunks)
    L = bert.config.num_hidden_layers
    H = bert.config.num_attention_heads
    rec: dict[str, list] = {k: [None] * L for k in ("q", "k", "v", "z", "attn_out", "resid_mid",
                                                    "normalized_resid_mid", "mlp_pre", "mlp_post", "mlp_out",
                                                    "resid_post")}
    embed_sum = {}
    handles = []

    def heads(x):
        return x.reshape(*x.shape[:2], H, -1)

    for l, layer in enumerate(bert.encoder.layer):
        def setter(name, l=l, fn=lambda x: x):
            return lambda m, a, o: rec[name].__setitem__(l, fn(o).detach().numpy())

        def pre_setter(name, l=l, fn=lambda x: x):
            return lambda m, a: rec[name].__setitem__(l, fn(a[0]).detach().numpy())

        att = layer.attention
        handles += [
            att.self.query.register_forward_hook(setter("q", fn=heads)),
            att.self.key.register_forward_hook(setter("k", fn=heads)),
            att.self.value.register_forward_hook(setter("v", fn=heads)),
            att.output.dense.register_forward_pre_hook(pre_setter("z", fn=heads)),
            att.output.dense.register_forward_hook(setter("attn_out")),
            att.output.LayerNorm.register_forward_pre_hook(pre_setter("resid_mid")),
            att.output.LayerNorm.register_forward_hook(setter("normalized_resid_mid")),
            layer.intermediate.dense.register_forward_hook(setter("mlp_pre")),
            layer.intermediate.register_forward_hook(setter("mlp_post")),
            layer.output.dense.register_forward_hook(setter("mlp_out")),
            layer.output.LayerNorm.register_forward_pre_hook(pre_setter("resid_post")),
        ]
    handles.append(bert.embeddings.LayerNorm.register_forward_pre_hook(
        lambda m, a: embed_sum.__setitem__("x", a[0].detach().numpy())))
    try:
        with torch.no_grad():
            out = hf_model(input_ids=torch.tensor(ids).long(), token_type_ids=torch.tensor(tt).long(),
                           attention_mask=torch.tensor(mask).long(), output_hidden_states=True,
                           output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    acts = {k: np.stack(v, 1) for k, v in rec.items()}
    hs = [h.numpy() for h in out.hidden_states]
    acts["resid_pre"] = np.stack(hs[:-1], 1)
    acts["normalized_resid_post"] = np.stack(hs[1:], 1)
    acts["pattern"] = np.stack([a.numpy() for a in out.attentions], 1)
    acts["embed_sum"] = embed_sum["x"]
    if hasattr(out, "logits"):
        acts["logits"] = out.logits.numpy()
    return acts


SITES_COMPARED = ("q", "k", "v", "z", "attn_out", "resid_mid", "normalized_resid_mid", "mlp_pre", "mlp_post",
                  "mlp_out", "resid_post", "resid_pre", "normalized_resid_post", "pattern", "embed_sum")


# Real BERT weights have an outlier feature (MiniLM-L6: dimension 99) where the pre-LayerNorm sums ``mlp_out``
# and ``resid_post`` reach |x| ~ 200, so one fp32 ulp there is 1.5e-5 and a fixed absolute tolerance says more
# about the CPU's GEMM kernel than about the model. For real checkpoints these two sites are checked element by
# element against a bound derived from fp32 arithmetic instead of a magic relative term:
#
#   mlp_out = mlp_post @ W_out + b_out is a dot product of length K = d_mlp (1536). Two implementations differ by
#   (a) the difference their inputs already carry, propagated exactly:   |d mlp_post| @ |W_out|      (in float64)
#   (b) each one's rounding of the K-term sum. Higham & Mary (SIAM J. Sci. Comput. 2019, Thm 3.1): with rounding
#       errors independent and of mean zero, |fl(a.b) - a.b| <= lam * sqrt(K) * u * sum_k |a_k b_k| with
#       probability >= 1 - 2K exp(-lam^2 (1-u)^2 / 2); u = 2^-24. lam = 6 gives a failure probability below 5e-5
#       per element from the bound alone; a worst-case (deterministic) bound would use K instead of sqrt(K).
#   tol(mlp_out) = atol + (a) + 2 * (b)            (two implementations, each within (b) of the exact sum)
#   tol(resid_post) = tol(mlp_out) + |d resid_mid| + 2u |resid_post|   (one more addition, rounded by each side)
#
# Measured on the 12 real MS MARCO pairs: each implementation's rounding error against the float64 sum of its own
# inputs is at most 0.42 of sqrt(K) u sum|a b| (jaxmech, AMD EPYC; HF 0.18), and the largest difference between
# the two, 1.7e-4 at mlp_out [10, 0, 0, 99] (11 ulp of 195), is 1.4e-4 of propagated input difference (a).
# (An AMD EPYC machine measured 3.5e-4 there, which the former rtol of 1e-6 rejected.) Every other site and every
# random-weight case is checked with the absolute tolerance alone.
OUTLIER_SUM_SITES = ("mlp_out", "resid_post")
FP32_U = 2.0 ** -24
ROUNDING_LAMBDA = 6.0


def outlier_sum_bounds(hf_model, ours: dict, hf: dict) -> dict[str, np.ndarray]:
    """Per-element tolerances for ``mlp_out`` and ``resid_post`` ``[batch, layer, pos, d_model]`` (see above)."""
    f64 = np.float64
    layers = hf_model.base_model.encoder.layer
    w = np.stack([layer.output.dense.weight.detach().numpy().T for layer in layers]).astype(f64)  # [L, K, D]
    b = np.stack([layer.output.dense.bias.detach().numpy() for layer in layers]).astype(f64)  # [L, D]
    k = w.shape[1]
    post = hf["mlp_post"].astype(f64)
    propagated = np.einsum("blpk,lkd->blpd", np.abs(ours["mlp_post"].astype(f64) - post), np.abs(w))
    magnitude = np.einsum("blpk,lkd->blpd", np.abs(post), np.abs(w)) + np.abs(b)[None, :, None]
    mlp_out = PARITY_ATOL + propagated + 2 * ROUNDING_LAMBDA * np.sqrt(k) * FP32_U * magnitude
    resid_post = (mlp_out + np.abs(ours["resid_mid"].astype(f64) - hf["resid_mid"])
                  + 2 * FP32_U * np.abs(hf["resid_post"].astype(f64)))
    return {"mlp_out": mlp_out, "resid_post": resid_post}


def check_parity(case: str, hf_model, jm_model, ids, tt, mask, *, real_weights: bool = False):
    hf = hf_activations(hf_model, ids, tt, mask)
    out = jm_model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask), capture=SITES_COMPARED)
    ours = {site: np.asarray(out.cache[site]) for site in SITES_COMPARED}
    bounds = outlier_sum_bounds(hf_model, ours, hf) if real_weights else {}
    diffs = {}
    for site in SITES_COMPARED:
        diff = np.abs(ours[site].astype(np.float64) - hf[site])
        if site in bounds:
            worst = np.unravel_index(np.argmax(diff / bounds[site]), diff.shape)
            assert (diff <= bounds[site]).all(), (
                f"{case}: {site} differs by {diff[worst]:.3e} at {worst} (|x| = {abs(hf[site][worst]):.4g}), "
                f"beyond its fp32 bound {bounds[site][worst]:.3e}")
            diffs[f"{site}/bound"] = float(diff[worst] / bounds[site][worst])
        else:
            np.testing.assert_allclose(ours[site], hf[site], atol=PARITY_ATOL, rtol=0, err_msg=f"{case}: {site}")
        diffs[site] = float(diff.max())
    if "logits" in hf:
        np.testing.assert_allclose(np.asarray(out.logits), hf["logits"], atol=PARITY_ATOL, rtol=0,
                                   err_msg=f"{case}: logits")
        diffs["logits"] = float(np.abs(np.asarray(out.logits) - hf["logits"]).max())
    MAX_DIFFS[case] = diffs
    print(f"\n{case}: max abs diffs " + json.dumps({k: f"{v:.1e}" for k, v in diffs.items()}))
    return diffs


def padded_random_batch(vocab, lengths, T, seed=0):
    rng = np.random.RandomState(seed)
    ids = np.zeros((len(lengths), T), np.int64)
    tt = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.randint(1, vocab, n)
        tt[i, n // 2: n] = 1
        mask[i, :n] = 1
    return ids, tt, mask


def test_tiny_odd_random_checkpoint_matches_hf_on_padded_batch(tiny_cross_dir):
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification.from_pretrained(tiny_cross_dir, attn_implementation="eager").eval()
    lm = load_model(tiny_cross_dir, use_cache=False)
    ids, tt, mask = padded_random_batch(TINY_ODD["vocab_size"], [17, 9, 4], 17)
    check_parity("tiny-odd random", hf, lm.model, ids, tt, mask)


def test_multilabel_head_matches_hf(tmp_path):
    from transformers import BertForSequenceClassification

    path = hf_checkpoint(tmp_path, TINY_ODD, seed=3, num_labels=3, init=0.1)
    hf = BertForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    lm = load_model(path, use_cache=False, kind="cross")
    assert lm.model.cfg.num_labels == 3
    ids, tt, mask = padded_random_batch(TINY_ODD["vocab_size"], [11, 6], 11, seed=1)
    check_parity("tiny-odd 3 labels", hf, lm.model, ids, tt, mask)


@pytest.mark.slow
def test_minilm_l12_shaped_random_checkpoint_matches_hf(tmp_path_factory, tokenizer, msmarco_pairs_or_demo):
    from transformers import BertForSequenceClassification

    path = hf_checkpoint(tmp_path_factory.mktemp("l12"), MINILM_L12_SHAPES, seed=1)
    hf = BertForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    lm = load_model(path, use_cache=False)
    assert lm.model.cfg.n_params == 33_360_385
    q, d = zip(*msmarco_pairs_or_demo[:6], strict=True)
    enc = tokenizer.encode_pairs(list(q), list(d))
    assert len(set(enc.lengths.tolist())) > 1, "the batch must be padded with unequal lengths"
    check_parity("MiniLM-L12 shapes, random", hf, lm.model, *enc.arrays)


@pytest.fixture(scope="session")
def msmarco_pairs_or_demo(request):
    """Real MS MARCO pairs when the shared data is present, else the packaged demo set."""
    try:
        return request.getfixturevalue("msmarco_pairs")
    except pytest.skip.Exception:
        from jaxmech.data import load_demo

        src = load_demo()
        return [(src.queries[qid], text) for qid in list(src.queries)[:4]
                for text in list(src.docs[qid].values())[:3]]


def test_real_minilm_l6_as_cross_encoder_matches_hf(minilm_path, tmp_path, tokenizer, msmarco_pairs):
    """The real pretrained weights with a seeded classifier head, on real query-passage pairs."""
    from safetensors.numpy import save_file
    from transformers import BertForSequenceClassification

    lm = load_model(minilm_path, kind="cross", init_missing_head_seed=7, use_cache=False)
    assert lm.report.initialized == ["classifier.W", "classifier.b"]
    # The same seeded head, written into a HF sequence-classification folder.
    from jaxmech.hf.convert import to_hf_state_dict

    (tmp_path / "config.json").write_text(json.dumps(lm.model.cfg.to_hf_config()))
    save_file(to_hf_state_dict(lm.model), str(tmp_path / "model.safetensors"))
    hf = BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    q, d = zip(*msmarco_pairs, strict=True)
    enc = tokenizer.encode_pairs(list(q), list(d))
    assert len(set(enc.lengths.tolist())) > 1
    check_parity("MiniLM-L6 real, cross-encoder (seeded head)", hf, lm.model, *enc.arrays, real_weights=True)


def test_real_minilm_l6_bi_encoder_matches_hf_mean_pooling(minilm_path, tokenizer, msmarco_pairs):
    from transformers import BertModel

    lm = load_model(minilm_path, use_cache=False)
    assert lm.kind == "bi" and lm.model.pooling.mode == "mean" and lm.model.pooling.normalize
    hf = BertModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    texts = [t for pair in msmarco_pairs for t in pair][:10]
    enc = tokenizer.encode_texts(texts)
    diffs = check_parity("MiniLM-L6 real, bi-encoder", hf, lm.model, *enc.arrays, real_weights=True)
    with torch.no_grad():
        h = hf(**{k: torch.tensor(v).long() for k, v in zip(("input_ids", "token_type_ids", "attention_mask"),
                                                           enc.arrays, strict=True)}).last_hidden_state
    m = torch.tensor(enc.attention_mask)[..., None].float()
    ref = (h * m).sum(1) / m.sum(1)
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    ours = np.asarray(lm.model(*map(jnp.asarray, enc.arrays)).embedding)
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)
    diffs["embedding"] = float(np.abs(ours - ref).max())
