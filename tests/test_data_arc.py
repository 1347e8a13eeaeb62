"""ARC loader: the real file (4 items with 3 options, 3 with 5), the Hub and release forms, bad rows."""

from __future__ import annotations

import json

import pytest

from medminds_hpc.data.arc import FEWER, keep_four, load_arc
from medminds_hpc.errors import UserError
from tests.helpers import SHARED_DATA as SHARED
from tests.helpers import write_jsonl

ARC_FILE = SHARED / "arc" / "arc_challenge_test.jsonl"
needs_arc = pytest.mark.skipif(not ARC_FILE.exists(), reason=f"real ARC file absent ({ARC_FILE}); it ships with CI's ../shared/data")


def local_item(id_: str, n: int, answer: str, question: str = "Which?") -> dict:
    labels = "ABCDE"[:n]
    return {"id": id_, "question": question, "options": [{"label": lab, "text": f"option {lab}"} for lab in labels], "answer": answer}


@needs_arc
def test_real_file_trims_5_option_items_and_drops_3_option_items():
    raw = [json.loads(line) for line in ARC_FILE.read_text().splitlines()]
    data = load_arc(ARC_FILE)
    ds = data["train"]
    assert len(ds) == 1172 - 4
    assert data.report["dropped"] == {FEWER: 4}
    assert data.report["trimmed_to_4"] == 3
    assert set(ds["subject"]) == {"arc"} and set(ds["choice_type"]) == {"single"}
    by_id = {r["id"]: r for r in raw}
    for row in ds:
        item = by_id[row["id"]]
        texts = [o["text"] for o in item["options"]]
        correct = texts[[o["label"] for o in item["options"]].index(item["answer"])]
        assert len(row["options"]) == 4
        assert row["options"][row["answer"]] == correct  # the answer survives trimming
        assert [texts.index(t) for t in row["options"]] == sorted(texts.index(t) for t in row["options"])  # order kept


def test_five_options_keep_answer_and_three_others_seeded(tmp_path):
    items = [local_item(f"q{i}", 5, "E" if i % 2 else "A") for i in range(20)]
    path = write_jsonl(tmp_path / "arc.jsonl", items)
    a = load_arc(path, seed=0)["train"]
    b = load_arc(path, seed=0)["train"]
    c = load_arc(path, seed=1)["train"]
    assert a.to_list() == b.to_list()
    assert a["options"] != c["options"]  # another seed picks other distractors
    for row, item in zip(a, items):
        assert row["options"][row["answer"]] == f"option {item['answer']}"
    assert keep_four(5, 4, 0, "x") == sorted(keep_four(5, 4, 0, "x")) and 4 in keep_four(5, 4, 0, "x")


def test_three_options_dropped_and_counted_even_when_strict(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", [local_item("a", 4, "B"), local_item("b", 3, "C")])
    data = load_arc(path)
    assert data["train"]["id"] == ["a"] and data.report["dropped"] == {FEWER: 1}


def test_hub_form_with_digit_labels_and_release_form(tmp_path):
    hub = [{"id": "h1", "question": "Q1?", "choices": {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
           {"id": "h2", "question": "Q2?", "choices": {"text": ["w", "x", "y", "z"], "label": ["A", "B", "C", "D"]}, "answerKey": "D"}]
    release = [{"id": "r1", "question": {"stem": "Q3?", "choices": [{"text": t, "label": lab} for t, lab in zip("wxyz", "ABCD")]}, "answerKey": "A"}]
    ds_hub = load_arc(write_jsonl(tmp_path / "hub.jsonl", hub))
    ds_rel = load_arc(write_jsonl(tmp_path / "release.jsonl", release))
    assert ds_hub["train"]["answer"] == [2, 3] and ds_hub.report["label_forms"] == {"digits": 1, "letters": 1}
    assert ds_rel["train"][0]["question"] == "Q3?" and ds_rel["train"][0]["answer"] == 0


@pytest.mark.parametrize("case,field", [
    ("missing field", "'answer'"),
    ("empty question", "'question'"),
    ("answer out of range", "'answer'"),
    ("non-string option", "'options[1].text'"),
    ("duplicate id", "'id'"),
])
def test_bad_rows(tmp_path, case, field):
    items = [local_item(f"q{i}", 4, "ABCD"[i % 4]) for i in range(6)]
    r = items[3]
    if case == "missing field":
        del r["answer"]
    elif case == "empty question":
        r["question"] = ""
    elif case == "answer out of range":
        r["answer"] = "F"
    elif case == "non-string option":
        r["options"][1]["text"] = 3.5
    else:
        r["id"] = "q0"
    path = write_jsonl(tmp_path / "arc.jsonl", items)
    with pytest.raises(UserError) as e:
        load_arc(path)
    assert f"{path} line 4 (id {r['id']!r}): field {field}: expected" in str(e.value)
    skipped = load_arc(path, bad_rows="skip")
    assert len(skipped["train"]) == 5 and sum(skipped.report["dropped"].values()) == 1


def test_synthetic_arc():
    ds = load_arc("synthetic", synthetic_rows=40)["train"]
    assert len(ds) == 40 and set(ds["subject"]) == {"arc"}
    assert sorted(ds["answer"]) == sorted([0, 1, 2, 3] * 10)
