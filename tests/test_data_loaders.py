"""Loaders on small files written here: paper-format files, MS MARCO TSV/JSONL/qrels, ir_datasets."""

from __future__ import annotations

import json
import sys
import types

import pytest

from jaxmech.data.loaders import (
    PAPER_FILES,
    load_ir_datasets,
    load_paper_source,
    pick_terms,
    read_collection,
    read_paper_queries,
    read_paper_scores,
    read_qrels,
    read_queries,
    read_stmc1,
    read_terms,
    require_paper_dir,
    shared_data_dir,
    source_from_files,
)
from jaxmech.data.records import DataError


def write_paper_files(folder, *, queries=None, terms=None, stmc1_rows=None, corpus=None):
    """A tiny set of files in the paper's formats (invented content)."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = queries or "11,how warm is lava\n12,why do owls hoot\n"
    (folder / PAPER_FILES["queries"]).write_text(queries)
    terms = terms or {"selected_term": {"11": "lava", "12": "owls"}, "pronoun": {"11": "it", "12": "they"}}
    (folder / PAPER_FILES["terms"]).write_text(json.dumps(terms))
    corpus = corpus or {"corpus": {
        "11": {"101": {"title": "", "text": "a Molten rock glows.", "query_term_orignal_ct": 0}},
        "12": {"201": {"title": "", "text": "a Night birds call.", "query_term_orignal_ct": 0}}}}
    (folder / PAPER_FILES["corpus"]).write_text(json.dumps(corpus))
    (folder / PAPER_FILES["scores"]).write_text(
        "qid,doc_id,og_score,p_score,score_diff,percent_change,og_rank,p_rank,change_in_rank\n"
        "11,101,1.0,2.0,1.0,100.0,1,1,0\n")
    stmc1_rows = stmc1_rows or ['11,lava,how warm is lava,"[\'magma\', \'rock\']",magma',
                                '12,owls,why do owls hoot,"[\'birds\']",birds']
    (folder / PAPER_FILES["stmc1"]).write_text("qid,term,context,sims,most_similar_synonym\n"
                                               + "\n".join(stmc1_rows) + "\n")
    (folder / PAPER_FILES["tfc2"]).write_text(
        'qid,query,doc\n11,how warm is lava,"""Lava is hot. Lava glows. Lava flows."""\n'
        '99,other query,"""Other text."""\n'
        '12,why do owls hoot,"""Owls hoot. Owls fly."""\n'
        '12,why do owls hoot,"""Owls hoot at night. Owls fly. Owls see."""\n')
    return folder


def test_paper_source_strips_filler_and_keeps_last_tfc2_row(tmp_path):
    src = load_paper_source(write_paper_files(tmp_path / "p"))
    assert src.docs == {"11": {"101": "Molten rock glows."}, "12": {"201": "Night birds call."}}
    assert src.related == {"11": "magma", "12": "birds"}
    assert src.answers["12"] == [("tfc2-12", '"Owls hoot at night. Owls fly. Owls see."')]
    assert set(src.answers) == {"11", "12"}  # rows of queries outside the selection are ignored


def test_paper_scores_are_parsed_into_typed_columns(tmp_path):
    cols = read_paper_scores(write_paper_files(tmp_path / "p") / PAPER_FILES["scores"])
    assert cols["qid"] == ["11"] and cols["p_score"].tolist() == [2.0] and cols["og_rank"].dtype.kind == "i"


def test_term_missing_from_query_is_an_error_naming_file_and_qid(tmp_path):
    folder = write_paper_files(tmp_path / "p", terms={"selected_term": {"11": "magma", "12": "owls"}})
    with pytest.raises(DataError, match=r"selected_terms.json: qid 11: selected term 'magma' is not a word"):
        load_paper_source(folder)


def test_unknown_qid_in_corpus_is_an_error(tmp_path):
    corpus = {"corpus": {"77": {"1": {"text": "a x"}}}}
    with pytest.raises(DataError, match=r"corpus.json: qid 77: unknown qid"):
        load_paper_source(write_paper_files(tmp_path / "p", corpus=corpus))


def test_unknown_qid_in_terms_is_an_error(tmp_path):
    terms = {"selected_term": {"11": "lava", "12": "owls", "13": "x"}}
    with pytest.raises(DataError, match=r"selected_terms.json: selected_term\[13\]: unknown qid"):
        load_paper_source(write_paper_files(tmp_path / "p", terms=terms))


def test_malformed_csv_row_names_file_and_line(tmp_path):
    folder = write_paper_files(tmp_path / "p", queries="11,how warm is lava\n12,why,do owls hoot\n")
    with pytest.raises(DataError, match=r"tfc1_add_qids_with_text.csv: line 2: expected 2 columns, got 3"):
        read_paper_queries(folder / PAPER_FILES["queries"])


def test_malformed_sims_list_names_line_and_qid(tmp_path):
    folder = write_paper_files(tmp_path / "p", stmc1_rows=["11,lava,how warm is lava,not-a-list,magma"])
    with pytest.raises(DataError, match=r"line 2 \(qid 11\): 'sims' is not a list literal"):
        read_stmc1(folder / PAPER_FILES["stmc1"])


def test_corpus_text_without_filler_is_rejected(tmp_path):
    corpus = {"corpus": {"11": {"101": {"text": "Molten rock."}}}}
    with pytest.raises(DataError, match="qid 11, doc 101: text does not start with the filler"):
        load_paper_source(write_paper_files(tmp_path / "p", corpus=corpus))


def test_malformed_json_names_line(tmp_path):
    folder = write_paper_files(tmp_path / "p")
    (folder / PAPER_FILES["corpus"]).write_text('{"corpus":\n  {"11": }')
    with pytest.raises(DataError, match=r"corpus.json: line 2: malformed JSON"):
        load_paper_source(folder)


def test_missing_paper_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing paper data file"):
        require_paper_dir(tmp_path)


def test_shared_dir_follows_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXMECH_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.delenv("JAXMECH_SHARED_DATA")
    assert shared_data_dir().parts[-3:] == ("shared", "data", "msmarco-diagnostic")


# -- MS MARCO-style -----------------------------------------------------------------------------------------
def write_msmarco(folder, *, qrels="q1 0 p1 1\nq1 0 p2 0\nq2 0 p3 2\n", jsonl=False):
    folder.mkdir(parents=True, exist_ok=True)
    if jsonl:
        (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in [
            {"_id": "p1", "title": "Owls", "text": "Owls hoot at night."},
            {"_id": "p2", "text": "Cats purr."}, {"_id": "p3", "text": "Lava is molten rock."}]) + "\n")
        (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "why do owls hoot"}) + "\n"
                                              + json.dumps({"_id": "q2", "text": "what is lava"}) + "\n")
    else:
        (folder / "collection.tsv").write_text("p1\tOwls hoot at night.\np2\tCats purr.\n"
                                               "p3\tLava is molten rock.\n")
        (folder / "queries.tsv").write_text("q1\twhy do owls hoot\nq2\twhat is lava\n")
    (folder / "qrels.txt").write_text(qrels)
    return folder


def test_tsv_and_jsonl_collections_read_alike(tmp_path):
    t, j = write_msmarco(tmp_path / "t"), write_msmarco(tmp_path / "j", jsonl=True)
    assert read_collection(t / "collection.tsv")["p2"] == "Cats purr."
    assert read_collection(j / "corpus.jsonl")["p2"] == "Cats purr."
    assert read_collection(j / "corpus.jsonl")["p1"] == "Owls Owls hoot at night."  # title prepended
    assert read_queries(t / "queries.tsv") == read_queries(j / "queries.jsonl")


def test_qrels_read_trec_and_beir_forms(tmp_path):
    trec = tmp_path / "a.txt"
    trec.write_text("q1 0 p1 1\nq1 0 p2 0\n")
    beir = tmp_path / "b.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\nq1\tp2\t0\n")
    assert read_qrels(trec) == read_qrels(beir) == {"q1": {"p1": 1, "p2": 0}}


def test_qrels_bad_row_names_line(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("q1 0 p1 1\nq1 p2\n")
    with pytest.raises(DataError, match=r"q.txt: line 2: expected 3 or 4 columns"):
        read_qrels(f)


def test_collection_bad_row_names_line(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text("p1\tok\np2\n")
    with pytest.raises(DataError, match=r"c.tsv: line 2: expected 2-3 tab-separated columns, got 1"):
        read_collection(f)


def test_source_from_files_keeps_relevant_docs_and_given_terms(tmp_path):
    folder = write_msmarco(tmp_path / "m")
    (folder / "terms.tsv").write_text("q1\towls\tbirds\tthey\nq2\tlava\n")
    src = source_from_files(folder / "collection.tsv", folder / "queries.tsv", folder / "qrels.txt",
                            terms=folder / "terms.tsv")
    assert src.docs == {"q1": {"p1": "Owls hoot at night."}, "q2": {"p3": "Lava is molten rock."}}
    assert src.terms == {"q1": "owls", "q2": "lava"} and src.related == {"q1": "birds"}
    assert src.pronouns == {"q1": "they"}


def test_source_from_files_unknown_doc_is_an_error(tmp_path):
    folder = write_msmarco(tmp_path / "m", qrels="q1 0 p9 1\n")
    with pytest.raises(DataError, match="qid q1, doc p9: unknown doc id"):
        source_from_files(folder / "collection.tsv", folder / "queries.tsv", folder / "qrels.txt")


def test_source_from_files_unknown_qid_in_terms_is_an_error(tmp_path):
    folder = write_msmarco(tmp_path / "m")
    (folder / "terms.tsv").write_text("q5\towls\n")
    with pytest.raises(DataError, match="terms.tsv: qid q5: unknown qid"):
        source_from_files(folder / "collection.tsv", folder / "queries.tsv", folder / "qrels.txt",
                          terms=folder / "terms.tsv")


def test_read_terms_rejects_repeated_qid(tmp_path):
    f = tmp_path / "t.tsv"
    f.write_text("q1\towls\nq1\thoot\n")
    with pytest.raises(DataError, match="line 2: qid q1 appears twice"):
        read_terms(f)


def test_pick_terms_is_seeded_and_picks_query_words():
    qs = {f"q{i}": "why do barn owls hoot loudly at night" for i in range(20)}
    a, b, c = pick_terms(qs, seed=1), pick_terms(qs, seed=1), pick_terms(qs, seed=2)
    assert a == b and a != c
    assert all(t in qs[q].split() and len(t) >= 3 for q, t in a.items())


# -- ir_datasets --------------------------------------------------------------------------------------------
def test_ir_datasets_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxmech\[ir\]'"):
        load_ir_datasets("msmarco-passage/dev/small")


def test_ir_datasets_source_from_a_fake_dataset(monkeypatch):
    Q = types.SimpleNamespace
    docs = {"d1": Q(doc_id="d1", text="Owls hoot."), "d2": Q(doc_id="d2", text="Lava glows."),
            "d3": Q(doc_id="d3", text="Unjudged.")}

    class Store:
        def get_many_iter(self, ids):
            return (docs[i] for i in ids)

    class Dataset:
        def queries_iter(self):
            return iter([Q(query_id="1", text="why do owls hoot"), Q(query_id="2", text="what is lava"),
                         Q(query_id="3", text="no judgements here")])

        def qrels_iter(self):
            return iter([Q(query_id="1", doc_id="d1", relevance=1), Q(query_id="2", doc_id="d2", relevance=2),
                         Q(query_id="2", doc_id="d3", relevance=0)])

        def docs_store(self):
            return Store()

    fake = types.ModuleType("ir_datasets")
    fake.load = lambda name: Dataset()
    monkeypatch.setitem(sys.modules, "ir_datasets", fake)
    src = load_ir_datasets("fake/set", terms={"1": "owls", "2": "lava"})
    assert src.name == "ir_datasets:fake/set"
    assert src.docs == {"1": {"d1": "Owls hoot."}, "2": {"d2": "Lava glows."}}
    assert src.terms == {"1": "owls", "2": "lava"}
    limited = load_ir_datasets("fake/set", max_queries=1)
    assert list(limited.queries) == ["1"] and limited.terms["1"] in {"why", "owls", "hoot"}
