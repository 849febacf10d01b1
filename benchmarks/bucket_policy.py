"""How many length buckets a sweep should have: compute wasted by padding against programs saved (issue 22).

    python benchmarks/bucket_policy.py RUN_FOLDER [RUN_FOLDER ...] [--programs-per-bucket 4] [--compile-s 1.7]

Reads a sweep's ``pairs.npz`` (each pair's token length and its patched runs) and, for every set of buckets
drawn from the tokenizer's `jaxmech.hf.tokenizer.DEFAULT_BUCKETS` that holds the longest pair, prices it:

* padding: each patched run costs ``T * (c_lin + c_att * T)`` per layer at padded length ``T`` (the block's
  matmuls per token, ``2 * (4 d^2 + 2 d d_mlp)``, and attention's ``4 d T``), so the FLOPs of a set are
  ``sum_p runs_p * cost(T_p)``; they become seconds at ``--rate`` FLOP/s (default: this CPU's measured matmul
  rate in ``bench_patching_cpu.json`` times 0.5, the sweep's typical fraction of it);
* compiling: ``buckets * programs_per_bucket * compile_s`` (programs per bucket from
  ``benchmarks/count_programs.py``; seconds per program from the README's sweep table, a loaded CPU).

It prints the default set's cost, the cheapest set, and the cheapest with at most 3 buckets, and writes
``benchmarks/results/bucket_policy.json``. Counts (padding FLOPs, programs) are load-independent; the
seconds are a model whose two rates the lead can measure alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def cost_per_run(T: np.ndarray, d: int, d_mlp: int, n_layers: int) -> np.ndarray:
    """Matmul FLOPs of one restarted run over ``n_layers`` blocks at padded length ``T``."""
    return n_layers * T * (2 * (4 * d * d + 2 * d * d_mlp) + 4 * d * T)


def price(lengths, runs, buckets, *, d, d_mlp, n_layers, rate, programs, compile_s) -> dict:
    b = np.asarray(sorted(buckets))
    T = b[np.searchsorted(b, lengths)]
    used = sorted(set(T.tolist()))
    flops = float((runs * cost_per_run(T.astype(float), d, d_mlp, n_layers)).sum())
    exact = float((runs * cost_per_run(lengths.astype(float), d, d_mlp, n_layers)).sum())
    return {"buckets": used, "padded_flops": flops, "padding_share": round(1 - exact / flops, 4),
            "patch_seconds": round(flops / rate, 1), "compile_seconds": round(len(used) * programs * compile_s, 1),
            "total_seconds": round(flops / rate + len(used) * programs * compile_s, 1)}


def main() -> None:
    from jaxmech.hf.tokenizer import DEFAULT_BUCKETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--programs-per-bucket", type=float, default=4.0)
    ap.add_argument("--compile-s", type=float, default=1.7, help="seconds per program (README: 123 s / 73)")
    ap.add_argument("--rate", type=float, default=None, help="achieved FLOP/s (default: 0.5 x measured matmul)")
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-layers", type=int, default=6)
    args = ap.parse_args()
    rate = args.rate or 0.5 * json.loads((REPO / "benchmarks/results/bench_patching_cpu.json").read_text())[
        "matmul"]["fp32"]["jax_best_flops"]
    out = {"rate_flops": rate, "programs_per_bucket": args.programs_per_bucket, "compile_s": args.compile_s,
           "model": {"d_model": args.d_model, "n_layers": args.n_layers}, "runs": {}}
    for folder in args.runs:
        pairs = np.load(folder / "pairs.npz", allow_pickle=True)
        lengths, runs = pairs["length"].astype(int), pairs["runs"].astype(float)
        kw = dict(d=args.d_model, d_mlp=4 * args.d_model, n_layers=args.n_layers, rate=rate,
                  programs=args.programs_per_bucket, compile_s=args.compile_s)
        top = [b for b in DEFAULT_BUCKETS if b >= lengths.max()][0]
        below = [b for b in DEFAULT_BUCKETS if b < top]
        sets = [(*c, top) for k in range(len(below) + 1) for c in itertools.combinations(below, k)]
        priced = [price(lengths, runs, s, **kw) for s in sets]
        default = price(lengths, runs, DEFAULT_BUCKETS, **kw)
        best = min(priced, key=lambda p: p["total_seconds"])
        best3 = min((p for p in priced if len(p["buckets"]) <= 3), key=lambda p: p["total_seconds"])
        out["runs"][str(folder)] = {"pairs": len(lengths), "default": default, "cheapest": best,
                                    "cheapest_3": best3}
        print(folder, len(lengths), "pairs\n  default ", default, "\n  cheapest", best, "\n  best <=3", best3)
    (REPO / "benchmarks/results/bucket_policy.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
