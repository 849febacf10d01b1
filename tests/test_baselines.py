"""The benchmarks' batched PyTorch hook baseline (B sites per forward) computes what the paper's loop computes,
site by site, on the tiny checkpoint; both are importable from the benchmarks package without test code."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ENGINE_ATOL, random_pairs

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def patchers(tiny_cross_dir, tiny_model):
    from transformers import BertForSequenceClassification

    from benchmarks.baselines.torch_hooks import BatchedTorchPatcher, TorchPatcher

    hf = BertForSequenceClassification.from_pretrained(tiny_cross_dir)
    loop, batched = TorchPatcher(hf), BatchedTorchPatcher(hf, batch_size=7)  # chunks straddle layers
    pair = random_pairs(1, tiny_model.cfg.d_vocab, seed=11, d_len=(8, 9))[0]
    base_inputs = (pair.baseline_ids, pair.baseline_token_type_ids, [1] * len(pair.baseline_ids))
    pert_inputs = (pair.perturbed_ids, pair.perturbed_token_type_ids, [1] * len(pair.perturbed_ids))
    return loop, batched, base_inputs, loop.cache(base_inputs), loop.cache(pert_inputs)


@pytest.mark.parametrize("family", ["block_every", "head_all_pos_v", "head_all_pos_z", "head_by_pos_z",
                                    "head_by_pos_pattern", "path_to_score", "path_to_heads"])
def test_batched_hooks_equal_the_loop(patchers, family):
    loop, batched, base_inputs, base, src = patchers

    def run(p):
        if family == "block_every":
            return p.block_every(base_inputs, src)
        if family.startswith("head_all_pos"):
            return p.head_all_pos(base_inputs, src, family[-1])
        if family == "head_by_pos_z":
            return p.head_by_pos_z(base_inputs, src)
        if family == "head_by_pos_pattern":
            return p.head_by_pos_pattern(base_inputs, src)
        if family == "path_to_score":
            return p.path_to_score(base_inputs, base, src)
        return p.path_to_heads(base_inputs, base, src, [(2, 1), (2, 3)], "k")

    ref, ours = run(loop), run(batched)
    assert np.isfinite(ref).all() and ref.size > batched.batch_size
    np.testing.assert_allclose(ours, ref, atol=ENGINE_ATOL, rtol=0)
    assert np.abs(ref - loop.score(base_inputs)).max() > 1e-3, "patches must have visible effects"


def test_batched_hooks_on_a_sample_of_sites(patchers):
    loop, batched, base_inputs, _, src = patchers
    sites = [(2, 3, 1), (0, 0, 4), (1, 5, 0)]
    ours = batched.head_by_pos_z(base_inputs, src, sites)
    ref = loop.head_by_pos_z(base_inputs, src, sites)
    np.testing.assert_allclose(ours, ref, atol=ENGINE_ATOL, rtol=0)
    assert np.isfinite(ours).sum() == 3


def test_torch_precision_maps_every_jaxmech_precision():
    from benchmarks.baselines.torch_hooks import TORCH_PRECISION, torch_precision
    from jaxmech.runtime import PRECISIONS

    assert set(TORCH_PRECISION) == set(PRECISIONS)
    before = torch.get_float32_matmul_precision()
    with torch_precision("tf32") as value:
        assert value == "high" == torch.get_float32_matmul_precision()
    assert torch.get_float32_matmul_precision() == before


def test_the_hook_reference_masks_padding(patchers):
    """transformers builds no padding mask for a custom attention function unless a mask function is registered
    for it: with padding the reference must still score (and patch) as the unpadded input does."""
    loop, batched, base_inputs, _, src = patchers
    ids, tt, mask = (list(a) for a in base_inputs)
    n_pad = 5
    padded = (ids + [0] * n_pad, tt + [0] * n_pad, mask + [0] * n_pad)
    ref = loop.score(base_inputs)
    assert abs(loop.score(padded) - ref) < ENGINE_ATOL
    with torch.no_grad():  # a padded batch of two, the first row unpadded
        two = [torch.tensor([a + [0] * n_pad, b]) for a, b in zip(base_inputs, padded, strict=True)]
        two[2][0, -n_pad:] = 1
        two[0][0, -n_pad:] = 7
        logits = loop.model(input_ids=two[0], token_type_ids=two[1], attention_mask=two[2]).logits[:, 0]
        loop.model.set_attn_implementation("eager")
        eager = loop.model(input_ids=two[0], token_type_ids=two[1], attention_mask=two[2]).logits[:, 0]
        from benchmarks.baselines.torch_hooks import _IMPL

        loop.model.set_attn_implementation(_IMPL)
    np.testing.assert_allclose(logits.numpy(), eager.numpy(), atol=ENGINE_ATOL, rtol=0)
    assert abs(float(logits[1]) - ref) < ENGINE_ATOL and abs(float(logits[0]) - ref) > 1e-4
    pad_src = {k: [torch.nn.functional.pad(x, (0, 0) * (x.ndim - 2) + (0, n_pad)) if k != "pattern" else x
                   for x in v] for k, v in src.items()}
    np.testing.assert_allclose(batched.block_every(padded, pad_src)[..., : len(ids)],
                               loop.block_every(base_inputs, src), atol=ENGINE_ATOL, rtol=0)
