"""Aligned (baseline, perturbed) pairs, the in-memory diagnostic source, and the dataset file format.

An `AlignedPair` is one unit of activation patching: the model runs on ``baseline_ids`` and activations are
patched in from the run on ``perturbed_ids`` (paper-notes §2). Both are full ``[CLS] q [SEP] d [SEP]``
sequences. ``position_map[i]`` names the perturbed position that plays the role of baseline position ``i``
(``-1`` when there is none); for TFC1/STMC1/LNC1 it is the identity because the baseline is padded with filler
tokens, for TFC2 it comes from a token alignment (see `jaxmech.data.align`). ``token_types`` gives the paper's
type of every baseline position (`jaxmech.data.token_types`).

A `DiagnosticSource` holds everything the builders need, whatever it was loaded from (the packaged demo set,
the paper's public files, an MS MARCO-style collection or ``ir_datasets``).

Dataset files are JSON Lines: the first line is a header object::

    {"format": "jaxmech.aligned_pairs", "version": 1, "kind": "tfc1", "tokenizer": "...", "count": 10000,
     "stats": {"excluded_too_long": 0, ...}, ...}

followed by ``count`` pair objects with the fields of `AlignedPair`. `write_dataset` writes to a temporary
file in the same folder and renames it into place, so a file that exists is complete. `read_dataset` checks
every line and raises `DatasetFormatError` naming the file, the line and the problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxmech.files import atomic_write

FORMAT_NAME = "jaxmech.aligned_pairs"
FORMAT_VERSION = 1

TOKEN_TYPES = ("CLS", "SEP1", "SEP2", "Qplus", "Qsub", "Dinj", "Dplus", "Dsub", "Dother")
"""The paper's position types (notes §4), in display order."""


@contextlib.contextmanager
def utf8_file(path: str | os.PathLike) -> Iterator[None]:
    """Turns a `UnicodeDecodeError` while reading ``path`` into a `DataError` naming the file."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise DataError(path, None, f"not UTF-8 text (byte 0x{err.object[err.start]:02x} cannot be decoded: "
                        f"{err.reason}); save the file as UTF-8") from None


class DataError(ValueError):
    """A problem in input data, naming the file (or source), the record and the problem.

    Attributes:
        source: File path or source name.
        record: Which record (``"line 12"``, ``"qid 123"``, ...), or ``None``.
        problem: What is wrong.
    """

    def __init__(self, source: str | os.PathLike, record: str | None, problem: str):
        self.source, self.record, self.problem = str(source), record, problem
        where = f"{self.source}: {record}" if record else self.source
        super().__init__(f"{where}: {problem}")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file.

    Raises:
        DataError: Naming the line, on malformed JSON or a value that is not an object.
    """
    with utf8_file(path), Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {line_no}", f"malformed JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(path, f"line {line_no}", "expected a JSON object")
            yield line_no, obj


def iter_tsv(path: Path, counts: Collection[int], expected: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, columns)`` for each non-empty line of a TSV file with ``counts`` columns.

    Raises:
        DataError: Naming the line, ``expected {expected}, got N`` for a wrong column count.
    """
    with utf8_file(path), Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) not in counts:
                raise DataError(path, f"line {line_no}", f"expected {expected}, got {len(cols)}")
            yield line_no, cols


class DatasetFormatError(DataError):
    """A dataset file that does not follow the aligned-pairs format."""


@dataclasses.dataclass
class AlignedPair:
    """One baseline/perturbed input pair, aligned position by position: the one pair type of jaxmech.

    Dataset builders (`jaxmech.data.diagnostic`) fill every field; pairs aligned from raw text
    (`jaxmech.data.align.align_with_filler`) carry the ids, the query and the documents. Patching reads the ids,
    the position map and ``name``; the token types feed per-type averages.

    Attributes:
        baseline_ids: ``[CLS] q [SEP] d [SEP]`` of the baseline (``[CLS] d [SEP]`` for a bi-encoder's
            document-only pair), fillers included. With the default direction this run gets patched.
        baseline_token_type_ids: Segment ids of ``baseline_ids``.
        perturbed_ids: The perturbed input, whose activations are patched in.
        perturbed_token_type_ids: Segment ids of ``perturbed_ids``.
        position_map: For each baseline position, the index of its counterpart in ``perturbed_ids``; ``-1`` if
            it has none (never patched).
        name: Label for outputs and error messages (default ``"qid/doc_id"`` when a qid is given).
        kind: ``"tfc1"``, ``"tfc1_prepend"``, ``"stmc1"``, ``"tfc2"``, ``"lnc1"``, a reverse axiom
            (``"tfc1_remove"``, ...), or ``""`` for ad-hoc pairs.
        qid: Query id.
        doc_id: Document id.
        query: Query text.
        baseline_doc: Baseline document text (filler tokens are not part of the text).
        perturbed_doc: Perturbed document text.
        token_types: Paper token type of each baseline position (one of `TOKEN_TYPES`), or None if unknown.
        term: Selected query term, if any.
        meta: Free-form details (``{"tf": 3}``, ``{"n_sentences": 2}``, ``{"synonym": ...}``).
    """

    baseline_ids: list[int]
    baseline_token_type_ids: list[int]
    perturbed_ids: list[int]
    perturbed_token_type_ids: list[int]
    position_map: list[int]
    name: str = ""
    kind: str = ""
    qid: str = ""
    doc_id: str = ""
    query: str = ""
    baseline_doc: str = ""
    perturbed_doc: str = ""
    token_types: list[str] | None = None
    term: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.name and self.qid:
            self.name = f"{self.qid}/{self.doc_id}"

    @property
    def is_identity(self) -> bool:
        """Whether the inputs have equal length and align one to one."""
        return self.same_length and all(m == i for i, m in enumerate(self.position_map))

    @property
    def same_length(self) -> bool:
        """Whether baseline and perturbed have the same number of tokens (position-wise patchable)."""
        return len(self.baseline_ids) == len(self.perturbed_ids)

    def positions_of(self, token_type: str) -> list[int]:
        """Baseline positions of one token type."""
        return [i for i, t in enumerate(self.token_types or ()) if t == token_type]

    def changed_positions(self) -> list[int]:
        """Baseline positions whose counterpart differs or is missing (where the perturbation acts)."""
        return [i for i, j in enumerate(self.position_map)
                if j < 0 or self.perturbed_ids[j] != self.baseline_ids[i]]

    def problems(self) -> list[str]:
        """Internal inconsistencies of the record (empty when valid)."""
        out = []
        n, m = len(self.baseline_ids), len(self.perturbed_ids)
        for name, seq in (("baseline_token_type_ids", self.baseline_token_type_ids),
                          ("position_map", self.position_map), ("token_types", self.token_types)):
            if seq is not None and len(seq) != n:
                out.append(f"{name} has {len(seq)} entries but baseline_ids has {n}")
        if len(self.perturbed_token_type_ids) != m:
            out.append(f"perturbed_token_type_ids has {len(self.perturbed_token_type_ids)} entries but "
                       f"perturbed_ids has {m}")
        bad = [j for j in self.position_map if not -1 <= j < m]
        if bad:
            out.append(f"position_map entries {bad[:5]} are outside [-1, {m})")
        unknown = sorted(set(self.token_types or ()) - set(TOKEN_TYPES))
        if unknown:
            out.append(f"unknown token types {unknown}")
        return out


# Fields of a dataset file's pair object, in file order (``name`` is derived from qid and doc_id).
_PAIR_FIELDS = ("kind", "qid", "doc_id", "query", "baseline_doc", "perturbed_doc", "baseline_ids",
                "baseline_token_type_ids", "perturbed_ids", "perturbed_token_type_ids", "position_map",
                "token_types", "term", "meta")
_REQUIRED = _PAIR_FIELDS[:12]
_INT_LISTS = ("baseline_ids", "baseline_token_type_ids", "perturbed_ids", "perturbed_token_type_ids",
              "position_map")
_STRINGS = ("kind", "qid", "doc_id", "query", "baseline_doc", "perturbed_doc")


@dataclasses.dataclass
class DiagnosticSource:
    """Everything the builders read, independent of where it came from.

    Attributes:
        name: Where it was loaded from (file or data set name), used in error messages and headers.
        queries: ``qid -> query``.
        terms: ``qid -> selected query term`` (one whitespace word of the query).
        docs: ``qid -> {doc_id: passage}`` (TFC1 / STMC1 inputs).
        related: ``qid -> related word`` appended by STMC1.
        pronouns: ``qid -> pronoun`` that replaces the term in TFC2.
        answers: ``qid -> [(doc_id, text)]``: documents whose sentences start with the term (TFC2 / LNC1).
    """

    name: str
    queries: dict[str, str]
    terms: dict[str, str]
    docs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    related: dict[str, str] = dataclasses.field(default_factory=dict)
    pronouns: dict[str, str] = dataclasses.field(default_factory=dict)
    answers: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Validates cross references.

        Raises:
            DataError: On a qid that is not among the queries, or a selected term that is not a word of its
                query.
        """
        for table_name in ("terms", "docs", "related", "pronouns", "answers"):
            for qid in getattr(self, table_name):
                if qid not in self.queries:
                    raise DataError(self.name, f"qid {qid}",
                                    f"unknown qid in {table_name} (not among the queries)")
        for qid, term in self.terms.items():
            if not term_in_query(term, self.queries[qid]):
                raise DataError(self.name, f"qid {qid}",
                                f"selected term {term!r} is not a word of the query {self.queries[qid]!r}")

    def summary(self) -> dict[str, int]:
        """Counts of each table."""
        return {"queries": len(self.queries), "terms": len(self.terms),
                "docs": sum(len(d) for d in self.docs.values()), "related": len(self.related),
                "pronouns": len(self.pronouns), "answers": sum(len(a) for a in self.answers.values())}


def term_in_query(term: str, query: str) -> bool:
    """Whether ``term`` is one whitespace-separated word of ``query`` (case-insensitive), as in the paper."""
    return term.lower() in query.lower().split()


# -- dataset files ------------------------------------------------------------------------------------------
def pair_to_json(pair: AlignedPair) -> dict[str, Any]:
    """The JSON object of one pair (a shallow field dict; ``dataclasses.asdict`` deep-copies every list)."""
    return {name: getattr(pair, name) for name in _PAIR_FIELDS}


def pair_from_json(obj: Any, *, source: str = "<json>", record: str | None = None) -> AlignedPair:
    """Builds and validates a pair from its JSON object.

    Raises:
        DatasetFormatError: On a missing or mistyped field or an inconsistent record.
    """
    def fail(problem: str) -> DatasetFormatError:
        return DatasetFormatError(source, record, problem)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise fail(f"missing field(s) {missing}")
    extra = sorted(set(obj) - {*_PAIR_FIELDS, "name"})  # an explicit name is accepted, never required
    if extra:
        raise fail(f"unknown field(s) {extra}")
    for k in _STRINGS:
        if not isinstance(obj[k], str):
            raise fail(f"field {k!r} must be a string, got {type(obj[k]).__name__}")
    for k in _INT_LISTS:
        v = obj[k]
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise fail(f"field {k!r} must be a list of integers")
    if not isinstance(obj["token_types"], list) or not all(isinstance(x, str) for x in obj["token_types"]):
        raise fail("field 'token_types' must be a list of strings")
    if obj.get("term") is not None and not isinstance(obj["term"], str):
        raise fail("field 'term' must be a string or null")
    if not isinstance(obj.get("meta", {}), dict):
        raise fail("field 'meta' must be an object")
    pair = AlignedPair(**obj)
    problems = pair.problems()
    if problems:
        raise fail("; ".join(problems))
    return pair


def write_dataset(path: str | os.PathLike, pairs: Sequence[AlignedPair], header: dict[str, Any]) -> Path:
    """Writes pairs as JSON Lines behind a header line, atomically.

    The header gets ``format``, ``version`` and ``count`` (overriding any given); everything else in
    ``header`` (kind, tokenizer, build stats, ...) is kept.

    Args:
        path: Output file; its folder is created if needed.
        pairs: The pairs (each validated before anything is written).
        header: Extra header fields.

    Returns:
        The path written.

    Raises:
        DatasetFormatError: If a pair is internally inconsistent (nothing is written).
    """
    path = Path(path)
    for i, p in enumerate(pairs):
        problems = p.problems()
        if problems:
            raise DatasetFormatError(path, f"pair {i} (qid {p.qid}, doc {p.doc_id})", "; ".join(problems))
    head = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **header, "count": len(pairs)}

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(head, ensure_ascii=False) + "\n")
            for p in pairs:
                f.write(json.dumps(pair_to_json(p), ensure_ascii=False, separators=(",", ":")) + "\n")

    atomic_write(path, write)
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks only the header line of a dataset file.

    Raises:
        DatasetFormatError: On an empty file, malformed JSON or a header of another format/version.
    """
    path = Path(path)
    with utf8_file(path), path.open(encoding="utf-8") as f:
        first = f.readline()
    return _parse_header(path, first)


def _parse_header(path: Path, line: str) -> dict[str, Any]:
    if not line.strip():
        raise DatasetFormatError(path, "line 1", "empty file (no header line)")
    try:
        head = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(path, "line 1", f"malformed JSON in header: {e.msg}") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT_NAME:
        raise DatasetFormatError(path, "line 1", f"not a {FORMAT_NAME} header (format={head.get('format')!r})"
                                 if isinstance(head, dict) else "header is not a JSON object")
    if head.get("version") != FORMAT_VERSION:
        raise DatasetFormatError(path, "line 1", f"unsupported version {head.get('version')!r}; "
                                 f"this jaxmech reads version {FORMAT_VERSION}")
    if not isinstance(head.get("count"), int):
        raise DatasetFormatError(path, "line 1", "header has no integer 'count'")
    return head


def read_dataset(path: str | os.PathLike) -> tuple[dict[str, Any], list[AlignedPair]]:
    """Reads and validates a dataset file written by `write_dataset`.

    Returns:
        ``(header, pairs)``.

    Raises:
        DatasetFormatError: Naming the file, line and problem: malformed JSON, a missing field, lengths of
            ids / token types / position map that disagree, or a pair count different from the header's.
    """
    path = Path(path)
    with utf8_file(path), path.open(encoding="utf-8") as f:
        head = _parse_header(path, f.readline())
        pairs = []
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                raise DatasetFormatError(path, f"line {lineno}", "blank line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(path, f"line {lineno}", f"malformed JSON: {e.msg}") from None
            pairs.append(pair_from_json(obj, source=str(path), record=f"line {lineno}"))
    if len(pairs) != head["count"]:
        raise DatasetFormatError(path, f"line {len(pairs) + 2}",  # where the next pair was expected
                                 f"header says {head['count']} pairs but the file holds {len(pairs)}")
    return head, pairs


def iter_kinds(pairs: Iterable[AlignedPair]) -> dict[str, int]:
    """Number of pairs of each kind."""
    out: dict[str, int] = {}
    for p in pairs:
        out[p.kind] = out.get(p.kind, 0) + 1
    return out


def count_token_types(types_per_pair: Iterable[Sequence[str]]) -> dict[str, int]:
    """Total number of positions of each type over many pairs, in `TOKEN_TYPES` order."""
    counts = dict.fromkeys(TOKEN_TYPES, 0)
    for types in types_per_pair:
        for t in types:
            counts[t] += 1
    return counts


def summarize_dataset(header: dict, pairs: Sequence[AlignedPair]) -> dict[str, Any]:
    """Summary of a dataset: counts by kind, lengths, token types, exclusions (``jaxmech dataset stats``)."""
    def lengths(xs):
        if not xs:
            return {}
        return {"min": min(xs), "mean": round(sum(xs) / len(xs), 2), "max": max(xs)}

    stats = header.get("stats", {})
    return {
        "pairs": len(pairs),
        "kinds": iter_kinds(pairs),
        "queries": len({p.qid for p in pairs}),
        "tokenizer": header.get("tokenizer"),
        "source": header.get("source"),
        "baseline_length": lengths([len(p.baseline_ids) for p in pairs]),
        "perturbed_length": lengths([len(p.perturbed_ids) for p in pairs]),
        "equal_length": sum(p.same_length for p in pairs),
        "token_types": count_token_types(p.token_types for p in pairs),
        "excluded": {k: v for k, v in stats.items() if k.startswith("excluded_")},
    }
