"""Dataset files: the aligned-pair record, atomic writing, and validation errors that name file and line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxmech.data.records import (
    FORMAT_NAME,
    AlignedPair,
    DataError,
    DatasetFormatError,
    DiagnosticSource,
    read_dataset,
    read_header,
    write_dataset,
)


def make_pair(n_doc: int = 3, **kw) -> AlignedPair:
    ids = [101, 2054, 102] + [2000 + i for i in range(n_doc)] + [1037, 102]
    pert = ids[:-2] + [3000, 102]
    fields = dict(kind="tfc1", qid="q1", doc_id="d1", query="what", baseline_doc="x y z",
                  perturbed_doc="x y z w",
                  baseline_ids=ids, baseline_token_type_ids=[0, 0, 0] + [1] * (n_doc + 2), perturbed_ids=pert,
                  perturbed_token_type_ids=[0, 0, 0] + [1] * (n_doc + 2), position_map=list(range(len(ids))),
                  token_types=["CLS", "Qplus", "SEP1"] + ["Dother"] * n_doc + ["Dinj", "SEP2"], term="what",
                  meta={"tf": 1})
    fields.update(kw)
    return AlignedPair(**fields)


def test_write_then_read_returns_equal_pairs_and_header(tmp_path):
    pairs = [make_pair(), make_pair(5, qid="q2", term=None, meta={})]
    header_in = {"kind": "tfc1", "stats": {"excluded_too_long": 2}}
    path = write_dataset(tmp_path / "sub" / "d.jsonl", pairs, header_in)
    header, back = read_dataset(path)
    assert back == pairs
    assert header["format"] == FORMAT_NAME and header["count"] == 2
    assert header["stats"] == {"excluded_too_long": 2}
    assert read_header(path) == header


def test_changed_positions_are_where_perturbed_token_differs():
    p = make_pair()
    assert p.changed_positions() == [len(p.baseline_ids) - 2]
    assert p.positions_of("Dinj") == p.changed_positions()


def test_write_refuses_inconsistent_pair_and_leaves_no_file(tmp_path):
    bad = make_pair(position_map=[0, 1])
    with pytest.raises(DatasetFormatError, match="position_map has 2 entries"):
        write_dataset(tmp_path / "d.jsonl", [bad], {})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file_intact(tmp_path, monkeypatch):
    path = write_dataset(tmp_path / "d.jsonl", [make_pair()], {"kind": "tfc1"})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("jaxmech.data.records.os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(path, [make_pair(), make_pair()], {"kind": "tfc1"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]  # temp file removed


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _good_lines(n=2):
    head = {"format": FORMAT_NAME, "version": 1, "kind": "tfc1", "count": n}
    return [json.dumps(head)] + [json.dumps(dataclasses.asdict(make_pair())) for _ in range(n)]


@pytest.mark.parametrize(
    ("mutate", "line", "message"),
    [
        (lambda ls: ls.__setitem__(2, ls[2][:-5]), 3, "malformed JSON"),
        (lambda ls: ls.__setitem__(1, json.dumps({k: v for k, v in json.loads(ls[1]).items() if k != "qid"})),
         2, r"missing field\(s\) \['qid'\]"),
        (lambda ls: ls.__setitem__(2, json.dumps({**json.loads(ls[2]), "position_map": [0, 1, 2]})),
         3, "position_map has 3 entries but baseline_ids has"),
        (lambda ls: ls.__setitem__(1, json.dumps({**json.loads(ls[1]), "perturbed_ids": [1, 2]})),
         2, "perturbed_token_type_ids has .* entries but perturbed_ids has 2"),
        (lambda ls: ls.__setitem__(1, json.dumps({**json.loads(ls[1]), "baseline_ids": ["a"] * 8})),
         2, "must be a list of integers"),
        (lambda ls: ls.__setitem__(1, json.dumps({**json.loads(ls[1]), "token_types": ["Nope"] * 8})),
         2, "unknown token types"),
        (lambda ls: ls.pop(), 3, "header says 2 pairs but the file holds 1"),
        (lambda ls: ls.__setitem__(0, json.dumps({"format": "other", "version": 1, "count": 2})), 1,
         "not a jaxmech.aligned_pairs header"),
        (lambda ls: ls.__setitem__(0, json.dumps({"format": FORMAT_NAME, "version": 99, "count": 2})), 1,
         "unsupported version 99"),
    ],
)
def test_read_rejects_malformed_file_naming_file_and_line(tmp_path, mutate, line, message):
    lines = _good_lines()
    mutate(lines)
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetFormatError, match=message) as e:
        read_dataset(path)
    assert e.value.source == str(path)
    assert e.value.record == f"line {line}"
    assert str(path) in str(e.value)


def test_read_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DatasetFormatError, match="empty file"):
        read_dataset(path)


def test_source_check_names_unknown_qid_and_missing_term():
    src = DiagnosticSource("mem", {"q1": "how tall is it"}, {"q1": "tall"}, docs={"q9": {"d": "x"}})
    with pytest.raises(DataError, match="qid q9: unknown qid in docs"):
        src.check()
    src = DiagnosticSource("mem", {"q1": "how tall is it"}, {"q1": "wide"})
    with pytest.raises(DataError, match="mem: qid q1: selected term 'wide' is not a word of the query"):
        src.check()
