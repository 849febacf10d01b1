"""Throughput, compile share and peak memory of `jaxmech sweep` over the shared TFC1 pairs, as a job.

    python benchmarks/bench_sweep.py --sample 1000 10000 --families path_to_score attribution:head_by_pos_z
    python benchmarks/bench_sweep.py --sample 16 --families block_every head_all_pos_v --tag exact
    python benchmarks/bench_sweep.py ... --rerun      # then the same sweep again with --fresh: what compiles?
    python benchmarks/bench_sweep.py --tiny --sample 1000 10000 --tag memory   # memory vs pair count
    python benchmarks/bench_sweep.py --tiny --sample 256 --kill-after 8 --tag resume   # SIGKILL, then resume

Each measurement is a fresh ``jaxmech sweep`` subprocess (its peak RSS is the process's own) on the distilled
MiniLM-L6 cross-encoder of ``../shared/models`` (the paper's L12 cross-encoder is not available offline) with
``sample = N`` TFC1 pairs drawn with seed 0 (``sample = 10000`` is every pair). ``--tiny`` uses a random
2-layer, 64-wide cross-encoder with the same tokenizer instead: the sweep machinery (plan, pair table, store,
chunk loop) on all 10,000 real pairs in minutes, to see whether memory grows with the number of pairs.
The JSON written to ``benchmarks/results/bench_sweep_<device>[_<tag>].json`` names the device and the
machine's load average, which matters on a shared machine: patched runs per second scale with the CPU time
the process actually gets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO.parent / "shared" / "models" / "minilm6-ce-distilled"


def family_table(name: str) -> str:
    if name.startswith("attribution:"):
        return f'[[families]]\nname = "{name.split(":", 1)[1]}"\nmethod = "attribution"\n'
    if name in ("path_to_heads", "path_components_to_heads"):
        return f'[[families]]\nname = "{name}"\nreceivers = ["4.1"]\n'
    return f'[[families]]\nname = "{name}"\n'


def write_config(folder: Path, sample: int, families: list[str], chunk: int, model: Path) -> Path:
    text = (
        f'[run]\nname = "bench"\n\n[model]\npath = "{model}"\nkind = "cross"\n\n'
        f'[[datasets]]\nkind = "tfc1"\nsource = "shared"\nsample = {sample}\nseed = 0\n\n'
        + "\n".join(family_table(f) for f in families)
        + f"\n[chunking]\npairs_per_chunk = {chunk}\n"
    )
    path = folder / f"bench_{sample}.toml"
    path.write_text(text)
    return path


def tiny_model(folder: Path, tokenizer_from: Path) -> Path:
    """A random 2-layer cross-encoder (d_model 64, 4 heads) with the tokenizer of ``tokenizer_from``."""
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model
    from jaxmech.hf.loading import save_pretrained
    from jaxmech.hf.tokenizer import PairTokenizer

    cfg = EncoderConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, initializer_range=0.2)
    return save_pretrained(
        build_model(cfg, "cross", seed=0),
        folder / "tiny-cross",
        tokenizer=PairTokenizer.from_pretrained(tokenizer_from),
    )


def run_once(cfg: Path, out: Path, fresh: bool) -> dict:
    cmd = [sys.executable, "-m", "jaxmech.cli", "sweep", str(cfg), "--out", str(out), "--quiet"]
    if fresh:
        cmd.append("--fresh")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    timings = json.loads((out / "processes" / "0.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    compute = timings["compute_seconds"]
    # Peak RSS after each chunk, in run order (longest bucket first): flat = memory does not grow with pairs.
    markers = sorted((out / "done").glob("chunk-*"))
    rss = [json.loads(p.read_text()).get("peak_rss_mb") for p in markers]
    rss = [r for r in rss if r is not None]
    curve = {}
    if rss:
        picks = sorted({0, 1, len(rss) // 4, len(rss) // 2, 3 * len(rss) // 4, len(rss) - 1})
        curve = {"peak_rss_mb_after_chunk": {str(i + 1): rss[i] for i in picks}}
    return {
        "pairs": meta["n_pairs"],
        "chunks": meta["n_chunks"],
        "T_max": meta["T_max"],
        "wall_seconds": round(wall, 2),
        **timings,
        "pairs_per_second": round(meta["n_pairs"] / compute, 3) if compute else None,
        "compile_share_of_total": round(timings["compile_seconds"] / timings["total_seconds"], 4),
        **curve,
        "summary_line": proc.stdout.strip(),
    }


def kill_then_resume(cfg: Path, out: Path, kill_after: int) -> dict:
    """Starts a sweep, SIGKILLs it once ``kill_after`` chunks are complete, reruns it: what did resuming cost?"""
    import signal

    cmd = [sys.executable, "-m", "jaxmech.cli", "sweep", str(cfg), "--out", str(out), "--quiet", "--fresh"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "done"
    while proc.poll() is None:
        if done.is_dir() and sum(p.name.startswith("chunk-") for p in done.iterdir()) >= kill_after:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        raise RuntimeError("the sweep finished before it could be killed; lower --kill-after")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - t0
    n_done = sum(p.name.startswith("chunk-") for p in done.iterdir())
    row = run_once(cfg, out, fresh=False)
    return {"killed_after_seconds": round(killed_after, 2), "chunks_complete_at_kill": n_done, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--families", nargs="+", default=["path_to_score", "attribution:head_by_pos_z"])
    ap.add_argument("--chunk", type=int, default=16, help="pairs_per_chunk")
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--rerun", action="store_true", help="run each sweep a second time with --fresh")
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer model (memory scaling)")
    ap.add_argument("--kill-after", type=int, default=0, help="SIGKILL after this many chunks, then resume")
    ap.add_argument("--tag", default="")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        sys.exit(f"{args.model}: model folder not found (the shared distilled cross-encoder)")
    sys.path.insert(0, str(REPO))
    from jaxmech.device import describe_device

    device = describe_device()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = args.keep or Path(tmp)
        if args.tiny:
            args.model = tiny_model(Path(tmp), args.model)
        for n in args.sample:
            cfg = write_config(Path(tmp), n, args.families, args.chunk, args.model)
            load = os.getloadavg()
            if args.kill_after:
                row = {
                    "sample": n,
                    "families": args.families,
                    "run": "SIGKILL then resume",
                    "load_average_before": load,
                    **kill_then_resume(cfg, root / f"run_{n}", args.kill_after),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                continue
            row = {
                "sample": n,
                "families": args.families,
                "run": "first",
                "load_average_before": load,
                **run_once(cfg, root / f"run_{n}", fresh=True),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.rerun:
                row = {
                    "sample": n,
                    "families": args.families,
                    "run": "rerun --fresh (persistent compile cache)",
                    "load_average_before": os.getloadavg(),
                    **run_once(cfg, root / f"run_{n}", fresh=True),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    tag = f"_{args.tag}" if args.tag else ""
    out = REPO / "benchmarks" / "results" / f"bench_sweep_{device['platform']}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "sweep",
        "question": "throughput, compile share and peak RSS of jaxmech sweep on TFC1; "
        "does memory grow with the number of pairs?",
        "device": device,
        "model": str(args.model),
        "chunk_pairs": args.chunk,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
