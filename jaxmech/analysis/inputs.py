"""Where an analysis' inputs come from: the model, the source, the dataset's pairs, texts and IDF.

Shared by the analysis steps (`jaxmech.analysis.steps`, `jaxmech.analysis.edges.edges_step`). Importing it
imports no JAX: the heavy modules are imported inside the functions.
"""

from __future__ import annotations

import os


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


def dataset_pairs(dataset, qids=None, limit: int | None = None) -> list:
    """The pairs of a dataset file, restricted to ``qids`` (a list or a file), at most ``limit``.

    Raises:
        ValueError: If no pair is left.
    """
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


def tfc1_pairs(lm, source=None, dataset=None, qids=None, n_queries=None, docs_per_query=None, limit=None) -> list:
    """TFC1 pairs: the dataset's (when given) or built from the (restricted) source with ``lm``'s tokenizer."""
    from jaxmech.data.diagnostic import build_tfc1

    if dataset is not None:
        return dataset_pairs(dataset, qids, limit)
    src = resolve_source(
        source, qids=qids, n_queries=None if qids is not None else n_queries, docs_per_query=docs_per_query
    )
    return build_tfc1(src, lm.tokenizer, limit=limit).pairs


def collection_texts(source=None, dataset=None, collection=None):
    """The documents IDF is streamed from: the collection's, else the dataset's baseline documents, else the
    source's (unique, in order)."""
    from jaxmech.analysis.idf_svd import iter_collection

    if collection is not None:
        return iter_collection(collection)
    if dataset is not None:
        return list(dict.fromkeys(p.baseline_doc for p in dataset_pairs(dataset)))
    src = resolve_source(source)
    return list(dict.fromkeys(t for d in src.docs.values() for t in d.values()))


def idf_vector(lm, idf_table=None, source=None, dataset=None, collection=None):
    """Per-vocab-id word IDF of ``lm``'s tokenizer, from ``idf_table`` (a TSV) or streamed from
    `collection_texts`."""
    from jaxmech.analysis.idf_svd import stream_idf, vocab_idf_rules
    from jaxmech.data.idf import load_idf_tsv

    if idf_table:
        table = load_idf_tsv(idf_table)
    else:
        table = stream_idf(collection_texts(source, dataset, collection), lm.tokenizer)
    return vocab_idf_rules(table, None, lm.tokenizer)["word"]


def run_model_label(meta: dict) -> str:
    """The model of a sweep run's meta (a dict with ``id``/``folder``, or a string) as the ``"model"`` field."""
    model = meta.get("model", "")
    return str(model.get("folder") or model.get("id") or "") if isinstance(model, dict) else str(model)


__all__ = ["collection_texts", "dataset_pairs", "idf_vector", "resolve_model", "resolve_source", "run_model_label",
           "tfc1_pairs"]
