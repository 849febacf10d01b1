"""How long does building the paper's full TFC1 set (100 queries x 100 passages = 10,000 pairs) take?

    python benchmarks/bench_datasets.py [--source shared|demo] [--repeat 3] [--out FILE.json]

Builds on the CPU (tokenisation, alignment and token typing are host work; no accelerator is involved).
Times, separately: loading the tokenizer, loading the source files, one warm-up build, then ``--repeat`` timed
builds (min and median reported), and writing and re-reading the dataset file (in a temporary folder, never
inside the repository: the files hold MS MARCO text). The result (default
``benchmarks/results/bench_datasets.json``) names the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from jaxmech.device import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="shared", help="shared (the paper's files) or demo")
    ap.add_argument("--kind", default="tfc1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/bench_datasets.json")
    args = ap.parse_args()

    from jaxmech.data.diagnostic import build
    from jaxmech.data.loaders import load_source
    from jaxmech.data.records import read_dataset, write_dataset
    from jaxmech.files import packaged_model_path as default_model_path
    from jaxmech.hf.tokenizer import PairTokenizer

    t = time.perf_counter()
    tok = PairTokenizer.from_pretrained(default_model_path())
    t_tok = time.perf_counter() - t
    t = time.perf_counter()
    source = load_source(args.source)
    t_load = time.perf_counter() - t

    t = time.perf_counter()
    result = build(args.kind, source, tok)
    t_warm = time.perf_counter() - t
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = build(args.kind, source, tok)
        times.append(time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ds.jsonl"
        t = time.perf_counter()
        write_dataset(path, result.pairs, result.header(tok, source.name))
        t_write = time.perf_counter() - t
        size = path.stat().st_size
        t = time.perf_counter()
        read_dataset(path)
        t_read = time.perf_counter() - t

    out = {
        "question": f"time to build the full {args.kind} set from source '{args.source}'",
        "device": {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(),
                   "python": platform.python_version()},
        "pairs": len(result.pairs),
        "excluded_too_long": result.stats.get("excluded_too_long"),
        "tokenizer_load_s": round(t_tok, 3),
        "source_load_s": round(t_load, 3),
        "build_first_s": round(t_warm, 3),
        "build_min_s": round(min(times), 3),
        "build_median_s": round(statistics.median(times), 3),
        "pairs_per_s": round(len(result.pairs) / min(times), 1),
        "write_s": round(t_write, 3),
        "read_validate_s": round(t_read, 3),
        "file_mb": round(size / 2**20, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
