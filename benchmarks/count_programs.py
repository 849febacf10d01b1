"""Which programs a sweep compiles, per family, length bucket and stage (issue 22: few programs per sweep).

    python benchmarks/count_programs.py demo --tiny            # configs/demo.toml, a random 2-layer bi-encoder
    python benchmarks/count_programs.py l6 --tiny              # the README's distilled L6 sweep (64 TFC1 pairs)
    python benchmarks/count_programs.py l6                     # the same on the real checkpoint (slow on CPU)
    python benchmarks/count_programs.py CONFIG.toml --label x  # any sweep config

The sweep runs in this process with the persistent compilation cache off, so every program is compiled. JAX's
compile log (``jax_log_compiles``) names each program and its argument shapes; the harness labels it with
the chunk's length bucket, the family and the stage (``run``: `jaxmech.patching.run.run_patching`, ``verify``:
the exact verification of attribution estimates, ``setup``: loading and planning). Program COUNTS do not
depend on the machine's load or on the model's width or depth (layers are scanned), so ``--tiny`` (a random
narrow model of the same kind with the same tokenizer) counts the same programs in a fraction of the
time; compile SECONDS do depend on both: time them alone with ``benchmarks/time_compiles.sh``.

Writes ``benchmarks/results/programs_<label>_<device>.json``: per (bucket, family, stage) the number of programs
and their names with shapes, and the totals the sweep itself recorded (``meta["timings"]``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
L6 = REPO.parent / "shared" / "models" / "minilm6-ce-distilled"


def l6_config(folder: Path, model: Path, sample: int = 64, chunk: int = 16) -> Path:
    """The README's sweep table row: distilled L6, ``path_to_score`` + attribution ``head_by_pos_z``."""
    text = (
        f'[run]\nname = "l6"\n\n[model]\npath = "{model}"\nkind = "cross"\n\n'
        f'[[datasets]]\nkind = "tfc1"\nsource = "shared"\nsample = {sample}\nseed = 0\n\n'
        '[[families]]\nname = "path_to_score"\n\n'
        '[[families]]\nname = "head_by_pos_z"\nmethod = "attribution"\n\n'
        f"[chunking]\npairs_per_chunk = {chunk}\n"
    )
    path = folder / "l6.toml"
    path.write_text(text)
    return path


def tiny_model(folder: Path, like: Path, kind: str) -> Path:
    """A random 64-wide model of ``kind`` with the depth and head count (receivers stay valid) and the tokenizer
    of ``like``."""
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model
    from jaxmech.hf.loading import save_pretrained
    from jaxmech.hf.tokenizer import PairTokenizer

    real = json.loads((like / "config.json").read_text())
    n_heads = real["num_attention_heads"]
    cfg = EncoderConfig(n_layers=real["num_hidden_layers"], d_model=8 * n_heads, n_heads=n_heads, d_head=8,
                        d_mlp=16 * n_heads, initializer_range=0.2)
    return save_pretrained(build_model(cfg, kind, seed=0), folder / f"tiny-{kind}",
                           tokenizer=PairTokenizer.from_pretrained(like))


class Labels(logging.Handler):
    """Collects JAX's compile log lines under the current label."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.label = ("-", "-", "setup")
        self.programs: list[tuple[tuple, str]] = []

    def emit(self, record):
        msg = record.getMessage()
        m = re.match(r"Compiling (\S+) with global shapes and types (.*?)\. Argument mapping", msg, re.S)
        if m:
            self.programs.append((self.label, f"{m.group(1)} {m.group(2)[:300]}"))

    @contextlib.contextmanager
    def at(self, label):
        old, self.label = self.label, label
        try:
            yield
        finally:
            self.label = old


def instrument(labels: Labels) -> None:
    """Wraps the sweep's per-family calls and its batching so that each compile is labelled (bucket, family,
    stage): the bucket is the length of the last batch made (`jaxmech.patching.inputs.batch_pairs`)."""
    import jaxmech.patching.inputs as inputs
    import jaxmech.patching.run as run_mod
    import jaxmech.sweeps.compute as compute

    inner_run, inner_verify, inner_batch = run_mod.run_patching, compute._verify, inputs.batch_pairs

    def batch_pairs(*args, **kw):
        out = inner_batch(*args, **kw)
        labels.label = (str(out.n_pos), *labels.label[1:])
        return out

    def run_patching(lm, pairs, families, **kw):
        fam = f"{families[0]}" + (":attribution" if kw.get("method") == "attribution" else "")
        with labels.at(("-", fam, "run")):
            return inner_run(lm, pairs, families, **kw)

    def verify(lm, pairs, fam, *args, **kw):
        with labels.at(("-", fam.name, "verify")):
            return inner_verify(lm, pairs, fam, *args, **kw)

    run_mod.run_patching, compute._verify, inputs.batch_pairs = run_patching, verify, batch_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", help="'demo', 'l6' or a sweep config file")
    ap.add_argument("--tiny", action="store_true",
                    help="a random narrow model of the same kind, depth, heads and tokenizer")
    ap.add_argument("--sample", type=int, default=64, help="l6: TFC1 pairs")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose configs/demo.toml is read")
    args = ap.parse_args()
    os.environ["JAXMECH_COMPILATION_CACHE"] = "0"
    sys.path.insert(0, str(args.root.resolve()))  # the checkout measured (its jaxmech), not this script's
    import jax

    from jaxmech.sweeps.config import load_sweep_config

    jax.config.update("jax_log_compiles", True)
    labels = Labels()
    for name in ("jax._src.interpreters.pxla", "jax._src.dispatch"):
        logging.getLogger(name).addHandler(labels)
        logging.getLogger(name).propagate = False
    instrument(labels)
    tmp = Path(tempfile.mkdtemp(prefix="count-programs-"))
    label = args.label or (Path(args.what).stem if args.what not in ("demo", "l6") else args.what)
    cfg_path = {"demo": args.root / "configs" / "demo.toml"}.get(args.what) or (
        l6_config(tmp, L6, args.sample) if args.what == "l6" else Path(args.what))
    cfg = load_sweep_config(cfg_path)
    import dataclasses

    from jaxmech.files import resolve_model_path

    if args.tiny:
        folder = Path(resolve_model_path(cfg.model.path))
        kind = cfg.model.kind if cfg.model.kind in ("cross", "bi") else ("bi" if args.what == "demo" else "cross")
        tiny = tiny_model(tmp, folder, kind)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(tiny), kind=kind))
    cfg = dataclasses.replace(cfg, analyses=(), report=dataclasses.replace(cfg.report, enabled=False))
    from jaxmech.sweeps.job import run_sweep

    t0 = time.perf_counter()
    lines: list[str] = []
    summary = run_sweep(cfg, out=tmp / "run", fresh=True, quiet=True,
                        log=lambda line: (lines.append(line), print(line, file=sys.stderr)))
    wall = time.perf_counter() - t0
    per = collections.defaultdict(list)
    for lab, prog in labels.programs:
        per[" | ".join(lab)].append(prog)
    by_family = collections.Counter()
    for lab, _ in labels.programs:
        by_family[lab[1]] += 1
    from jaxmech.runtime import describe_device

    result = {
        "config": str(cfg_path if args.what != "l6" else f"l6 (sample {args.sample})"),
        "model": "tiny random (same kind, depth, heads, tokenizer; 8-wide heads)" if args.tiny else str(cfg.model.path),
        "device": describe_device(),
        "wall_seconds_not_comparable": round(wall, 1),
        "programs_logged": len(labels.programs),
        "sweep_timings": summary.timings,
        "sweep_log": lines,
        "compile_share_of_wall": round(summary.timings["compile_seconds"] / summary.timings["total_seconds"], 3),
        "programs_by_family": dict(by_family),
        "programs_by_bucket_family_stage": {k: len(v) for k, v in sorted(per.items())},
        "programs": {k: v for k, v in sorted(per.items())},
    }
    out = args.out or REPO / "benchmarks" / "results" / f"programs_{label}{'_tiny' if args.tiny else ''}_cpu.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("programs_logged", "programs_by_family",
                                             "programs_by_bucket_family_stage")}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
