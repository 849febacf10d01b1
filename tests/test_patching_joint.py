"""``heads_joint``: head groups patched together, checked against the single-head family, hand-written
PatchSpecs (one per layer) and a loop over groups."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, forward_jit, head_group_specs, random_pairs, tiny_lm

from jaxmech.patching import batch_pairs, run_patching
from jaxmech.patching.families import REGISTRY, check_groups, describe_families
from jaxmech.patching.joint import heads_joint
from jaxmech.patching.run import check_request

GROUPS = [["0.1", "2.3"], ["1.0", "1.4", "2.2"], ["2.3"]]


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_lm(tiny_model)


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return random_pairs(3, tiny_model.cfg.d_vocab, seed=11)


def test_registered_and_checked():
    fam = REGISTRY["heads_joint"]
    assert fam.axes == ("group",) and fam.needs_groups and not fam.is_path
    assert any(r["name"] == "heads_joint" for r in describe_families())
    assert check_groups(["1.0, 2.1", [(0, 1)]]) == (((1, 0), (2, 1)), ((0, 1),))
    with pytest.raises(ValueError, match="no head groups"):
        check_request(["heads_joint"])
    with pytest.raises(ValueError, match="group 0 lists a head twice"):
        check_groups([["1.1", "1.1"]])
    with pytest.raises(ValueError, match="head 3.0 of group 1 is out of range"):
        check_request(["heads_joint"], groups=[["1.1"], ["3.0"]], model_shape=(3, 5))


def test_group_of_one_head_equals_head_all_pos_z(lm, pairs):
    L, H = lm.model.cfg.n_layers, lm.model.cfg.n_heads
    groups = [[f"{layer}.{head}"] for layer in range(L) for head in range(H)]
    res = run_patching(lm, pairs, ["heads_joint", "head_all_pos_z"], metric="raw", groups=groups)
    assert res.raw["heads_joint"].shape == (len(pairs), L * H) and res.meta["groups"] == groups
    np.testing.assert_allclose(res.raw["heads_joint"], res.raw["head_all_pos_z"].reshape(len(pairs), -1),
                               atol=ENGINE_ATOL, rtol=0)


def test_joint_equals_manual_patchspecs_and_vmap_equals_loop(lm, pairs):
    model = lm.model
    batch = batch_pairs(pairs, buckets=(16, 32), max_length=model.cfg.n_ctx)
    res = heads_joint(model, batch, GROUPS)
    loop = np.stack([heads_joint(model, batch, [g]).patched[:, 0] for g in GROUPS], 1)
    np.testing.assert_allclose(res.patched, loop, atol=ENGINE_ATOL, rtol=0)
    for i, p in enumerate(pairs):
        ids, tt = jnp.asarray(p.baseline_ids), jnp.asarray(p.baseline_token_type_ids)
        mask = jnp.ones_like(ids)
        z = forward_jit(model, jnp.asarray(p.perturbed_ids), jnp.asarray(p.perturbed_token_type_ids), mask, [],
                        capture=frozenset({"z"}))[1]["z"]
        for g, group in enumerate(check_groups(GROUPS)):
            ref = forward_jit(model, ids, tt, mask, head_group_specs(model, group, z))[0]
            np.testing.assert_allclose(res.patched[i, g], ref, atol=ENGINE_ATOL, rtol=0)
    assert np.abs(res.patched - res.baseline_score[:, None]).max() > 1e-3  # patches matter
