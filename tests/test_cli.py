"""The jaxmech command line: JSON scores, patch .npz files, one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PARITY_ATOL

from jaxmech.cli import main

Q = "what is the acceptance rate at wellesley"
D0 = "College acceptance rates in the USA are becoming more competitive."
D1 = D0 + " wellesley"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_score_prints_raw_logits_for_a_cross_encoder(capsys, minilm_path):
    code, out, _ = run(capsys, "score", "--model", str(minilm_path), "--kind", "cross", "--init-head-seed", "0",
                       "--query", Q, "--doc", D0, "--doc", D1)
    assert code == 0
    res = json.loads(out)
    assert res["kind"] == "cross" and len(res["scores"]) == 2 and res["truncated"] == []
    from jaxmech import load_model

    lm = load_model(minilm_path, kind="cross", init_missing_head_seed=0)
    enc = lm.tokenizer.encode_pairs([Q, Q], [D0, D1])
    np.testing.assert_allclose(res["scores"], np.asarray(lm.model(*enc.arrays).score), atol=PARITY_ATOL, rtol=0)


def test_score_reports_truncation(capsys, minilm_path):
    code, out, _ = run(capsys, "score", "--model", "packaged", "--max-length", "16", "--query", Q,
                       "--doc", " ".join(["word"] * 30))
    assert code == 0
    res = json.loads(out)
    assert res["kind"] == "bi" and res["truncated"][0]["doc_tokens_cut"] == 30 + 2 - 16


def test_patch_writes_transformerlens_shaped_arrays(capsys, tmp_path, minilm_path):
    out_file = tmp_path / "r.npz"
    code, out, err = run(capsys, "patch", "--model", "packaged", "--query", Q, "--baseline-doc", D0,
                         "--perturbed-doc", D1, "--family", "block_every", "--family", "head_by_pos_z",
                         "--family", "path_to_score", "--out", str(out_file))
    assert code == 0, err
    r = np.load(out_file)
    T = 14  # [CLS] document [SEP] for the bi-encoder, with the filler
    assert r["block_every"].shape == (3, 6, T)
    assert r["head_by_pos_z"].shape == (6, T, 12)
    assert r["path_to_score"].shape == (6, 12)
    assert float(r["score_perturbed"]) > float(r["score_baseline"])
    # the injected position carries the effect at layer 0 (normalized effect 1 for resid_pre)
    np.testing.assert_allclose(r["block_every"][0, 0, T - 2], 1.0, atol=1e-4, rtol=0)
    meta = json.loads(str(r["meta"]))
    assert meta["metric"] == "normalized" and json.loads(out)["pairs"] == 1


def test_patch_reads_a_triples_file_and_a_dataset_file(capsys, tmp_path, minilm_path):
    triples = tmp_path / "t.tsv"
    triples.write_text(f"query\tbaseline_doc\tperturbed_doc\n{Q}\t{D0}\t{D1}\nhow do tides form\tThe sea "
                       f"rises twice a day.\tThe sea rises twice a day. tides\n")
    out_file = tmp_path / "r.npz"
    code, _, err = run(capsys, "patch", "--model", str(minilm_path), "--kind", "cross", "--init-head-seed", "1",
                       "--triples", str(triples), "--family", "head_all_pos_v", "--method", "attribution",
                       "--out", str(out_file))
    assert code == 0, err
    r = np.load(out_file)
    assert r["head_all_pos_v"].shape == (2, 6, 12) and r["lengths"].tolist() == [22, 15]
    ds = tmp_path / "demo.jsonl"
    assert main(["dataset", "build", "--kind", "tfc1", "--source", "demo", "--limit", "3", "--out", str(ds)]) == 0
    code, _, err = run(capsys, "patch", "--model", str(minilm_path), "--kind", "cross", "--init-head-seed", "1",
                       "--dataset", str(ds), "--limit", "2", "--family", "attn_out_all_pos", "--out", str(out_file),
                       "--overwrite")
    assert code == 0, err
    assert np.load(out_file)["attn_out_all_pos"].shape == (2, 6)


@pytest.mark.parametrize("argv, message", [
    (["patch", "--model", "packaged", "--query", Q, "--baseline-doc", D0, "--perturbed-doc", D1,
      "--family", "head_by_pos_zz", "--out", "x.npz"], "unknown patching family 'head_by_pos_zz'"),
    (["patch", "--model", "packaged", "--triples", "/nonexistent.tsv", "--family", "block_every",
      "--out", "x.npz"], "/nonexistent.tsv: triples file not found"),
    (["patch", "--model", "packaged", "--query", Q, "--family", "block_every", "--out", "x.npz"],
     "missing: --baseline-doc, --perturbed-doc"),
    (["score", "--model", "/nonexistent/model", "--query", Q, "--doc", D0], "does not exist"),
    (["patch", "--model", "packaged", "--query", Q, "--baseline-doc", D0, "--perturbed-doc", D1,
      "--family", "path_to_heads", "--out", "x.npz"], "needs --receiver"),
])
def test_bad_input_is_one_line_with_exit_code_2(capsys, tmp_path, monkeypatch, minilm_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.npz").exists(), "nothing half-written"


def test_malformed_triples_name_the_line(capsys, tmp_path, minilm_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"{Q}\t{D0}\t{D1}\nonly two\tcolumns\n")
    code, _, err = run(capsys, "patch", "--model", "packaged", "--triples", str(bad), "--family", "block_every",
                       "--out", str(tmp_path / "x.npz"))
    assert code == 2 and f"{bad}:2: expected 3 tab-separated columns" in err


def test_patch_file_is_the_library_result_saved(capsys, tmp_path, minilm_path):
    from jaxmech.patching import PatchingResult
    from jaxmech.patching.run import patch

    triples = tmp_path / "t.tsv"
    triples.write_text(f"{Q}\t{D0}\t{D1}\nhow do tides form\tThe sea rises.\tThe sea rises. tides\n")
    out_file = tmp_path / "cli.npz"
    argv = ["--model", str(minilm_path), "--kind", "cross", "--init-head-seed", "1", "--triples", str(triples),
            "--family", "attn_out_all_pos", "--family", "path_to_score"]
    code, out, err = run(capsys, "patch", *argv, "--out", str(out_file))
    assert code == 0, err
    res = patch(str(minilm_path), ["attn_out_all_pos", "path_to_score"], kind="cross", init_head_seed=1,
                triples=triples, out=tmp_path / "lib.npz")
    cli_file, lib_file = np.load(out_file), np.load(tmp_path / "lib.npz")
    assert sorted(cli_file.files) == sorted(lib_file.files) == sorted(res.arrays())
    for key, a in res.arrays().items():
        np.testing.assert_array_equal(cli_file[key], a)
        np.testing.assert_array_equal(lib_file[key], a)
    back = PatchingResult.load(out_file)
    assert back.axes == res.axes == {"attn_out_all_pos": ("pair", "layer"), "path_to_score": ("pair", "layer", "head")}
    for fam in res.families:
        np.testing.assert_array_equal(back.effects[fam], res.effects[fam])
        np.testing.assert_array_equal(back.raw[fam], res.raw[fam])
    assert back.pairs["name"] == res.pairs["name"] == ["1", "2"]
    assert json.loads(out)["families"] == {"attn_out_all_pos": [2, 6], "path_to_score": [2, 6, 12]}


BAD_BEFORE_LOADING = [
    (["--family", "path_to_heads"], "path_to_heads needs --receiver"),
    (["--family", "path_components_to_heads", "--receiver", "1.1", "--method", "attribution"],
     "not available for path_components_to_heads"),
    (["--family", "path_to_heads", "--receiver", "7.1"], "receiver head 7.1 is out of range"),
    (["--family", "path_to_heads", "--receiver", "x"], "is not LAYER.HEAD"),
    (["--family", "block_every", "--limit", "0"], "--limit must be a positive number of pairs, got 0"),
    (["--family", "block_every", "--limit", "-2"], "got -2"),
    (["--family", "block_every", "--out", "."], "is a directory"),
    (["--family", "block_every", "--out", "afile/x.npz"], "afile is a file, not a folder"),
    (["--family", "block_every", "--out", "exists.npz"], "exists.npz exists; pass --overwrite"),
    (["--family", "block_every", "--dataset", "missing.jsonl"], "missing.jsonl: dataset file not found"),
    (["--out", "x.npz"], "the following arguments are required: --family"),
]


@pytest.mark.parametrize("argv, message", BAD_BEFORE_LOADING)
def test_bad_arguments_fail_in_one_line_before_jax_is_imported(tmp_path, argv, message, minilm_path):
    import subprocess
    import sys

    (tmp_path / "afile").write_text("")
    (tmp_path / "exists.npz").write_text("keep")
    args = ["patch", "--model", "packaged", "--query", Q, "--baseline-doc", D0, "--perturbed-doc", D1, *argv]
    if "--out" not in argv:
        args += ["--out", "x.npz"]
    code = ("import sys; from jaxmech.cli import main; rc = main(sys.argv[1:]); "
            "assert 'jax' not in sys.modules, 'JAX was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert (tmp_path / "exists.npz").read_text() == "keep" and not (tmp_path / "x.npz").exists()


def test_atomic_writer_never_replaces_a_file_written_meanwhile_and_respects_the_umask(tmp_path):
    import os

    from jaxmech.files import atomic_write

    target = tmp_path / "r.npz"

    def slow_write(tmp):  # another writer finishes first
        target.write_text("theirs")
        with open(tmp, "w") as f:
            f.write("mine")

    with pytest.raises(FileExistsError, match="written by another process"):
        atomic_write(target, slow_write, overwrite=False)
    assert target.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]
    old = os.umask(0o027)
    try:
        fresh = atomic_write(tmp_path / "new.txt", lambda tmp: open(tmp, "w").close())
    finally:
        os.umask(old)
    assert fresh.stat().st_mode & 0o777 == 0o640


def test_patch_shows_progress_and_stops_on_sigint_between_chunks(tmp_path, minilm_path):
    import os
    import signal
    import subprocess
    import sys

    triples = tmp_path / "t.tsv"
    triples.write_text("".join(f"{Q}\t{D0} {w}\t{D1} {w}\n" for w in ["a", "b", "c", "d", "e", "f", "g", "h"]))
    out_file = tmp_path / "r.npz"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxmech.cli", "patch", "--model", "packaged", "--triples",
                             str(triples), "--family", "attn_out_all_pos", "--pairs-per-chunk", "1", "--out",
                             str(out_file)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        lines = []
        for line in proc.stderr:  # one progress line per chunk (stderr is not a terminal)
            lines.append(line)
            if line.startswith("patch: pairs 1/8"):
                break
        assert lines and lines[-1].startswith("patch: pairs 1/8") and "ETA" in lines[-1], lines
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest
    stops = [x for x in rest.splitlines() if x.startswith("jaxmech patch: interrupted")]
    assert len(stops) == 1 and "nothing was saved" in stops[0] and rest.rstrip("\n").endswith(stops[0]), rest
    assert not out_file.exists() and list(tmp_path.iterdir()) == [triples]


def test_patch_refuses_a_dataset_of_another_tokenizer_and_out_of_vocabulary_ids(capsys, tmp_path, minilm_path):
    from jaxmech.data.records import read_dataset, write_dataset

    ds = tmp_path / "demo.jsonl"
    assert main(["dataset", "build", "--kind", "tfc1", "--source", "demo", "--limit", "2", "--out", str(ds)]) == 0
    header, pairs = read_dataset(ds)
    other = tmp_path / "other.jsonl"
    write_dataset(other, pairs, {**header, "tokenizer": "someone/another-tokenizer"})
    base = ["patch", "--model", "packaged", "--family", "attn_out_all_pos", "--out", str(tmp_path / "r.npz")]
    code, _, err = run(capsys, *base, "--dataset", str(other))
    assert code == 2 and "'someone/another-tokenizer'" in err and err.count("\n") == 1, err
    bad = tmp_path / "bad.jsonl"
    ids = list(pairs[1].perturbed_ids)
    ids[1] = 10_000_000
    import dataclasses

    write_dataset(bad, [pairs[0], dataclasses.replace(pairs[1], perturbed_ids=ids)], header)
    code, _, err = run(capsys, *base, "--dataset", str(bad))
    assert code == 2 and err.count("\n") == 1, err
    assert f"pair {pairs[1].name!r}" in err and "10000000" in err and "vocabulary of 30522 ids" in err, err
    assert not (tmp_path / "r.npz").exists()


def test_batch_pairs_and_run_patching_refuse_out_of_vocabulary_ids(minilm_path):
    import dataclasses

    from jaxmech.data.align import align_with_filler
    from jaxmech.hf.tokenizer import PairTokenizer
    from jaxmech.patching.inputs import batch_pairs, check_vocabulary

    pair = align_with_filler(PairTokenizer.from_pretrained(minilm_path), Q, D0, D1, name="p0")
    batch_pairs([pair], vocab_size=30522)  # in range: fine
    bad = dataclasses.replace(pair, baseline_ids=[*pair.baseline_ids[:-1], -1])
    with pytest.raises(ValueError, match=r"pair 'p0': baseline token id -1 is outside the model's vocabulary of 30522"):
        check_vocabulary([bad], 30522)
    with pytest.raises(ValueError, match="token id -1"):
        batch_pairs([bad], vocab_size=30522)


def test_patch_relative_min_denominator_and_aggregate_options(capsys, tmp_path, minilm_path):
    triples = tmp_path / "t.tsv"
    triples.write_text("".join(f"{Q}\t{D0} {w}\t{D1} {w}\n" for w in ["a", "b", "c"]))
    out_file = tmp_path / "r.npz"
    code, out, err = run(capsys, "patch", "--model", "packaged", "--triples", str(triples), "--family",
                         "path_to_score", "--relative-min-denominator", "0.5", "--aggregate", "trimmed",
                         "--no-progress", "--out", str(out_file))
    assert code == 0, err
    assert "patch: pairs" not in err  # --no-progress
    summary = json.loads(out)
    assert "10%-trimmed mean" in summary["top_heads_statistic"]
    meta = json.loads(str(np.load(out_file)["meta"]))
    assert meta["aggregate"] == "trimmed" and meta["relative_min_denominator"] == 0.5
    assert meta["relative_denominator_threshold"] > 0


def test_patch_results_describe_their_inputs_and_a_seeded_head(capsys, tmp_path, minilm_path):
    """The saved meta names the jaxmech version, the input file and its sha256, the maximum length, the head
    seed and the freshly initialised parameters, so a result on a random head does not look like a trained
    cross-encoder's."""
    import hashlib

    triples = tmp_path / "t.tsv"
    triples.write_text(f"{Q}\t{D0}\t{D1}\n")
    out_file = tmp_path / "r.npz"
    code, _, err = run(capsys, "patch", "--model", str(minilm_path), "--kind", "cross", "--init-head-seed", "3",
                       "--triples", str(triples), "--family", "path_to_score", "--out", str(out_file))
    assert code == 0, err
    meta = json.loads(str(np.load(out_file)["meta"]))
    assert meta["input"] == str(triples)
    assert meta["input_sha256"] == hashlib.sha256(triples.read_bytes()).hexdigest()
    assert meta["init_head_seed"] == 3 and meta["max_length"] > 0 and meta["jaxmech_version"]
    assert set(meta["initialized"]) == {"classifier.W", "classifier.b"}  # the checkpoint has a pooler


def test_an_encoder_only_checkpoint_as_cross_encoder_suggests_the_head_seed(capsys, minilm_path):
    code, _, err = run(capsys, "score", "--model", str(minilm_path), "--kind", "cross", "--query", Q, "--doc", D0)
    assert code == 2 and "--init-head-seed" in err
