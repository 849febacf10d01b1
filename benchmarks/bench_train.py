"""How fast does MiniLM-L6 train as a cross-encoder on this machine, and how much memory does it need?

    python benchmarks/bench_train.py [--steps 5] [--out benchmarks/results/bench_train.json]

For each setting (sequence length 128 and 256; batch 16 = 2 queries x 8 documents, as the training configs;
and batch 32 at 256 tokens) a fresh subprocess loads the packaged all-MiniLM-L6-v2 as a cross-encoder (seeded
head), builds the trainer's jitted step (`jaxmech.train.trainer.make_train_step`, MarginMSE, AdamW, all
22.7 M parameters trainable; and embeddings-only at 128 tokens), times the first call (compile + one step)
separately, then ``--steps`` steady-state steps on a fixed batch of random word-piece ids with full attention
(the cost of a step does not depend on the ids). Peak memory is the subprocess's peak resident set size
(``ru_maxrss``), which includes the loaded weights, optimiser state, XLA's buffers and the Python runtime.
The JSON names the CPU and the load average at the start (other processes on a shared machine slow it down).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from jaxmech.device import cpu_name

SETTINGS = [
    {"seq_len": 128, "batch": 16, "trainable": "all"},
    {"seq_len": 256, "batch": 16, "trainable": "all"},
    {"seq_len": 256, "batch": 32, "trainable": "all"},
    {"seq_len": 128, "batch": 16, "trainable": "embeddings"},
]


def one(seq_len: int, batch: int, trainable: str, steps: int) -> dict:
    """Runs in the subprocess: one setting, returns its measurements."""
    import resource

    import jax
    import numpy as np

    from jaxmech.files import packaged_model_path as default_model_path
    from jaxmech.hf.loading import load_model
    from jaxmech.train.config import OptimSection
    from jaxmech.train.losses import margin_mse
    from jaxmech.train.trainer import make_optimizer, make_train_step, split_params, trainable_keys

    loaded = load_model(default_model_path(), kind="cross", init_missing_head_seed=0, max_length=seq_len)
    graphdef, template, params = split_params(loaded.model)
    keys = trainable_keys(params, trainable)
    opt = make_optimizer(OptimSection(lr=2e-5, trainable=trainable), 1000)
    step = make_train_step(graphdef, template, margin_mse, opt, keys)
    opt_state = opt.init({k: params[k] for k in keys})
    params = {k: jax.numpy.array(v) for k, v in params.items()}
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 29000, (batch, seq_len)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    tt = np.zeros_like(ids)
    tt[:, seq_len // 8 :] = 1
    mask = np.ones_like(ids)
    targets = rng.normal(size=(2, batch // 2)).astype(np.float32)
    valid = np.ones((2, batch // 2), bool)
    t = time.perf_counter()
    params, opt_state, m = step(params, opt_state, ids, tt, mask, targets, valid)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        params, opt_state, m = step(params, opt_state, ids, tt, mask, targets, valid)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {
        "seq_len": seq_len,
        "batch_pairs": batch,
        "trainable": trainable,
        "trainable_params": int(sum(np.prod(params[k].shape) for k in keys)),
        "compile_and_first_step_s": round(first, 2),
        "step_s_median": round(med, 3),
        "step_s_min": round(min(times), 3),
        "pairs_per_s": round(batch / med, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/bench_train.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting (JSON) in this process
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(**json.loads(args.one), steps=args.steps)), flush=True)
        return
    import jax

    load = os.getloadavg()
    results = []
    for s in SETTINGS:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(s), "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
        print(results[-1], flush=True)
    report = {
        "question": "training throughput (pairs/s) and peak memory of MiniLM-L6 as a cross-encoder",
        "device": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax": jax.__version__,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "loadavg_at_start": [round(x, 2) for x in load],
        },
        "model": "all-MiniLM-L6-v2 trunk + seeded pooler/classifier (22,713,601 parameters)",
        "step": "value_and_grad of MarginMSE over a [2, batch/2] group + clip + AdamW, jitted, fp32",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
