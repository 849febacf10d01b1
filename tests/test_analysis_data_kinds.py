"""E7 (highest-IDF query word moved to the front) and LNC1 realignment without fillers."""

from __future__ import annotations

import pytest

from jaxmech.data.analysis_kinds import build_idf_front, idf_front_query, realign
from jaxmech.data.records import DataError, DiagnosticSource

IDF = {
    "what": 0.1,
    "is": 0.05,
    "the": 0.01,
    "acceptance": 2.0,
    "rate": 1.0,
    "at": 0.05,
    "wellesley": 6.0,
    "how": 0.1,
    "do": 0.1,
    "tides": 4.0,
    "form": 1.5,
}


def _source():
    return DiagnosticSource(
        "test",
        {"1": "what is the acceptance rate at wellesley", "2": "tides how do form"},
        {"1": "wellesley", "2": "tides"},
        docs={
            "1": {"d1": "College acceptance rates are competitive.", "d2": "Wellesley is a college."},
            "2": {"d3": "Tides are caused by the moon."},
        },
    )


def test_highest_idf_word_moves_first(tokenizer):
    q, i, w = idf_front_query("what is the acceptance rate at wellesley", IDF, tokenizer)
    assert (q, i, w) == ("wellesley what is the acceptance rate at", 6, "wellesley")
    assert idf_front_query("what is zyzzyva", IDF, tokenizer)[2] == "zyzzyva"  # unknown word = rarest


def test_build_idf_front_pairs(tokenizer):
    res = build_idf_front(_source(), tokenizer, IDF)
    assert res.stats["excluded_already_first"] == 1  # "tides how do form" starts with its highest-IDF word
    assert [p.doc_id for p in res.pairs] == ["d1", "d2"]
    for p in res.pairs:
        assert p.kind == "idf_front" and p.same_length and p.position_map == list(range(len(p.baseline_ids)))
        perm = p.meta["permutation"]
        assert sorted(perm) == list(range(len(perm)))
        assert all(p.perturbed_ids[perm[i]] == p.baseline_ids[i] for i in range(len(perm)))
        moved = p.meta["moved_positions"]
        assert tokenizer.hf.decode([p.perturbed_ids[j] for j in moved]) == "wellesley"
        assert [p.token_types[i] for i in range(len(perm)) if perm[i] in moved] == ["Qplus"] * len(moved)
        sep = p.baseline_ids.index(tokenizer.sep_id)
        assert p.baseline_ids[sep:] == p.perturbed_ids[sep:]  # the document is unchanged
    with pytest.raises(DataError, match="IDF table"):
        build_idf_front(_source(), tokenizer, {})


def test_realign_lnc1_without_fillers(tokenizer):
    from jaxmech.data.diagnostic import build_lnc1

    answers = {
        "1": [("a1", "Wellesley is old. It has a lake. It is in Massachusetts.")],
        "2": [("a2", "Tides rise. Tides fall. The moon pulls. The sun pulls too.")],
    }
    src = DiagnosticSource(
        "t",
        {"1": "what is wellesley", "2": "how do tides form"},
        {"1": "wellesley", "2": "tides"},
        pronouns={"1": "it", "2": "they"},
        answers=answers,
    )
    filler = build_lnc1(src, tokenizer, n_max=2)
    assert all(p.same_length and p.meta["fillers"] > 0 for p in filler.pairs)
    diff = realign(filler, tokenizer, align="diff")
    assert len(diff.pairs) == len(filler.pairs)
    for f, d in zip(filler.pairs, diff.pairs, strict=True):
        assert d.meta["fillers"] == 0 and d.meta["n_sentences"] == f.meta["n_sentences"]
        assert len(d.baseline_ids) < len(d.perturbed_ids)  # a short document vs a long one
        n = len(d.baseline_ids)
        assert d.position_map[: n - 1] == list(range(n - 1))  # the shared first sentence maps one to one
        assert d.position_map[-1] == len(d.perturbed_ids) - 1  # final [SEP] to final [SEP]
