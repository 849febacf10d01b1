"""Speed of all-edge EAP-IG against exact edge patches (issue 20), MiniLM-L12 shapes (post-LN) or
gte-reranker-modernbert-base shapes (``--arch modernbert``, pre-LN), random weights and pairs:

    python scripts/edges_bench.py --pairs 16 --pos 128 --steps 5 --sample 512 \\
        --out benchmarks/results/edges/bench_cpu.json
    python scripts/edges_bench.py --arch modernbert --pairs 4 --pos 128 --steps 5 --sample 256 \\
        --out benchmarks/results/edges/bench_modernbert_cpu.json

Times (wall clock, each after a warm-up call so compile time is reported apart): `estimate_edges` (EAP and
EAP-IG over inputs) for every edge of ``--pairs`` pairs; exact patches of ``--sample`` random edges of one pair,
extrapolated to every edge of every pair (the cost the estimate replaces); and the exact top-50 verification of
all pairs. Run it alone on the machine: timings under load are meaningless.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--pos", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sample", type=int, default=512)
    p.add_argument("--layers", type=int, default=None, help="default: 12 (minilm), 22 (modernbert)")
    p.add_argument("--arch", choices=("minilm", "modernbert"), default="minilm")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    from edges_memory import random_model

    from jaxmech.data.records import AlignedPair
    from jaxmech.patching.edge_attribution import estimate_edges
    from jaxmech.patching.edge_graph import EdgeGraph
    from jaxmech.patching.edges import edge_data, exact_edge_scores
    from jaxmech.patching.inputs import batch_pairs
    from jaxmech.runtime import describe_device

    model = random_model(args.arch, args.layers)
    cfg = model.cfg
    rng = np.random.RandomState(0)
    pairs = []
    for i in range(args.pairs):
        q, d = list(rng.randint(1000, 30000, 8)), list(rng.randint(1000, 30000, args.pos - 14))
        base, pert = [101, *q, 102, *d, 1037, 1037, 102], [101, *q, 102, *d, *q[:2], 102]
        tt = [0] * 10 + [1] * (len(base) - 10)
        pairs.append(AlignedPair(base, tt, pert, tt, list(range(len(base))), f"b{i}"))
    batch = batch_pairs(pairs, buckets=(args.pos,), max_length=512, pad_id=getattr(cfg, "pad_token_id", 0))
    data = edge_data(model, batch)
    graph = EdgeGraph(cfg.n_layers, cfg.n_heads)
    res = {"device": describe_device(), "arch": args.arch, "pairs": args.pairs, "pos": args.pos, "layers": cfg.n_layers,
           "steps": args.steps, "n_edges": graph.n_edges}
    for method in ("eap", "eap-ig-inputs"):
        _, first = _timed(lambda m=method: estimate_edges(model, data, m, steps=args.steps))
        _, again = _timed(lambda m=method: estimate_edges(model, data, m, steps=args.steps))
        res[method] = {"first_call_s": first, "run_s": again}
    sample = rng.choice(graph.n_edges, args.sample, replace=False)
    one = data.pair(np.array([0]))
    _, first = _timed(lambda: exact_edge_scores(model, one, sample))
    _, again = _timed(lambda: exact_edge_scores(model, one, sample))
    res["exact_sample"] = {"edges": args.sample, "first_call_s": first, "run_s": again,
                           "all_edges_all_pairs_s": again / args.sample * graph.n_edges * args.pairs}
    top = rng.choice(graph.n_edges, 50, replace=False)
    _, first = _timed(lambda: exact_edge_scores(model, data, top))
    _, again = _timed(lambda: exact_edge_scores(model, data, top))
    res["verify_top50"] = {"first_call_s": first, "run_s": again}
    res["eap_ig_vs_exact_all"] = res["exact_sample"]["all_edges_all_pairs_s"] / res["eap-ig-inputs"]["run_s"]
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
