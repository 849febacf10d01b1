"""The README's snippets as a user copies them: every `jaxmech` command line parses with the real parser (its
placeholders filled in), every Python snippet parses and names only what jaxmech has, and every file a snippet
reads under ``runs/`` is made by a command earlier in the README. Running them all would take the demo sweep
(minutes); the dataset command the Python patching example reads is run for real."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m.start(), m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", README, re.S)]

# Placeholders of the README's synopses -> values the parser accepts.
PLACEHOLDERS = {"M": "packaged", "Q": "q", "D": "d", "D0": "d0", "D1": "d1", "D2": "d2", "CONFIG": "configs/demo.toml",
                "RUN_DIR_OR_NPZ": "runs/demo", "FAMILY_OR_ANALYSIS": "block_every", "DIR": "dir", "NAME": "x",
                "ZONE": "z", "path/to/cross-encoder": "packaged"}


def command_lines() -> list[tuple[int, str]]:
    lines = []
    for pos, lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():  # a command continued with \ is one line
            line = re.split(r"\s{2,}#", line)[0].strip()
            if line.startswith("jaxmech "):
                lines.append((pos, line))
            elif line.startswith("python3 -m venv") and "&& jaxmech " in line:  # the set-up command
                lines.append((pos, "jaxmech " + line.split("&& jaxmech ", 1)[1]))
    return lines


def fill(line: str) -> list[str]:
    """argv of a README command line: optional ``[...]`` kept (first alternative of ``a|b``), placeholders filled."""
    line = re.sub(r"(\w+)\|[\w|]+", r"\1", line)
    line = re.sub(r"\[(--[\w-]+)(?: (\w+))?\]", lambda m: f"{m.group(1)} {m.group(2) or ''}", line)
    return [PLACEHOLDERS.get(a, a) for a in shlex.split(line)][1:]


@pytest.mark.parametrize("line", [line for _, line in command_lines()])
def test_every_readme_command_parses(line):
    from jaxmech.cli import build_parser

    argv = fill(line)
    if argv[0] == "bench":
        return  # its arguments belong to the benchmark script (checked by its own --help test)
    try:
        args = build_parser(argv[0]).parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"README command does not parse ({exit_.code}): {line}")
    assert args.command == argv[0]


def test_every_python_snippet_parses_and_names_what_jaxmech_has():
    import jaxmech

    snippets = [body for _, lang, body in BLOCKS if lang == "python"]
    assert len(snippets) >= 5
    for body in snippets:
        tree = ast.parse(re.sub(r"\.\.\.(?=\])", "None", body))  # `[pair, ...]` in a list is prose
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "jaxmech":
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)
                           and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
                assert not missing, f"README: from {node.module} import {missing}: no such name"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jaxmech":
                assert hasattr(jaxmech, node.attr) or importlib.util.find_spec(f"jaxmech.{node.attr}"), node.attr


def test_every_file_a_snippet_reads_is_made_earlier():
    made: dict[str, int] = {}
    demo = tomllib.loads((REPO / "configs" / "demo.toml").read_text())
    made[demo["run"].get("out_dir", f"runs/{demo['run']['name']}")] = 0  # the set-up command's sweep
    for pos, line in command_lines():
        argv = shlex.split(line)
        if "--out" in argv:
            made.setdefault(argv[argv.index("--out") + 1], pos)
    for pos, lang, body in BLOCKS:
        if lang != "python":
            continue
        for m in re.finditer(r"(\w+=)?\"(runs/[^\"]+)\"", body):
            if m.group(1) == "out=":
                made.setdefault(m.group(2), pos)
            else:
                assert m.group(2) in made and made[m.group(2)] <= pos, f"README reads {m.group(2)} before making it"


def test_the_dataset_command_of_the_python_example_runs(tmp_path):
    line = next(line for _, line in command_lines() if "runs/tfc1_demo.jsonl" in line)
    (tmp_path / "runs").mkdir()
    res = subprocess.run([sys.executable, "-m", "jaxmech.cli", *shlex.split(line)[1:]], cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "tfc1_demo.jsonl").stat().st_size > 0
