"""Training data: candidate sets, query splits, tokenised pair tables and a deterministic group sampler.

**Candidates.** Every source becomes a `Candidates`: queries, each query's candidate documents, optional
labels, and *groups*, the unit a training step samples (one group per query for candidate lists and
labelled pairs; one group of two per triple). Sources (``[data] source``):

* ``shared``: the paper's 100 MS MARCO queries x 100 TAS-B-retrieved passages (`load_paper_source`, the
  filler ``"a "`` stripped). No labels: train from a teacher.
* ``demo``: the packaged demo set (35 authored queries, 3 passages + 2 answers each). No labels.
* ``pairs``: labelled pairs, TSV ``query<TAB>doc<TAB>label`` or ``qid<TAB>query<TAB>doc<TAB>label``, or
  JSONL objects ``{"query", "doc", "label"[, "qid"]}``; grouped by qid (or query text).
* ``triples``: TSV ``query<TAB>positive<TAB>negative`` or JSONL
  ``{"query", "positive", "negative"[, "qid"]}``;
  labels 1 and 0.
* ``candidates``: an MS MARCO-style collection + queries + a run or qrels file (`read_qrels` format) whose
  values become labels.

Malformed rows raise `jaxmech.data.records.DataError` naming the file, the line and the problem.

**Split.** Queries (never pairs) are split into train and held-out by a seeded permutation of the sorted
query ids (`split_queries`), so no held-out query is seen in training.

**Order.** `GroupSampler.indices` is a pure function of ``(seed, step)``: epoch ``e`` visits the groups in
the permutation drawn from ``(seed, e)``, and the documents of a group at step ``t`` are drawn from
``(seed, t)``. A resumed run therefore sees exactly the batches an uninterrupted run would, with no iterator
state to save beyond the step.

**Tokens.** `PairTable` tokenises every (query, document) row once, padded to ``max_length``; a batch is a
gather of rows cut to the smallest tokenizer bucket that holds its longest row (one compile per bucket).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Float, Int

from jaxmech.data.records import DataError, iter_jsonl, iter_tsv
from jaxmech.hf.tokenizer import PairTokenizer, bucket_length


@dataclasses.dataclass
class Candidates:
    """Queries with candidate documents, optional labels, and the groups a training step samples.

    Attributes:
        name: Where it came from (file or source name), for messages.
        queries: ``qid -> query text``.
        docs: ``qid -> {doc_id: text}``.
        labels: ``qid -> {doc_id: label}``, or None when the source has no labels.
        groups: ``[(qid, [doc_id, ...])]``; None means one group per query holding all its documents.
    """

    name: str
    queries: dict[str, str]
    docs: dict[str, dict[str, str]]
    labels: dict[str, dict[str, float]] | None = None
    groups: list[tuple[str, list[str]]] | None = None

    def group_list(self, qids: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
        """The groups of the given queries (all queries if None), in source order."""
        keep = set(self.queries if qids is None else qids)
        groups = self.groups if self.groups is not None else [(q, list(d)) for q, d in self.docs.items()]
        return [(q, ds) for q, ds in groups if q in keep]

    def n_pairs(self) -> int:
        return sum(len(d) for d in self.docs.values())


# -- readers -------------------------------------------------------------------------------------------------
def _rows(
    path: Path,
    fields_tsv: dict[int, tuple[str, ...]],
    jsonl_required: tuple[str, ...],
    jsonl_optional: tuple[str, ...] = (),
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields ``(line, {field: value})`` from a TSV (by column count) or JSONL file; checks every row."""
    if not path.is_file():
        raise DataError(path, None, "file not found")
    if path.suffix == ".jsonl":
        lines = iter_jsonl(path)
    else:
        want = " or ".join(str(n) for n in sorted(fields_tsv))
        lines = iter_tsv(path, fields_tsv, f"{want} tab-separated columns")
    for line_no, values in lines:
        if isinstance(values, dict):
            missing = [k for k in jsonl_required if k not in values]
            if missing:
                raise DataError(path, f"line {line_no}", f"missing field(s) {missing}")
            row = {k: values[k] for k in (*jsonl_required, *jsonl_optional) if k in values}
        else:
            row = dict(zip(fields_tsv[len(values)], values, strict=True))
        for k, v in row.items():
            if k == "label":
                continue
            if not isinstance(v, str) or not v.strip():
                raise DataError(path, f"line {line_no}", f"field {k!r} must be a non-empty string, got {v!r}")
        yield line_no, row


def _label(path: Path, line: int, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"line {line}", f"label {value!r} is not a number") from None
    if not np.isfinite(out):
        raise DataError(path, f"line {line}", f"label {value!r} is not finite")
    return out


def read_pairs_file(path: str | os.PathLike) -> Candidates:
    """Labelled pairs (see the module docstring), grouped by qid or, without qids, by query text.

    Raises:
        DataError: On a missing file, a row with the wrong number of columns, an empty field, a non-numeric
            label, or a qid given two different query texts.
    """
    path = Path(path)
    queries: dict[str, str] = {}
    docs: dict[str, dict[str, str]] = {}
    labels: dict[str, dict[str, float]] = {}
    rows = _rows(
        path,
        {3: ("query", "doc", "label"), 4: ("qid", "query", "doc", "label")},
        ("query", "doc", "label"),
        ("qid",),
    )
    for line, row in rows:
        qid = str(row.get("qid", row["query"]))
        if queries.setdefault(qid, row["query"]) != row["query"]:
            raise DataError(path, f"line {line}", f"qid {qid} has two query texts")
        doc_id = f"{path.name}:{line}"
        docs.setdefault(qid, {})[doc_id] = row["doc"]
        labels.setdefault(qid, {})[doc_id] = _label(path, line, row["label"])
    if not queries:
        raise DataError(path, None, "no pairs")
    return Candidates(str(path), queries, docs, labels)


def read_triples_file(path: str | os.PathLike) -> Candidates:
    """(query, positive, negative) triples; each triple is a group of two documents labelled 1 and 0.

    Raises:
        DataError: On a missing file, a row without three columns, or an empty field.
    """
    path = Path(path)
    queries: dict[str, str] = {}
    docs: dict[str, dict[str, str]] = {}
    labels: dict[str, dict[str, float]] = {}
    groups: list[tuple[str, list[str]]] = []
    for line, row in _rows(path, {3: ("query", "positive", "negative")}, ("query", "positive", "negative"), ("qid",)):
        qid = str(row.get("qid", row["query"]))
        if queries.setdefault(qid, row["query"]) != row["query"]:
            raise DataError(path, f"line {line}", f"qid {qid} has two query texts")
        pos, neg = f"{path.name}:{line}:pos", f"{path.name}:{line}:neg"
        docs.setdefault(qid, {}).update({pos: row["positive"], neg: row["negative"]})
        labels.setdefault(qid, {}).update({pos: 1.0, neg: 0.0})
        groups.append((qid, [pos, neg]))
    if not groups:
        raise DataError(path, None, "no triples")
    return Candidates(str(path), queries, docs, labels, groups)


def candidates_from_files(
    collection: str | os.PathLike, queries: str | os.PathLike, run: str | os.PathLike
) -> Candidates:
    """An MS MARCO-style collection + queries + run/qrels (its values are the labels).

    Raises:
        DataError: On malformed files, or a run naming an unknown query or document.
    """
    from jaxmech.data.loaders import read_collection, read_qrels, read_queries

    coll, qs, rn = read_collection(collection), read_queries(queries), read_qrels(run)
    docs, labels = {}, {}
    for qid, judged in rn.items():
        if qid not in qs:
            raise DataError(run, f"qid {qid}", "unknown qid (not in the query file)")
        for d in judged:
            if d not in coll:
                raise DataError(run, f"qid {qid}, doc {d}", "unknown doc id (not in the collection)")
        docs[qid] = {d: coll[d] for d in judged}
        labels[qid] = {d: float(r) for d, r in judged.items()}
    return Candidates(str(run), {q: qs[q] for q in docs}, docs, labels)


def shared_candidates(folder: str | os.PathLike | None = None) -> Candidates:
    """The paper's 100 queries x 100 passages (filler stripped; no labels).

    Raises:
        FileNotFoundError: If the shared data folder is missing (see `jaxmech.data.loaders.shared_data_dir`).
    """
    from jaxmech.data.loaders import load_paper_source

    src = load_paper_source(folder or None)
    return Candidates(src.name, dict(src.queries), {q: dict(d) for q, d in src.docs.items()})


def demo_candidates() -> Candidates:
    """The packaged demo set: each query with its passages and answers (no labels)."""
    from jaxmech.data.demo import load_demo

    src = load_demo()
    docs = {q: {**src.docs.get(q, {}), **dict(src.answers.get(q, []))} for q in src.queries}
    return Candidates(src.name, dict(src.queries), docs)


def load_candidates(data_cfg) -> Candidates:
    """The `Candidates` of a ``[data]`` section (`jaxmech.train.config.DataSection`)."""
    if data_cfg.source == "shared":
        return shared_candidates(data_cfg.path or None)
    if data_cfg.source == "demo":
        return demo_candidates()
    if data_cfg.source == "pairs":
        return read_pairs_file(data_cfg.path)
    if data_cfg.source == "triples":
        return read_triples_file(data_cfg.path)
    return candidates_from_files(data_cfg.path, data_cfg.queries, data_cfg.run)


def read_reference_scores(path: str | os.PathLike) -> dict[tuple[str, str], float]:
    """Independent reference scores from a CSV of ``qid,doc_id,score`` rows (a header row is allowed).

    Raises:
        DataError: On a row without three columns or a non-numeric score.
    """
    path = Path(path)
    out = {}
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or (n == 1 and row[:3] == ["qid", "doc_id", "score"]):
                continue
            if len(row) != 3:
                raise DataError(path, f"line {n}", f"expected qid,doc_id,score, got {len(row)} columns")
            out[(row[0], row[1])] = _label(path, n, row[2])
    return out


def tasb_reference(folder: str | os.PathLike | None = None) -> dict[tuple[str, str], float]:
    """The shared data's TAS-B dot products of the original passages (``og_score``), by (qid, doc_id)."""
    from jaxmech.data.loaders import PAPER_FILES, read_paper_scores, require_paper_dir

    cols = read_paper_scores(require_paper_dir(folder or None) / PAPER_FILES["scores"])
    return {(q, d): float(s) for q, d, s in zip(cols["qid"], cols["doc_id"], cols["og_score"], strict=True)}


# -- split ---------------------------------------------------------------------------------------------------
def split_queries(qids: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Splits query ids into ``(train, heldout)`` by a permutation of the sorted ids drawn from ``seed``.

    At least one query is held out when ``heldout_fraction > 0`` and at least one stays for training.
    """
    ordered = sorted(qids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_held = 0 if heldout_fraction <= 0 else min(len(ordered) - 1, max(1, round(heldout_fraction * len(ordered))))
    held = sorted(ordered[i] for i in perm[:n_held])
    held_set = set(held)
    return [q for q in ordered if q not in held_set], held


# -- tokenised pairs -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class PairTable:
    """Every (query, document) row of a set of queries, tokenised once.

    Attributes:
        qids: ``[rows]`` query id of each row.
        doc_ids: ``[rows]`` document id of each row.
        input_ids: ``[rows, max_length]`` int32.
        token_type_ids: ``[rows, max_length]`` int32.
        attention_mask: ``[rows, max_length]`` int32.
        lengths: ``[rows]`` real lengths.
        n_truncated: Rows cut to ``max_length``.
        buckets: Padded lengths a batch may be cut to.
        max_length: Padded length of the stored rows.
    """

    qids: list[str]
    doc_ids: list[str]
    input_ids: Int[np.ndarray, "rows pos"]
    token_type_ids: Int[np.ndarray, "rows pos"]
    attention_mask: Int[np.ndarray, "rows pos"]
    lengths: Int[np.ndarray, " rows"]
    n_truncated: int
    buckets: tuple[int, ...]
    max_length: int

    def __len__(self) -> int:
        return len(self.qids)

    def row_index(self) -> dict[tuple[str, str], int]:
        return {(q, d): i for i, (q, d) in enumerate(zip(self.qids, self.doc_ids, strict=True))}

    def gather(self, rows: Int[np.ndarray, "..."]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, token_type_ids, attention_mask)`` of ``rows`` (flattened), cut to a bucket."""
        rows = np.asarray(rows).reshape(-1)
        T = bucket_length(int(self.lengths[rows].max()), self.buckets, self.max_length)
        return self.input_ids[rows, :T], self.token_type_ids[rows, :T], self.attention_mask[rows, :T]


def build_pair_table(cands: Candidates, qids: Sequence[str], tokenizer: PairTokenizer) -> PairTable:
    """Tokenises the rows of ``qids`` (in the order of ``qids``, then of each query's documents), padded to
    ``tokenizer.max_length``; longer pairs are truncated as the tokenizer does and counted."""
    rq, rd, qt, dt = [], [], [], []
    for q in qids:
        for d, text in cands.docs[q].items():
            rq.append(q)
            rd.append(d)
            qt.append(cands.queries[q])
            dt.append(text)
    L = tokenizer.max_length
    enc = tokenizer.encode_pairs(qt, dt, length=L)
    return PairTable(
        rq,
        rd,
        enc.input_ids,
        enc.token_type_ids,
        enc.attention_mask,
        enc.lengths,
        len(enc.truncations),
        tuple(b for b in tokenizer.buckets if b <= L),
        L,
    )


# -- sampling ------------------------------------------------------------------------------------------------
class GroupSampler:
    """Which rows each training step uses: ``queries_per_batch`` groups x ``docs_per_query`` documents.

    Args:
        group_rows: Row indices (into a `PairTable`) of each group.
        queries_per_batch: Groups per step (Q).
        docs_per_query: Documents per group per step (G); smaller groups are padded with invalid slots.
        seed: Seed of the order (see the module docstring).
    """

    def __init__(self, group_rows: Sequence[Sequence[int]], queries_per_batch: int, docs_per_query: int, seed: int):
        if not group_rows:
            raise ValueError("no training groups (no training queries?)")
        self.group_rows = [np.asarray(g, np.int64) for g in group_rows]
        self.Q, self.G, self.seed = queries_per_batch, docs_per_query, seed
        self._perm_cache: dict[int, np.ndarray] = {}

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.group_rows))}
        return self._perm_cache[epoch]

    def groups_at(self, step: int) -> list[int]:
        """Group indices used at ``step`` (epochs are consecutive permutations)."""
        n = len(self.group_rows)
        out = []
        for slot in range(step * self.Q, (step + 1) * self.Q):
            epoch, pos = divmod(slot, n)
            out.append(int(self._epoch_perm(epoch)[pos]))
        return out

    def indices(self, step: int) -> tuple[Int[np.ndarray, "Q G"], Bool[np.ndarray, "Q G"]]:
        """``(rows, valid)`` for ``step``: a pure function of ``(seed, step)``."""
        rng = np.random.default_rng([self.seed, step, 1])
        rows = np.zeros((self.Q, self.G), np.int64)
        valid = np.zeros((self.Q, self.G), bool)
        for i, g in enumerate(self.groups_at(step)):
            members = self.group_rows[g]
            k = min(self.G, len(members))
            pick = members[rng.choice(len(members), size=k, replace=False)] if len(members) > k else members
            rows[i, :k] = pick
            rows[i, k:] = pick[0]
            valid[i, :k] = True
        return rows, valid

    def epoch_of(self, step: int) -> int:
        """The epoch the first group of ``step`` belongs to."""
        return (step * self.Q) // len(self.group_rows)


@dataclasses.dataclass
class Batch:
    """One training step's inputs.

    Attributes:
        input_ids: ``[Q*G, pos]``.
        token_type_ids: ``[Q*G, pos]``.
        attention_mask: ``[Q*G, pos]``.
        targets: ``[Q, G]`` teacher scores or labels.
        valid: ``[Q, G]`` False on padding slots.
    """

    input_ids: Int[np.ndarray, "n pos"]
    token_type_ids: Int[np.ndarray, "n pos"]
    attention_mask: Int[np.ndarray, "n pos"]
    targets: Float[np.ndarray, "Q G"]
    valid: Bool[np.ndarray, "Q G"]


def make_batch(table: PairTable, targets: Float[np.ndarray, " rows"], rows: np.ndarray, valid: np.ndarray) -> Batch:
    """Gathers a `Batch` from a table and per-row targets."""
    ids, tt, mask = table.gather(rows)
    return Batch(ids, tt, mask, np.asarray(targets, np.float32)[rows], valid)
