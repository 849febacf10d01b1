"""Soft-TF and the matching-head detector recover a head planted to attend to exact matches."""

from __future__ import annotations

import numpy as np
import pytest
from planted import MATCH_HEAD, FakeTokenizer, exact_match_model, tf_inputs

from jaxmech.analysis.circuit import match_scores, match_targets, top_heads_of
from jaxmech.analysis.common import PairInputs, attention_to, mean_ci
from jaxmech.analysis.soft_tf import head_curves, term_attention


def _typed_inputs(qs, ds):
    """Inputs whose first query token is the term: Qplus, and its document copies Dplus."""
    inputs = PairInputs.from_pieces(FakeTokenizer(), qs, ds)
    for i, (q, d) in enumerate(zip(qs, ds, strict=True)):
        t = q[0]
        types = inputs.token_types[i]
        types[1] = "Qplus"
        for j, tok in enumerate(d):
            if tok == t:
                types[len(q) + 2 + j] = "Dplus"
    return inputs


@pytest.fixture(scope="module")
def model():
    return exact_match_model()


def test_saturation_curve_of_the_planted_head(model):
    qs, ds, xs = tf_inputs()
    inputs = _typed_inputs(qs, ds)
    values = term_attention(model, inputs, src=("Qplus",), dst=("Dplus",))
    curves = head_curves(values, xs, list(range(6)), [MATCH_HEAD, (1, 1)])
    got = np.asarray(curves["heads"]["0.0"]["mean"])
    want = np.arange(6) / (np.arange(6) + 1)  # m document copies + the query copy share the attention
    np.testing.assert_allclose(got, want, atol=0.02)
    lo, hi = np.asarray(curves["heads"]["0.0"]["lo"]), np.asarray(curves["heads"]["0.0"]["hi"])
    assert np.all(lo <= got + 1e-9) and np.all(got <= hi + 1e-9)
    other = np.asarray(curves["heads"]["1.1"]["mean"])
    assert np.all(other[1:] < 0.5 * got[1:])  # a random head does not saturate towards 1
    assert curves["_all"].shape == (6, 2, 2)


def test_detector_ranks_the_planted_head_first(model):
    qs, ds, _ = tf_inputs(n_docs=4)
    keep = [i for i, d in enumerate(ds) if qs[i][0] in d]
    inputs = PairInputs.from_pieces(FakeTokenizer(), [qs[i] for i in keep], [ds[i] for i in keep])
    scores = match_scores(model, inputs)
    assert scores.shape == (2, 2)
    assert top_heads_of(scores, 1) == [MATCH_HEAD]
    assert scores[MATCH_HEAD] > 0.4
    others = np.delete(scores.ravel(), 0)
    assert np.all(np.abs(others) < 0.1)


def test_match_targets_rows_sum_to_zero_without_matches():
    ids = [1, 5, 6, 2, 5, 9, 9, 2]
    types = ["CLS", "Qsub", "Qsub", "SEP1", "Dother", "Dother", "Dother", "SEP2"]
    t = match_targets(ids, types)
    assert t[1, 4] == pytest.approx(1 - 1 / 3)  # token 5 matches position 4; uniform share 1/3 removed
    np.testing.assert_allclose(t[1].sum(), 0.0, atol=1e-6)  # a uniform head scores 0
    assert not t[2].any()  # token 6 has no match
    assert not t[0].any() and not t[4].any()  # only query rows


def test_attention_to_equals_pattern_sums(model):
    """The device-side reduction equals the captured pattern, summed on the host (an independent path)."""
    import jax
    import jax.numpy as jnp

    fwd = jax.jit(lambda m, ids, tt: m(ids, tt, capture=("pattern",)))
    qs, ds, _ = tf_inputs(n_docs=1)
    inputs = PairInputs.from_pieces(FakeTokenizer(), qs[:3], ds[:3])
    rng = np.random.default_rng(0)
    targets = [rng.random((len(s), len(s))).astype(np.float32) for s in inputs.ids]
    mass, score = attention_to(model, inputs.ids, inputs.types, targets, batch_size=2, with_score=True)
    for i, ids in enumerate(inputs.ids):
        out = fwd(model, jnp.asarray([ids]), jnp.asarray([inputs.types[i]]))
        pat = np.asarray(out.cache["pattern"][0])
        want = np.einsum("lhqk,qk->lhq", pat, targets[i])
        np.testing.assert_allclose(mass[i, :, :, : len(ids)], want, rtol=1e-5, atol=1e-6)
        assert score[i] == pytest.approx(float(out.score[0]), abs=1e-5)


def test_mean_ci_known_values():
    v = np.array([1.0, 2.0, 3.0, np.nan])
    m, lo, hi = mean_ci(v)
    assert m == pytest.approx(2.0)
    assert hi - m == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))  # t(0.975, 2) * sd / sqrt(n)
    m1, lo1, hi1 = mean_ci(np.array([5.0]))
    assert m1 == lo1 == hi1 == 5.0
