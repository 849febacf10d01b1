"""How close a sweep ran to the machine's limit: FLOPs per patched run, achieved FLOP/s, and their fraction of a
matmul rate measured in the same process at the end of the sweep.

FLOPs are the engine's analytic matmul counts (`jaxmech.patching.flops`; XLA's cost analysis counts loop bodies
once, see there) at each pair's padded length: the patched runs of every family (attribution: its exact
verification patches, full forwards) plus each attribution family's forward and backward (about three
forwards per pair). The forwards a chunk starts from are not counted. Families without a count
(``heads_joint``, ``path_components_to_heads``) leave the totals unset.
"""

from __future__ import annotations

import time

import numpy as np

from jaxmech.patching.flops import engine_flops, full_forward_flops, path_to_heads_flops


def _site_kind(site: str, per_pos: bool) -> str:
    if site == "resid_pre" and per_pos:
        return "dirty"
    if per_pos and site not in ("k", "v"):
        return "row"
    return "global"


def run_flops(cfg, fam, T: int) -> float | None:
    """Mean matmul FLOPs of one patched run of ``fam`` (a `jaxmech.sweeps.config.FamilySection`) at length ``T``
    (None where no count is known)."""
    from jaxmech.patching.families import get_family

    family, L = get_family(fam.name), cfg.n_layers
    if fam.method == "attribution":
        return full_forward_flops(cfg, T)
    if fam.groups or fam.name == "path_components_to_heads":
        return None
    if fam.name == "path_to_score":
        return float(np.mean([engine_flops(cfg, T, layer, "frozen") for layer in range(L)]))
    if fam.name == "path_to_heads":
        r_max = fam.max_receiver_layer
        return float(np.mean([path_to_heads_flops(cfg, T, layer, r_max) for layer in range(r_max)]))
    kinds = [_site_kind(s, family.per_pos) for s in family.sites]
    return float(np.mean([engine_flops(cfg, T, layer, k) for k in kinds for layer in range(L)]))


def sweep_flops(cfg, families, pairs, buckets, runs_per_pair) -> float | None:
    """Total matmul FLOPs of patching ``pairs`` (at their ``buckets`` lengths).

    Args:
        cfg: The model's config.
        families: The sweep's `jaxmech.sweeps.config.FamilySection` s.
        pairs: The pairs computed.
        buckets: Their padded lengths.
        runs_per_pair: ``(family, n_patchable) -> patched runs`` (the sweep's own count).
    """
    total = 0.0
    for fam in families:
        for p, T in zip(pairs, buckets, strict=True):
            per_run = run_flops(cfg, fam, int(T))
            if per_run is None:
                return None
            n = runs_per_pair(fam, int(sum(m >= 0 for m in p.position_map)), cfg)
            total += n * per_run + (3 * full_forward_flops(cfg, int(T)) if fam.method == "attribution" else 0.0)
    return total


def matmul_rate(d_model: int, seconds: float = 0.3) -> float:
    """The best fp32 (or the enclosing matmul precision's) FLOP/s of jitted ``[m, d] @ [d, 4d]`` products over a
    few row counts, each timed for about ``seconds`` (three small programs, one per row count, compiled per call)."""
    import jax

    best = 0.0
    f = jax.jit(lambda a, b: a @ b)
    for m in (1024, 8192, 32768):
        a = jax.device_put(np.ones((m, d_model), np.float32))  # host arrays: no eager fill programs
        b = jax.device_put(np.ones((d_model, 4 * d_model), np.float32))
        f(a, b).block_until_ready()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            f(a, b).block_until_ready()
            n += 1
        best = max(best, 2 * m * d_model * 4 * d_model * n / (time.perf_counter() - t0))
    return best


def roofline(cfg, families, pairs, buckets, runs_per_pair, compute_seconds: float) -> dict:
    """The sweep's ``timings`` entries: ``flops_per_patched_run``, ``achieved_flops`` (FLOP/s over the compute
    time, compiling included), ``matmul_flops`` (measured now) and ``fraction_of_matmul_rate`` (None where a
    family has no FLOP count or nothing was computed)."""
    total = sweep_flops(cfg, families, pairs, buckets, runs_per_pair) if len(pairs) else None
    runs = sum(runs_per_pair(f, int(sum(m >= 0 for m in p.position_map)), cfg) for f in families for p in pairs)
    if not total or compute_seconds <= 0:
        return {"flops_per_patched_run": None, "achieved_flops": None, "matmul_flops": None,
                "fraction_of_matmul_rate": None}
    rate = matmul_rate(cfg.d_model)
    achieved = total / compute_seconds
    return {"flops_per_patched_run": total / max(runs, 1), "achieved_flops": achieved, "matmul_flops": rate,
            "fraction_of_matmul_rate": achieved / rate}
