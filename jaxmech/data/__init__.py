"""Diagnostic datasets and IR signals.

* `records`: the `AlignedPair` record, `DiagnosticSource`, dataset files (`write_dataset`, `read_dataset`).
* `pairs`: the builders' generic core (`build_pairs`: perturbation items to aligned, typed pairs).
* `diagnostic`: builders of TFC1 (append/prepend), STMC1, TFC2, LNC1 and their reverse axioms (`build`).
* `analysis_kinds`: the analyses' kinds (E7 ``idf_front``, LNC1 realigned).
* `align`: position alignment of baseline and perturbed sequences (fillers, token diff).
* `token_types`: the paper's token types (CLS, SEP1, SEP2, Qplus, Qsub, Dinj, Dplus, Dsub, Dother).
* `loaders`: the paper's public files, MS MARCO-style TSV/JSONL, ``ir_datasets``.
* `demo`: the packaged demo set written for jaxmech (`load_demo`).
* `bm25`: document-level BM25 (`BM25Index`), token-level BM25 and its (k1, b) grid search.
* `idf`: IDF formulas, word / word-piece tables, TSV files, per-vocab-id vectors.
"""

from __future__ import annotations

from jaxmech.lazy import lazy_exports

_EXPORTS = {
    "jaxmech.data.bm25": (
        "PAPER_AVG_LEN",
        "BM25Index",
        "GridSearchResult",
        "grid_search_bm25",
        "pearson",
        "split_pair",
        "token_bm25",
    ),
    "jaxmech.data.demo": ("load_demo",),
    "jaxmech.data.diagnostic": (
        "KINDS",
        "build",
        "build_lnc1",
        "build_stmc1",
        "build_tfc1",
        "build_tfc2",
        "tfc2_variants",
    ),
    "jaxmech.data.pairs": ("BuildResult", "PerturbationItem", "build_pairs"),
    "jaxmech.data.idf": (
        "load_idf_tsv",
        "save_idf_tsv",
        "vocab_idf",
        "word_idf",
        "wordpiece_idf",
    ),
    "jaxmech.data.loaders": (
        "load_ir_datasets",
        "load_paper_source",
        "read_collection",
        "read_qrels",
        "read_queries",
        "shared_data_dir",
        "source_from_files",
    ),
    "jaxmech.data.records": (
        "TOKEN_TYPES",
        "AlignedPair",
        "DataError",
        "DatasetFormatError",
        "DiagnosticSource",
        "read_dataset",
        "write_dataset",
    ),
}
__all__, __getattr__, __dir__ = lazy_exports("jaxmech.data", _EXPORTS, globals())
