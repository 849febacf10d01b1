"""An in-memory run with planted results, shaped like a stored run (`jaxmech.results.open`).

Used by the tests and for trying the figures and the report without a sweep: `synthetic_run()` plants the
paper's findings (scoring heads 10.1, 10.10, 10.7, 10.4 in path patching; the 13 matching heads; resid_pre
moving from the injected token to the query term to [CLS]; U_0 anti-correlated with IDF; a linear fit at
r ~ 0.8), so each comparison in the report has a known answer; `agree=False` plants different heads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxmech.patching.summaries import TOKEN_TYPE_ORDER

PAPER_MODEL = "cross-encoder/ms-marco-MiniLM-L-12-v2"
MATCHING = ("7.9", "8.1", "4.9", "2.1", "8.8", "6.5", "1.7", "5.7", "5.9", "3.1", "8.0", "6.3", "0.8")
SCORING = ("10.1", "10.10", "10.7", "10.4")


@dataclasses.dataclass
class SyntheticArray:
    """A stored family: array-like with axis names (as ``run[family]`` of the store)."""

    values: np.ndarray
    dims: tuple[str, ...]
    chunk_pairs: int = 2  # small, so readers' chunked paths are exercised

    @property
    def shape(self) -> tuple[int, ...]:
        """Full shape, ``pair`` first."""
        return self.values.shape

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.values[index])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


@dataclasses.dataclass
class SyntheticRun:
    """The store's run object: ``meta``, ``families``, ``run[family]``, ``pairs``, ``analyses``."""

    root: Path
    meta: dict
    arrays: dict[str, SyntheticArray]
    pairs: dict
    analyses: dict

    @property
    def families(self) -> list[str]:
        """Stored result keys."""
        return list(self.arrays)

    def __getitem__(self, family: str) -> SyntheticArray:
        return self.arrays[family]


def _token_types(T: int, n_query: int) -> list[str]:
    types = ["CLS"] + ["Qsub"] * n_query + ["SEP1"] + ["Dother"] * (T - n_query - 3) + ["SEP2"]
    types[2] = "Qplus"
    types[n_query + 3] = "Dsub"
    types[n_query + 5] = "Dplus"
    types[T - 2] = "Dinj"
    return types


def _head(name: str) -> tuple[int, int]:
    a, b = name.split(".")
    return int(a), int(b)


def synthetic_run(
    *,
    n_pairs: int = 6,
    n_layers: int = 12,
    n_heads: int = 12,
    seq: int = 16,
    seed: int = 0,
    agree: bool = True,
    model: str = PAPER_MODEL,
    analyses: bool = True,
    path: str | Path = "<synthetic>",
) -> SyntheticRun:
    """A run with planted effects and analyses.

    Args:
        n_pairs: Pairs.
        n_layers: Layers (12 for the paper's shapes).
        n_heads: Heads per layer.
        seq: Tokens per pair (every pair has the same length here).
        seed: Noise seed.
        agree: Plant the paper's findings (else different heads, a weak linear fit, U_0 uncorrelated).
        model: Model id written into ``meta``.
        analyses: Include the five analysis JSON dicts.
        path: What ``run.root`` says.

    Returns:
        The run.
    """
    rng = np.random.default_rng(seed)  # drawn from in a fixed order: arrays, pairs, analyses
    L, H = n_layers, n_heads
    scoring = [_head(h) for h in SCORING] if agree else [(2, 3), (3, 5), (1, 0), (4, 4)]
    scoring = [(a % L, b % H) for a, b in scoring]
    matching = [(a % L, b % H) for a, b in map(_head, MATCHING)] if agree else [(L - 1, h) for h in range(H)][:13]
    arrays = _planted_arrays(rng, n_pairs, L, H, seq, agree, scoring, matching)
    pairs = _pairs(rng, n_pairs, seq, agree)
    meta = _meta(model, n_pairs, L, H, receivers=[f"{a}.{b}" for a, b in scoring[:1]])
    out = _analyses(rng, agree, model, scoring, matching, L) if analyses else {}
    return SyntheticRun(Path(path), meta, arrays, pairs, out)


def _planted_arrays(rng, n_pairs: int, L: int, H: int, T: int, agree: bool, scoring, matching) -> dict:
    """The six families with the paper's effects planted over noise (``scoring``, ``matching``: heads)."""
    qplus, dinj = 2, T - 2
    noise = lambda *s: rng.normal(0, 0.01, s)  # noqa: E731

    block = noise(n_pairs, 3, L, T)
    early, late = max(1, L // 4), L - 1
    for layer in range(L):
        if layer < early:
            block[:, 0, layer, dinj] += 1.0
        elif layer < late - 1:
            block[:, 0, layer, qplus] += 0.6
        else:
            block[:, 0, layer, 0] += 0.9 if agree else 0.05
    block[:, 1, L - 2, 0] += 0.8 if agree else 0.02
    block[:, 2, (2 * L) // 3, qplus] += 0.35

    path_score = noise(n_pairs, L, H)
    for (a, b), v in zip(scoring, (0.16, 0.17, 0.12, 0.07), strict=True):
        path_score[:, a, b] += v
    head_v = path_score * 0.9 + noise(n_pairs, L, H)
    by_pos = noise(n_pairs, L, T, H)
    for a, b in scoring:
        by_pos[:, a, 0, b] += 0.3
    for a, b in matching:
        by_pos[:, a, dinj, b] += 0.2
    recv_layer = max(a for a, _ in scoring) if scoring else L - 1
    path_heads = noise(n_pairs, recv_layer, H)
    for a, b in matching:
        if a < recv_layer:
            path_heads[:, a, b] -= 0.05
    comps = noise(n_pairs, 3, recv_layer, T)
    comps[:, 0, :, qplus] += 0.3
    return {
        "block_every": SyntheticArray(block, ("pair", "component", "layer", "pos")),
        "head_all_pos_v": SyntheticArray(head_v, ("pair", "layer", "head")),
        "head_by_pos_z": SyntheticArray(by_pos, ("pair", "layer", "pos", "head")),
        "path_to_score": SyntheticArray(path_score, ("pair", "layer", "head")),
        "path_to_heads_k": SyntheticArray(path_heads, ("pair", "layer", "head")),
        "path_components_to_heads_k": SyntheticArray(comps, ("pair", "component", "layer", "pos")),
    }


def _pairs(rng, n_pairs: int, T: int, agree: bool) -> dict:
    """The pairs table: pair 0 is the paper's demo pair (its scores when ``agree``), every pair ``T`` tokens."""
    demo_b, demo_p = (-5.6513, 4.3892) if agree else (1.0, 0.5)
    return {
        "name": np.array(["demo"] + [f"q{i}/d{i}" for i in range(1, n_pairs)]),
        "qid": np.array(["demo"] + [f"q{i}" for i in range(1, n_pairs)]),
        "doc_id": np.array([f"d{i}" for i in range(n_pairs)]),
        "query": np.array(["what is the acceptance rate at wellesley"] + [f"query {i}" for i in range(1, n_pairs)]),
        "length": np.full(n_pairs, T),
        "score_baseline": np.r_[demo_b, rng.normal(-2, 1, n_pairs - 1)],
        "score_perturbed": np.r_[demo_p, rng.normal(3, 1, n_pairs - 1)],
        "flagged": np.zeros(n_pairs, bool),
        "token_types": [_token_types(T, 4) for _ in range(n_pairs)],
        "tokens": [
            ["[CLS]", "what", "wellesley", "rate", "at", "[SEP]"]
            + [f"w{i}" for i in range(T - 8)]
            + ["wellesley", "[SEP]"]
        ]
        * n_pairs,
    }


def _meta(model: str, n_pairs: int, L: int, H: int, receivers: list[str]) -> dict:
    """Laid out as the results store's meta.json (`jaxmech.results.meta.RunMeta`): nested model and datasets entries."""
    return {
        "format": "jaxmech.sweep",
        "model": {
            "id": model,
            "folder": None,
            "kind": "cross",
            "weights_sha256": "0000synthetic",
            "n_layers": L,
            "n_heads": H,
            "d_model": 384,
        },
        "datasets": [{"name": "synthetic_tfc1", "origin": "synthetic", "pairs": n_pairs, "sha256": "1111"}],
        "dataset_sha256": "1111synthetic",
        "n_pairs": n_pairs,
        "metric": "normalized",
        "direction": "forward",
        "precision": "fp32",
        "config": {
            "families": [
                {"name": "block_every", "method": "exact", "receivers": [], "receiver_input": "k"},
                {"name": "head_all_pos_v", "method": "exact", "receivers": [], "receiver_input": "k"},
                {"name": "head_by_pos_z", "method": "exact", "receivers": [], "receiver_input": "k"},
                {"name": "path_to_score", "method": "exact", "receivers": [], "receiver_input": "k"},
                {"name": "path_to_heads", "method": "exact", "receivers": receivers, "receiver_input": "k"},
                {"name": "path_components_to_heads", "method": "exact", "receivers": receivers, "receiver_input": "k"},
            ],
            "patching": {"metric": "normalized", "precision": "fp32"},
        },
        "jaxmech_version": "synthetic",
        "device": {"platform": "cpu", "description": "synthetic"},
        "timings": {"block_every": 1.5, "path_to_score": 0.25, "total": 3.0},
    }


def _curve(mean: list[float], half: float = 0.05) -> dict:
    return {
        "mean": mean,
        "lo": [m - half for m in mean],
        "hi": [m + half for m in mean],
        "baseline_mean": [-4.0] * len(mean),
        "perturbed_mean": [m - 4.0 for m in mean],
    }


def _analyses(rng, agree: bool, model: str, scoring, matching, len_: int = 12) -> dict:
    """The five analyses' JSON dicts as their steps write them (drawn from ``rng`` in this order)."""
    return {
        "idf_svd": _idf_svd(rng, agree, model),
        "linear_bm25": _linear_bm25(rng, agree, model),
        "soft_tf": _soft_tf(rng, agree, model, matching),
        "circuit": {
            "analysis": "circuit",
            "model": model,
            "thresholds": {"effect": 0.05},
            "heads": [{"layer": a, "head": b, "role": "relevance_scoring", "effect": 0.15} for a, b in scoring]
            + [{"layer": 9 % len_, "head": 11, "role": "contextual_query", "effect": 0.08, "detector_score": 0.0}]
            + [{"layer": a, "head": b, "role": "matching", "effect": 0.05, "detector_score": 0.3 if agree else 0.0}
               for a, b in matching],
            "stages_run": ["relevance_scoring", "contextual_query", "matching"],
        },
        "edit_idf": _edit_idf(agree, model, scoring),
    }


def _idf_svd(rng, agree: bool, model: str) -> dict:
    """U_0 against IDF over 200 tokens: anti-correlated when ``agree``; 50 components."""
    n = 200
    idf = rng.uniform(1, 12, n)
    u0 = (-0.01 * idf if agree else 0.0) + rng.normal(0, 0.01 if agree else 0.05, n)
    r0 = float(np.corrcoef(u0, idf)[0, 1])
    comps = [{"k": 0, "pearson": r0, "pearson_centered": r0 * 0.95}] + [
        {"k": k, "pearson": float(rng.normal(0, 0.05)), "pearson_centered": float(rng.normal(0, 0.05))}
        for k in range(1, 50)
    ]
    return {
        "analysis": "idf_svd",
        "model": model,
        "u0_idf_pearson": r0,
        "u0_idf_pearson_centered": r0 * 0.95,
        "u0_idf_pearson_sign_free": r0 if agree else -r0,
        "u0_mean_cosine": 0.1,
        "components": comps,
        "variants": {"raw": r0, "centered": r0 * 0.95},
        "scatter": {"u0": u0.tolist(), "idf": idf.tolist()},
    }


def _linear_bm25(rng, agree: bool, model: str) -> dict:
    """A linear fit over 150 test pairs, at r ~ 0.8 when ``agree``."""
    y = rng.normal(0, 3, 150)
    pred = y + rng.normal(0, 1.9 if agree else 8.0, 150)
    r_lin = float(np.corrcoef(y, pred)[0, 1])
    return {
        "analysis": "linear_bm25",
        "model": model,
        "test_pearson": r_lin,
        "test_p_value": 1e-30,
        "test_spearman": r_lin * 0.98,
        "test_rmse": 1.9,
        "test_r2": r_lin**2,
        "bm25_test_pearson": 0.4 if agree else 0.6,
        "random_features_test_pearson": 0.05,
        "split": {"test_size": 0.2, "seed": 42},
        "test_predictions": {"y_true": y.tolist(), "y_pred": pred.tolist()},
    }


def _soft_tf(rng, agree: bool, model: str, matching) -> dict:
    """Curves of five matching heads on TFC2 and STMC1 (rising) and LNC1 (falling), flat unless ``agree``."""
    soft = {"analysis": "soft_tf", "model": model}
    for name, xs, sign in (("tfc2", list(range(6)), 1), ("lnc1", list(range(5)), -1), ("stmc1", [0, 1, 2], 1)):
        heads = {}
        for i, (a, b) in enumerate(matching[:5]):
            base = (0.45 if sign < 0 else 0.1) + 0.02 * i
            m = [base + sign * (0.3 * (1 - np.exp(-0.8 * x))) * (1 if agree else 0) + rng.normal(0, 0.005) for x in xs]
            heads[f"{a}.{b}"] = {
                "mean": m,
                "lo": [v - 0.02 for v in m],
                "hi": [v + 0.02 for v in m],
                "n": [20] * len(xs),
            }
        x_out = ["filler", "synonym", "exact"] if name == "stmc1" else xs
        soft[name] = {
            "x_label": {
                "tfc2": "term frequency (occurrences restored)",
                "lnc1": "non-relevant sentences added",
                "stmc1": "appended word",
            }[name],
            "x": x_out,
            "heads": heads,
            "n_inputs": 20,
        }
    soft["matching_heads"] = [f"{a}.{b}" for a, b in matching[:5]]
    soft["level"] = 0.95
    return soft


def _edit_idf(agree: bool, model: str, scoring) -> dict:
    """As jaxmech.analysis.editing writes it: score gain per condition, attention of u0_increase."""
    scales = [1.0, 1.5, 2.0, 3.0]
    return {
        "analysis": "edit_idf",
        "model": model,
        "scales": scales,
        "conditions": ["u0_increase", "u0_decrease", "full_increase"],
        "score": {
            "u0_increase": _curve([12.0 + (0.4 if agree else -0.4) * (s - 1) for s in scales]),
            "u0_decrease": _curve([12.0 - (0.4 if agree else -0.4) * (s - 1) for s in scales]),
            "full_increase": _curve([12.0 - 0.5 * (s - 1) for s in scales]),
        },
        "cls_attention": {
            f"{a}.{b}": [0.29 + (0.002 if agree else -0.002) * (s - 1) for s in scales] for a, b in scoring[:2]
        },
        "cls_attention_condition": "u0_increase",
    }


__all__ = ["MATCHING", "PAPER_MODEL", "SCORING", "SyntheticRun", "TOKEN_TYPE_ORDER", "synthetic_run"]
