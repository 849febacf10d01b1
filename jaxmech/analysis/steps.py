"""The analyses as steps: one callable per analysis, ``step(run_or_model, **options) -> dict`` (the JSON).

`ANALYSES` maps the names a sweep config lists (``analyses = ["circuit", "soft_tf", ...]``) and the command
``jaxmech analyze NAME`` uses to these steps. ``run_or_model`` is a `jaxmech.hf.loading.LoadedModel`, a model
folder / hub id / ``"packaged"``, or a sweep run (an object with ``meta["model"]``; `circuit` reads its
``path_to_score`` array when the run has one and no model is needed for stage 1). Options name where the
inputs come from:

* ``source``: a `jaxmech.data.records.DiagnosticSource`, or a spec of `jaxmech.data.loaders.load_source`
  (``"shared"``, ``"demo"``, a folder of the paper's files or an MS MARCO-style folder);
* ``dataset``: a dataset file of `jaxmech dataset build` (aligned pairs; circuit, edit_idf, linear_bm25);
* ``qids``: a list of query ids or a file of them (one per line), restricting the queries;

and the analysis' own options (see each step). `analyze` loads, runs and writes one analysis (the command).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# jaxmech.analysis.common (JAX) is imported inside the steps, so that checking a step's name imports no JAX.

DEFAULT_MAX_HEADS = {"relevance_scoring": 4, "contextual_query": 4, "matching": 13}
"""Circuit step caps per role (each stage's receivers bound the next stage's cost; 13 matching heads as the paper)."""


# -- resolving inputs ---------------------------------------------------------------------------------------
def resolve_model(run_or_model):
    """A `LoadedModel` from a loaded model, a path/id/``"packaged"``, or a run with ``meta["model"]``.

    Raises:
        ValueError: If nothing names a model.
    """
    from jaxmech.hf.loading import LoadedModel, load_model

    if isinstance(run_or_model, LoadedModel):
        return run_or_model
    spec = run_or_model
    meta = getattr(run_or_model, "meta", None)
    if isinstance(meta, dict):
        spec = meta.get("model_path") or meta.get("model")
        if isinstance(spec, dict):
            spec = spec.get("path") or spec.get("id")
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(
            f"cannot find a model in {type(run_or_model).__name__} (expected a LoadedModel, a model "
            "folder, 'packaged', or a run whose meta names the model)"
        )
    return load_model(spec)  # resolves "packaged" too


def resolve_source(source, *, qids=None, n_queries: int | None = None, docs_per_query: int | None = None):
    """A (restricted) `DiagnosticSource` from a source or a ``--source`` spec (``n_queries`` counts after the
    ``qids`` filter)."""
    from jaxmech.analysis.common import read_qids, subset_source
    from jaxmech.data.loaders import load_source
    from jaxmech.data.records import DiagnosticSource

    if source is None:
        raise ValueError("this analysis needs a source (--source shared|demo|DIR)")
    src = source if isinstance(source, DiagnosticSource) else load_source(str(source))
    if isinstance(qids, (str, os.PathLike)):
        qids = read_qids(qids)
    return subset_source(src, qids=qids, n_queries=n_queries, docs_per_query=docs_per_query)


def _dataset_pairs(dataset, qids=None, limit: int | None = None):
    from jaxmech.analysis.common import read_qids
    from jaxmech.data.records import read_dataset

    _, pairs = read_dataset(dataset)
    if isinstance(qids, (str, os.PathLike)):
        qids = read_qids(qids)
    if qids is not None:
        keep = set(qids)
        pairs = [p for p in pairs if p.qid in keep]
    pairs = pairs[:limit]
    if not pairs:
        raise ValueError(f"dataset {dataset}: no pairs (after the qid filter)")
    return pairs


def _tfc1_pairs(lm, source=None, dataset=None, qids=None, n_queries=None, docs_per_query=None, limit=None):
    from jaxmech.data.diagnostic import build_tfc1

    if dataset is not None:
        return _dataset_pairs(dataset, qids, limit)
    src = resolve_source(
        source, qids=qids, n_queries=None if qids is not None else n_queries, docs_per_query=docs_per_query
    )
    return build_tfc1(src, lm.tokenizer, limit=limit).pairs


def _texts(source=None, dataset=None, collection=None):
    from jaxmech.analysis.idf_svd import iter_collection

    if collection is not None:
        return iter_collection(collection)
    if dataset is not None:
        return list(dict.fromkeys(p.baseline_doc for p in _dataset_pairs(dataset)))
    src = resolve_source(source)
    return list(dict.fromkeys(t for d in src.docs.values() for t in d.values()))


def _idf_vector(lm, idf_table=None, source=None, dataset=None, collection=None):
    from jaxmech.analysis.idf_svd import stream_idf, vocab_idf_rules
    from jaxmech.data.idf import load_idf_tsv

    table = load_idf_tsv(idf_table) if idf_table else stream_idf(_texts(source, dataset, collection), lm.tokenizer)
    return vocab_idf_rules(table, None, lm.tokenizer)["word"]


# -- the steps ----------------------------------------------------------------------------------------------
def idf_svd_step(
    run_or_model,
    *,
    source=None,
    dataset=None,
    collection=None,
    idf_table=None,
    formula: str = "lucene",
    n_components: int = 50,
    base=None,
    **_ignored,
) -> dict:
    """`jaxmech.analysis.idf_svd.idf_svd`: IDF from ``idf_table`` (word TSV), ``source = "wordfreq"`` (the
    packaged word table of `jaxmech.data.idf`, from English word frequencies: no collection needed), or streamed
    from ``collection``, the dataset's or the source's documents. The JSON names it in ``idf_source``. ``base``
    (the model's pre-trained base, a path or ``"packaged"``) adds U_0 of the base beside the model's."""
    from jaxmech.analysis.idf_svd import idf_svd
    from jaxmech.data.idf import WORDFREQ, load_idf_tsv

    lm = resolve_model(run_or_model)
    if idf_table is None and str(source) == WORDFREQ and dataset is None and collection is None:
        idf_table = WORDFREQ
    if idf_table is not None:
        out = idf_svd(lm, word_table=load_idf_tsv(idf_table), n_components=n_components, base=base)
        return {**out, "idf_source": f"table {idf_table}", "idf_formula": None}
    what = (f"collection {collection}" if collection is not None else
            f"dataset {dataset}" if dataset is not None else f"source {source}")
    out = idf_svd(
        lm,
        collection=_texts(source, dataset, collection) if collection is None else Path(collection),
        formula=formula,
        n_components=n_components,
        base=base,
    )
    return {**out, "idf_source": f"{what} (word IDF streamed from its documents)"}


def soft_tf_step(
    run_or_model,
    *,
    source=None,
    qids=None,
    heads=None,
    n_heads: int = 8,
    experiments: Sequence[str] = ("tfc2", "lnc1", "stmc1"),
    docs_per_query: int = 3,
    limit: int | None = None,
    seed: int = 0,
    **_ignored,
) -> dict:
    """`jaxmech.analysis.soft_tf.soft_tf` on a source."""
    from jaxmech.analysis.soft_tf import soft_tf

    lm = resolve_model(run_or_model)
    src = resolve_source(source, qids=qids)
    return soft_tf(
        lm,
        src,
        heads=heads,
        n_heads=n_heads,
        experiments=experiments,
        docs_per_query=docs_per_query,
        limit=limit,
        seed=seed,
    )


def _run_model(meta: dict) -> str:
    """The model of a sweep run's meta (a dict with ``id``/``folder``, or a string) as the ``"model"`` field."""
    model = meta.get("model", "")
    return str(model.get("folder") or model.get("id") or "") if isinstance(model, dict) else str(model)


def circuit_step(
    run_or_model,
    *,
    source=None,
    dataset=None,
    qids=None,
    n_queries: int | None = None,
    docs_per_query: int | None = 5,
    limit: int | None = 200,
    thresholds: dict | None = None,
    max_heads: dict | None = DEFAULT_MAX_HEADS,
    min_heads: int = 1,
    receiver_inputs: Sequence[str] = ("k", "v"),
    method: str = "exact",
    verify_top_k: int = 10,
    relative_floor: float | None = None,
    detector_floor: float | None = None,
    **_ignored,
) -> dict:
    """Circuit roles. From a run holding ``path_to_score`` (and no model at hand): stage 1 from its array.
    Otherwise `jaxmech.analysis.circuit.discover_circuit` on TFC1 pairs (``dataset`` or built from
    ``source``), with the exact-match detector on the same pairs' perturbed inputs (``method="attribution"``:
    estimates for every sender and exact patches of the top ``verify_top_k`` per stage). ``relative_floor``
    and ``detector_floor`` default to `jaxmech.analysis.circuit.RELATIVE_FLOOR` / ``DETECTOR_FLOOR``."""
    from jaxmech.analysis.circuit import DETECTOR_FLOOR, RELATIVE_FLOOR, circuit_from_effects, discover_circuit
    from jaxmech.analysis.common import PairInputs

    rel = RELATIVE_FLOOR if relative_floor is None else relative_floor
    det_floor = DETECTOR_FLOOR if detector_floor is None else detector_floor

    families = getattr(run_or_model, "families", None)
    if families is not None and "path_to_score" in families and source is None and dataset is None:
        import numpy as np

        arr = np.asarray(run_or_model["path_to_score"])
        out = circuit_from_effects(
            arr,
            thresholds=thresholds,
            max_heads=max_heads,
            min_heads=min_heads,
            relative_floor=rel,
            model=_run_model(run_or_model.meta),
        )
        out["stage_note"] = ("stages 2 and 3 (E5) not run: roles from the run's path_to_score array only; give "
                             "the circuit step a source or dataset to run them")
        return out
    lm = resolve_model(run_or_model)
    pairs = _tfc1_pairs(lm, source, dataset, qids, n_queries, docs_per_query, limit)
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
        thresholds=thresholds,
        max_heads=max_heads,
        min_heads=min_heads,
        receiver_inputs=receiver_inputs,
        detector_inputs=det,
        method=method,
        verify_top_k=verify_top_k,
        relative_floor=rel,
        detector_floor=det_floor,
    )


def edit_idf_step(
    run_or_model,
    *,
    source=None,
    dataset=None,
    qids=None,
    n_queries: int | None = 5,
    docs_per_query: int | None = 6,
    limit: int | None = None,
    heads=None,
    n_heads: int = 3,
    scales: Sequence[float] = (1.0, 2.0, 5.0, 10.0),
    methods: Sequence[str] = ("u0", "row"),
    idf_table=None,
    **_ignored,
) -> dict:
    """`jaxmech.analysis.editing.editing_curves` on TFC1 pairs, U_0 oriented by IDF (``idf_table`` or
    streamed from the source/dataset documents)."""
    from jaxmech.analysis.editing import editing_curves

    lm = resolve_model(run_or_model)
    pairs = _tfc1_pairs(lm, source, dataset, qids, n_queries, docs_per_query, limit)
    idf = _idf_vector(lm, idf_table, source if dataset is None else None, dataset)
    return editing_curves(lm, pairs, heads=heads, n_heads=n_heads, scales=scales, methods=methods, idf=idf)


def linear_bm25_step(
    run_or_model,
    *,
    source=None,
    dataset=None,
    qids=None,
    docs_per_query: int | None = 20,
    heads=None,
    n_heads: int = 13,
    split: str = "query",
    seed: int = 42,
    idf_table=None,
    test_qids=None,
    bm25_fallback: str | None = None,
    **_ignored,
) -> dict:
    """`jaxmech.analysis.linear_bm25.linear_bm25` on a source's TFC1-perturbed pairs, or on a dataset's
    perturbed documents. ``test_qids``: a list or a file of query ids, the fixed test set; ``bm25_fallback``:
    ``None``/``"none"`` (the paper's) or ``"beir"``."""
    from jaxmech.analysis.common import read_qids
    from jaxmech.analysis.linear_bm25 import linear_bm25

    if isinstance(test_qids, (str, os.PathLike)):
        test_qids = read_qids(test_qids)
    fb = None if bm25_fallback in (None, "none") else bm25_fallback
    extra = {"test_qids": test_qids, "bm25_fallback": fb}

    lm = resolve_model(run_or_model)
    idf = _idf_vector(lm, idf_table, source if dataset is None else None, dataset) if (idf_table or dataset) else None
    if dataset is not None:
        pairs = _dataset_pairs(dataset, qids)
        return linear_bm25(
            lm,
            queries=[p.query for p in pairs],
            docs=[p.perturbed_doc for p in pairs],
            qids=[p.qid for p in pairs],
            heads=heads,
            n_heads=n_heads,
            idf=idf,
            split=split,
            seed=seed,
            **extra,
        )
    src = resolve_source(source, qids=qids)
    return linear_bm25(
        lm, src, heads=heads, n_heads=n_heads, idf=idf, docs_per_query=docs_per_query, split=split, seed=seed, **extra
    )


def edges_step(run_or_model, **options) -> dict:
    """`jaxmech.analysis.edges.edges_step`: edge-level circuits on TFC1 pairs."""
    from jaxmech.analysis.edges import edges_step as step

    return step(run_or_model, **options)


ANALYSES: dict[str, Callable[..., dict]] = {
    "circuit": circuit_step,
    "soft_tf": soft_tf_step,
    "idf_svd": idf_svd_step,
    "edit_idf": edit_idf_step,
    "linear_bm25": linear_bm25_step,
    "edges": edges_step,
}
"""Analysis name -> ``step(run_or_model, **options) -> dict`` (the JSON object of NOTES.md's contract)."""


def get_analysis(name: str) -> Callable[..., dict]:
    """The step of an analysis name (``-`` and ``_`` are interchangeable).

    Raises:
        KeyError: Listing the known names.
    """
    key = name.replace("-", "_")
    if key not in ANALYSES:
        raise KeyError(f"unknown analysis {name!r}; known: {sorted(ANALYSES)}")
    return ANALYSES[key]


def analyze(name: str, model, *, out: str | os.PathLike | None = None, **options: Any) -> dict:
    """Runs one analysis on a model and writes its JSON (atomically) if ``out`` is given."""
    from jaxmech.analysis.common import write_json

    step = get_analysis(name)
    result = step(model, **options)
    if out is not None:
        write_json(out, result)
    return result


def analyze_run(name: str, run_dir: str | os.PathLike, **options: Any) -> Path:
    """Runs analysis ``name`` on a finished sweep run (its model, and its arrays where the analysis reads them)
    and writes ``<run_dir>/analyses/<name>.json``, where ``run.analyses`` and the report find it."""
    from jaxmech import results
    from jaxmech.analysis.common import write_json

    result = get_analysis(name)(results.open(run_dir), **options)
    return write_json(Path(run_dir) / "analyses" / f"{name}.json", result)


__all__ = ["ANALYSES", "analyze", "analyze_run", "get_analysis", "resolve_model", "resolve_source"]
