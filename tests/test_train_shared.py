"""Training data from the paper's shared MS MARCO files: 100 queries x 100 passages, a query split, and the
TAS-B reference scores used as the independent evaluation signal. Skipped with a reason when the folder is
absent; nothing here copies text from the data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jaxmech.data.loaders import PAPER_FILES
from jaxmech.train.data import shared_candidates, split_queries, tasb_reference
from jaxmech.train.teachers import BM25Teacher

SHARED = Path(
    os.environ.get("JAXMECH_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-diagnostic"
)

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(
        not all((SHARED / f).is_file() for f in PAPER_FILES.values()),
        reason=f"paper data not found in {SHARED} (set $JAXMECH_SHARED_DATA)",
    ),
]


@pytest.fixture(scope="module")
def cands():
    return shared_candidates(SHARED)


def test_shared_candidates_are_100_queries_with_100_passages_and_no_labels(cands):
    assert len(cands.queries) == 100 and {len(d) for d in cands.docs.values()} == {100}
    assert cands.labels is None and len(cands.group_list()) == 100


def test_tasb_reference_covers_every_candidate_pair(cands):
    ref = tasb_reference(SHARED)
    assert len(ref) == 10_000
    assert all((q, d) in ref for q, docs in cands.docs.items() for d in docs)


def test_default_split_holds_out_20_queries(cands):
    train, held = split_queries(list(cands.queries), 0.2, seed=0)
    assert len(train) == 80 and len(held) == 20


def test_bm25_teacher_scores_the_shared_passages(cands):
    q = next(iter(cands.queries))
    docs = list(cands.docs[q])
    s = BM25Teacher(cands).score_rows(cands, [q] * len(docs), docs)
    assert s.shape == (100,) and (s > 0).sum() > 10
