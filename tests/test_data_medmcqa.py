"""MedMCQA loader: the real release sample, both cop conventions, every file format, and every bad-row case."""

from __future__ import annotations

import json

import pytest

from medminds_hpc.data import synthetic
from medminds_hpc.data.medmcqa import load_medmcqa, release_row
from medminds_hpc.errors import UserError
from tests.helpers import MEDMCQA_SAMPLE as SAMPLE
from tests.helpers import write_jsonl

needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason=f"real MedMCQA sample absent ({SAMPLE}); it ships with CI's ../shared/data")


def good_rows(n: int = 8, cop_base: int = 1) -> list[dict]:
    """Release-format rows with every answer 0-3 present (so the convention is detectable)."""
    return [release_row(r, cop_base) for r in synthetic.medmcqa_rows(n, seed=1, split="validation")]


@needs_sample
def test_real_sample_loads_as_release_convention():
    data = load_medmcqa(SAMPLE, splits=("validation",))
    ds = data["validation"]
    assert len(ds) == 970
    assert ds.column_names == ["id", "question", "options", "answer", "subject", "topic", "choice_type"]
    assert "exp" not in ds.column_names  # explanations leak the answer
    assert set(ds["answer"]) == {0, 1, 2, 3}
    assert all(len(o) == 4 for o in ds["options"])
    assert len(set(ds["subject"])) == 21
    convention = data.report["conventions"][str(SAMPLE)]
    assert convention.startswith("1-based") and "detected" in convention
    raw = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert ds["answer"] == [r["cop"] - 1 for r in raw]
    assert ds[0]["topic"] == ""  # topic_name null -> ""


@needs_sample
def test_both_conventions_give_the_same_canonical_answers(tmp_path):
    raw = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    zero = write_jsonl(tmp_path / "dev.jsonl", [{**r, "cop": r["cop"] - 1} for r in raw])
    a = load_medmcqa(SAMPLE, splits=("validation",))
    b = load_medmcqa(zero, splits=("validation",))
    assert a["validation"].to_list() == b["validation"].to_list()
    assert b.report["conventions"][str(zero)].startswith("0-based")


def test_ambiguous_cop_requires_cop_base(tmp_path):
    rows = [r for r in good_rows(12) if r["cop"] in (1, 2, 3)]  # 1-3 only: either convention fits
    path = write_jsonl(tmp_path / "dev.jsonl", rows)
    with pytest.raises(UserError, match=r"ambiguous.*--cop-base.*cop_base="):
        load_medmcqa(path, splits=("validation",))
    zero = load_medmcqa(path, splits=("validation",), cop_base=0)["validation"]["answer"]
    one = load_medmcqa(path, splits=("validation",), cop_base=1)["validation"]["answer"]
    assert zero == [r["cop"] for r in rows] and one == [r["cop"] - 1 for r in rows]


def test_cop_with_both_0_and_4_is_refused(tmp_path):
    rows = good_rows(8)
    rows[0]["cop"] = 0
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match="both 0 and 4"):
        load_medmcqa(path, splits=("train",))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json-array", "json-lines-as-.json"])
def test_other_file_formats(tmp_path, fmt):
    import pandas as pd

    rows = good_rows(8)
    rows[0]["opa"] = "5"  # a numeric-looking option must stay a string
    if fmt == "csv":
        path = tmp_path / "train.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "parquet":
        path = tmp_path / "train.parquet"
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "json-array":
        path = tmp_path / "train.json"
        path.write_text(json.dumps(rows))
    else:
        path = write_jsonl(tmp_path / "train.json", rows)
    ds = load_medmcqa(path, splits=("train",))["train"]
    assert ds["answer"] == [r["cop"] - 1 for r in rows]
    assert ds[0]["options"][0] == "5"


def test_synthetic_source_and_folder_layout(tmp_path):
    data = load_medmcqa("synthetic", synthetic_rows={"train": 40, "validation": 8})
    assert len(data["train"]) == 40 and len(data["validation"]) == 8
    folder = tmp_path / "medmcqa"
    folder.mkdir()
    write_jsonl(folder / "train.json", [release_row(r) for r in data["train"].to_list()])
    write_jsonl(folder / "dev.json", [release_row(r) for r in data["validation"].to_list()])
    write_jsonl(folder / "test.json", [{k: v for k, v in release_row(r).items() if k != "cop"} for r in synthetic.medmcqa_rows(4, split="test")])
    again = load_medmcqa(tmp_path)  # a folder with a medmcqa/ subfolder; test.json is not requested
    assert again["train"].to_list() == data["train"].to_list()
    assert again["validation"].to_list() == data["validation"].to_list()
    assert any("test split not requested" in n for n in again.report["notes"])
    test = load_medmcqa(tmp_path, splits=("test",))["test"]
    assert test["answer"] == [-1] * 4  # unlabelled


def test_hub_unreachable_is_an_actionable_error():
    with pytest.raises(UserError, match=r"openlifescienceai/medmcqa.*source=synthetic"):
        load_medmcqa("hub", splits=("validation",))


# bad rows ------------------------------------------------------------------------------------------------
def _break(rows: list[dict], case: str) -> tuple[list[dict], str, str]:
    """Break row 3 (line 3); return rows, the field the message must name, and the reason counted under skip."""
    r = rows[2]
    if case == "missing field":
        del r["subject_name"]
        return rows, "'subject_name'", "missing field 'subject_name'"
    if case == "empty question":
        r["question"] = "   "
        return rows, "'question'", "empty question"
    if case == "answer out of range":
        r["cop"] = 7
        return rows, "'cop'", "answer out of range"
    if case == "non-string option":
        r["opc"] = 42
        return rows, "'opc'", "non-string option"
    if case == "duplicate id":
        r["id"] = rows[0]["id"]
        return rows, "'id'", "duplicate id"
    raise AssertionError(case)


CASES = ["missing field", "empty question", "answer out of range", "non-string option", "duplicate id"]


@pytest.mark.parametrize("case", CASES)
def test_bad_row_strict_names_file_line_id_and_field(tmp_path, case):
    rows, field, _reason = _break(good_rows(8), case)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError) as e:
        load_medmcqa(path, splits=("train",))
    message = str(e.value)
    assert "\n" not in message
    assert f"{path} line 3 (id {rows[2]['id']!r})" in message
    assert f"field {field}" in message and "expected" in message
    assert "bad_rows=skip" in message


@pytest.mark.parametrize("case", CASES)
def test_bad_row_skip_drops_and_counts(tmp_path, case):
    rows, _field, reason = _break(good_rows(8), case)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    data = load_medmcqa(path, splits=("train",), bad_rows="skip")
    assert len(data["train"]) == 7
    assert rows[2]["question"] not in data["train"]["question"] or case == "duplicate id"
    assert data.report["dropped"] == {reason: 1}
    assert data.report["read"]["train"] == 8


def test_strict_lists_at_most_20_problems_in_one_line(tmp_path):
    rows = good_rows(40)
    for r in rows[5:35]:
        r["question"] = ""
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError) as e:
        load_medmcqa(path, splits=("train",))
    message = str(e.value)
    assert message.count("field 'question'") == 20 and "and 10 more" in message and "30 invalid row" in message


def test_unreadable_line_is_a_bad_row(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good_rows(8)) + "{not json\n")
    with pytest.raises(UserError, match=r"train.jsonl line 9"):
        load_medmcqa(path, splits=("train",))
    assert len(load_medmcqa(path, splits=("train",), bad_rows="skip")["train"]) == 8


def test_a_file_without_medmcqa_columns_is_one_line_naming_its_columns(tmp_path):
    import pandas as pd

    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": [f"q{i}" for i in range(500)], "label": [i % 4 for i in range(500)]}).to_parquet(path)
    for policy in ("strict", "skip"):  # skip would drop every row: the file is refused instead
        with pytest.raises(UserError) as e:
            load_medmcqa(path, splits=("train",), bad_rows=policy)
        message = str(e.value)
        assert message.startswith(f"{path}: not MedMCQA data: no row has id, question, opa, opb, opc, opd, cop, "
                                  "subject_name, choice_type; its columns are text, label; expected ")
        assert "row 1" not in message and len(message) < 500


def test_the_strict_error_names_the_skip_flag_of_the_command(tmp_path):
    from medminds_hpc.data.validate import CLI_SKIP_FLAG

    rows = good_rows(8)
    rows[2]["cop"] = 9
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match="fix them, or pass --bad-rows skip to drop and count them"):
        load_medmcqa(path, splits=("train",), skip_flag=CLI_SKIP_FLAG)
    with pytest.raises(UserError, match=r"fix them, or pass -o bad_rows=skip \(-o prepare.bad_rows=skip when"):
        load_medmcqa(path, splits=("train",))
