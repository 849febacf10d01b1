"""One chunk of a sweep: every declared family in one `jaxmech.patching.run.run_values` call, shaped for the store.

The call batches the chunk's pairs once per length bucket, encodes bi-encoder queries and binds the readout once,
and runs each family on that batch (`jaxmech.patching.run.FamilyRequest`: each family keeps its method, receivers
and groups, and its result is named by `jaxmech.sweeps.config.FamilySection.key`). Program shapes are fixed per
length bucket (``pairs_per_chunk`` pairs per batch, the last filled with inert pairs; sites in calls of
``steps_per_call x chunk_size`` items), so each family compiles once per bucket and a resumed or repeated run
reuses the persistent compilation cache. Inside a chunk every family captures the sites of all
(`jaxmech.patching.caches.shared_forward` with `sweep_sites`), so the families of a bucket share one compiled
forward. What this module adds: flags per family (as a run of the family alone sets them), the run's position
axis (``T_max`` of the whole run, not of the chunk) and the exact verification of attribution estimates
(`jaxmech.patching.attribution.verify_top_k`, and `jaxmech.patching.path_attribution.path_verify_top_k` for path
families, which the run does not do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxmech.sweeps.config import ChunkingSection, FamilySection, PatchingSection


@dataclasses.dataclass
class ChunkResult:
    """Results of one chunk of ``n`` pairs, shaped for the store (position axes ``T_max``).

    Attributes:
        effects: ``key -> [n, ...]`` metric values.
        raw: ``key -> [n, ...]`` patched scores (attribution: baseline + estimate).
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


def _to_store(values: np.ndarray, layout: str, T_max: int) -> np.ndarray:
    """Pads the position axis of ``[pair, *layout]`` to ``T_max`` with NaN."""
    shape = [values.shape[0]] + [T_max if c == "p" else s for c, s in zip(layout, values.shape[1:], strict=True)]
    out = np.full(shape, np.nan, np.float32)
    out[(slice(None), *(slice(0, s) for s in values.shape[1:]))] = values
    return out


def _verify(
    lm,
    pairs,
    fam: FamilySection,
    raw: np.ndarray,
    base: np.ndarray,
    pert: np.ndarray,
    reverse: bool,
    chunking: ChunkingSection,
) -> dict[str, np.ndarray]:
    """Exact patches of the ``verify_top_k`` sites with the largest estimated effect, per pair and component."""
    from jaxmech.hf.tokenizer import bucket_length
    from jaxmech.patching.attribution import verify_top_k
    from jaxmech.patching.caches import query_embeddings
    from jaxmech.patching.families import get_family
    from jaxmech.patching.inputs import batch_pairs
    from jaxmech.patching.results import SweepResult

    family = get_family(fam.name)
    tok, model = lm.tokenizer, lm.model
    n, k = len(pairs), fam.verify_top_k
    out = {
        "index": np.full((n, len(family.sites), k, len(family.layout)), -1, np.int32),
        "estimated": np.full((n, len(family.sites), k), np.nan, np.float32),
        "exact": np.full((n, len(family.sites), k), np.nan, np.float32),
    }
    buckets = np.array(
        [bucket_length(max(len(p.baseline_ids), len(p.perturbed_ids)), tok.buckets, tok.max_length) for p in pairs]
    )
    comp_of = {s: i for i, s in enumerate(family.sites)}
    for T in sorted(set(buckets.tolist())):
        idx = np.nonzero(buckets == T)[0]
        C = max(chunking.pairs_per_chunk, len(idx))
        batch = batch_pairs(
            [pairs[i] for i in idx], pad_id=tok.pad_id, max_length=tok.max_length, length=int(T), n_pairs=C
        )
        trim = tuple(slice(0, T) if c == "p" else slice(None) for c in family.full_layout)
        est = np.full((C, *raw[idx[0]][trim].shape), np.nan, np.float32)
        est[: len(idx)] = raw[idx][(slice(None), *trim)]
        pad = np.concatenate([idx, np.repeat(idx[-1:], C - len(idx))])  # inert pairs repeat the last pair's scores
        estimate = SweepResult(f"attribution:{fam.name}", est, base[pad], pert[pad], list(batch.names), batch.lengths)
        qe = None if model.pair_input else query_embeddings(model, tok, [pairs[i].query for i in idx], C)
        if family.is_path:  # path_to_score / path_to_heads estimates: exact path patches of the top senders
            from jaxmech.patching.path_attribution import path_verify_top_k

            records = path_verify_top_k(model, batch, estimate, family, k, receivers=[str(r) for r in fam.receivers],
                                        receiver_input=fam.receiver_input, reverse=reverse, query_embedding=qe)
        else:
            records = verify_top_k(model, batch, estimate, family, k, reverse=reverse, query_embedding=qe)
        for rec in records:
            if rec["pair"] >= len(idx):
                continue
            p, c, m = idx[rec["pair"]], comp_of[rec["component"]], len(rec["exact"])
            out["index"][p, c, :m] = rec["index"]
            out["estimated"][p, c, :m] = rec["estimated"]
            out["exact"][p, c, :m] = rec["exact"]
    return out


def compute_chunk(
    lm,
    pairs: Sequence,
    families: Sequence[FamilySection],
    patching: PatchingSection,
    chunking: ChunkingSection,
    T_max: int,
) -> ChunkResult:
    """Patches one chunk of pairs for every declared family.

    Args:
        lm: A `jaxmech.hf.loading.LoadedModel`.
        pairs: The chunk's `jaxmech.data.records.AlignedPair` s as the model reads them.
        families: The declared families.
        patching: Metric and direction (precision is applied by the caller).
        chunking: Batch and call sizes.
        T_max: Position axis of the stored results.

    Returns:
        A `ChunkResult` for the pairs, in their order.
    """
    from jaxmech.patching.caches import shared_forward

    with shared_forward(sweep_sites(families)):  # one compiled forward per bucket for every family
        return _compute_chunk(lm, pairs, families, patching, chunking, T_max)


def sweep_sites(families: Sequence[FamilySection]) -> tuple[str, ...]:
    """Every site the families' forwards capture: their patched sites, and for path families the cached head
    outputs and block outputs their kernels read."""
    from jaxmech.patching.families import get_family

    sites = set()
    for fam in families:
        family = get_family(fam.name)
        sites |= set(family.sites) | ({"z", "attn_out", "mlp_out"} if family.is_path else set())
    return tuple(sorted(sites))


def _compute_chunk(lm, pairs, families, patching, chunking, T_max) -> ChunkResult:
    from jaxmech.patching.run import check_request, no_result_pairs, run_values

    reverse = patching.direction == "baseline_into_perturbed"
    values = run_values(
        lm,
        pairs,
        check_request([request(fam) for fam in families], metric=patching.metric),
        metric=patching.metric,
        reverse=reverse,
        chunk_size=chunking.items_per_step or None,
        min_denominator=patching.min_denominator,
        pairs_per_chunk=chunking.pairs_per_chunk,
        steps_per_call=chunking.steps_per_call,
        readout=patching.readout or None,
    )
    n = len(pairs)
    res = ChunkResult({}, {}, {}, values.score_baseline, values.score_perturbed, np.zeros(n, bool))
    for fam in families:
        effects = values.effects[fam.key]
        # Flags per family, as a run of that family alone sets them: near-zero denominators, and pairs with
        # nothing to patch or no value in this family (NaN).
        no_result = no_result_pairs(pairs, [effects]) & values.done & ~values.flagged[fam.key]
        effects[no_result] = np.nan
        res.flagged |= values.flagged[fam.key] | no_result
        res.effects[fam.key] = _to_store(effects, fam.layout, T_max)
        res.raw[fam.key] = _to_store(values.raw[fam.key], fam.layout, T_max)
        if fam.verify_top_k:
            res.verify[fam.key] = _verify(
                lm, pairs, fam, values.raw[fam.key], res.score_baseline, res.score_perturbed, reverse, chunking
            )
    return res


def request(fam: FamilySection):
    """The `jaxmech.patching.run.FamilyRequest` of a declared family (its result named by ``fam.key``)."""
    from jaxmech.patching.families import get_family
    from jaxmech.patching.run import FamilyRequest

    return FamilyRequest(
        get_family(fam.name),
        fam.method,
        tuple(str(h) for h in fam.receivers),
        fam.receiver_input,
        tuple(fam.groups or ()),
        key=fam.key,
    )
