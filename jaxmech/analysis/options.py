"""What each analysis accepts: one typed, frozen ``Options`` dataclass per analysis.

A sweep config's ``[[analyses]] options`` table, the keywords of `jaxmech.analysis.registry.analyze` and the
arguments of ``jaxmech analyze NAME`` all become one of these (`AnalysisOptions.from_mapping`), so a misspelt
key is an error naming the analysis, the key and the known keys, before any model is loaded. This module
imports nothing heavy (no JAX, no NumPy): config validation stays cheap.

Options that name inputs (every analysis has some of them):

* ``source``: a `jaxmech.data.records.DiagnosticSource`, or a spec of `jaxmech.data.loaders.load_source`
  (``"shared"``, ``"demo"``, a folder of the paper's files or an MS MARCO-style folder);
* ``dataset``: a dataset file of `jaxmech dataset build` (aligned TFC1 pairs);
* ``qids``: a list of query ids or a file of them (one per line), restricting the queries.

Values are kept as given (a TOML array stays a list): the analyses' JSON is the same whichever way the options
arrived.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

DEFAULT_MAX_HEADS = {"relevance_scoring": 4, "contextual_query": 4, "matching": 13}
"""Circuit step caps per role (each stage's receivers bound the next stage's cost; 13 matching heads as the paper)."""


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """Base of the analyses' options; ``analysis`` is the name the messages use."""

    analysis: ClassVar[str] = ""
    choices: ClassVar[Mapping[str, tuple]] = {}
    """Option -> its allowed values (an option holding a list: each of its items), checked on construction."""

    def __post_init__(self):
        for key, allowed in self.choices.items():
            value = getattr(self, key)
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(v not in allowed for v in items):
                raise ValueError(f"analysis {self.analysis!r}: {key}={value!r}; choose from "
                                 f"{', '.join(map(str, allowed))}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None = None):
        """The options of ``options`` (a dict of keyword values), refusing a key the analysis does not have.

        Raises:
            ValueError: One line naming the analysis, the unknown key and the known keys (or a value outside
                its `choices`).
        """
        options = dict(options or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in known]
        if unknown:
            raise ValueError(f"analysis {cls.analysis!r}: unknown option {unknown[0]!r} (known: {', '.join(known)})")
        return cls(**options)


@dataclasses.dataclass(frozen=True)
class IdfSvdOptions(AnalysisOptions):
    """``idf_svd``: the IDF direction of the embedding matrix (`jaxmech.analysis.idf_svd.idf_svd`).

    Attributes:
        source: Source whose documents give the IDF, or ``"wordfreq"`` (the packaged word table of
            `jaxmech.data.idf`: no collection needed).
        dataset: Dataset file whose baseline documents give the IDF.
        collection: Collection file to stream the IDF from (``pid<TAB>text`` TSV or JSONL).
        idf_table: A ``word<TAB>idf`` TSV instead of streaming.
        formula: IDF formula when streaming (``lucene``, ``robertson``, ``log``, ``smooth``).
        n_components: Components correlated with IDF.
        base: The model's pre-trained base (a path or ``"packaged"``): adds its U_0 beside the model's.
    """

    analysis: ClassVar[str] = "idf_svd"
    choices: ClassVar[Mapping[str, tuple]] = {"formula": ("lucene", "robertson", "log", "smooth")}
    source: Any = None
    dataset: Any = None
    collection: Any = None
    idf_table: Any = None
    formula: str = "lucene"
    n_components: int = 50
    base: Any = None


@dataclasses.dataclass(frozen=True)
class SoftTfOptions(AnalysisOptions):
    """``soft_tf``: matching heads' attention to term matches (`jaxmech.analysis.soft_tf.soft_tf`).

    Attributes:
        source: The source (TFC2/LNC1 answers and STMC1 documents).
        qids: Query ids (a list or a file) restricting the queries.
        heads: Heads ``"L.H"`` (default: the exact-match detector's top ``n_heads``).
        n_heads: See ``heads``.
        experiments: A subset of ``tfc2``, ``lnc1``, ``stmc1``.
        docs_per_query: Documents per query.
        limit: At most this many answers/documents per experiment.
        seed: LNC1 partner permutation seed.
    """

    analysis: ClassVar[str] = "soft_tf"
    choices: ClassVar[Mapping[str, tuple]] = {"experiments": ("tfc2", "lnc1", "stmc1")}
    source: Any = None
    qids: Any = None
    heads: Sequence[str] | None = None
    n_heads: int = 8
    experiments: Sequence[str] = ("tfc2", "lnc1", "stmc1")
    docs_per_query: int = 3
    limit: int | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CircuitOptions(AnalysisOptions):
    """``circuit``: relevance-scoring, contextual-query and matching heads (`jaxmech.analysis.circuit`).

    Attributes:
        source: Source of TFC1 pairs (or ``dataset``); neither with a run holding ``path_to_score``: stage 1
            from the run's array only.
        dataset: Dataset file of TFC1 pairs.
        qids: Query ids (a list or a file) restricting the queries.
        n_queries: At most this many queries (after the ``qids`` filter).
        docs_per_query: Documents per query.
        limit: At most this many pairs.
        thresholds: ``role -> threshold`` overriding the defaults.
        max_heads: ``role -> cap`` (default `DEFAULT_MAX_HEADS`).
        min_heads: At least this many heads per role.
        receiver_inputs: Receiver inputs of stages 2 and 3 (``q``, ``k``, ``v``).
        method: ``exact`` or ``attribution`` (estimates for every sender, exact patches of the top
            ``verify_top_k`` per stage).
        verify_top_k: See ``method``.
        relative_floor: Default `jaxmech.analysis.circuit.RELATIVE_FLOOR`.
        detector_floor: Default `jaxmech.analysis.circuit.DETECTOR_FLOOR`.
    """

    analysis: ClassVar[str] = "circuit"
    choices: ClassVar[Mapping[str, tuple]] = {"method": ("exact", "attribution"), "receiver_inputs": ("q", "k", "v")}
    source: Any = None
    dataset: Any = None
    qids: Any = None
    n_queries: int | None = None
    docs_per_query: int | None = 5
    limit: int | None = 200
    thresholds: Mapping[str, float] | None = None
    max_heads: Mapping[str, int] | None = dataclasses.field(default_factory=lambda: DEFAULT_MAX_HEADS)
    min_heads: int = 1
    receiver_inputs: Sequence[str] = ("k", "v")
    method: str = "exact"
    verify_top_k: int = 10
    relative_floor: float | None = None
    detector_floor: float | None = None


@dataclasses.dataclass(frozen=True)
class EditIdfOptions(AnalysisOptions):
    """``edit_idf``: U_0 edits and the whole-row control (`jaxmech.analysis.editing.editing_curves`).

    Attributes:
        source: Source of TFC1 pairs (or ``dataset``).
        dataset: Dataset file of TFC1 pairs.
        qids: Query ids (a list or a file) restricting the queries.
        n_queries: At most this many queries.
        docs_per_query: Documents per query.
        limit: At most this many pairs.
        heads: Heads whose [CLS] attention is read (default: the top ``n_heads`` by E4).
        n_heads: See ``heads``.
        scales: Edit scales.
        methods: ``u0`` and/or ``row``.
        idf_table: A ``word<TAB>idf`` TSV orienting U_0 (default: streamed from the documents).
    """

    analysis: ClassVar[str] = "edit_idf"
    choices: ClassVar[Mapping[str, tuple]] = {"methods": ("u0", "row")}
    source: Any = None
    dataset: Any = None
    qids: Any = None
    n_queries: int | None = 5
    docs_per_query: int | None = 6
    limit: int | None = None
    heads: Sequence[str] | None = None
    n_heads: int = 3
    scales: Sequence[float] = (1.0, 2.0, 5.0, 10.0)
    methods: Sequence[str] = ("u0", "row")
    idf_table: Any = None


@dataclasses.dataclass(frozen=True)
class LinearBm25Options(AnalysisOptions):
    """``linear_bm25``: the linear semantic-BM25 fit (`jaxmech.analysis.linear_bm25.linear_bm25`).

    Attributes:
        source: Source of TFC1-perturbed pairs (or ``dataset``).
        dataset: Dataset file (its perturbed documents).
        qids: Query ids (a list or a file) restricting the queries.
        docs_per_query: Documents per query (from a source).
        heads: Matching heads ``"L.H"`` (default: the detector's top ``n_heads``).
        n_heads: See ``heads``.
        split: ``query`` (held-out queries) or ``pair``.
        seed: Split seed.
        idf_table: A ``word<TAB>idf`` TSV (default: streamed from the documents).
        test_qids: A list or a file of query ids, the fixed test set (overrides ``split``).
        bm25_fallback: ``None``/``"none"`` (the paper's BM25) or ``"beir"``.
    """

    analysis: ClassVar[str] = "linear_bm25"
    choices: ClassVar[Mapping[str, tuple]] = {"split": ("query", "pair"), "bm25_fallback": (None, "none", "beir")}
    source: Any = None
    dataset: Any = None
    qids: Any = None
    docs_per_query: int | None = 20
    heads: Sequence[str] | None = None
    n_heads: int = 13
    split: str = "query"
    seed: int = 42
    idf_table: Any = None
    test_qids: Any = None
    bm25_fallback: str | None = None


@dataclasses.dataclass(frozen=True)
class EdgesOptions(AnalysisOptions):
    """``edges``: edge-level circuits and their faithfulness (`jaxmech.analysis.edges.edges_step`).

    Attributes:
        source: Source of TFC1 pairs (or ``dataset``).
        dataset: Dataset file of TFC1 pairs.
        qids: Query ids (a list or a file) restricting the queries.
        n_queries: At most this many queries.
        docs_per_query: Documents per query.
        limit: At most this many pairs.
        max_length: Pairs longer than this many tokens are left out.
        method: ``exact``, ``eap``, ``eap-ig-inputs`` or ``eap-ig-activations``.
        steps: EAP-IG steps.
        verify_top_k: Top edges verified by exact edge patches.
        n_random: Random edges verified besides the top ones.
        recall_n: ``top_recall``: of the exact top N.
        exact_all: Exact patches of every edge (recall over all edges; slow).
        heads: Connections to report, ``"2.9,1.1->5.7,5.1"`` or ``{"sources": [...], "targets": [...]}``.
        eap_ig_json: Also write the 80 % circuit there in EAP-IG's graph JSON.
        seed: Seed of the random verification sample.
        spans: Also the top span-aware edges.
        ablation: What the edges outside a circuit are patched to: ``perturbed``, ``mean`` or ``both``.
        prune_threshold: A circuit of every edge with ``|mean effect|`` at least this (instead of top-n).
    """

    analysis: ClassVar[str] = "edges"
    choices: ClassVar[Mapping[str, tuple]] = {"method": ("exact", "eap", "eap-ig-inputs", "eap-ig-activations"),
                                               "ablation": ("perturbed", "mean", "both")}
    source: Any = None
    dataset: Any = None
    qids: Any = None
    n_queries: int | None = None
    docs_per_query: int | None = 2
    limit: int | None = 16
    max_length: int | None = None
    method: str = "eap-ig-inputs"
    steps: int = 5
    verify_top_k: int = 50
    n_random: int = 50
    recall_n: int = 50
    exact_all: bool = False
    heads: Any = None
    eap_ig_json: Any = None
    seed: int = 0
    spans: bool = False
    ablation: str = "perturbed"
    prune_threshold: float | None = None


__all__ = ["DEFAULT_MAX_HEADS", "AnalysisOptions", "CircuitOptions", "EditIdfOptions", "EdgesOptions",
           "IdfSvdOptions", "LinearBm25Options", "SoftTfOptions"]
