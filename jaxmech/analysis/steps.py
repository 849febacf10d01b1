"""The analyses as steps: ``step(run_or_model, options) -> dict`` (the JSON), one per analysis.

``run_or_model`` is a `jaxmech.hf.loading.LoadedModel`, a model folder / hub id / ``"packaged"``, or a sweep
run (an object with ``meta["model"]``; `circuit_step` reads its ``path_to_score`` array when the run has one
and no model is needed for stage 1). ``options`` is the analysis' `jaxmech.analysis.options` dataclass. Each
step resolves its inputs (`jaxmech.analysis.inputs`) and calls its analysis module; `jaxmech.analysis.registry`
names them. The edges step lives beside its analysis (`jaxmech.analysis.edges.edges_step`).

Importing this module imports no JAX (the analysis modules are imported inside the steps).
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxmech.analysis.inputs import (
    collection_texts,
    dataset_pairs,
    idf_vector,
    resolve_model,
    resolve_source,
    run_model_label,
    tfc1_pairs,
)
from jaxmech.analysis.options import (
    CircuitOptions,
    EdgesOptions,
    EditIdfOptions,
    IdfSvdOptions,
    LinearBm25Options,
    SoftTfOptions,
)


def idf_svd_step(run_or_model, options: IdfSvdOptions) -> dict:
    """`jaxmech.analysis.idf_svd.idf_svd`: IDF from ``idf_table`` (word TSV), ``source = "wordfreq"`` (the
    packaged word table of `jaxmech.data.idf`, from English word frequencies: no collection needed), or streamed
    from ``collection``, the dataset's or the source's documents. The JSON names it in ``idf_source``. ``base``
    (the model's pre-trained base, a path or ``"packaged"``) adds U_0 of the base beside the model's."""
    from jaxmech.analysis.idf_svd import idf_svd
    from jaxmech.data.idf import WORDFREQ, load_idf_tsv

    o = options
    lm = resolve_model(run_or_model)
    idf_table = o.idf_table
    if idf_table is None and str(o.source) == WORDFREQ and o.dataset is None and o.collection is None:
        idf_table = WORDFREQ
    if idf_table is not None:
        out = idf_svd(lm, word_table=load_idf_tsv(idf_table), n_components=o.n_components, base=o.base)
        return {**out, "idf_source": f"table {idf_table}", "idf_formula": None}
    what = (f"collection {o.collection}" if o.collection is not None else
            f"dataset {o.dataset}" if o.dataset is not None else f"source {o.source}")
    out = idf_svd(
        lm,
        collection=collection_texts(o.source, o.dataset) if o.collection is None else Path(o.collection),
        formula=o.formula,
        n_components=o.n_components,
        base=o.base,
    )
    return {**out, "idf_source": f"{what} (word IDF streamed from its documents)"}


def soft_tf_step(run_or_model, options: SoftTfOptions) -> dict:
    """`jaxmech.analysis.soft_tf.soft_tf` on a source."""
    from jaxmech.analysis.soft_tf import soft_tf

    o = options
    lm = resolve_model(run_or_model)
    src = resolve_source(o.source, qids=o.qids)
    return soft_tf(lm, src, heads=o.heads, n_heads=o.n_heads, experiments=o.experiments,
                   docs_per_query=o.docs_per_query, limit=o.limit, seed=o.seed)


def _circuit_from_run(run, options: CircuitOptions, relative_floor: float) -> dict:
    """Stage 1 of the circuit from a run's ``path_to_score`` array (no model needed)."""
    import numpy as np

    from jaxmech.analysis.circuit import circuit_from_effects

    out = circuit_from_effects(
        np.asarray(run["path_to_score"]),
        thresholds=options.thresholds,
        max_heads=options.max_heads,
        min_heads=options.min_heads,
        relative_floor=relative_floor,
        model=run_model_label(run.meta),
    )
    out["stage_note"] = ("stages 2 and 3 (E5) not run: roles from the run's path_to_score array only; give "
                         "the circuit step a source or dataset to run them")
    return out


def circuit_step(run_or_model, options: CircuitOptions) -> dict:
    """Circuit roles. From a run holding ``path_to_score`` (and no source or dataset): stage 1 from its array.
    Otherwise `jaxmech.analysis.circuit.discover_circuit` on TFC1 pairs (``dataset`` or built from
    ``source``), with the exact-match detector on the same pairs' perturbed inputs (``method="attribution"``:
    estimates for every sender and exact patches of the top ``verify_top_k`` per stage). ``relative_floor``
    and ``detector_floor`` default to `jaxmech.analysis.circuit.RELATIVE_FLOOR` / ``DETECTOR_FLOOR``."""
    from jaxmech.analysis.circuit import DETECTOR_FLOOR, RELATIVE_FLOOR, discover_circuit
    from jaxmech.analysis.common import PairInputs

    o = options
    rel = RELATIVE_FLOOR if o.relative_floor is None else o.relative_floor
    det_floor = DETECTOR_FLOOR if o.detector_floor is None else o.detector_floor
    families = getattr(run_or_model, "families", None)
    if families is not None and "path_to_score" in families and o.source is None and o.dataset is None:
        return _circuit_from_run(run_or_model, o, rel)
    lm = resolve_model(run_or_model)
    pairs = tfc1_pairs(lm, o.source, o.dataset, o.qids, o.n_queries, o.docs_per_query, o.limit)
    det = PairInputs(
        lm.tokenizer,
        [p.query for p in pairs[:128]],
        [p.perturbed_doc for p in pairs[:128]],
        [p.term for p in pairs[:128]],
    )
    return discover_circuit(
        lm,
        pairs,
        queries=[p.query for p in pairs],
        thresholds=o.thresholds,
        max_heads=o.max_heads,
        min_heads=o.min_heads,
        receiver_inputs=o.receiver_inputs,
        detector_inputs=det,
        method=o.method,
        verify_top_k=o.verify_top_k,
        relative_floor=rel,
        detector_floor=det_floor,
    )


def edit_idf_step(run_or_model, options: EditIdfOptions) -> dict:
    """`jaxmech.analysis.editing.editing_curves` on TFC1 pairs, U_0 oriented by IDF (``idf_table`` or
    streamed from the source/dataset documents)."""
    from jaxmech.analysis.editing import editing_curves

    o = options
    lm = resolve_model(run_or_model)
    pairs = tfc1_pairs(lm, o.source, o.dataset, o.qids, o.n_queries, o.docs_per_query, o.limit)
    idf = idf_vector(lm, o.idf_table, o.source if o.dataset is None else None, o.dataset)
    return editing_curves(lm, pairs, heads=o.heads, n_heads=o.n_heads, scales=o.scales, methods=o.methods, idf=idf)


def linear_bm25_step(run_or_model, options: LinearBm25Options) -> dict:
    """`jaxmech.analysis.linear_bm25.linear_bm25` on a source's TFC1-perturbed pairs, or on a dataset's
    perturbed documents. ``test_qids``: a list or a file of query ids, the fixed test set; ``bm25_fallback``:
    ``None``/``"none"`` (the paper's) or ``"beir"``."""
    from jaxmech.analysis.common import read_qids
    from jaxmech.analysis.linear_bm25 import linear_bm25

    o = options
    test_qids = read_qids(o.test_qids) if isinstance(o.test_qids, (str, os.PathLike)) else o.test_qids
    fb = None if o.bm25_fallback in (None, "none") else o.bm25_fallback
    common = {"heads": o.heads, "n_heads": o.n_heads, "split": o.split, "seed": o.seed, "test_qids": test_qids,
              "bm25_fallback": fb}
    lm = resolve_model(run_or_model)
    idf = (idf_vector(lm, o.idf_table, o.source if o.dataset is None else None, o.dataset)
           if (o.idf_table or o.dataset) else None)
    if o.dataset is not None:
        pairs = dataset_pairs(o.dataset, o.qids)
        return linear_bm25(lm, queries=[p.query for p in pairs], docs=[p.perturbed_doc for p in pairs],
                           qids=[p.qid for p in pairs], idf=idf, **common)
    src = resolve_source(o.source, qids=o.qids)
    return linear_bm25(lm, src, idf=idf, docs_per_query=o.docs_per_query, **common)


def edges_step(run_or_model, options: EdgesOptions) -> dict:
    """`jaxmech.analysis.edges.edges_step`: edge-level circuits on TFC1 pairs (imported here on first use:
    the edges module imports JAX)."""
    from jaxmech.analysis.edges import edges_step as step

    return step(run_or_model, options)


__all__ = ["circuit_step", "edges_step", "edit_idf_step", "idf_svd_step", "linear_bm25_step", "soft_tf_step"]
