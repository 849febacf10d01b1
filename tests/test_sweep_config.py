"""Sweep configs: strict TOML; every error names the file and the key, before anything is computed."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxmech.cli import main
from jaxmech.sweeps.config import ConfigError, load_sweep_config

REPO = Path(__file__).resolve().parent.parent
GOOD = """
[run]
name = "x"
[[datasets]]
kind = "tfc1"
source = "demo"
sample = 4
[[families]]
name = "block_every"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_a_minimal_config_loads_with_defaults(tmp_path):
    cfg = load_sweep_config(write(tmp_path, GOOD))
    assert cfg.model.path == "packaged" and cfg.patching.metric == "normalized"
    assert cfg.datasets[0].name == "tfc1" and cfg.families[0].key == "block_every"
    assert cfg.out_dir == Path("runs/x")


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("[patching]\nmetrik = 'raw'\n", "[patching] metrik", "unknown key"),
        ("[patching]\nmetric = 'ratio'\n", "[patching]", "metric='ratio'; choose one of"),
        ("[patching]\nprecision = 'fp8'\n", "[patching]", "precision='fp8'"),
        ("[chunking]\npairs_per_chunk = '16'\n", "[chunking] pairs_per_chunk", "expected int, got str"),
        ("[[families]]\nname = 'head_by_pos_zz'\n", "[[families]][1]", "not a patching family"),
        ("[[families]]\nname = 'path_to_heads'\n", "[[families]][1]", "needs receivers"),
        ("[[families]]\nname = 'path_components_to_heads'\nreceivers = ['1.1']\nmethod = 'attribution'\n",
         "[[families]][1]", "not available"),
        ("[[families]]\nname = 'block_every'\ncolour = 1\n", "[[families]][1] colour", "unknown key"),
        ("[[families]]\nname = 'block_every'\n", "[[families]]", "listed twice"),
        ("[[datasets]]\nkind = 'tfc1'\nfile = 'x.jsonl'\n", "[[datasets]][1]", "either file"),
        ("[[datasets]]\nkind = 'tfc9'\n", "[[datasets]][1]", "kind='tfc9'"),
        ("[[datasets]]\nkind = 'tfc1'\nfirst = 100\n", "[[datasets]][1] first", "unknown key"),
        ("[[analyses]]\nname = 'no_such_step'\n", "[[analyses]][0]", "not a step"),
        ("[[analyses]]\nname = 'summary'\noptions = { topk = 3 }\n", "[[analyses]][0]",
         "step 'summary': unknown option 'topk' (known: top_k)"),
        ("[report]\noptions = { agregate = 'mean' }\n", "[report]", "step 'report': unknown option 'agregate'"),
        ("[sweep]\nx = 1\n", "[sweep]", "unknown table"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, extra, key, message):
    path = write(tmp_path, GOOD + extra)
    with pytest.raises(ConfigError) as err:
        load_sweep_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: {key}"), text
    assert message in text


def test_missing_tables_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"c.toml: \[\[families\]\]: missing"):
        load_sweep_config(write(tmp_path, GOOD.split("[[families]]")[0]))
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_sweep_config(write(tmp_path, "[run\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_sweep_config(tmp_path / "nope.toml")


def test_the_fingerprint_ignores_names_folders_and_steps(tmp_path):
    a = load_sweep_config(write(tmp_path, GOOD))
    b = load_sweep_config(
        write(
            tmp_path,
            GOOD.replace('name = "x"', 'name = "y"\nout_dir = "elsewhere"') + "[[analyses]]\nname = 'summary'\n",
        )
    )
    c = load_sweep_config(write(tmp_path, GOOD.replace("sample = 4", "sample = 5")))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_cli_config_error_is_one_line_with_exit_code_2(tmp_path, capsys):
    path = write(tmp_path, GOOD + "[patching]\nmetrik = 'raw'\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}: [patching] metrik: unknown key" in err
    assert not (tmp_path / "run").exists()  # nothing computed or created


@pytest.mark.parametrize(
    "config", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.toml") if "train" not in p.name)
)
def test_shipped_sweep_configs_load(config):
    cfg = load_sweep_config(REPO / config)
    assert cfg.families and cfg.datasets


def test_sampling_is_seeded_spread_over_queries_and_never_the_first_n(tmp_path):
    from types import SimpleNamespace

    from jaxmech.sweeps.config import DatasetSection
    from jaxmech.sweeps.plan import select_indices

    records = [SimpleNamespace(qid=f"q{i // 100}", doc_id=str(i)) for i in range(1000)]  # TFC1-like: 100 per query
    pick = lambda **kw: select_indices(records, DatasetSection(kind="tfc1", **kw), "here")
    a = pick(sample=50, seed=1)
    assert a == pick(sample=50, seed=1) != pick(sample=50, seed=2)
    assert len(a) == 50 and a == sorted(a) and len({records[i].qid for i in a}) > 5 and a != list(range(50))
    per_q = pick(per_query=3, seed=0)
    assert len(per_q) == 30 and all(sum(records[i].qid == f"q{q}" for i in per_q) == 3 for q in range(10))
    qids = tmp_path / "qids.txt"
    qids.write_text("q2\nq7\n")
    kept = pick(qids=str(qids), per_query=2, sample=3, seed=0)
    assert len(kept) == 3 and {records[i].qid for i in kept} <= {"q2", "q7"}
    with pytest.raises(ValueError, match="here sample=2000 but the dataset has only 1000 pairs"):
        pick(sample=2000)


def test_report_aggregation_is_chosen_in_the_config_and_not_fingerprinted(tmp_path):
    base = load_sweep_config(write(tmp_path, GOOD))
    chosen = "[report]\noptions = { aggregate = 'median', relative_floor = 0.05 }\n"
    cfg = load_sweep_config(write(tmp_path, GOOD + chosen))
    assert cfg.report.options["aggregate"] == "median" and cfg.fingerprint() == base.fingerprint()
    with pytest.raises(ConfigError, match=r"\[report\].*aggregate='mode'; choose one of"):
        load_sweep_config(write(tmp_path, GOOD + "[report]\noptions = { aggregate = 'mode' }\n"))
    with pytest.raises(ConfigError, match="relative_floor=-1"):
        load_sweep_config(write(tmp_path, GOOD + "[report]\noptions = { relative_floor = -1 }\n"))


def test_receivers_are_parsed_once_and_stay_out_of_the_fingerprint(tmp_path):
    import dataclasses

    from jaxmech.sweeps.config import FamilySection

    fam = FamilySection(name="path_to_heads", receivers=["5.1", "3.0"])
    assert fam.receiver_heads == ((5, 1), (3, 0)) and fam.max_receiver_layer == 5
    assert list(dataclasses.asdict(fam)) == ["name", "method", "verify_top_k", "receivers", "receiver_input", "groups"]
    assert FamilySection(name="block_every").receiver_heads == ()


def test_run_meta_is_written_in_the_file_order_with_optional_entries_only_when_set():
    import dataclasses
    import hashlib

    from jaxmech.results.meta import DatasetEntry, FamilyArrays, ModelEntry, RunMeta

    fam = FamilyArrays("block_every", "block_every", "exact", ("pair", "layer"), (2,), "effects.b", "raw.b")
    meta = RunMeta(
        fingerprint="f", config={}, config_file="c.toml", result_settings={},
        model=ModelEntry("m", "/m", "cross", "ab", 2, 2, 16),
        datasets=(DatasetEntry("tfc1", "build:tfc1:demo", 3, "00"),),
        n_pairs=3, T_max=32, pairs_per_chunk=2, n_chunks=2, families=(fam,), metric="normalized",
        direction="perturbed_into_baseline", readout="", precision="fp32", jaxmech_version="0", device={}, processes=1,
        created="t",
    )
    out = meta.to_json()
    assert list(out) == ["format", "version", "fingerprint", "config", "config_file", "result_settings", "model",
                         "datasets", "dataset_sha256", "n_pairs", "T_max", "pairs_per_chunk", "n_chunks", "families",
                         "metric", "direction", "precision", "jaxmech_version", "device", "processes", "created"]
    assert out["dataset_sha256"] == hashlib.sha256(b"00").hexdigest() and list(out["families"][0])[-1] == "raw"
    full = list(dataclasses.replace(meta, readout="margin:1,0", background={"ablations": []}).to_json())
    assert full[full.index("direction") + 1] == "readout" and full[-1] == "background"
