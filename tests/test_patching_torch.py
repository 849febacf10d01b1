"""Cross-implementation: jaxmech's batched sweeps against the paper's procedure written independently with
PyTorch forward hooks on the Hugging Face model (benchmarks/baselines/torch_hooks.py), same checkpoint, same
inputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PARITY_ATOL, random_pairs, tiny_lm

from jaxmech.patching import activation_patch, batch_pairs, path_to_score

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def setup(tiny_cross_dir, tiny_model):
    from transformers import BertForSequenceClassification

    from benchmarks.baselines.torch_hooks import TorchPatcher

    patcher = TorchPatcher(BertForSequenceClassification.from_pretrained(tiny_cross_dir))
    pair = random_pairs(1, tiny_model.cfg.d_vocab, seed=11, d_len=(8, 9))[0]
    batch = batch_pairs([pair], buckets=(len(pair.baseline_ids),), max_length=48)
    base_inputs = (pair.baseline_ids, pair.baseline_token_type_ids, [1] * len(pair.baseline_ids))
    pert_inputs = (pair.perturbed_ids, pair.perturbed_token_type_ids, [1] * len(pair.perturbed_ids))
    return patcher, batch, base_inputs, patcher.cache(base_inputs), patcher.cache(pert_inputs), pert_inputs


def test_baseline_and_perturbed_scores_agree(setup, tiny_model):
    patcher, batch, base_inputs, _, _, pert_inputs = setup
    res = activation_patch(tiny_model, batch, "mlp_out_all_pos")
    np.testing.assert_allclose(res.baseline_score[0], patcher.score(base_inputs), atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(res.perturbed_score[0], patcher.score(pert_inputs), atol=PARITY_ATOL, rtol=0)


def test_block_every_matches_the_hook_implementation(setup, tiny_model):
    patcher, batch, base_inputs, _, src, _ = setup
    ours = activation_patch(tiny_model, batch, "block_every").patched[0]
    np.testing.assert_allclose(ours, patcher.block_every(base_inputs, src), atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("site", ["v", "z"])
def test_head_all_positions_matches_the_hook_implementation(setup, tiny_model, site):
    patcher, batch, base_inputs, _, src, _ = setup
    ours = activation_patch(tiny_model, batch, f"head_all_pos_{site}").patched[0]
    np.testing.assert_allclose(ours, patcher.head_all_pos(base_inputs, src, site), atol=PARITY_ATOL, rtol=0)


def test_head_by_position_z_matches_the_hook_implementation(setup, tiny_model):
    patcher, batch, base_inputs, _, src, _ = setup
    ours = activation_patch(tiny_model, batch, "head_by_pos_z").patched[0]
    np.testing.assert_allclose(ours, patcher.head_by_pos_z(base_inputs, src), atol=PARITY_ATOL, rtol=0)


def test_head_by_position_pattern_matches_the_hook_implementation(setup, tiny_model):
    patcher, batch, base_inputs, _, src, _ = setup
    ours = activation_patch(tiny_model, batch, "head_by_pos_pattern").patched[0]
    np.testing.assert_allclose(ours, patcher.head_by_pos_pattern(base_inputs, src), atol=PARITY_ATOL, rtol=0)


def test_path_patching_to_the_score_matches_the_hook_implementation(setup, tiny_model):
    patcher, batch, base_inputs, base, src, _ = setup
    ours = path_to_score(tiny_model, batch).patched[0]
    ref = patcher.path_to_score(base_inputs, base, src)
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)
    assert np.abs(ref - patcher.score(base_inputs)).max() > 1e-3, "senders must have visible effects"


def test_path_patching_to_receiver_heads_matches_the_hook_implementation(setup, tiny_model):
    from jaxmech.patching import path_to_heads

    patcher, batch, base_inputs, base, src, _ = setup
    receivers = [(2, 1), (2, 3)]
    ours = path_to_heads(tiny_model, batch, receivers, "k").patched[0]
    ref = patcher.path_to_heads(base_inputs, base, src, receivers, "k")
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_background_ablated_families_match_the_hook_implementation(setup, tiny_model, kind):
    """Block patching and path patching to the score with heads ablated in both runs (jaxmech: folded into
    W_O/b_O; hooks: z overwritten before every patch)."""

    from jaxmech.patching import run_patching
    from jaxmech.patching.background import Ablation

    patcher, batch, base_inputs, _, _, pert_inputs = setup
    pair = random_pairs(1, tiny_model.cfg.d_vocab, seed=11, d_len=(8, 9))[0]
    T = len(pair.baseline_ids)
    lm = tiny_lm(tiny_model, (T,), max_length=48)
    ablation = Ablation(("0.1", "1.3", "2.0", "2.4"), kind)
    res = run_patching(lm, [pair], ["block_every", "path_to_score"], metric="raw", background=ablation)
    values = None
    if kind == "mean":
        means = res.meta["background"]["means"]["z"]
        values = {(int(k.split(".")[0]), int(k.split(".")[1])): v for k, v in means.items()}
    with patcher.background(ablation.heads, values):
        base, src = patcher.cache(base_inputs), patcher.cache(pert_inputs)
        np.testing.assert_allclose(res.pairs["score_baseline"][0], patcher.score(base_inputs), atol=PARITY_ATOL, rtol=0)
        ref_block = patcher.block_every(base_inputs, src)
        ref_path = patcher.path_to_score(base_inputs, base, src)
    np.testing.assert_allclose(res.raw["block_every"][0, :, :, :T], ref_block, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(res.raw["path_to_score"][0], ref_path, atol=PARITY_ATOL, rtol=0)
    assert abs(patcher.score(base_inputs) - res.pairs["score_baseline"][0]) > 1e-3  # the hooks are gone again
