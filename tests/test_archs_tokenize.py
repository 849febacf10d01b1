"""Pair formats of BPE / SentencePiece / WordPiece tokenizers (built locally, nothing downloaded): jaxmech's
batches equal the Hugging Face tokenizer's own pair encoding, truncation included; each tokenizer's filler; and
end to end, a checkpoint folder with its tokenizer scores pairs as ``transformers`` does."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from arch_checkpoints import TINY_ARCHS, TOKENIZERS, arch_checkpoint
from conftest import PARITY_ATOL

from jaxmech.hf.tokenizer import PairFormat, PairTokenizer

QUERIES = ["what is the capital of france", "a cat", "how many people live in paris"]
DOCS = ["paris is the capital and largest city of france", "a cat sat on a mat",
        "the population of france is about sixty eight million a lazy afternoon"]
FILLER_PIECE = {"electra": "a", "roberta": "Ġa", "xlm-roberta": "▁a", "modernbert": "Ġa"}
LAYOUT = {"electra": ("[CLS]", "[SEP]", "[SEP]", (0, 0, 0, 1, 1)),
          "modernbert": ("[CLS]", "[SEP]", "[SEP]", (0, 0, 0, 1, 1)),
          "roberta": ("<s>", "</s></s>", "</s>", (0,) * 5), "xlm-roberta": ("<s>", "</s></s>", "</s>", (0,) * 5)}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tok(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tok-{request.param}")
    TOKENIZERS[request.param](folder)
    return request.param, folder, PairTokenizer.from_pretrained(folder)


def test_pair_format_is_read_off_the_post_processor(tok):
    name, _, t = tok
    prefix, middle, suffix, types = LAYOUT[name]
    names = lambda ids: "".join(t.hf.convert_ids_to_tokens(list(ids)))
    assert (names(t.format.prefix), names(t.format.middle), names(t.format.suffix)) == (prefix, middle, suffix)
    assert t.format.types == types
    assert t.format.n_special == (3 if name in ("electra", "modernbert") else 4)


def test_batches_equal_the_tokenizers_own_pair_encoding(tok):
    name, _, t = tok
    enc = t.encode_pairs(QUERIES, DOCS)
    ref = t.hf(QUERIES, DOCS, padding="max_length", max_length=enc.input_ids.shape[1], return_token_type_ids=True)
    np.testing.assert_array_equal(enc.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, ref["attention_mask"])
    np.testing.assert_array_equal(enc.token_type_ids * enc.attention_mask,
                                  np.asarray(ref["token_type_ids"]) * enc.attention_mask)
    assert (enc.input_ids[enc.attention_mask == 0] == t.pad_id).all()
    pad = {"electra": 0, "modernbert": t.hf.convert_tokens_to_ids("[PAD]")}.get(name, 1)
    assert t.pad_id == pad and (name != "modernbert" or pad == len(t.hf) - 2)  # ModernBERT: [PAD] near the end
    for i in range(len(QUERIES)):
        q, d = t.split_pair_ids(enc.input_ids[i, : enc.lengths[i]].tolist())
        assert (q, d) == tuple(t.word_pieces([QUERIES[i], DOCS[i]]))
        assert t.pair_ids(q, d)[0] == enc.input_ids[i, : enc.lengths[i]].tolist()


def test_truncation_matches_the_tokenizer_and_is_reported(tok):
    _, folder, _ = tok
    t = PairTokenizer.from_pretrained(folder, max_length=14)
    enc = t.encode_pairs(QUERIES, DOCS)
    for i in range(len(QUERIES)):
        ref = t.hf(QUERIES[i], DOCS[i], truncation="longest_first", max_length=14)["input_ids"]
        assert enc.input_ids[i, : enc.lengths[i]].tolist() == ref
    n_q, n_d = map(len, zip(*[t.word_pieces([q, d]) for q, d in zip(QUERIES, DOCS, strict=True)], strict=True))
    assert enc.truncations, "the long pairs must be reported"
    for tr in enc.truncations:
        kept_q, kept_d = t.split_pair_ids(enc.input_ids[tr.index, : enc.lengths[tr.index]].tolist())
        full_q, full_d = t.word_pieces([QUERIES[tr.index], DOCS[tr.index]])
        assert (tr.query_tokens_cut, tr.doc_tokens_cut) == (len(full_q) - len(kept_q), len(full_d) - len(kept_d))
        assert tr.original_length == len(full_q) + len(full_d) + t.format.n_special


def test_single_texts_equal_the_tokenizers_encoding(tok):
    _, _, t = tok
    enc = t.encode_texts(DOCS)
    ref = t.hf(DOCS, padding="max_length", max_length=enc.input_ids.shape[1])
    np.testing.assert_array_equal(enc.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, ref["attention_mask"])


def test_filler_is_the_tokenizers_piece_for_a_in_running_text(tok):
    name, _, t = tok
    assert t.hf.convert_ids_to_tokens([t.filler_id]) == [FILLER_PIECE[name]]
    assert t.word_pieces(["the cat sat on a mat"])[0].count(t.filler_id) == 1


def test_document_only_keeps_the_document_in_the_tokenizers_single_text_layout(tok):
    """``<s> q </s></s> d </s>`` becomes ``<s> d </s>`` (not ``<s> </s> d </s>``), ``[CLS] q [SEP] d [SEP]``
    becomes ``[CLS] d [SEP]``; the position map follows the document tokens, also when they are shifted."""
    from jaxmech.data.align import align_with_filler, document_only
    from jaxmech.data.records import AlignedPair
    from jaxmech.patching.inputs import model_pairs

    name, _, t = tok
    pair = align_with_filler(t, QUERIES[0], DOCS[0], DOCS[0] + " a cat sat")
    doc = document_only(pair, t)
    n_fill = len(t.word_pieces([DOCS[0] + " a cat sat"])[0]) - len(t.word_pieces([DOCS[0]])[0])
    assert doc.baseline_ids == t.hf(DOCS[0])["input_ids"][:-1] + [t.filler_id] * n_fill + [t.sep_id]
    assert doc.perturbed_ids == t.hf(DOCS[0] + " a cat sat")["input_ids"]
    assert doc.position_map == list(range(len(doc.baseline_ids)))
    assert doc.baseline_token_type_ids == [0] * len(doc.baseline_ids)
    assert model_pairs([pair], t, pair_input=False) == [doc] and model_pairs([pair], t, pair_input=True) == [pair]
    # a perturbed query one piece longer shifts every perturbed document position by one
    q, d = t.word_pieces([QUERIES[1], DOCS[1]])
    b_ids, b_tt = t.pair_ids(q, d)
    p_ids, p_tt = t.pair_ids([*q, q[-1]], d)
    start = len(t.format.prefix) + len(q)
    pmap = [0, *([-1] * (start - 1)), *range(start + 1, len(p_ids))]
    shifted = document_only(AlignedPair(b_ids, b_tt, p_ids, p_tt, pmap, token_types=list(range(len(b_ids)))), t)
    assert shifted.baseline_ids == shifted.perturbed_ids == t.hf(DOCS[1])["input_ids"]
    assert shifted.position_map == list(range(len(shifted.baseline_ids)))
    assert shifted.token_types == [0, *range(start + len(t.format.middle), len(b_ids))]
    if name in ("electra", "modernbert"):  # the old call with a bare sep id still means [CLS] q [SEP] d [SEP]
        assert document_only(pair, t.sep_id) == doc
    with pytest.raises(ValueError, match="baseline input is not a pair of this layout"):
        document_only(dataclasses.replace(pair, baseline_ids=pair.baseline_ids[1:]), t)


def test_unknown_pair_layouts_are_refused_naming_the_tokenizer(tok):
    _, _, t = tok

    class Scrambled:  # a post-processor that drops the document
        all_special_ids = t.hf.all_special_ids

        def __call__(self, a, b=None, **kw):
            if isinstance(a, list):
                return t.hf(a, **kw)
            return t.hf(a, **kw) if b is None else t.hf(a, a, **kw)

    with pytest.raises(ValueError, match="Scrambled: cannot find the probe"):
        PairFormat.detect(Scrambled())


@pytest.mark.torch
@pytest.mark.parametrize("model_type", ["electra", "roberta", "xlm-roberta"])
def test_a_folder_with_its_tokenizer_scores_pairs_as_transformers(tmp_path, model_type):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from jaxmech.hf.loading import load_model

    hf_tok = TOKENIZERS[model_type](tmp_path / "tok")
    sizes = dict(TINY_ARCHS[model_type][1], vocab_size=len(hf_tok))
    folder = arch_checkpoint(tmp_path / "model", model_type, sizes, seed=9, init=0.2)
    hf_tok.save_pretrained(str(folder))
    lm = load_model(folder, use_cache=False)
    enc = lm.tokenizer.encode_pairs(QUERIES, DOCS)
    ours = np.asarray(lm.model(*map(jnp.asarray, enc.arrays)).score)
    hf = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    ref_inputs = AutoTokenizer.from_pretrained(str(folder))(QUERIES, DOCS, padding=True, truncation="longest_first",
                                                            max_length=lm.tokenizer.max_length, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**ref_inputs).logits[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=PARITY_ATOL, rtol=0)
    assert np.ptp(ref) > 1e-3, "the pairs must get different scores"
    with pytest.raises(ValueError, match="exceeds the model's maximum of 48"):
        lm.model(jnp.ones((1, 49), jnp.int32))
