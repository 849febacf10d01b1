"""Exact edge patching on ModernBERT (pre-LN: no frozen LayerNorm, an edge adds its sender's change to the
receiver's residual sum, normalised live) against an independent PyTorch implementation by forward hooks on
transformers' ModernBERT (`benchmarks.baselines.torch_edges.TorchModernBertEdgePatcher`), which is first checked
on its own: no change is the HF baseline, the captured senders sum to the residual stream, an edge into the
score equals the classifier head applied by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_archs_patching import random_pairs
from test_modernbert import TINY, _state, build

from jaxmech.hf.convert import modernbert_from_hf_state_dict as from_hf_state_dict
from jaxmech.models.modernbert import ModernBertConfig
from jaxmech.patching import batch_pairs
from jaxmech.patching.edge_graph import EdgeGraph

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

PICKS = ["input->a0.h1<q>", "input->m2", "a0.h2->a2.h0<k>", "a1.h3->m1", "a2.h1->logits", "m0->a3.h2<q>",
         "m0->a1.h4<v>", "m3->logits", "a1.h0->a3.h3<v>"]
"""One edge of every kind (embeddings -> q and MLP; head -> k, MLP, score; MLP -> q, v, score) and a head -> v;
receivers in layer 0 (no ``attn_norm``), the sliding-window layers 1 and 2 and the global layer 3 (TINY's types)."""


def _shifted(pair):
    """``pair`` with the perturbed document changed in length: two tokens inserted after its first token and its
    third token deleted (that baseline position aligns with nothing), so positions shift by +2 and then +1."""
    base, pert = list(pair.baseline_ids), list(pair.perturbed_ids)
    d0 = base.index(2) + 1  # the document starts after the first [SEP]
    pert = pert[:d0 + 1] + [55, 66] + pert[d0 + 1:d0 + 2] + pert[d0 + 3:]
    pmap = [i if i <= d0 else i + 2 if i <= d0 + 1 else -1 if i == d0 + 2 else i + 1 for i in range(len(base))]
    assert all(base[i] in (pert[j], 7) for i, j in enumerate(pmap) if j >= 0)  # equal but for the fillers
    return dataclasses.replace(pair, perturbed_ids=pert, perturbed_token_type_ids=[0] * len(pert),
                               position_map=pmap, name=pair.name + "-shifted")


@pytest.fixture(scope="module")
def mbe():
    """(jaxmech model, torch patcher, padded batch): a tiny random ModernBERT (biases on) and two pairs, the first
    aligned one to one, the second with a perturbed input of another length (insertions, a deletion)."""
    from benchmarks.baselines.torch_edges import TorchModernBertEdgePatcher

    hf = build(TINY, bias=True, pooling="cls", seed=11, init=0.2)
    model = from_hf_state_dict(_state(hf), ModernBertConfig.from_hf_config(hf.config))
    pairs = random_pairs(2, model.cfg.d_vocab, "bert", seed=1, d_len=(7, 12))
    pairs[1] = _shifted(pairs[1])
    batch = batch_pairs(pairs, pad_id=model.cfg.pad_token_id, buckets=(24,), max_length=model.cfg.max_length)
    assert (batch.baseline[2] == 0).any() and not batch.identity[1] and (batch.position_map[1] == -1).any()
    return model, TorchModernBertEdgePatcher(hf), batch


def _ids(batch, p):
    """Pair ``p``'s unpadded baseline and perturbed ids and its position map (baseline length)."""
    n, m = int(batch.lengths[p]), int(batch.perturbed[2][p].sum())
    return batch.baseline[0][p, :n], batch.perturbed[0][p, :m], batch.position_map[p, :n]


def _final_hidden(patcher, ids) -> torch.Tensor:
    """The residual sum entering ``final_norm`` (``[T, d]``)."""
    seen = {}
    handle = patcher.trunk.final_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0][0]))
    try:
        patcher.score(ids)
    finally:
        handle.remove()
    return seen["x"]


def _delta(patcher, base_ids, pert_ids, pmap, sender) -> torch.Tensor:
    base, pert = patcher.outputs(base_ids)[sender], patcher.outputs(pert_ids)[sender]
    return torch.stack([pert[j] - base[i] if j >= 0 else torch.zeros_like(base[i]) for i, j in enumerate(pmap)])


@torch.no_grad()
def test_torch_reference_reproduces_the_baseline_the_residual_sum_and_the_score_by_hand(mbe):
    _, patcher, batch = mbe
    hf, trunk = patcher.model, patcher.trunk
    base_ids, pert_ids, pmap = _ids(batch, 1)
    ids = torch.as_tensor(base_ids).long()[None]
    logit = float(hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0])
    zero = np.zeros((len(base_ids), hf.config.hidden_size), np.float32)
    for receiver in ["a0.h1<q>", "a2.h0<k>", "a3.h4<v>", "m0", "m2", "logits"]:
        assert patcher.patched_score(base_ids, receiver, zero) == pytest.approx(logit, abs=1e-6), receiver
    assert patcher.edge_score(base_ids, base_ids, "a1.h2", "a2.h3<k>") == pytest.approx(logit, abs=1e-6)

    # every head's q, k and v of layer 2 given one change = attention reading attn_norm(x + delta), the residual not
    delta = np.random.RandomState(0).randn(*zero.shape).astype(np.float32)
    heads = [f"a2.h{h}<{c}>" for h in range(patcher.H) for c in "qkv"]
    handle = patcher.layers[2].attn_norm.register_forward_pre_hook(lambda m, a: (a[0] + torch.as_tensor(delta),))
    try:
        whole = float(patcher.score(base_ids))
    finally:
        handle.remove()
    assert patcher.patched_score(base_ids, heads, delta) == pytest.approx(whole, abs=1e-5)
    assert abs(whole - logit) > 1e-2

    # every sender (with the Wo and MLP biases once per layer) sums to the residual stream entering final_norm
    out = patcher.outputs(base_ids)
    total = sum(out.values()) + sum(layer.attn.Wo.bias for layer in patcher.layers)
    np.testing.assert_allclose(total, _final_hidden(patcher, base_ids), atol=1e-5, rtol=0)

    # an edge into the score: final_norm, cls pooling, head and classifier applied by hand to the changed sum
    for sender in ["input", "a2.h1", "m3"]:
        delta = _delta(patcher, base_ids, pert_ids, pmap, sender)
        hidden = trunk.final_norm(_final_hidden(patcher, base_ids) + delta)
        by_hand = float(hf.classifier(hf.head(hidden[:1]))[0, 0])
        got = patcher.edge_score(base_ids, pert_ids, sender, "logits", position_map=pmap)
        assert got == pytest.approx(by_hand, abs=1e-5), sender
        if sender == "input":  # no position embeddings: [CLS]'s embedding, all the score reads, is unchanged
            assert got == pytest.approx(logit, abs=1e-6)
        else:
            assert abs(got - logit) > 1e-3, f"{sender}->logits moves the score"


def test_exact_edges_match_the_torch_reference(mbe):
    """`PICKS` and 2 random edges on both pairs (padded jax batch, unpadded torch runs at real length)."""
    from jaxmech.patching.edges import edge_data, exact_edge_scores

    model, patcher, batch = mbe
    g = EdgeGraph(model.cfg.n_layers, model.cfg.n_heads)
    index = {g.edge_name(e): e for e in range(g.n_edges)}
    edges = [index[n] for n in PICKS] + list(np.random.RandomState(0).choice(g.n_edges, 2, replace=False))
    names = [g.edge_name(e) for e in edges]
    data = edge_data(model, batch)
    exact = exact_edge_scores(model, data, edges, chunk_size=4)
    ref = np.zeros_like(exact)
    for p in range(batch.n_pairs):
        base_ids, pert_ids, pmap = _ids(batch, p)
        assert float(data.baseline_score[p]) == pytest.approx(float(patcher.score(base_ids)), abs=1e-5)
        for i, name in enumerate(names):
            sender, receiver = name.split("->")
            ref[p, i] = patcher.edge_score(base_ids, pert_ids, sender, receiver, position_map=pmap)
        np.testing.assert_allclose(exact[p], ref[p], atol=1e-5, rtol=0,
                                   err_msg=f"pair {p}, edges {names}")
    moved = np.abs(ref - np.asarray(data.baseline_score)[:, None]) > 1e-3
    assert moved.sum() >= 12, "the edges change the score: the comparison is not between baselines"
