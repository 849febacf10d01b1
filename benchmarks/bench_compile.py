"""Where compile time goes: tracing, lowering and XLA compilation of each patching family's programs.

    python benchmarks/bench_compile.py                          # l6, every family, writes a fresh folder
    python benchmarks/bench_compile.py --setups l6,l12 --families head_by_pos_z,block_every
    python benchmarks/bench_compile.py --out benchmarks/results  # the committed results (explicitly)

Each (setup, family) runs in fresh Python processes so that nothing is compiled beforehand: first with an
empty persistent compilation cache (``cold``: what a user's first call costs), then again over the same cache
folder (``warm``: what a rerun costs), then once more without the cache and with XLA's dumps on (``hlo``:
only for counting the instructions, dots (matmuls, including library calls) and fusions of every program
XLA compiled; its times include the dumping and are not reported). The measured processes record JAX's own
compile events per program (``jaxpr_trace``: Python tracing to a jaxpr; ``lower``: jaxpr to StableHLO;
``compile``: XLA compilation, or loading from the cache) and the cache hits, and time the first call
(everything) and the second (steady state).

``--baseline-checkout DIR`` measures another checkout's jaxmech (e.g. an older commit, extracted with
``git archive``) the same way, each of its runs right after the current one's, so that both see the same
machine load; rows then carry ``baseline`` results beside the current ones.

Setups: ``l6`` (MiniLM-L6-H384 shapes) and ``l12`` (the exact ms-marco-MiniLM-L-12-v2 shapes); random weights
(compile time does not depend on values), one TFC1-shaped pair of 128 tokens. ``--precision`` compiles in one
of `jaxmech.runtime.PRECISIONS`.

The JSON names the device (`jaxmech.runtime.describe_device`). By default it is written to a new folder
``benchmarks/results/runs/<timestamp>/``, never over the committed results.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if os.environ.get("BENCH_JAXMECH_PATH"):  # a child measuring another checkout's jaxmech (--baseline-checkout)
    sys.path.insert(0, os.environ["BENCH_JAXMECH_PATH"])

from benchmarks.common import fresh_out_dir, write_json  # noqa: E402

T = 128
FAMILIES = [
    "block_every",
    "head_all_pos_v",
    "head_by_pos_z",
    "head_by_pos_pattern",
    "path_to_score",
    "path_to_heads",
    "attribution:head_by_pos_z",
]
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "jaxpr_trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


# ----------------------------------------------------------------------------------------------------------------
# Child: one family in a fresh process
# ----------------------------------------------------------------------------------------------------------------


def _model(setup: str):
    import dataclasses

    from jaxmech.config import MINILM_L12_H384
    from jaxmech.hf.convert import build_model

    cfg = MINILM_L12_H384 if setup == "l12" else dataclasses.replace(MINILM_L12_H384, n_layers=6)
    return build_model(cfg, "cross", seed=0)


def _pair(vocab: int, n: int = T):
    import numpy as np

    try:  # a checkout from before the one pair type (--baseline-checkout): patching.pairs.Pair
        from jaxmech.patching.pairs import Pair
    except ImportError:
        from jaxmech.data.records import AlignedPair as Pair

    rng = np.random.RandomState(0)
    q = list(rng.randint(1000, vocab, 6))
    d = list(rng.randint(1000, vocab, n - len(q) - 3 - 2))
    base = [101, *q, 102, *d, 1037, 1037, 102]
    pert = [101, *q, 102, *d, *q[:2], 102]
    tt = [0] * (len(q) + 2) + [1] * (len(d) + 3)
    return Pair(base, tt, pert, tt, list(range(len(base))), "bench")


def _run_family(model, batch, family: str, stride: int):
    from jaxmech.patching import activation_patch, attribution_patch, path_to_heads, path_to_score

    L = model.cfg.n_layers
    positions = list(range(0, T, stride)) if stride > 1 else None
    if family.startswith("attribution:"):
        return attribution_patch(model, batch, family.split(":", 1)[1]).patched
    if family == "path_to_score":
        return path_to_score(model, batch).patched
    if family == "path_to_heads":
        return path_to_heads(model, batch, [(L - 2, 1)], "k").patched
    per_pos = "by_pos" in family or family == "block_every"
    return activation_patch(model, batch, family, positions=positions if per_pos else None).patched


def _opcode(line: str) -> str | None:
    """The opcode of an HLO instruction line (``%x = f32[2]{0} add(...)``, ``%w = (s32[], f32[2]) while(...)``)."""
    m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+ = ", line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for i, c in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0:
                rest = rest[i + 1 :]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    op = re.match(r"\s*([a-z][\w\-]*)\(", rest)
    return op.group(1) if op else None


def _count_hlo(dump: Path) -> dict:
    """Instruction, dot and fusion counts of every program XLA compiled (after optimisation)."""
    programs = []
    for f in sorted(dump.glob("*after_optimizations.txt")):
        text = f.read_text()
        ops = collections.Counter(op for line in text.splitlines() if (op := _opcode(line)))
        gemm_calls = len(
            re.findall(r'custom_call_target="(?:__cublas\$gemm|__cublas\$lt\$matmul|__onednn\$matmul)', text)
        )
        triton_gemm = len(re.findall(r'"kind":"__triton_gemm"', text))
        name = re.sub(r"^module_\d+\.", "", f.name)
        name = re.sub(r"\.[\w.]*after_optimizations\.txt$", "", name)
        programs.append(
            {
                "program": name,
                "instructions": sum(ops.values()),
                "dots": ops.get("dot", 0) + gemm_calls + triton_gemm,
                "fusions": ops.get("fusion", 0),
                "while_loops": ops.get("while", 0),
                "conditionals": ops.get("conditional", 0),
            }
        )
    return {
        "programs": programs,
        "instructions": sum(p["instructions"] for p in programs),
        "dots": sum(p["dots"] for p in programs),
    }


def _runtime():
    """`jaxmech.runtime` of this checkout (a measured older checkout may not have it; it needs only jax)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_runtime", REPO / "jaxmech" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(args) -> None:
    import jax

    per_program = collections.defaultdict(lambda: collections.defaultdict(float))
    totals = collections.defaultdict(float)
    hits = []

    def on_duration(event, secs, **kw):
        if event in EVENTS:
            per_program[kw.get("fun_name", "?")][EVENTS[event]] += secs
            totals[EVENTS[event]] += secs

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
    )

    runtime = _runtime()
    if os.environ.get("JAXMECH_COMPILATION_CACHE", "1") != "0":  # the same cache settings for any checkout
        runtime.enable_compilation_cache(Path(os.environ["JAXMECH_CACHE"]) / "xla")
    from jaxmech.patching import batch_pairs

    model = _model(args.setup)
    batch = batch_pairs([_pair(model.cfg.d_vocab)], length=T)
    jax.block_until_ready(model)
    per_program.clear(), totals.clear(), hits.clear()  # count the patching programs only, not model building
    if args.dump:  # likewise for the dumped programs
        for f in Path(args.dump).iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    with runtime.precision(args.precision):
        t0 = time.perf_counter()
        out = _run_family(model, batch, args.family, args.stride)
        jax.block_until_ready(out)
        first = time.perf_counter() - t0
        n_programs = sum(1 for p in per_program.values() if p.get("compile"))
        t0 = time.perf_counter()
        jax.block_until_ready(_run_family(model, batch, args.family, args.stride))
        steady = time.perf_counter() - t0
    import numpy as np

    biggest = sorted(per_program.items(), key=lambda kv: -kv[1].get("compile", 0.0))[:6]
    res = {
        "first_call_s": first,
        "steady_s": steady,
        "overhead_s": first - steady,
        "trace_s": totals["jaxpr_trace"],
        "lower_s": totals["lower"],
        "compile_s": totals["compile"],
        "programs_compiled": n_programs,
        "cache_hits": len(hits),
        "sites": int(np.isfinite(np.asarray(out)).sum()),
        "slowest_programs": [{"program": k, **{e: round(v, 4) for e, v in d.items()}} for k, d in biggest],
        "compilation_cache": runtime.compilation_cache_status(),
    }
    if args.dump:
        res["hlo"] = _count_hlo(Path(args.dump))
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------------


def run_child(setup: str, family: str, cache_dir: Path, args, dump: bool, jaxmech_path: Path = REPO) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAXMECH_CACHE": str(cache_dir)}
    env["BENCH_JAXMECH_PATH"] = str(jaxmech_path)
    if dump:
        env["JAXMECH_COMPILATION_CACHE"] = "0"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if args.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--setup",
        setup,
        "--family",
        family,
        "--stride",
        str(args.stride),
        "--precision",
        args.precision,
    ]
    with tempfile.TemporaryDirectory() as d:
        if dump:
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + f" --xla_dump_to={d} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$"
            ).strip()
            cmd += ["--dump", d]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{setup}/{family}: child failed (rc={out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", default="l6")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="positions of per-position families (default 32 on CPU, 1 elsewhere; compile time does not depend on it)",
    )
    p.add_argument("--precision", default="fp32")
    p.add_argument("--no-warm", action="store_true", help="skip the rerun over a warm compilation cache")
    p.add_argument(
        "--xla-flags",
        default="",
        help="extra XLA_FLAGS for the measured processes (e.g. --xla_gpu_autotune_level=0), recorded in the JSON",
    )
    p.add_argument("--baseline-label", default="", help="what the baseline checkout is (e.g. its commit), recorded")
    p.add_argument("--tag", default="", help="suffix of the JSON file name (for variants)")
    p.add_argument(
        "--baseline-checkout",
        default=None,
        help="another checkout whose jaxmech is measured the same "
        "way, interleaved (before/after comparisons under the same load)",
    )
    p.add_argument("--out", default=None, help="folder for the JSON (default: a new benchmarks/results/runs/<time>)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setup", help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    from jaxmech import runtime

    runtime.check_precision(args.precision, where="--precision")
    device = runtime.describe_device()
    if args.stride is None:
        args.stride = 32 if device["platform"] == "cpu" else 1
    out_dir = fresh_out_dir(args.out)
    rows = []
    result = {
        "benchmark": "compile_time",
        "device": device,
        "precision": args.precision,
        "tokens": T,
        "stride": args.stride,
        "xla_flags": args.xla_flags,
        "rows": rows,
    }
    path = out_dir / f"bench_compile_{device['platform']}{'_' + args.tag if args.tag else ''}.json"
    checkouts = {"current": REPO}
    if args.baseline_checkout:
        checkouts["baseline"] = Path(args.baseline_checkout).resolve()
        result["baseline_checkout"] = str(checkouts["baseline"])
        result["baseline_label"] = args.baseline_label
    for setup in args.setups.split(","):
        for family in args.families.split(","):
            row = {"setup": setup, "family": family}
            for which, root in checkouts.items():
                with tempfile.TemporaryDirectory() as cache:
                    cold = run_child(setup, family, Path(cache), args, dump=False, jaxmech_path=root)
                    warm = (
                        None
                        if args.no_warm
                        else run_child(setup, family, Path(cache), args, dump=False, jaxmech_path=root)
                    )
                with tempfile.TemporaryDirectory() as cache:
                    hlo = run_child(setup, family, Path(cache), args, dump=True, jaxmech_path=root)["hlo"]
                row[which] = {"cold": cold, "warm": warm, "hlo": hlo}
                brief = {
                    "setup": setup,
                    "family": family,
                    "jaxmech": which,
                    "first_call_s": round(cold["first_call_s"], 2),
                    "trace_s": round(cold["trace_s"], 2),
                    "lower_s": round(cold["lower_s"], 2),
                    "compile_s": round(cold["compile_s"], 2),
                    "programs": cold["programs_compiled"],
                    "hlo_instructions": hlo["instructions"],
                    "dots": hlo["dots"],
                    "steady_s": round(cold["steady_s"], 2),
                }
                if warm:
                    brief.update(
                        warm_first_call_s=round(warm["first_call_s"], 2),
                        warm_compile_s=round(warm["compile_s"], 2),
                        warm_cache_hits=warm["cache_hits"],
                    )
                print(json.dumps(brief), flush=True)
            rows.append(row)
            write_json(path, result)  # after every row, so a run stopped early keeps what it measured
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
