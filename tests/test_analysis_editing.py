"""IDF-direction editing: the edit moves exactly the chosen rows to the planted U_0 coordinate; nDCG_f ranks by
score (the reference bug fixed); editing curves run end to end on a planted model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmech.analysis.editing import (
    edit_rows,
    edit_u0,
    editing_curves,
    mean_ndcg_f,
    measure,
    ndcg_f,
    with_embedding,
)
from jaxmech.analysis.idf_svd import embedding_svd


def _W(seed=0, n=200, d=16):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("direction,sign", [("increase", -1.0), ("decrease", 1.0)])
def test_u0_edit_sets_the_coordinate_and_only_those_rows(direction, sign):
    W = _W()
    svd = embedding_svd(W)
    ids = [3, 17, 150]
    W2 = edit_u0(W, svd, ids, 2.5, direction)
    coords = (W2 - svd.mean) @ svd.Vt.T / svd.S  # U coordinates of the edited matrix in the original basis
    np.testing.assert_allclose(coords[ids, 0], sign * 2.5 * np.abs(svd.U[ids, 0]), rtol=1e-10)
    np.testing.assert_allclose(coords[ids, 1:], svd.U[ids, 1:], atol=1e-10)  # other components untouched
    others = np.setdiff1d(np.arange(len(W)), ids)
    np.testing.assert_array_equal(W2[others], W[others])


def test_row_control_and_errors():
    W = _W()
    W2 = edit_rows(W, [5], 3.0, "increase")
    np.testing.assert_allclose(W2[5], -3.0 * W[5])
    np.testing.assert_array_equal(np.delete(W2, 5, 0), np.delete(W, 5, 0))
    np.testing.assert_allclose(edit_rows(W, [5], 3.0, "decrease")[5], 3.0 * W[5])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        edit_rows(W, [200], 1.0)
    with pytest.raises(ValueError, match="direction"):
        edit_u0(W, embedding_svd(W), [1], 1.0, "up")


def test_ndcg_f_ranks_by_score():
    labels = ["S", "F", "P"]
    assert ndcg_f([0.5, 0.1, 0.9], labels) == pytest.approx(1.0)  # P, S, F: ideal
    assert ndcg_f([0.5, 0.9, 0.1], labels) == pytest.approx(0.0)  # F, S, P: worst
    mid = ndcg_f([0.9, 0.1, 0.5], labels)  # S, P, F
    assert 0 < mid < 1
    # the reference code's bug: the result did not depend on the scores; here it must
    assert len({ndcg_f(s, labels) for s in ([3, 2, 1], [1, 2, 3], [2, 3, 1])}) == 3
    assert ndcg_f([1.0], ["F"]) == 0.0 and ndcg_f([1.0], ["P"]) == 1.0
    assert mean_ndcg_f([0.5, 0.1, 0.9, 1.0], labels + ["F"], [0, 0, 0, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no gain"):
        ndcg_f([1, 2], ["S", "X"])


def test_with_embedding_changes_only_inputs_with_edited_tokens():
    from planted import exact_match_model

    model = exact_match_model()
    W = np.asarray(model.embed.W_E[...], np.float64)
    edited = with_embedding(model, edit_rows(W, [5], 2.0, "increase"))  # a sign flip (LN removes scale)
    f = jax.jit(lambda m, ids: m(ids).score)
    without = jnp.asarray([[1, 3, 4, 2, 9, 10, 2]])
    with_ = jnp.asarray([[1, 5, 4, 2, 9, 5, 2]])
    assert float(f(edited, without)[0]) == float(f(model, without)[0])
    assert float(f(edited, with_)[0]) != float(f(model, with_)[0])
    assert float(f(model, with_)[0]) == float(f(exact_match_model(), with_)[0])  # the original is untouched


def test_editing_curves_end_to_end():
    from planted import exact_match_model

    from jaxmech.data.records import AlignedPair

    model = exact_match_model()
    pairs = []
    for i in range(3):
        q = [3 + i, 4, 8]
        d = [10, 11, 12 + i]
        base = [1, *q, 2, *d, 20, 2]
        pert = [1, *q, 2, *d, q[0], 2]
        tt = [0] * 5 + [1] * 5
        types = ["CLS", "Qplus", "Qsub", "Qsub", "SEP1", "Dother", "Dother", "Dother", "Dinj", "SEP2"]
        pairs.append(AlignedPair(base, tt, pert, tt, list(range(10)), kind="tfc1", qid=f"q{i}", doc_id="d", query="q",
                                 baseline_doc="b", perturbed_doc="p", token_types=types))
    out = editing_curves(model, pairs, heads=["0.0"], scales=(1.0, 3.0))
    assert out["conditions"] == ["u0_increase", "u0_decrease", "row_increase", "row_decrease"]
    assert set(out["cls_attention"]) == {"0.0"} and len(out["cls_attention"]["0.0"]) == 2
    assert out["edited_tokens"] == ["3", "4", "5"]
    ref = measure(model, None, pairs, [(0, 0)])
    assert out["unedited"]["gain"] == pytest.approx(float(np.mean(ref["perturbed"] - ref["baseline"])), abs=1e-6)
    # the planted head: [CLS] is a different token, so its attention to the term is small and finite
    assert all(0 <= v < 0.5 for v in out["cls_attention"]["0.0"])
    for cond in out["score"].values():
        assert len(cond["mean"]) == 2 and all(
            lo <= m <= hi for lo, m, hi in zip(cond["lo"], cond["mean"], cond["hi"], strict=True)
        )
