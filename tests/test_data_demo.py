"""The packaged demo set: shipped with the package, well formed, and usable by every builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import jaxmech
from jaxmech.data.demo import demo_path, load_demo
from jaxmech.data.diagnostic import count_occurrences
from jaxmech.data.records import DataError


def test_demo_file_ships_inside_the_package():
    path = demo_path()
    assert path.is_file() and path.suffix == ".json"
    assert path.parent == Path(jaxmech.__file__).parent / "demo"


def test_demo_has_enough_queries_passages_and_answers():
    src = load_demo()
    assert len(src.queries) >= 30
    assert set(src.terms) == set(src.related) == set(src.pronouns) == set(src.docs) == set(src.queries)
    assert all(len(d) >= 3 for d in src.docs.values())
    assert all(len(a) >= 2 for a in src.answers.values())
    texts = [t for d in src.docs.values() for t in d.values()]
    texts += [t for a in src.answers.values() for _, t in a]
    assert len(set(texts)) == len(texts)


def test_demo_answers_are_five_sentences_starting_with_the_term():
    src = load_demo()
    for qid, answers in src.answers.items():
        term = src.terms[qid]
        assert src.related[qid].lower() != term.lower()
        assert src.pronouns[qid] in {"it", "he", "she", "they"}
        for _, text in answers:
            sentences = text.split(". ")
            assert len(sentences) == 5, (qid, text)
            assert all(s.lower().startswith(term) for s in sentences), (qid, text)
            assert count_occurrences(text, term) == 5, (qid, text)


def _demo_obj():
    return json.loads(demo_path().read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["queries"][1].pop("pronoun"), r"queries\[1\]: missing field\(s\) \['pronoun'\]"),
        (lambda o: o["queries"][2].update(qid=o["queries"][0]["qid"]), r"queries\[2\]: qid .* appears twice"),
        (lambda o: o["queries"][0].update(term="zzzz"), r"qid demo-q01: selected term 'zzzz' is not a"),
        (lambda o: o["queries"][0]["passages"].append({"doc_id": 3}), r"passages\[3\]: expected"),
        (lambda o: o.update(format="other"), "not a jaxmech.demo file"),
    ],
)
def test_malformed_demo_file_is_an_error_naming_the_record(tmp_path, mutate, message):
    obj = _demo_obj()
    mutate(obj)
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match=message) as e:
        load_demo(path)
    assert str(path) in str(e.value)


def test_malformed_demo_json_names_the_line(tmp_path):
    path = tmp_path / "demo.json"
    path.write_text('{"format": "jaxmech.demo",\n "queries": [,]}')
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        load_demo(path)
