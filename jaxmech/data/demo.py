"""The packaged demo set: a small diagnostic source written for jaxmech, so everything runs with no data.

``jaxmech/demo/demo.json`` holds 35 queries on everyday and scientific facts, authored for this project (not
taken from MS MARCO or any other collection). Each query has a selected term (one of its words), a related
word (STMC1), a pronoun (TFC2), three short passages (TFC1/STMC1) and two five-sentence answers in which every
sentence starts with the term (TFC2/LNC1). One term, ``t-rex``, is split by the tokenizer into several
words, to exercise the paper's empty-``Qplus`` case.

File format::

    {"format": "jaxmech.demo", "version": 1, "queries": [
        {"qid": ..., "query": ..., "term": ..., "related": ..., "pronoun": ...,
         "passages": [{"doc_id": ..., "text": ...}, ...], "answers": [{"doc_id": ..., "text": ...}, ...]}]}
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from jaxmech.data.records import DataError, DiagnosticSource

DEMO_FORMAT = "jaxmech.demo"
_QUERY_FIELDS = ("qid", "query", "term", "related", "pronoun", "passages", "answers")


def demo_path() -> Path:
    """Path of the packaged ``demo.json``."""
    return Path(str(resources.files("jaxmech") / "demo" / "demo.json"))


def load_demo(path: str | os.PathLike | None = None) -> DiagnosticSource:
    """Loads the demo set (or another file in its format) as a `DiagnosticSource`.

    Args:
        path: A file in the demo format; default: the packaged one.

    Raises:
        DataError: Naming the file, the record and the problem (malformed JSON, a missing field, a repeated
            id, a term that is not a word of its query).
    """
    path = Path(path) if path is not None else demo_path()
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", f"malformed JSON: {e.msg}") from None
    if not (isinstance(obj, dict) and obj.get("format") == DEMO_FORMAT
            and isinstance(obj.get("queries"), list)):
        raise DataError(path, None, f"not a {DEMO_FORMAT} file (expected 'format' and a 'queries' list)")
    src = DiagnosticSource(str(path), {}, {})
    seen_docs: set[str] = set()
    for n, rec in enumerate(obj["queries"]):
        where = f"queries[{n}]"
        if not isinstance(rec, dict):
            raise DataError(path, where, "expected an object")
        missing = [k for k in _QUERY_FIELDS if k not in rec]
        if missing:
            raise DataError(path, where, f"missing field(s) {missing}")
        qid = str(rec["qid"])
        if qid in src.queries:
            raise DataError(path, where, f"qid {qid} appears twice")
        src.queries[qid] = rec["query"]
        src.terms[qid], src.related[qid], src.pronouns[qid] = rec["term"], rec["related"], rec["pronoun"]
        for table in ("passages", "answers"):
            for m, d in enumerate(rec[table]):
                if not (isinstance(d, dict) and isinstance(d.get("doc_id"), str)
                        and isinstance(d.get("text"), str)):
                    raise DataError(path, f"{where}.{table}[{m}]", "expected {'doc_id': str, 'text': str}")
                if d["doc_id"] in seen_docs:
                    raise DataError(path, f"{where}.{table}[{m}]", f"doc_id {d['doc_id']} appears twice")
                seen_docs.add(d["doc_id"])
                if table == "passages":
                    src.docs.setdefault(qid, {})[d["doc_id"]] = d["text"]
                else:
                    src.answers.setdefault(qid, []).append((d["doc_id"], d["text"]))
    try:
        src.check()
    except DataError as e:
        raise DataError(path, e.record, e.problem) from None
    return src
