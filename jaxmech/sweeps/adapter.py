"""The ONE place where a sweep calls the patching library: `compute_chunk`.

TEMPORARY ADAPTER. It computes one chunk of pairs for the declared families with today's library calls
(`jaxmech.patching.sweep`, `.path`, `.attribution`). When the architecture issue's
``jaxmech.patching.run.run_patching(...) -> PatchingResult`` is on main, `compute_chunk` becomes one call of it
per length bucket and this module's helpers go.

What it adds to today's calls, and what ``run_patching`` needs to keep for sweeps:

* **Fixed program shapes per length bucket.** Today's sweep scans over ``ceil(items / chunk)`` steps, so a
  chunk of pairs with another total length compiles again. Here every batch of a bucket has
  ``pairs_per_chunk`` pairs (the last padded with *inert* pairs: nothing patchable, no items) and the items are
  run in calls of a fixed ``steps_per_call x items_per_step`` (the last call padded with invalid items). So
  each family compiles once per bucket, and a resumed or repeated run reuses the persistent compilation cache.
* **Results for the whole run's position axis** (``T_max``), NaN beyond a pair's bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmech.patching.families import PATH_FAMILIES, get_family
from jaxmech.patching.metrics import apply_metric
from jaxmech.patching.pairs import AlignmentError, Pair, batch_pairs
from jaxmech.sweeps.config import ChunkingSection, FamilySection, PatchingSection


@dataclasses.dataclass
class ChunkResult:
    """Results of one chunk of ``n`` pairs, shaped for the store (position axes ``T_max``).

    Attributes:
        effects: ``key -> [n, ...]`` metric values.
        raw: ``key -> [n, ...]`` patched scores.
        verify: ``key -> {"index": [n, comp, k, ndim], "estimated": [n, comp, k], "exact": [n, comp, k]}``.
        score_baseline: ``[n]`` scores of the run that was patched.
        score_perturbed: ``[n]`` scores of the run the activations came from.
        flagged: ``[n]`` near-zero denominators of the normalized metric.
    """

    effects: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    verify: dict[str, dict[str, np.ndarray]]
    score_baseline: np.ndarray
    score_perturbed: np.ndarray
    flagged: np.ndarray


def _inert(pair: Pair) -> Pair:
    """A copy of a pair with nothing patchable: it fills a batch to its fixed size and produces no items."""
    return dataclasses.replace(pair, position_map=[-1] * len(pair.baseline_ids), name="<padding>")


def _fixed_items(batch, per_pos, per_head, n_real, model, step, n_dev):
    from jaxmech.patching.sweep import enumerate_items

    items = enumerate_items(batch, per_pos, per_head, model, step, n_dev)
    keep = items.valid.ravel() & (items.pair.ravel() < n_real)
    return items.pair.ravel()[keep], items.head.ravel()[keep], items.pos.ravel()[keep]


def _run_kernel(kernel, model, prep, data, *, per_pos, per_head, n_real, chunking, layers=None, mesh=None):
    """`jaxmech.patching.sweep.run_kernel` with fixed call shapes: ``[pair, layer, pos|1, head|1]``."""
    from jaxmech.patching.sweep import auto_chunk_size, local_mesh, scan_items

    mesh = mesh or local_mesh()
    n_dev = mesh.devices.size
    batch = prep.batch
    cfg = model.cfg
    worst = batch.n_pairs * (batch.n_pos if per_pos else 1) * (cfg.n_heads if per_head else 1)
    step = min(chunking.items_per_step or auto_chunk_size(model, batch.n_pos, worst, n_dev), worst)
    step = -(-step // n_dev) * n_dev
    # Never more steps per call than the bucket's most items need: small chunks are not padded to a big call.
    steps = min(chunking.steps_per_call, -(-worst // step))
    pair, head, pos = _fixed_items(batch, per_pos, per_head, n_real, model, step, n_dev)
    per_call = step * steps
    n = len(pair)
    n_calls = -(-n // per_call)
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    outs = []
    for c in range(n_calls):
        sl = slice(c * per_call, min((c + 1) * per_call, n))
        m = sl.stop - sl.start

        def fill(a, m=m, sl=sl):
            out = np.zeros(per_call, np.int32)
            out[:m] = a[sl]
            return out.reshape(steps, step)

        arrays = {"pair": fill(pair), "head": fill(head), "pos": fill(pos)}
        if n_dev > 1:
            arrays = jax.device_put(arrays, NamedSharding(mesh, P(None, "items")))
        out = np.asarray(scan_items(kernel, model, data, arrays, layers))
        outs.append(out.reshape(len(layers), -1)[:, :m])
    res = np.concatenate(outs, 1) if outs else np.zeros((len(layers), 0), np.float32)
    canonical = np.full(
        (batch.n_pairs, cfg.n_layers, batch.n_pos if per_pos else 1, cfg.n_heads if per_head else 1), np.nan, np.float32
    )
    for i, layer in enumerate(layers):
        canonical[pair, layer, pos if per_pos else 0, head if per_head else 0] = res[i]
    return canonical


def _patched(lm, batch, fam: FamilySection, n_real: int, reverse: bool, qe, chunking: ChunkingSection):
    """Patched scores ``[pairs, *family layout]`` (bucket positions), baseline and perturbed scores, and the
    verification records."""
    from jaxmech.patching import attribution_patch, verify_top_k
    from jaxmech.patching.path import (
        COMPONENTS,
        ComponentsToHeadsKernel,
        PathToHeadsKernel,
        PathToScoreKernel,
        _check_receivers,
        _receivers_by_layer,
        parse_heads,
    )
    from jaxmech.patching.sweep import ActivationKernel, _canonical_to_layout, prepare

    model = lm.model
    run = dict(per_pos=False, per_head=True, n_real=n_real, chunking=chunking)
    if fam.method == "attribution":
        est = attribution_patch(model, batch, fam.name, reverse=reverse, query_embedding=qe)
        checks = (
            verify_top_k(model, batch, est, fam.name, fam.verify_top_k, reverse=reverse, query_embedding=qe)
            if fam.verify_top_k
            else []
        )
        return est.patched, est.baseline_score, est.perturbed_score, checks
    if fam.name == "path_to_score":
        prep = prepare(
            model, batch, base_sites=("z", "attn_out"), source_sites=("z",), reverse=reverse, query_embedding=qe
        )
        out = _run_kernel(PathToScoreKernel(), model, prep, prep.data(source=prep.source("z")), **run)
        return out[:, :, 0, :], prep.baseline_score, prep.perturbed_score, []
    if fam.name in PATH_FAMILIES:
        receivers = parse_heads([str(r) for r in fam.receivers])
        _check_receivers(model, receivers, fam.receiver_input)
        by_layer = tuple((r, tuple(h)) for r, h in sorted(_receivers_by_layer(receivers).items()))
        r_max = max(r for r, _ in by_layer)
        if fam.name == "path_to_heads":
            prep = prepare(
                model, batch, base_sites=("z", "attn_out"), source_sites=("z",), reverse=reverse, query_embedding=qe
            )
            out = _run_kernel(
                PathToHeadsKernel(by_layer, fam.receiver_input),
                model,
                prep,
                prep.data(source=prep.source("z")),
                layers=range(r_max),
                **run,
            )
            return out[:, :r_max, 0, :], prep.baseline_score, prep.perturbed_score, []
        prep = prepare(
            model,
            batch,
            base_sites=("attn_out", "mlp_out"),
            source_sites=COMPONENTS,
            reverse=reverse,
            query_embedding=qe,
        )
        comps = []
        for site in COMPONENTS:
            out = _run_kernel(
                ComponentsToHeadsKernel(site, by_layer, fam.receiver_input),
                model,
                prep,
                prep.data(source=prep.source(site)),
                layers=range(r_max),
                **{**run, "per_pos": True, "per_head": False},
            )
            comps.append(out[:, :r_max, :, 0])
        return np.stack(comps, 1), prep.baseline_score, prep.perturbed_score, []
    family = get_family(fam.name)
    row_sites = [s for s in family.sites if s not in ("resid_pre", "q", "k", "v")]
    prep = prepare(model, batch, base_sites=row_sites, source_sites=family.sites, reverse=reverse, query_embedding=qe)
    if family.needs_identity_alignment and not prep.batch.identity[:n_real].all():
        bad = [prep.batch.names[i] for i in np.nonzero(~prep.batch.identity[:n_real])[0][:5]]
        raise AlignmentError(
            f"family {family.name} patches attention patterns, which needs one-to-one aligned "
            f"pairs of equal length; pairs {bad} are not (use filler alignment)"
        )
    comps = []
    for site in family.sites:
        canonical = _run_kernel(
            ActivationKernel(site, family.per_pos, family.per_head),
            model,
            prep,
            prep.data(source=prep.source(site)),
            **{**run, "per_pos": family.per_pos, "per_head": family.per_head},
        )
        comps.append(_canonical_to_layout(canonical, family.layout))
    out = np.stack(comps, 1) if len(comps) > 1 else comps[0]
    return out, prep.baseline_score, prep.perturbed_score, []


def _to_store(values: np.ndarray, layout: str, T_max: int) -> np.ndarray:
    """Pads the position axis of ``[pair, *layout]`` to ``T_max`` with NaN."""
    shape = [values.shape[0]] + [T_max if c == "p" else s for c, s in zip(layout, values.shape[1:], strict=True)]
    out = np.full(shape, np.nan, np.float32)
    out[(slice(None), *(slice(0, s) for s in values.shape[1:]))] = values
    return out


def _verify_arrays(checks: list[dict], fam: FamilySection, n_real: int) -> dict[str, np.ndarray]:
    family = get_family(fam.name)
    n_comp, k, ndim = len(family.sites), fam.verify_top_k, len(family.layout)
    out = {
        "index": np.full((n_real, n_comp, k, ndim), -1, np.int32),
        "estimated": np.full((n_real, n_comp, k), np.nan, np.float32),
        "exact": np.full((n_real, n_comp, k), np.nan, np.float32),
    }
    comp_of = {s: i for i, s in enumerate(family.sites)}
    for rec in checks:
        p = rec["pair"]
        if p >= n_real:
            continue
        c, m = comp_of[rec["component"]], len(rec["exact"])
        out["index"][p, c, :m] = rec["index"]
        out["estimated"][p, c, :m] = rec["estimated"]
        out["exact"][p, c, :m] = rec["exact"]
    return out


def compute_chunk(
    lm,
    pairs: Sequence[Pair],
    lengths: Sequence[int],
    query_embedding: np.ndarray | None,
    families: Sequence[FamilySection],
    patching: PatchingSection,
    chunking: ChunkingSection,
    T_max: int,
) -> ChunkResult:
    """Patches one chunk of pairs for every declared family.

    Args:
        lm: A `jaxmech.loading.LoadedModel`.
        pairs: The chunk's aligned pairs (bi-encoders: document-only pairs).
        lengths: ``[n]`` the length bucket of each pair (pairs of a bucket are batched together, padded to
            ``chunking.pairs_per_chunk`` pairs).
        query_embedding: ``[n, d_model]`` for bi-encoders, else None.
        families: The declared families.
        patching: Metric, direction (precision is applied by the caller).
        chunking: Batch and call sizes.
        T_max: Position axis of the stored results.

    Returns:
        A `ChunkResult` for the ``n`` pairs, in their order.
    """
    n = len(pairs)
    tok = lm.tokenizer
    reverse = patching.direction == "baseline_into_perturbed"
    res = ChunkResult({}, {}, {}, np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, bool))
    lengths = np.asarray(lengths)
    for T in sorted(set(lengths.tolist())):
        idx = np.nonzero(lengths == T)[0]
        group = [pairs[i] for i in idx]
        group += [_inert(group[-1])] * (chunking.pairs_per_chunk - len(group))
        batch = batch_pairs(group, pad_id=tok.pad_id, max_length=tok.max_length, length=int(T))
        qe = None
        if query_embedding is not None:
            qe = np.concatenate([query_embedding[idx], np.repeat(query_embedding[idx[-1:]], len(group) - len(idx), 0)])
            qe = jnp.asarray(qe)
        for fam in families:
            patched, base, pert, checks = _patched(lm, batch, fam, len(idx), reverse, qe, chunking)
            patched, base, pert = (
                np.asarray(patched)[: len(idx)],
                np.asarray(base)[: len(idx)],
                np.asarray(pert)[: len(idx)],
            )
            kw = {"min_denominator": patching.min_denominator} if patching.metric == "normalized" else {}
            metric = apply_metric(patching.metric, patched, base, pert, **kw)
            for store, values in ((res.effects, metric.values), (res.raw, patched)):
                if fam.key not in store:
                    store[fam.key] = _to_store(np.zeros((n, *values.shape[1:]), np.float32) * np.nan, fam.layout, T_max)
                store[fam.key][(idx, *(slice(0, s) for s in values.shape[1:]))] = values
            if fam.verify_top_k:
                v = _verify_arrays(checks, fam, len(idx))
                dest = res.verify.setdefault(fam.key, {k: np.zeros((n, *a.shape[1:]), a.dtype) for k, a in v.items()})
                for k, a in v.items():
                    dest[k][idx] = a
            res.score_baseline[idx], res.score_perturbed[idx] = base, pert
            res.flagged[idx] |= metric.flagged
    return res
