"""Ranking losses: the textbook formulas for (positive, negative) pairs, masking, ties and invariances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmech.train.losses import bce, get_loss, margin_mse, margin_ranking, mse, ranknet, sigmoid_mse

S = jnp.array([[2.0, 0.5, -1.0], [0.3, 0.1, 0.0]])
T = jnp.array([[1.0, 3.0, 0.0], [2.0, 2.0, 5.0]])
V = jnp.array([[True, True, True], [True, True, False]])


def test_margin_mse_on_triples_is_the_textbook_formula():
    s = jnp.array([[2.0, 0.5], [0.0, 1.0]])
    t = jnp.array([[4.0, 1.0], [1.0, 0.0]])
    want = np.mean([((2.0 - 0.5) - (4.0 - 1.0)) ** 2, ((0.0 - 1.0) - (1.0 - 0.0)) ** 2])
    np.testing.assert_allclose(margin_mse(s, t, jnp.ones((2, 2), bool)), want, rtol=1e-6)


def test_margin_mse_counts_each_pair_of_a_group_once():
    want = [((S[0, i] - S[0, j]) - (T[0, i] - T[0, j])) ** 2 for i in range(3) for j in range(i + 1, 3)]
    want += [((S[1, 0] - S[1, 1]) - (T[1, 0] - T[1, 1])) ** 2]
    np.testing.assert_allclose(margin_mse(S, T, V), np.mean(want), rtol=1e-6)


def test_ranknet_uses_only_pairs_ordered_by_the_targets_and_ignores_ties():
    # group 0: t1 > t0 > t2; group 1: t0 == t1 (tie, ignored), doc 2 is padding
    pairs = [(1, 0), (1, 2), (0, 2)]
    want = [np.log1p(np.exp(-(S[0, i] - S[0, j]))) for i, j in pairs]
    np.testing.assert_allclose(ranknet(S, T, V), np.mean(want), rtol=1e-6)


def test_margin_ranking_is_a_hinge_on_ordered_pairs():
    pairs = [(1, 0), (1, 2), (0, 2)]
    want = [max(0.0, 1.0 - float(S[0, i] - S[0, j])) for i, j in pairs]
    np.testing.assert_allclose(margin_ranking(S, T, V, margin=1.0), np.mean(want), rtol=1e-6)


def test_pointwise_losses_average_over_valid_slots():
    keep = np.asarray(V)
    np.testing.assert_allclose(mse(S, T, V), np.mean(np.square(np.asarray(S - T))[keep]), rtol=1e-6)
    p = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    sig = 1 / (1 + np.exp(-np.asarray(S)))
    want_bce = -(np.asarray(p) * np.log(sig) + (1 - np.asarray(p)) * np.log(1 - sig))
    np.testing.assert_allclose(bce(S, p, V), want_bce[keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(sigmoid_mse(S, p, V), np.square(sig - np.asarray(p))[keep].mean(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["mse", "bce", "sigmoid_mse", "ranknet", "margin", "margin_mse"])
def test_padding_slots_do_not_affect_the_loss_or_receive_gradient(kind):
    fn = get_loss(kind)
    t = jnp.clip(T / 5.0, 0.0, 1.0)
    changed = S.at[1, 2].set(123.0)
    np.testing.assert_allclose(fn(S, t, V), fn(changed, t, V), rtol=1e-6)
    g = jax.grad(fn)(S, t, V)
    assert g[1, 2] == 0.0 and np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("kind", ["ranknet", "margin", "margin_mse"])
def test_pairwise_losses_ignore_a_constant_shift_of_a_group(kind):
    fn = get_loss(kind)
    shifted = S + jnp.array([[5.0], [-3.0]])
    np.testing.assert_allclose(fn(S, T, V), fn(shifted, T, V), rtol=1e-5)


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'listnet'"):
        get_loss("listnet")
