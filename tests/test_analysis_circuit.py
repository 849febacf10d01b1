"""Circuit roles are recovered from planted patching arrays; discovery runs the three stages on a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmech.analysis.circuit import ROLES, circuit_from_effects, discover_circuit, select_heads
from jaxmech.analysis.common import write_json


def _planted(seed=0, L=12, H=12):
    rng = np.random.default_rng(seed)
    noise = lambda: rng.normal(0, 0.002, (L, H))
    e4 = noise()
    e4[10, 1], e4[10, 10], e4[10, 7] = 0.16, 0.17, 0.12  # relevance-scoring heads (the paper's demo values)
    e5a = noise()[:10]
    e5a[7, 0], e5a[8, 4], e5a[5, 2] = -0.04, 0.03, 0.02  # contextual-query heads (E5 into the scoring heads)
    e5b = noise()[:9]
    e5b[1, 7], e5b[2, 1], e5b[4, 9] = 0.012, -0.011, 0.009  # matching heads (E5 into the contextual heads)
    pad = lambda a: np.vstack([a, np.full((L - a.shape[0], H), np.nan)])
    return e4, pad(e5a), pad(e5b)


def test_planted_roles_are_recovered():
    e4, e5a, e5b = _planted()
    c = circuit_from_effects(
        e4, e5a, e5b, thresholds={"relevance_scoring": 0.05, "contextual_query": 0.015, "matching": 0.008}
    )
    assert c["roles"] == {
        "relevance_scoring": ["10.10", "10.1", "10.7"],
        "contextual_query": ["7.0", "8.4", "5.2"],
        "matching": ["1.7", "2.1", "4.9"],
    }
    assert {h["role"] for h in c["heads"]} == set(ROLES)
    neg = next(h for h in c["heads"] if (h["layer"], h["head"]) == (7, 0))
    assert neg["effect"] == pytest.approx(-0.04)  # signed effect kept, selected by magnitude


def test_thresholds_caps_and_minimum():
    e4, e5a, e5b = _planted()
    c = circuit_from_effects(e4, thresholds={"relevance_scoring": 0.165})
    assert c["roles"]["relevance_scoring"] == ["10.10"] and c["thresholds"]["relevance_scoring"] == 0.165
    c = circuit_from_effects(e4, max_heads={"relevance_scoring": 2})
    assert c["roles"]["relevance_scoring"] == ["10.10", "10.1"]
    c = circuit_from_effects(e4, thresholds={"relevance_scoring": 0.5}, min_heads=1)
    assert c["roles"]["relevance_scoring"] == ["10.10"]
    c = circuit_from_effects(e4, thresholds={"relevance_scoring": 0.5})
    assert c["heads"] == []
    with pytest.raises(ValueError, match="unknown roles"):
        circuit_from_effects(e4, thresholds={"scoring": 0.1})


def test_pair_axis_is_averaged_and_receivers_are_excluded():
    e4, e5a, _ = _planted()
    stacked = np.stack([e4 * 0.5, e4 * 1.5])  # mean = e4
    c = circuit_from_effects(stacked, thresholds={"relevance_scoring": 0.05})
    assert c["roles"]["relevance_scoring"] == ["10.10", "10.1", "10.7"]
    sel = select_heads(e4, threshold=0.05, exclude=[(10, 10)])
    assert [(layer, h) for layer, h, _ in sel] == [(10, 1), (10, 7)]


def test_circuit_json_round_trips(tmp_path):
    e4, e5a, e5b = _planted()
    c = circuit_from_effects(e4, e5a, e5b, model="planted", extra={"effects": {"e5": e5a}})
    path = write_json(tmp_path / "c.json", c)
    back = json.loads(path.read_text())
    assert back["analysis"] == "circuit" and back["model"] == "planted"
    assert back["effects"]["e5"][11][0] is None  # NaN -> null
    assert [set(h) for h in back["heads"]][0] == {"layer", "head", "role", "effect"}


@pytest.mark.slow
def test_discover_circuit_runs_the_stages_on_a_model(tiny_model):
    from conftest import random_pairs

    from jaxmech.patching.inputs import batch_pairs
    from jaxmech.patching.path import path_to_score

    pairs = random_pairs(4, 211, seed=3)
    out = discover_circuit(
        tiny_model,
        pairs,
        thresholds={"relevance_scoring": 0.0, "contextual_query": 0.0},
        max_heads={"relevance_scoring": 1, "contextual_query": 1, "matching": 1},
    )
    want = path_to_score(tiny_model, batch_pairs(pairs)).effect("normalized").mean()
    np.testing.assert_allclose(out["effects"]["path_to_score"], want, rtol=1e-6)
    scoring = out["roles"]["relevance_scoring"]
    assert len(scoring) == 1
    layer, head = map(int, scoring[0].split("."))
    assert want[layer, head] == np.nanmax(want)
    assert out["n_pairs"] == 4
    for h in out["heads"]:
        if h["role"] != "relevance_scoring":
            assert h["layer"] < layer


def test_discover_circuit_by_attribution_with_exact_top_k(tiny_model):
    """method="attribution": with every sender verified it is exact discovery; with k senders, those k carry their
    exact path-patching effects."""
    from conftest import ENGINE_ATOL, random_pairs

    pairs = random_pairs(4, 211, seed=3)
    kw = dict(thresholds={"relevance_scoring": 0.0, "contextual_query": 0.0},
              max_heads={"relevance_scoring": 1, "contextual_query": 1, "matching": 1}, receiver_inputs=("k",))
    exact = discover_circuit(tiny_model, pairs, **kw)
    L, H = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    full = discover_circuit(tiny_model, pairs, method="attribution", verify_top_k=L * H, **kw)
    assert full["roles"] == exact["roles"] and len(full["verified"]["path_to_score"]) == L * H
    for name, e in exact["effects"].items():
        if e is not None:
            np.testing.assert_allclose(full["effects"][name], e, atol=ENGINE_ATOL, rtol=1e-4)
    few = discover_circuit(tiny_model, pairs, method="attribution", verify_top_k=3, **kw)
    assert few["method"] == "attribution" and len(few["verified"]["path_to_score"]) == 3
    for name in few["verified"]["path_to_score"]:
        layer, head = map(int, name.split("."))
        np.testing.assert_allclose(few["effects"]["path_to_score"][layer, head],
                                   exact["effects"]["path_to_score"][layer, head], atol=ENGINE_ATOL, rtol=1e-4)
    with pytest.raises(ValueError, match="method='fast'"):
        discover_circuit(tiny_model, pairs, method="fast")


def test_circuit_step_reads_a_sweep_run():
    """A sweep run holding path_to_score gives the scoring heads without a model."""
    from jaxmech.analysis import ANALYSES

    e4, _, _ = _planted()

    class Run:
        meta = {"model": "planted"}
        families = ["path_to_score"]

        def __getitem__(self, name):
            return np.stack([e4, e4])

    out = ANALYSES["circuit"](Run(), thresholds={"relevance_scoring": 0.05})
    assert out["roles"]["relevance_scoring"] == ["10.10", "10.1", "10.7"] and out["model"] == "planted"
