"""ARC loader: the real file (4 items with 3 options, 3 with 5), the Hub and release forms, bad rows."""

from __future__ import annotations

import json
import re

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
    assert data.report["parts"] == {"ARC-Challenge": {"test": {"read": 1172, "kept": 1168, "trimmed_to_4": 3, "fewer_than_4": 4, "invalid": 0}}}
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
    if case == "answer out of range":
        assert f"{path} line 4 (id 'q3'): answer 'F' is not one of the row's labels A, B, C, D" in str(e.value)
    else:
        assert f"{path} line 4 (id {r['id']!r}): field {field}: expected" in str(e.value)
    skipped = load_arc(path, bad_rows="skip")
    assert len(skipped["train"]) == 5 and sum(skipped.report["dropped"].values()) == 1


def test_a_bad_answer_label_shows_the_rows_own_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    hub = [hub_item(f"h{i}", 4, "ABCD"[i % 4]) for i in range(4)]
    hub[2]["answerKey"] = "E"
    path = tmp_path / "ARC-Challenge" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(hub), path)
    release = [release_item(f"r{i}", 3, "123"[i % 3]) for i in range(3)]
    release[1]["answerKey"] = "4"
    write_jsonl(tmp_path / "ARC-Easy-Dev.jsonl", release)
    with pytest.raises(UserError) as e:
        load_arc(tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert f"{path} row 3 (id 'h2'): answerKey 'E' is not one of the row's labels A, B, C, D" in message
    assert f"{tmp_path / 'ARC-Easy-Dev.jsonl'} line 2 (id 'r1'): answerKey '4' is not one of the row's labels 1, 2, 3" in message


def test_a_file_without_arc_columns_is_one_line_naming_its_columns(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", [{"prompt": f"q{i}", "target": "A"} for i in range(50)])
    for policy in ("strict", "skip"):
        with pytest.raises(UserError) as e:
            load_arc(path, bad_rows=policy)
        message = str(e.value)
        assert message.startswith(f"{path}: not ARC data: no row has id, question, options or choices, answer or answerKey; "
                                  "its columns are prompt, target; expected id, question, choices, answerKey")
        assert not re.search(r"(line|row) \d", message) and "\n" not in message


def test_synthetic_arc():
    ds = load_arc("synthetic", synthetic_rows=40)["train"]
    assert len(ds) == 40 and set(ds["subject"]) == {"arc"}
    assert sorted(ds["answer"]) == sorted([0, 1, 2, 3] * 10)


def hub_item(id_: str, n: int, answer: str) -> dict:
    labels = "ABCDE"[:n]
    return {"id": id_, "question": f"{id_}?", "choices": {"text": [f"{id_} {lab}" for lab in labels], "label": list(labels)}, "answerKey": answer}


def release_item(id_: str, n: int, answer: str) -> dict:
    choices = [{"text": f"{id_} {lab}", "label": lab} for lab in "1234"[:n]]
    return {"id": id_, "question": {"stem": f"{id_}?", "choices": choices}, "answerKey": answer}


def arc_folder(root) -> dict[str, list[dict]]:
    """Several small ARC files the way they come: the Hub's parquet per config and split, the original release's
    JSON lines (with the same questions as .csv beside them) and the shared folder's JSON lines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    hub = root / "arc" / "ARC-Challenge"
    hub.mkdir(parents=True)
    parts = {
        "ARC-Challenge/train": [hub_item(f"c-tr-{i}", 4, "ABCD"[i % 4]) for i in range(5)] + [hub_item("c-tr-5", 5, "E")],
        "ARC-Challenge/validation": [hub_item(f"c-va-{i}", 4, "B") for i in range(3)] + [hub_item("c-va-3", 3, "A")],
        "ARC-Challenge/test": [hub_item(f"c-te-{i}", 4, "C") for i in range(4)],
    }
    for key, items in parts.items():
        pq.write_table(pa.Table.from_pylist(items), hub / f"{key.split('/')[1]}-00000-of-00001.parquet")
    release = root / "arc" / "ARC-V1-Feb2018" / "ARC-Easy"
    release.mkdir(parents=True)
    parts["ARC-Easy/train"] = [release_item(f"e-tr-{i}", 4, "1234"[i % 4]) for i in range(6)]
    parts["ARC-Easy/validation"] = [release_item(f"e-va-{i}", 4, "2") for i in range(2)]
    write_jsonl(release / "ARC-Easy-Train.jsonl", parts["ARC-Easy/train"])
    (release / "ARC-Easy-Train.csv").write_text("questionID,originalQuestionID\nnot,read\n")  # same questions, other format
    write_jsonl(release / "ARC-Easy-Dev.jsonl", parts["ARC-Easy/validation"])
    parts["ARC-Easy/test"] = [local_item(f"e-te-{i}", 4, "D") for i in range(3)] + [local_item("e-te-3", 5, "A")]
    write_jsonl(root / "arc" / "arc_easy_test.jsonl", parts["ARC-Easy/test"])
    return parts


def test_a_local_folder_gives_every_config_and_split(tmp_path):
    parts = arc_folder(tmp_path)
    data = load_arc(tmp_path)
    ds, report = data["train"], data.report
    counted = {config: {split: c["kept"] for split, c in by_split.items()} for config, by_split in report["parts"].items()}
    assert counted == {"ARC-Challenge": {"train": 6, "validation": 3, "test": 4}, "ARC-Easy": {"train": 6, "validation": 2, "test": 4}}
    assert report["parts"]["ARC-Challenge"]["validation"] == {"read": 4, "kept": 3, "trimmed_to_4": 0, "fewer_than_4": 1, "invalid": 0}
    assert report["parts"]["ARC-Challenge"]["train"]["trimmed_to_4"] == 1 and report["parts"]["ARC-Easy"]["test"]["trimmed_to_4"] == 1
    assert report["trimmed_to_4"] == 2 and report["dropped"] == {FEWER: 1}
    assert len(ds) == sum(len(items) for items in parts.values()) - 1 == 25
    assert any("ignored ARC-Easy-Train.csv" in n for n in report["notes"])
    assert all(len(o) == 4 for o in ds["options"]) and set(ds["subject"]) == {"arc"}
    by_id = dict(zip(ds["id"], ds["answer"]))
    assert by_id["c-tr-5"] == 3 and by_id["e-tr-2"] == 2 and by_id["e-te-3"] == 0  # "E" trimmed into place, "3" -> C


def test_prepare_takes_all_of_arc_from_a_local_folder(tmp_path):
    from medminds_hpc.data.card import arc_parts
    from medminds_hpc.data.prepare import load_prepared, prepare
    from medminds_hpc.data.synthetic import medmcqa_rows

    arc_folder(tmp_path)
    (tmp_path / "medmcqa").mkdir()
    write_jsonl(tmp_path / "medmcqa" / "train.jsonl", medmcqa_rows(40))
    card = prepare("micro", source=str(tmp_path), say=lambda _m: None)
    assert card["splits"]["arc_train"]["rows"] == len(load_prepared("micro", "arc_train")) == 25
    assert arc_parts(card["arc"]) == ("ARC-Challenge train 6, validation 3, test 4; ARC-Easy train 6, validation 2, test 4")
    arc_inputs = [i["path"] for i in card["inputs"] if i["path"].startswith(str((tmp_path / "arc").resolve()))]
    assert len(arc_inputs) == 6 and not any(p.endswith(".csv") for p in arc_inputs)  # the ignored .csv is no input


def test_the_hub_path_reads_every_split_of_both_configs(monkeypatch):
    """What load_arc asks the Hub for (the Hub itself is out of reach here; the local tests above read real files)."""
    from medminds_hpc.data import readers
    from medminds_hpc.data.readers import Record

    asked = []

    def hub_records(repo, split, config=None, revision=None):
        asked.append((config, split))
        items = [hub_item(f"{config}-{split}-{i}", 4, "A") for i in range(2)]
        label = f"hub:{repo}/{config}[{split}]"
        return iter(Record(label, i, "row", d, split) for i, d in enumerate(items, 1)), {"path": label, "rows": 2}

    monkeypatch.setattr(readers, "hub_records", hub_records)
    data = load_arc("hub")
    assert asked == [(c, s) for c in ("ARC-Challenge", "ARC-Easy") for s in ("train", "validation", "test")]
    assert len(data["train"]) == 12 and {s: c["kept"] for s, c in data.report["parts"]["ARC-Easy"].items()} == {"train": 2, "validation": 2, "test": 2}
