"""Pair tokenisation: identical to the Hugging Face tokenizer, bucketed, truncation reported, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmech.hf.tokenizer import PairTokenizer, TruncationError, bucket_length, pad_sequences

QUERIES = ["what is the acceptance rate at wellesley", "how do tides form", "mitochondria function"]
DOCS = ["College acceptance rates in the USA are becoming more competitive.",
        "Tides are caused by the gravitational pull of the moon and the sun on the oceans of the earth.",
        "The mitochondrion produces ATP."]


def test_pairs_match_the_hf_tokenizer_exactly(tokenizer):
    enc = tokenizer.encode_pairs(QUERIES, DOCS)
    ref = tokenizer.hf(QUERIES, DOCS, padding="longest")
    n = np.asarray(ref["attention_mask"]).shape[1]
    np.testing.assert_array_equal(enc.input_ids[:, :n], ref["input_ids"])
    np.testing.assert_array_equal(enc.token_type_ids[:, :n], ref["token_type_ids"])
    np.testing.assert_array_equal(enc.attention_mask[:, :n], ref["attention_mask"])
    assert enc.input_ids.shape[1] in tokenizer.buckets and not enc.attention_mask[:, n:].any()
    assert enc.truncations == []
    # the paper's demo: 21 tokens before filler alignment
    assert enc.lengths[0] == 21 and enc.query_lengths[0] == 7


def test_bucketing_bounds_the_number_of_shapes():
    assert bucket_length(5, (16, 32), 512) == 16
    assert bucket_length(17, (16, 32), 512) == 32
    assert bucket_length(40, (16, 32), 512) == 512
    assert bucket_length(40, (16, 32), 48) == 48
    ids, tt, mask = pad_sequences([[1, 2, 3], [4]], [[0, 0, 1], [0]], pad_id=0, buckets=(8,))
    assert ids.shape == (2, 8) and mask.sum() == 4
    with pytest.raises(ValueError, match="sequence 0 has 3 tokens, more than max_length=2"):
        pad_sequences([[1, 2, 3]], [[0, 0, 0]], pad_id=0, max_length=2)


def test_truncation_is_reported_and_matches_hf(minilm_path):
    tok = PairTokenizer.from_pretrained(minilm_path, max_length=24)
    long_doc = " ".join(["tides"] * 40)
    enc = tok.encode_pairs(QUERIES[:2], [DOCS[0], long_doc])
    assert [t.index for t in enc.truncations] == [1]
    t = enc.truncations[0]
    assert t.query_tokens_cut == 0 and t.doc_tokens_cut == 40 + 4 + 3 - 24 and t.original_length == 47
    ref = tok.hf(QUERIES[1], long_doc, truncation="longest_first", max_length=24)["input_ids"]
    np.testing.assert_array_equal(enc.input_ids[1, :24], ref)
    # longest_first cuts the query too when it is the longer one
    long_query = " ".join(["moon"] * 30)
    enc = tok.encode_pairs([long_query], [DOCS[0]])
    assert enc.truncations[0].query_tokens_cut > 0
    ref = tok.hf(long_query, DOCS[0], truncation="longest_first", max_length=24)["input_ids"]
    np.testing.assert_array_equal(enc.input_ids[0, :24], ref)


def test_truncation_error_mode_refuses(minilm_path):
    tok = PairTokenizer.from_pretrained(minilm_path, max_length=16, truncation="error")
    with pytest.raises(TruncationError, match=r"pair 0: 21 tokens \(7 query \+ 11 document \+ 3 special\) exceed "
                       r"max_length=16"):
        tok.encode_pairs([QUERIES[0]], [DOCS[1][:40] + " and more and more"])
    with pytest.raises(TruncationError, match="text 0"):
        tok.encode_texts([DOCS[1]])


def test_empty_query_or_document_is_refused(tokenizer):
    with pytest.raises(ValueError, match="pair 1: the query '  ' is empty"):
        tokenizer.encode_pairs(["a query", "  "], ["doc", "doc"])
    with pytest.raises(ValueError, match="pair 0: the document '' is empty"):
        tokenizer.encode_pairs(["a query"], [""])
    with pytest.raises(ValueError, match="2 queries but 1 documents"):
        tokenizer.encode_pairs(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="text 0"):
        tokenizer.encode_texts([""])


def test_texts_are_single_segments(tokenizer):
    enc = tokenizer.encode_texts(DOCS)
    ref = tokenizer.hf(DOCS, padding="longest")
    n = np.asarray(ref["attention_mask"]).shape[1]
    np.testing.assert_array_equal(enc.input_ids[:, :n], ref["input_ids"])
    assert not enc.token_type_ids.any()
