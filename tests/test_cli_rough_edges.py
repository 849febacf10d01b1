"""The command line's rough edges a new user hit: help and config errors without importing JAX, bad numbers
refused at parsing, a closed pipe, non-UTF-8 input, the architectures a refusal lists, the bench usage line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}

# Runs `jaxmech ARGS` in-process in a child and reports whether JAX got imported.
_MAIN = ("import sys; from jaxmech.cli import main\n"
         "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
         "print('JAX' if 'jax' in sys.modules else 'NOJAX', file=sys.stderr); sys.exit(rc)")


def jaxmech_nojax(*args: str) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr without the marker line, whether JAX was imported)."""
    res = subprocess.run([sys.executable, "-c", _MAIN, *args], env=ENV, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    return res.returncode, res.stdout, "\n".join(lines[:-1]), lines[-1] == "JAX"


@pytest.mark.parametrize("command", ["train", "analyze", "bench", "sweep", "verify", "report", "plot"])
def test_help_does_not_import_jax(command):
    code, out, _, jax_imported = jaxmech_nojax(command, "--help")
    assert code == 0 and out.startswith(f"usage: jaxmech {command}") and not jax_imported


def test_bench_help_shows_the_command_and_the_script_options():
    code, out, _, _ = jaxmech_nojax("bench", "--help")
    assert "bench_patching.py" not in out.splitlines()[0] and "--setups" in out and "--families" in out


def test_config_errors_do_not_import_jax(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[run]\nname = "x"\n[model]\npath = "x"\n[[datasets]]\nkind = "tfc1"\n'
                   '[[families]]\nname = "no_such_family"\n')
    code, _, err, jax_imported = jaxmech_nojax("sweep", str(cfg))
    assert code == 2 and "no_such_family" in err and str(cfg) in err and not jax_imported
    train = tmp_path / "train.toml"
    train.write_text("[model\n")
    code, _, err, jax_imported = jaxmech_nojax("train", str(train))
    assert code == 2 and str(train) in err and "invalid TOML" in err and not jax_imported


@pytest.mark.parametrize("flag, value, message", [
    ("--min-denominator", "-1", "argument --min-denominator: -1 must be a finite number >= 0"),
    ("--relative-min-denominator", "nan", "must be a finite number >= 0"),
    ("--max-length", "-5", "argument --max-length: -5 must be >= 8 and <= 4096"),
    ("--pairs-per-chunk", "0", "argument --pairs-per-chunk: 0 must be >= 1"),
])
def test_bad_numbers_are_refused_when_parsed(tmp_path, flag, value, message):
    code, _, err, jax_imported = jaxmech_nojax("patch", "--model", "packaged", "--family", "block_every", "--out",
                                               str(tmp_path / "x.npz"), flag, value)
    assert code == 2 and message in err and len(err.splitlines()) == 1 and not jax_imported


@pytest.mark.parametrize("argv", [["families"], ["sites"]])
def test_a_closed_pipe_ends_quietly(argv):
    proc = subprocess.Popen([sys.executable, "-m", "jaxmech.cli", *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # `jaxmech families | head` once head has exited
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_non_utf8_input_names_the_file(tmp_path, capsys):
    from jaxmech.cli import main  # in this process: no second JAX import and model load (tests' time)

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"qid": "caf\xe9"}\n'.encode("latin-1"))
    code, err = main(["dataset", "stats", str(bad)]), capsys.readouterr().err
    assert code == 2 and f"{bad}: not UTF-8 text (byte 0xe9" in err and len(err.splitlines()) == 1
    triples = tmp_path / "triples.tsv"
    triples.write_bytes("caf\xe9\tdoc a\tdoc b\n".encode("latin-1"))
    code = main(["patch", "--model", "packaged", "--family", "block_every", "--triples", str(triples), "--out",
                 str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code == 2 and f"{triples}: not UTF-8 text" in err and len(err.splitlines()) == 1, err


def test_an_unsupported_architecture_lists_modernbert(tmp_path, capsys):
    from jaxmech.cli import main
    from jaxmech.config import EncoderConfig, UnsupportedConfigError

    hf = {"model_type": "deberta-v2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    with pytest.raises(UnsupportedConfigError, match=r"supported: bert, electra, roberta, xlm-roberta, and "
                       r"modernbert"):
        EncoderConfig.from_hf_config(hf, source="config.json")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    code = main(["sites", "--model", str(tmp_path)])  # in this process (tests' time)
    err = capsys.readouterr().err
    assert code == 2 and "modernbert" in err and "deberta-v2" in err


@pytest.mark.parametrize("out", ["afile/report", "/proc/jaxmech-report"])
def test_report_out_that_cannot_be_written_is_one_line_before_any_work(tmp_path, out):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "run").mkdir()
    target = out if out.startswith("/") else str(tmp_path / out)
    code, _, err, jax_imported = jaxmech_nojax("report", str(tmp_path / "run"), "--out", target)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and not jax_imported
    assert err.startswith(f"jaxmech report: error: --out {target}: ")
    assert "is a file, not a folder" in err or "cannot write there" in err



def test_verify_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    from jaxmech.cli import main

    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxmech verify: error: {tmp_path}: not a sweep run folder (no meta.json)\n"
