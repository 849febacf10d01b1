"""Patching on ELECTRA, RoBERTa and XLM-RoBERTa cross-encoders: the vmapped, restarted sweeps equal a loop of
single patches (the definition), agree with the independent PyTorch forward-hook implementation on the same
checkpoint, path patching included, and attribution is the derivative of the exact patch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arch_checkpoints import TINY_ARCHS, arch_checkpoint
from conftest import ENGINE_ATOL, PARITY_ATOL
from conftest import forward_jit as _forward
from test_patching import _as_canonical, _loop_reference

from jaxmech.hf.loading import load_model
from jaxmech.patching import (
    AlignedPair,
    PatchSpec,
    activation_patch,
    attribution_patch,
    batch_pairs,
    one_hot,
    path_to_heads,
    path_to_score,
)
from jaxmech.patching.caches import run_cached

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ARCHS = ("electra-proj", "roberta", "xlm-roberta")  # ELECTRA with the projection covers plain ELECTRA's blocks
# Special ids of the two pair layouts (ids below 10 are reserved; the filler is 7).
LAYOUTS = {"bert": ((1,), (2,), (2,), (0, 0, 0, 1, 1)), "roberta": ((0,), (2, 2), (2,), (0, 0, 0, 0, 0))}


def random_pairs(n_pairs, vocab, layout, *, seed=0, q_len=(3, 5), d_len=(5, 12), inject=2, filler=7):
    """Random aligned pairs in a layout: the perturbed document ends with ``inject`` query tokens where the
    baseline has fillers (the paper's TFC1 shape)."""
    prefix, middle, suffix, types = LAYOUTS[layout]
    rng = np.random.RandomState(seed)
    pairs = []
    for i in range(n_pairs):
        q = list(rng.randint(10, vocab, rng.randint(*q_len)))
        d = list(rng.randint(10, vocab, rng.randint(*d_len)))
        base_regions = (prefix, q, middle, d + [filler] * inject, suffix)
        pert_regions = (prefix, q, middle, d + q[:inject], suffix)
        base, pert = ([t for r in regions for t in r] for regions in (base_regions, pert_regions))
        tt = [t for r, t in zip(base_regions, types, strict=True) for _ in r]
        pairs.append(AlignedPair(base, tt, pert, tt, list(range(len(base))), f"p{i}"))
    return pairs


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory):
    """(name, jaxmech model, HF model, batch of two pairs, pad id) for a tiny random checkpoint."""
    from transformers import AutoModelForSequenceClassification

    model_type, sizes = TINY_ARCHS[request.param]
    path = arch_checkpoint(tmp_path_factory.mktemp(request.param), model_type, sizes, seed=11, init=0.2)
    model = load_model(path, use_cache=False).model
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    layout = "bert" if model_type == "electra" else "roberta"
    pairs = random_pairs(2, model.cfg.d_vocab, layout, seed=1)
    batch = batch_pairs(pairs, pad_id=model.cfg.pad_token_id, buckets=(24, 32), max_length=model.cfg.max_length)
    return request.param, model, hf, batch


def _inputs(batch, p, which="baseline"):
    return [jnp.asarray(a[p]) for a in getattr(batch, which)]


def test_padding_uses_the_models_pad_id(arch):
    _, model, _, batch = arch
    ids, _, mask = batch.baseline
    assert (mask == 0).any() and (ids[mask == 0] == model.cfg.pad_token_id).all()


def test_zero_mask_is_the_unpatched_run_and_a_full_patch_is_the_source_run(arch):
    _, model, _, batch = arch
    L = model.cfg.n_layers
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset({"resid_pre"}))
    for p in range(2):
        clean, _ = _forward(model, *_inputs(batch, p), [])
        zero = PatchSpec("resid_pre", src["resid_pre"][p], jnp.zeros(L), None)
        assert np.array_equal(np.asarray(_forward(model, *_inputs(batch, p), [zero])[0]), np.asarray(clean))
        full = PatchSpec("resid_pre", src["resid_pre"][p], one_hot(0, L), None)
        np.testing.assert_allclose(_forward(model, *_inputs(batch, p), [full])[0],
                                   _forward(model, *_inputs(batch, p, "perturbed"), [])[0], atol=ENGINE_ATOL, rtol=0)


def _slow(*families):
    return [pytest.param(f, marks=pytest.mark.slow) for f in families]


# The engine is architecture-independent past the embeddings (tests/test_patching.py runs every family on
# BERT); the default suite keeps one family per kind of restart here and marks the rest slow (2-core CPU).
@pytest.mark.parametrize("family", ["head_by_pos_z", *_slow("block_every", "head_by_pos_pattern", "head_all_pos_v",
                                                            "resid_mid_by_pos", "head_by_pos_result")])
def test_vmapped_restarted_sweep_equals_a_loop_of_single_patches(arch, family):
    _, model, _, batch = arch
    cfg = model.cfg
    result = activation_patch(model, batch, family, chunk_size=7)
    expected = _loop_reference(model, batch, family)
    got = _as_canonical(result, family, cfg.n_layers, batch.n_pos, cfg.n_heads)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), "patched exactly the patchable sites"
    np.testing.assert_allclose(got, expected, atol=ENGINE_ATOL, rtol=0)
    assert np.nanmax(np.abs(got - result.baseline_score[:, None, None, None, None])) > 1e-3, "visible effects"


@pytest.fixture(scope="module")
def torch_setup(arch):
    from benchmarks.baselines.torch_hooks import TorchPatcher

    name, model, hf, batch = arch
    p = 0
    n = int(batch.lengths[p])
    base_inputs = tuple(a[p, :n].tolist() for a in batch.baseline)
    pert_inputs = tuple(a[p, :n].tolist() for a in batch.perturbed)
    patcher = TorchPatcher(hf)
    one = batch_pairs([_pair_of(batch, p)], pad_id=model.cfg.pad_token_id, buckets=(n,), max_length=n)
    return patcher, one, base_inputs, pert_inputs, patcher.cache(base_inputs), patcher.cache(pert_inputs)


def _pair_of(batch, p):
    n = int(batch.lengths[p])
    b, pt = ([a[p, :n].tolist() for a in side[:2]] for side in (batch.baseline, batch.perturbed))
    return AlignedPair(b[0], b[1], pt[0], pt[1], list(range(n)), "p0")


def test_scores_agree_with_the_torch_model(arch, torch_setup):
    _, model, _, _ = arch
    patcher, one, base_inputs, pert_inputs, _, _ = torch_setup
    res = activation_patch(model, one, "mlp_out_all_pos")
    np.testing.assert_allclose(res.baseline_score[0], patcher.score(base_inputs), atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(res.perturbed_score[0], patcher.score(pert_inputs), atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("family", ["head_by_pos_z", "head_all_pos_v",
                                    *_slow("block_every", "head_all_pos_z", "head_by_pos_pattern")])
def test_activation_patching_matches_the_hook_implementation(arch, torch_setup, family):
    _, model, _, _ = arch
    patcher, one, base_inputs, _, _, src = torch_setup
    ours = activation_patch(model, one, family).patched[0]
    ref = {"block_every": lambda: patcher.block_every(base_inputs, src),
           "head_all_pos_z": lambda: patcher.head_all_pos(base_inputs, src, "z"),
           "head_all_pos_v": lambda: patcher.head_all_pos(base_inputs, src, "v"),
           "head_by_pos_z": lambda: patcher.head_by_pos_z(base_inputs, src),
           "head_by_pos_pattern": lambda: patcher.head_by_pos_pattern(base_inputs, src)}[family]()
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)


def test_path_patching_matches_the_hook_implementation(arch, torch_setup):
    _, model, _, _ = arch
    patcher, one, base_inputs, _, base, src = torch_setup
    ours = path_to_score(model, one).patched[0]
    ref = patcher.path_to_score(base_inputs, base, src)
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)
    assert np.abs(ref - patcher.score(base_inputs)).max() > 1e-3, "senders must have visible effects"
    receivers = [(2, 1), (2, 3)]
    ours = path_to_heads(model, one, receivers, "q").patched[0]
    np.testing.assert_allclose(ours, patcher.path_to_heads(base_inputs, base, src, receivers, "q"),
                               atol=PARITY_ATOL, rtol=0)


def test_attribution_is_the_derivative_of_the_patch_at_zero(arch):
    _, model, _, batch = arch
    cfg = model.cfg
    L, H, T = cfg.n_layers, cfg.n_heads, batch.n_pos
    est = attribution_patch(model, batch, "head_by_pos_z")
    _, src = run_cached(model, *map(jnp.asarray, batch.perturbed), capture=frozenset({"z"}))
    rng = np.random.RandomState(0)
    for p in range(2):
        inputs = _inputs(batch, p)
        for _ in range(4):
            layer, pos, head = rng.randint(L), rng.randint(batch.lengths[p]), rng.randint(H)
            if not batch.patchable[p, pos]:
                continue

            def score(alpha, p=p, layer=layer, pos=pos, head=head, inputs=inputs):
                spec = PatchSpec("z", src["z"][p], one_hot(layer, L), one_hot(pos, T), one_hot(head, H), alpha)
                return model.forward_one(*inputs, interventions=[spec]).score

            _, deriv = jax.jvp(score, (0.0,), (1.0,))
            np.testing.assert_allclose(est.patched[p, layer, pos, head] - est.baseline_score[p], deriv,
                                       atol=ENGINE_ATOL, rtol=1e-4)
