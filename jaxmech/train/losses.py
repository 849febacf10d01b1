"""Ranking losses on groups of scores: pointwise, pairwise and MarginMSE.

Every loss takes the student's raw logits ``scores [Q, G]`` (Q groups of G documents of one query each),
the ``targets [Q, G]`` (teacher scores or labels) and a ``valid [Q, G]`` mask (False on padding slots), and
returns a scalar mean over the terms that exist. Pairwise losses use every ordered pair ``(i, j)`` of valid
documents of the same group:

===============  ==================================================  ========================================
``mse``          ``(s_i - t_i)^2``                                   regress teacher scores (pointwise)
``bce``          ``BCE(sigmoid(s_i), t_i)``, ``t_i`` in [0, 1]       labels or soft labels (pointwise)
``sigmoid_mse``  ``(sigmoid(s_i) - t_i)^2``                          the paper's F.2 fine-tuning loss
``ranknet``      ``softplus(-(s_i - s_j))`` for ``t_i > t_j``        Burges et al. 2005 (pairwise)
``margin``       ``relu(m - (s_i - s_j))`` for ``t_i > t_j``         hinge / margin ranking (pairwise)
``margin_mse``   ``((s_i - s_j) - (t_i - t_j))^2`` for ``i < j``     Hofstaetter et al. 2020 (distillation)
===============  ==================================================  ========================================

With ``G = 2`` and one (positive, negative) pair per group these are the textbook triple losses. The
pairwise losses ignore ties and are invariant to adding a constant to a group's scores.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float


def _masked_mean(x: Float[Array, "..."], mask: Bool[Array, "..."]) -> Float[Array, ""]:
    m = mask.astype(x.dtype)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def _pair_diffs(x: Float[Array, "Q G"]) -> Float[Array, "Q G G"]:
    """``x[q, i] - x[q, j]`` for every pair."""
    return x[:, :, None] - x[:, None, :]


def _pair_valid(valid: Bool[Array, "Q G"]) -> Bool[Array, "Q G G"]:
    return valid[:, :, None] & valid[:, None, :]


def mse(scores: Float[Array, "Q G"], targets: Float[Array, "Q G"], valid: Bool[Array, "Q G"]) -> Float[Array, ""]:
    """Pointwise squared error to the targets."""
    return _masked_mean(jnp.square(scores - targets), valid)


def bce(scores: Float[Array, "Q G"], targets: Float[Array, "Q G"], valid: Bool[Array, "Q G"]) -> Float[Array, ""]:
    """Pointwise binary cross-entropy of ``sigmoid(scores)`` against targets in [0, 1]."""
    return _masked_mean(optax.losses.sigmoid_binary_cross_entropy(scores, targets), valid)


def sigmoid_mse(
    scores: Float[Array, "Q G"], targets: Float[Array, "Q G"], valid: Bool[Array, "Q G"]
) -> Float[Array, ""]:
    """Squared error between ``sigmoid(scores)`` and targets in [0, 1] (notes §9 F.2)."""
    return _masked_mean(jnp.square(jax.nn.sigmoid(scores) - targets), valid)


def ranknet(scores: Float[Array, "Q G"], targets: Float[Array, "Q G"], valid: Bool[Array, "Q G"]) -> Float[Array, ""]:
    """``-log sigmoid(s_i - s_j)`` over pairs of a group whose targets order them ``t_i > t_j``."""
    keep = _pair_valid(valid) & (_pair_diffs(targets) > 0)
    return _masked_mean(jax.nn.softplus(-_pair_diffs(scores)), keep)


def margin_ranking(
    scores: Float[Array, "Q G"],
    targets: Float[Array, "Q G"],
    valid: Bool[Array, "Q G"],
    *,
    margin: float = 1.0,
) -> Float[Array, ""]:
    """``max(0, margin - (s_i - s_j))`` over pairs with ``t_i > t_j``."""
    keep = _pair_valid(valid) & (_pair_diffs(targets) > 0)
    return _masked_mean(jax.nn.relu(margin - _pair_diffs(scores)), keep)


def margin_mse(
    scores: Float[Array, "Q G"], targets: Float[Array, "Q G"], valid: Bool[Array, "Q G"]
) -> Float[Array, ""]:
    """MarginMSE: squared error between student and teacher score differences, each unordered pair once."""
    G = scores.shape[1]
    upper = jnp.triu(jnp.ones((G, G), bool), k=1)[None]
    keep = _pair_valid(valid) & upper
    return _masked_mean(jnp.square(_pair_diffs(scores) - _pair_diffs(targets)), keep)


LossFn = Callable[[Array, Array, Array], Array]


def get_loss(kind: str, *, margin: float = 1.0) -> LossFn:
    """The loss function named by ``[loss] kind``.

    Raises:
        ValueError: On an unknown name.
    """
    table: dict[str, LossFn] = {
        "mse": mse,
        "bce": bce,
        "sigmoid_mse": sigmoid_mse,
        "ranknet": ranknet,
        "margin_mse": margin_mse,
        "margin": lambda s, t, v: margin_ranking(s, t, v, margin=margin),
    }
    if kind not in table:
        raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(table)}")
    return table[kind]


POINTWISE_PROBABILITY_LOSSES = ("bce", "sigmoid_mse")
"""Losses whose targets must lie in [0, 1]."""
