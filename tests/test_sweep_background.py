"""``[background]`` in sweeps and ``--ablate`` on the command line: the paper's E1b config (block patching with
the matching heads zero-ablated) on a tiny 9-layer model, mean ablation over all of a sweep's pairs, and the
config checks."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENGINE_ATOL, REPO, save_tiny_cross

from jaxmech import results
from jaxmech.patching.background import Ablation
from jaxmech.sweeps import run_sweep
from jaxmech.sweeps.config import ConfigError, from_dict

E1B = REPO / "configs" / "paper" / "e1b_tfc1.toml"
# paper-notes.md, E1b: the reference code's matching ("duplicate-token") heads.
# The library runs below use the sweep's chunking, so they reuse the sweep's compiled programs.
LIB = dict(pairs_per_chunk=2, steps_per_call=8, chunk_size=64)
E1B_HEADS = ["1.7", "5.9", "7.9", "8.5", "8.3", "8.0", "3.1", "2.1", "7.8", "4.9", "7.2", "7.4", "7.3"]


@pytest.fixture(scope="module")
def tiny12(tmp_path_factory, minilm_path) -> Path:
    """A 9-layer, 10-head cross-encoder with random weights (so the E1b heads exist) and the MiniLM tokenizer."""
    return save_tiny_cross(tmp_path_factory.mktemp("model") / "tiny9", minilm_path, n_layers=9, d_model=20,
                           n_heads=10, d_head=2, d_mlp=16, n_ctx=64, seed=1)


def e1b_config(model: Path, **background) -> dict:
    d = tomllib.loads(E1B.read_text())
    d["model"] = {"path": str(model), "kind": "cross"}
    d["datasets"] = [{"kind": "tfc1", "source": "demo", "sample": 3, "seed": 1}]
    d["chunking"] = {"pairs_per_chunk": LIB["pairs_per_chunk"], "steps_per_call": LIB["steps_per_call"],
                     "items_per_step": LIB["chunk_size"]}
    d["background"].update(background)
    return d


def test_e1b_config_declares_the_papers_matching_heads():
    cfg = from_dict(tomllib.loads(E1B.read_text()), source=str(E1B))
    assert cfg.background.to_ablation() == Ablation(tuple(E1B_HEADS), "zero", "z")
    assert [f.name for f in cfg.families] == ["block_every"]


def test_background_table_is_checked_and_absent_tables_keep_fingerprints():
    d = tomllib.loads(E1B.read_text())
    for key, value, message in (("ablation", "resample", "choose one of"), ("ablate", ["7"], "LAYER.HEAD"),
                                ("heads", ["1.1"], "unknown key"), ("ablate", ["1.1", "1.1"], "twice")):
        bad = {**d, "background": {**d["background"], key: value}}
        with pytest.raises(ConfigError, match=message):
            from_dict(bad)
    plain = {k: v for k, v in d.items() if k != "background"}
    assert "background" not in from_dict(plain).to_dict()
    assert from_dict(plain).fingerprint() != from_dict(d).fingerprint()


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_e1b_sweep_on_a_tiny_model_equals_the_library(tmp_path, tiny12, ablation):
    """The E1b config (pairs in chunks of 2) equals `run_patching` over all of its pairs with the same
    background (mean: the means of all the pairs, not of a chunk)."""
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching
    from jaxmech.sweeps.plan import plan_sweep

    cfg = from_dict(e1b_config(tiny12, ablation=ablation))
    summary = run_sweep(cfg, out=tmp_path / "run", quiet=True)
    assert summary.complete
    run = results.open(tmp_path / "run")
    assert run.meta["background"]["ablations"] == [{"heads": E1B_HEADS, "kind": ablation, "site": "z"}]
    lm = load_model(tiny12)
    plan = plan_sweep(cfg, lm)
    background = Ablation(tuple(E1B_HEADS), ablation)
    res = run_patching(lm, plan.pairs, ["block_every"], metric="raw", background=background, **LIB)
    stored = np.asarray(run.raw("block_every")[:])
    T = res.raw["block_every"].shape[-1]
    np.testing.assert_allclose(stored[..., :T], res.raw["block_every"], atol=ENGINE_ATOL, rtol=0)
    p = plan.pairs[0]
    plain = lm.model(*(jnp.asarray([a]) for a in (p.baseline_ids, p.baseline_token_type_ids))).score[0]
    assert abs(float(plain) - res.pairs["score_baseline"][0]) > 1e-4  # the ablation changed the runs
    if ablation == "mean":
        assert run.meta["background"]["means"] == json.loads(json.dumps(res.meta["background"]["means"]))


def test_cli_ablate_records_the_background(capsys, tmp_path, tiny12):
    from jaxmech.cli import main
    from jaxmech.patching import PatchingResult

    out = tmp_path / "r.npz"
    args = ["patch", "--model", str(tiny12), "--query", "what is a tide", "--baseline-doc", "The sea rises.",
            "--perturbed-doc", "The sea rises. tide", "--family", "head_all_pos_z", "--no-progress", "--out", str(out)]
    assert main([*args, "--ablate", "8.5,8.3", "--ablate", "1.7", "--ablation", "mean"]) == 0
    meta = PatchingResult.load(out).meta["background"]
    assert meta["ablations"] == [{"heads": ["8.5", "8.3", "1.7"], "kind": "mean", "site": "z"}]
    assert set(meta["means"]["z"]) == {"8.5", "8.3", "1.7"} and meta["mean_tokens"] > 0
    capsys.readouterr()
    assert main([*args, "--overwrite", "--ablate", "9.0"]) == 2
    assert "ablated head 9.0 is out of range" in capsys.readouterr().err


def test_heads_joint_in_a_sweep(tmp_path, tiny12):
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching
    from jaxmech.sweeps.plan import plan_sweep

    d = e1b_config(tiny12)
    groups = [["8.5", "8.3"], ["1.7"]]
    d["families"] = [{"name": "heads_joint", "groups": groups}]
    cfg = from_dict(d)
    assert "groups" in cfg.to_dict()["families"][0]
    assert "groups" not in from_dict(e1b_config(tiny12)).to_dict()["families"][0]  # fingerprints unchanged
    with pytest.raises(ConfigError, match="groups apply to heads_joint"):
        from_dict({**d, "families": [{"name": "block_every", "groups": groups}]})
    assert run_sweep(cfg, out=tmp_path / "run", quiet=True).complete
    run = results.open(tmp_path / "run")
    assert run["heads_joint"].dims == ("pair", "group") and run["heads_joint"].shape == (3, 2)
    lm = load_model(tiny12)
    res = run_patching(lm, plan_sweep(cfg, lm).pairs, ["heads_joint"], metric="raw", groups=groups,
                       background=cfg.background.to_ablation(), **LIB)
    np.testing.assert_allclose(np.asarray(run.raw("heads_joint")[:]), res.raw["heads_joint"], atol=ENGINE_ATOL, rtol=0)


def test_path_attribution_with_verified_top_k_in_a_sweep(tmp_path, tiny12):
    """``method = "attribution"`` for path_to_heads with ``verify_top_k``, over the E1b background: the stored
    exact values equal exact path patching of the same senders."""
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching
    from jaxmech.sweeps.plan import plan_sweep

    d = e1b_config(tiny12)
    d["families"] = [{"name": "path_to_heads", "method": "attribution", "verify_top_k": 3, "receivers": ["8.1"]}]
    cfg = from_dict(d)
    assert run_sweep(cfg, out=tmp_path / "run", quiet=True).complete
    run = results.open(tmp_path / "run")
    verify = run.verify("attribution:path_to_heads")
    lm = load_model(tiny12)
    exact = run_patching(lm, plan_sweep(cfg, lm).pairs, ["path_to_heads"], metric="raw", receivers=["8.1"],
                         background=cfg.background.to_ablation(), **LIB).raw["path_to_heads"]
    for p in range(3):
        layer, head = verify["index"][p, 0].T
        np.testing.assert_allclose(verify["exact"][p, 0], exact[p, layer, head], atol=ENGINE_ATOL, rtol=0)
