"""Loaders: the paper's public files, MS MARCO-style collections, and ``ir_datasets``.

**The paper's files** (paper-notes §3; found in ``../shared/data/msmarco-diagnostic`` next to the repository,
or wherever ``$JAXMECH_SHARED_DATA`` points): one reader per file, and `load_paper_source` that assembles them
into a `DiagnosticSource` (queries, selected terms, pronouns, the 100 x 100 passages with the leading filler
``"a "`` stripped, STMC1's ``most_similar_synonym``, and the TFC2/LNC1 answers of the selected queries, the
last row winning for duplicated qids as in the paper's loader).

**MS MARCO-style files**: collections (``pid<TAB>text`` TSV, or JSONL objects with ``_id``/``id``/``doc_id``/
``docno`` and ``text``, and an optional ``title``), queries (``qid<TAB>text`` TSV or JSONL), qrels (TREC
``qid 0 docid rel`` or BEIR ``query-id<TAB>corpus-id<TAB>score`` with header) and term files
(``qid<TAB>term[<TAB>related[<TAB>pronoun]]``); `source_from_files` assembles them.

**ir_datasets** (optional extra ``ir``; imported only when used): `load_ir_datasets`.

Every reader raises `DataError` naming the file, the line or record, and the problem.
"""

from __future__ import annotations

import ast
import csv
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxmech.data.records import DataError, DiagnosticSource, iter_jsonl, iter_tsv, term_in_query, utf8_file

SHARED_ENV = "JAXMECH_SHARED_DATA"
PAPER_FILES = {
    "queries": "tfc1_add_qids_with_text.csv",
    "terms": "selected_terms.json",
    "corpus": "tfc1_add_baseline_final_dd_corpus.json",
    "scores": "tfc1_add_append_target_qids_scores.csv",
    "stmc1": "stmc1_qids_perturbation.csv",
    "tfc2": "tfc2_lnc1_query_answer_injected.csv",
}


# -- locating the shared data -------------------------------------------------------------------------------
def repo_root() -> Path:
    """The folder holding the ``jaxmech`` package (the repository root for a source checkout)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """Where the paper's files are: ``$JAXMECH_SHARED_DATA`` or ``<repo>/../shared/data/msmarco-diagnostic``.

    The folder may not exist (a user's machine); check with ``.is_dir()`` or call `require_paper_dir`.
    """
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else repo_root().parent / "shared" / "data" / "msmarco-diagnostic"


def require_paper_dir(folder: str | os.PathLike | None = None) -> Path:
    """The paper-data folder, checked to hold all six files.

    Raises:
        FileNotFoundError: Naming the folder and the missing files.
    """
    folder = Path(folder) if folder is not None else shared_data_dir()
    missing = [f for f in PAPER_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing paper data file(s) {missing}; set ${SHARED_ENV} to the "
                                "folder holding the paper's msmarco-diagnostic files")
    return folder


# -- CSV helpers --------------------------------------------------------------------------------------------
def _csv_rows(path: Path, *, header: list[str] | None) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number, row); checks the header and the column count of every row."""
    with utf8_file(path), path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        n_cols = None
        if header is not None:
            try:
                got = next(reader)
            except StopIteration:
                raise DataError(path, "line 1", "empty file") from None
            except csv.Error as e:
                raise DataError(path, "line 1", f"malformed CSV: {e}") from None
            if got != header:
                raise DataError(path, "line 1", f"expected header {header}, got {got}")
            n_cols = len(header)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(path, f"line {reader.line_num}", f"malformed CSV: {e}") from None
            if not row:
                continue
            n_cols = n_cols or len(row)
            if len(row) != n_cols:
                raise DataError(path, f"line {reader.line_num}", f"expected {n_cols} columns, got {len(row)}")
            yield reader.line_num, row


def _load_json(path: Path) -> Any:
    try:
        with utf8_file(path), path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", f"malformed JSON: {e.msg}") from None


# -- the paper's files --------------------------------------------------------------------------------------
def read_paper_queries(path: str | os.PathLike) -> dict[str, str]:
    """``tfc1_add_qids_with_text.csv``: no header, rows ``qid,query``.

    Raises:
        DataError: On a row without exactly two columns, an empty field or a repeated qid.
    """
    path, out = Path(path), {}
    for line, row in _csv_rows(path, header=None):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(path, f"line {line}", "expected 'qid,query' with both fields non-empty")
        qid, query = row
        if qid in out:
            raise DataError(path, f"line {line}", f"qid {qid} appears twice")
        out[qid] = query
    return out


def read_selected_terms(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, str]]:
    """``selected_terms.json``: ``{"selected_term": {qid: term}, "pronoun": {qid: pronoun}}``.

    Returns:
        ``(terms, pronouns)``.
    """
    path = Path(path)
    obj = _load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("selected_term"), dict):
        raise DataError(path, None, "expected an object with a 'selected_term' mapping")
    pronouns = obj.get("pronoun", {})
    for name, table in (("selected_term", obj["selected_term"]), ("pronoun", pronouns)):
        if not isinstance(table, dict):
            raise DataError(path, name, "expected a mapping qid -> string")
        for qid, v in table.items():
            if not isinstance(v, str) or not v:
                raise DataError(path, f"{name}[{qid}]", f"expected a non-empty string, got {v!r}")
    return dict(obj["selected_term"]), dict(pronouns)


def read_paper_corpus(path: str | os.PathLike, *, strip_filler: bool = True) -> dict[str, dict[str, str]]:
    """``tfc1_add_baseline_final_dd_corpus.json``: ``{"corpus": {qid: {doc_id: {"text": "a " + passage}}}}``.

    Args:
        path: The corpus file.
        strip_filler: Remove the leading filler ``"a "`` of the prepend baseline (giving the passage).

    Returns:
        ``qid -> {doc_id: text}``.

    Raises:
        DataError: On a malformed record, or a text without the leading filler when ``strip_filler``.
    """
    path = Path(path)
    obj = _load_json(path)
    corpus = obj.get("corpus") if isinstance(obj, dict) else None
    if not isinstance(corpus, dict):
        raise DataError(path, None, "expected an object with a 'corpus' mapping")
    out: dict[str, dict[str, str]] = {}
    for qid, docs in corpus.items():
        if not isinstance(docs, dict):
            raise DataError(path, f"qid {qid}", "expected a mapping doc_id -> record")
        out[qid] = {}
        for doc_id, rec in docs.items():
            text = rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise DataError(path, f"qid {qid}, doc {doc_id}", "record has no string 'text'")
            if strip_filler:
                if not text.startswith("a "):
                    raise DataError(path, f"qid {qid}, doc {doc_id}",
                                    "text does not start with the filler 'a '")
                text = text[2:]
            out[qid][doc_id] = text
    return out


SCORE_COLUMNS = ["qid", "doc_id", "og_score", "p_score", "score_diff", "percent_change", "og_rank", "p_rank",
                 "change_in_rank"]


def read_paper_scores(path: str | os.PathLike) -> dict[str, np.ndarray | list[str]]:
    """``tfc1_add_append_target_qids_scores.csv``: TAS-B scores before/after appending the term.

    Returns:
        Columns: ``qid`` and ``doc_id`` as string lists, the rest as float arrays (ranks as int arrays).
    """
    path = Path(path)
    cols: dict[str, list] = {c: [] for c in SCORE_COLUMNS}
    for line, row in _csv_rows(path, header=SCORE_COLUMNS):
        try:
            vals = [row[0], row[1], *(float(x) for x in row[2:6]), *(int(x) for x in row[6:])]
        except ValueError as e:
            raise DataError(path, f"line {line}", f"non-numeric score or rank: {e}") from None
        for c, v in zip(SCORE_COLUMNS, vals, strict=True):
            cols[c].append(v)
    out: dict[str, np.ndarray | list[str]] = {"qid": cols["qid"], "doc_id": cols["doc_id"]}
    for c in SCORE_COLUMNS[2:]:
        out[c] = np.asarray(cols[c], np.int64 if c.endswith("rank") else np.float64)
    return out


STMC1_COLUMNS = ["qid", "term", "context", "sims", "most_similar_synonym"]


def read_stmc1(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``stmc1_qids_perturbation.csv``: related words per selected term.

    Returns:
        ``qid -> {"term", "context", "sims": list[str], "most_similar_synonym"}``.

    Raises:
        DataError: On a malformed row, an unparsable ``sims`` list or a repeated qid.
    """
    path, out = Path(path), {}
    for line, (qid, term, context, sims, best) in _csv_rows(path, header=STMC1_COLUMNS):
        try:
            sims_list = ast.literal_eval(sims)
        except (ValueError, SyntaxError):
            raise DataError(path, f"line {line} (qid {qid})",
                            f"'sims' is not a list literal: {sims!r}") from None
        if not isinstance(sims_list, list) or not all(isinstance(s, str) for s in sims_list):
            raise DataError(path, f"line {line} (qid {qid})", "'sims' must be a list of strings")
        if not best.strip():
            raise DataError(path, f"line {line} (qid {qid})", "empty most_similar_synonym")
        if qid in out:
            raise DataError(path, f"line {line}", f"qid {qid} appears twice")
        out[qid] = {"term": term, "context": context, "sims": sims_list, "most_similar_synonym": best}
    return out


def read_tfc2_answers(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """``tfc2_lnc1_query_answer_injected.csv``: rows ``(qid, query, doc)``, all rows in file order.

    The docs keep the paper's literal ``"`` at both ends (the TFC2 build keeps them; LNC1 removes them).
    """
    path = Path(path)
    return [(qid, query, doc) for _, (qid, query, doc) in _csv_rows(path, header=["qid", "query", "doc"])]


def load_paper_source(folder: str | os.PathLike | None = None) -> DiagnosticSource:
    """Assembles the paper's six files into a `DiagnosticSource`.

    Args:
        folder: The msmarco-diagnostic folder (default: `shared_data_dir`).

    Raises:
        FileNotFoundError: If a file is missing.
        DataError: On malformed files, unknown qids, or a selected term that is not a word of its query.
    """
    folder = require_paper_dir(folder)
    f = {k: folder / v for k, v in PAPER_FILES.items()}
    queries = read_paper_queries(f["queries"])
    terms, pronouns = read_selected_terms(f["terms"])
    for table, name in ((terms, "selected_term"), (pronouns, "pronoun")):
        for qid in table:
            if qid not in queries:
                raise DataError(f["terms"], f"{name}[{qid}]", "unknown qid (not in the query file)")
    for qid in queries:
        if qid not in terms:
            raise DataError(f["terms"], f"qid {qid}", "no selected term for this query")
        if not term_in_query(terms[qid], queries[qid]):
            raise DataError(f["terms"], f"qid {qid}",
                            f"selected term {terms[qid]!r} is not a word of the query {queries[qid]!r}")
    docs = read_paper_corpus(f["corpus"])
    for qid in docs:
        if qid not in queries:
            raise DataError(f["corpus"], f"qid {qid}", "unknown qid (not in the query file)")
    related = {}
    for qid, row in read_stmc1(f["stmc1"]).items():
        if qid not in queries:
            raise DataError(f["stmc1"], f"qid {qid}", "unknown qid (not in the query file)")
        related[qid] = row["most_similar_synonym"]
    answers: dict[str, list[tuple[str, str]]] = {}
    for qid, _, doc in read_tfc2_answers(f["tfc2"]):
        if qid in queries:  # the file covers 748 qids; the paper uses the selected ones, last row winning
            answers[qid] = [(f"tfc2-{qid}", doc)]
    src = DiagnosticSource(str(folder), queries, terms, docs, related, pronouns,
                           {q: answers[q] for q in queries if q in answers})
    return src


# -- MS MARCO-style files -----------------------------------------------------------------------------------
_ID_KEYS = ("_id", "id", "doc_id", "docid", "docno", "pid", "qid", "query_id")


def _tsv(path: Path, n_min: int, n_max: int) -> Iterator[tuple[int, list[str]]]:
    want = n_min if n_min == n_max else f"{n_min}-{n_max}"
    return iter_tsv(path, range(n_min, n_max + 1), f"{want} tab-separated columns")


def _read_texts(path: str | os.PathLike, *, with_title: bool) -> dict[str, str]:
    path, out = Path(path), {}
    if path.suffix == ".jsonl":
        for line, obj in iter_jsonl(path):
            key = next((k for k in _ID_KEYS if k in obj), None)
            text = obj.get("text")
            if key is None or not isinstance(text, str):
                raise DataError(path, f"line {line}",
                                f"expected an id field (one of {list(_ID_KEYS)}) and 'text'")
            title = obj.get("title") or ""
            out[str(obj[key])] = f"{title} {text}".strip() if with_title and title else text
    else:
        for line, cols in _tsv(path, 2, 3 if with_title else 2):
            if len(cols) == 3:  # id, title, text: the title is prepended, as for JSONL
                cols = [cols[0], f"{cols[1]} {cols[2]}".strip()]
            if cols[0] in out:
                raise DataError(path, f"line {line}", f"id {cols[0]} appears twice")
            out[cols[0]] = cols[1]
    return out


def read_collection(path: str | os.PathLike) -> dict[str, str]:
    """An MS MARCO passage collection (``pid<TAB>text`` TSV) or a BEIR-style ``corpus.jsonl``.

    JSONL titles are prepended to the text.
    """
    return _read_texts(path, with_title=True)


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Queries as ``qid<TAB>text`` TSV or JSONL (``_id``/``id``/``qid`` and ``text``)."""
    return _read_texts(path, with_title=False)


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Relevance judgements: TREC ``qid 0 docid rel`` (whitespace) or BEIR TSV ``qid<TAB>docid<TAB>rel``.

    A first line ``query-id<TAB>corpus-id<TAB>score`` (BEIR's header) is skipped.

    Returns:
        ``qid -> {doc_id: relevance}``.
    """
    path, out = Path(path), {}
    with utf8_file(path), path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            cols = line.split()
            if not cols or (line_no == 1 and cols[0] == "query-id"):
                continue
            if len(cols) == 4:
                qid, _, doc_id, rel = cols
            elif len(cols) == 3:
                qid, doc_id, rel = cols
            else:
                raise DataError(path, f"line {line_no}", f"expected 3 or 4 columns, got {len(cols)}")
            try:
                out.setdefault(qid, {})[doc_id] = int(float(rel))
            except ValueError:
                raise DataError(path, f"line {line_no}", f"relevance {rel!r} is not a number") from None
    return out


def read_terms(path: str | os.PathLike) -> dict[str, list[str]]:
    """Selected terms: ``qid<TAB>term[<TAB>related word[<TAB>pronoun]]`` TSV.

    Returns:
        ``qid -> [term, related?, pronoun?]``.
    """
    path, out = Path(path), {}
    for line, cols in _tsv(path, 2, 4):
        if cols[0] in out:
            raise DataError(path, f"line {line}", f"qid {cols[0]} appears twice")
        if not all(c.strip() for c in cols):
            raise DataError(path, f"line {line}", "empty field")
        out[cols[0]] = cols[1:]
    return out


def pick_terms(queries: Mapping[str, str], *, seed: int = 0, min_chars: int = 3) -> dict[str, str]:
    """A seeded random whitespace word of each query (the paper chose terms at random; notes §3.1).

    Words shorter than ``min_chars`` are avoided when the query has a longer one.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for qid, q in queries.items():
        words = q.split()
        if not words:
            continue
        long_ = [w for w in words if len(w) >= min_chars] or words
        out[qid] = long_[int(rng.integers(len(long_)))]
    return out


def source_from_files(collection: str | os.PathLike, queries: str | os.PathLike, qrels: str | os.PathLike, *,
                      terms: str | os.PathLike | None = None, min_relevance: int = 1,
                      max_docs_per_query: int | None = None, seed: int = 0) -> DiagnosticSource:
    """A `DiagnosticSource` from MS MARCO-style files: each query's judged-relevant documents.

    Args:
        collection: Collection file (`read_collection`).
        queries: Query file (`read_queries`).
        qrels: Qrels or a run in qrels form (`read_qrels`); documents with relevance >= ``min_relevance``.
        terms: Term file (`read_terms`); without it a seeded random query word is chosen (`pick_terms`).
        min_relevance: Smallest relevance kept.
        max_docs_per_query: Keep at most this many documents per query.
        seed: Seed for `pick_terms`.

    Raises:
        DataError: On qrels or terms naming an unknown qid or doc id, or a term not in its query.
    """
    coll, qs, qr = read_collection(collection), read_queries(queries), read_qrels(qrels)
    docs: dict[str, dict[str, str]] = {}
    for qid, judged in qr.items():
        if qid not in qs:
            raise DataError(qrels, f"qid {qid}", "unknown qid (not in the query file)")
        keep = [d for d, r in judged.items() if r >= min_relevance][:max_docs_per_query]
        for d in keep:
            if d not in coll:
                raise DataError(qrels, f"qid {qid}, doc {d}", "unknown doc id (not in the collection)")
        if keep:
            docs[qid] = {d: coll[d] for d in keep}
    used = {q: qs[q] for q in qs if q in docs}
    related, pronouns = {}, {}
    if terms is not None:
        table = read_terms(terms)
        sel = {}
        for qid, cols in table.items():
            if qid not in qs:
                raise DataError(terms, f"qid {qid}", "unknown qid (not in the query file)")
            sel[qid] = cols[0]
            if len(cols) > 1:
                related[qid] = cols[1]
            if len(cols) > 2:
                pronouns[qid] = cols[2]
        used = {q: qs[q] for q in qs if q in docs and q in sel}
        sel = {q: sel[q] for q in used}
    else:
        sel = pick_terms(used, seed=seed)
    src = DiagnosticSource(str(queries), used, sel, {q: docs[q] for q in used},
                           {q: r for q, r in related.items() if q in used},
                           {q: p for q, p in pronouns.items() if q in used})
    src.check()
    return src


# -- ir_datasets --------------------------------------------------------------------------------------------
def load_ir_datasets(name: str, *, terms: Mapping[str, str] | None = None, max_queries: int | None = None,
                     max_docs_per_query: int | None = 100, min_relevance: int = 1, seed: int = 0
                     ) -> DiagnosticSource:
    """A `DiagnosticSource` from an ``ir_datasets`` collection (downloads on first use; needs the network).

    Args:
        name: Dataset id, e.g. ``"msmarco-passage/dev/small"``.
        terms: ``qid -> term``; default: a seeded random query word (`pick_terms`).
        max_queries: Keep the first this many queries that have judged documents.
        max_docs_per_query: Keep at most this many judged documents per query.
        min_relevance: Smallest relevance kept.
        seed: Seed for `pick_terms`.

    Raises:
        ImportError: If ``ir_datasets`` is not installed (``pip install 'jaxmech[ir]'``).
    """
    try:
        import ir_datasets
    except ImportError as e:
        raise ImportError("load_ir_datasets needs the optional package ir_datasets: "
                          "pip install 'jaxmech[ir]' (or pip install ir_datasets)") from e
    ds = ir_datasets.load(name)
    queries = {str(q.query_id): q.text for q in ds.queries_iter()}
    judged: dict[str, list[str]] = {}
    for qr in ds.qrels_iter():
        if qr.relevance >= min_relevance and str(qr.query_id) in queries:
            lst = judged.setdefault(str(qr.query_id), [])
            if max_docs_per_query is None or len(lst) < max_docs_per_query:
                lst.append(str(qr.doc_id))
    qids = [q for q in queries if q in judged][:max_queries]
    store = ds.docs_store()
    wanted = sorted({d for q in qids for d in judged[q]})
    texts = {}
    for d in store.get_many_iter(wanted):
        title = getattr(d, "title", "") or ""
        texts[str(d.doc_id)] = f"{title} {d.text}".strip() if title else d.text
    docs = {}
    for q in qids:
        missing = [d for d in judged[q] if d not in texts]
        if missing:
            raise DataError(f"ir_datasets:{name}", f"qid {q}", f"doc ids {missing[:3]} not in the docs store")
        docs[q] = {d: texts[d] for d in judged[q]}
    used = {q: queries[q] for q in qids}
    sel = dict(terms) if terms is not None else pick_terms(used, seed=seed)
    for q in list(sel):
        if q not in used:
            sel.pop(q)
    used = {q: t for q, t in used.items() if q in sel}
    src = DiagnosticSource(f"ir_datasets:{name}", used, sel, {q: docs[q] for q in used})
    src.check()
    return src


def _first(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def load_source(spec: str, *, seed: int = 0) -> DiagnosticSource:
    """Resolves a ``--source`` value to a loaded `DiagnosticSource`.

    Args:
        spec: ``demo`` (the packaged set), ``shared`` (the paper's files, found by `shared_data_dir`),
            ``ir_datasets:NAME``, a demo-format JSON file, or a folder holding either the paper's six files or
            MS MARCO-style files (``collection.tsv``/``corpus.jsonl``, ``queries.tsv``/``queries.jsonl``,
            ``qrels.tsv``/``qrels.txt`` and optionally ``terms.tsv``).
        seed: Seed for random term choice.

    Raises:
        FileNotFoundError: If the path does not exist or a folder holds no recognised files.
        DataError: On malformed input files.
    """
    from jaxmech.data import demo

    if spec == "demo":
        return demo.load_demo()
    if spec == "shared":
        return load_paper_source()
    if spec.startswith("ir_datasets:"):
        return load_ir_datasets(spec.split(":", 1)[1], seed=seed)
    path = Path(spec)
    if path.is_file():
        return demo.load_demo(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--source {spec!r}: not 'demo', 'shared', 'ir_datasets:NAME', a file or "
                                "a folder")
    if all((path / f).is_file() for f in PAPER_FILES.values()):
        return load_paper_source(path)
    coll = _first(path, ["collection.tsv", "corpus.jsonl", "collection.jsonl"])
    queries = _first(path, ["queries.tsv", "queries.jsonl"])
    qrels = _first(path, ["qrels.tsv", "qrels.txt", "qrels.trec"])
    if not (coll and queries and qrels):
        raise FileNotFoundError(f"{path}: neither the paper's files nor a collection + queries + qrels "
                                "(collection.tsv|corpus.jsonl, queries.tsv|jsonl, qrels.tsv|txt)")
    return source_from_files(coll, queries, qrels, terms=_first(path, ["terms.tsv"]), seed=seed)
