"""Medical instruct loader: save_to_disk and JSON-lines copies agree, MedQuAD pairs, prompts rebuilt from columns."""

from __future__ import annotations

import json

import pytest

from medminds_hpc.data import prompts
from medminds_hpc.data.instruct import MEDICAL_INSTRUCTION, load_instruct
from medminds_hpc.errors import UserError
from tests.helpers import SHARED_DATA as SHARED
from tests.helpers import MISTRAL_TOKENIZER

SAVED = SHARED / "medical_instruct" / "medical_mistral_instruct_dataset_short"
JSONL = SHARED / "medical_instruct" / "medical_mistral_instruct_short.jsonl"
MEDQUAD = SHARED / "medquad" / "medquad_qa_pairs_5k.jsonl"
needs_data = pytest.mark.skipif(not SAVED.exists(), reason=f"real instruct data absent ({SAVED.parent}); it ships with CI's ../shared/data")


@needs_data
def test_save_to_disk_and_jsonl_copies_give_the_same_rows():
    a = load_instruct(SAVED)["train"]
    b = load_instruct(JSONL)["train"]
    assert len(a) == 2000 and a.to_list() == b.to_list()
    assert a.column_names == ["id", "instruction", "input", "output", "source"]
    assert set(a["source"]) == {"mistral-instruct"} and len(set(a["id"])) == 2000


@needs_data
def test_prompt_is_rebuilt_from_columns_not_the_stored_prompt():
    raw = json.loads(JSONL.read_text().splitlines()[0])
    assert "\\n" in raw["prompt"]  # the stored prompt has a literal backslash-n
    row = load_instruct(JSONL)["train"][0]
    prompt, completion = prompts.instruct_parts(row)
    assert prompt == f"[INST] {raw['instruction']} This is the question: {raw['input']} [/INST]"
    assert completion == " " + raw["output"].strip()
    assert "\\n" not in prompt + completion
    assert prompts.instruct_text(row) == raw["prompt"].replace(" \\n ", " ")


@needs_data
def test_folder_layout_prefers_save_to_disk_and_adds_medquad():
    data = load_instruct(SHARED, sources=("mistral-instruct", "medquad"))
    ds = data["train"]
    assert data.report["rows_by_source"] == {"mistral-instruct": 2000, "medquad": 5000}
    assert len(set(ds["id"])) == len(ds)  # MedQuAD qids repeat; our ids do not
    assert any("ignored medical_mistral_instruct_short.jsonl" in n for n in data.report["notes"])
    medquad = ds.filter(lambda r: r["source"] == "medquad")
    assert set(medquad["instruction"]) == {MEDICAL_INSTRUCTION}
    assert not any("\n    " in o for o in medquad["output"][:200])  # XML indentation collapsed


def test_bad_rows_and_medquad_form(tmp_path):
    rows = [{"qid": f"q{i}", "question": f"What is {i}?", "answer": f"It is {i}."} for i in range(5)]
    rows[2]["answer"] = ""
    path = tmp_path / "medquad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"medquad.jsonl line 3 \(id 'q2'\): field 'answer': expected a non-empty string"):
        load_instruct(path)
    data = load_instruct(path, bad_rows="skip")
    assert len(data["train"]) == 4 and data.report["dropped"] == {"empty answer": 1}


def test_unknown_source_name():
    with pytest.raises(UserError, match="valid: mistral-instruct, wikidoc, medquad"):
        load_instruct("hub", sources=("pubmed",))


def test_synthetic_instruct_and_completion_labels():
    from transformers import AutoTokenizer

    ds = load_instruct("synthetic", synthetic_rows=10)["train"]
    assert len(ds) == 10 and set(ds["source"]) == {"synthetic"}
    tok_dir = MISTRAL_TOKENIZER
    if not tok_dir.exists():
        pytest.skip(f"real Mistral tokenizer absent ({tok_dir})")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    prompt, completion = prompts.instruct_parts(ds[0])
    enc = prompts.encode_completion(tok, prompt, completion, max_length=256)
    ids, labels = enc["input_ids"], enc["labels"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    first = next(i for i, lab in enumerate(labels) if lab != prompts.IGNORE_INDEX)
    assert tok.decode(ids[1:first]) == prompt
    assert tok.decode(ids[first:-1]).strip() == ds[0]["output"]
    short = prompts.encode_completion(tok, prompt, completion, max_length=16)
    assert len(short["input_ids"]) == 16 and short["input_ids"][0] == tok.bos_token_id
    assert short["labels"][-1] == tok.eos_token_id  # the completion survives, the prompt was cut from the left
