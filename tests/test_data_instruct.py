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


@pytest.fixture(scope="module")
def mistral():
    if not MISTRAL_TOKENIZER.exists():
        pytest.skip(f"real Mistral tokenizer absent ({MISTRAL_TOKENIZER}); it ships with CI's ../shared/data")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MISTRAL_TOKENIZER))


def test_synthetic_instruct_and_completion_labels(mistral):
    tok = mistral
    ds = load_instruct("synthetic", synthetic_rows=10)["train"]
    assert len(ds) == 10 and set(ds["source"]) == {"synthetic"}
    prompt, completion = prompts.instruct_parts(ds[0])
    enc = prompts.encode_completion(tok, prompt, completion, max_length=256)
    ids, labels = enc.input_ids, enc.labels
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and not enc.answer_cut
    first = next(i for i, lab in enumerate(labels) if lab != prompts.IGNORE_INDEX)
    assert tok.decode(ids[1:first]) == prompt
    assert tok.decode(ids[first:-1]).strip() == ds[0]["output"]
    assert enc.features() == {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def test_long_answer_is_cut_from_the_right_and_the_prompt_kept(mistral):
    tok = mistral
    row = {"instruction": MEDICAL_INSTRUCTION, "input": "What causes gout?", "output": "Uric acid crystals. " * 40}
    prompt, completion = prompts.instruct_parts(row)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok(prompt + completion, add_special_tokens=False)["input_ids"][len(prompt_ids):]
    length = 1 + len(prompt_ids) + 10
    short = prompts.encode_completion(tok, prompt, completion, max_length=length)
    assert len(short.input_ids) == length and short.answer_cut
    assert short.input_ids == [tok.bos_token_id] + prompt_ids + answer_ids[:10]  # the question whole, the answer's start
    assert short.labels == [prompts.IGNORE_INDEX] * (1 + len(prompt_ids)) + answer_ids[:10]
    assert tok.eos_token_id not in short.input_ids  # a cut answer does not teach the model to stop there
    # the prompt alone fills max_length, or leaves fewer than MIN_ANSWER_TOKENS answer tokens + EOS: the row is dropped
    assert prompts.encode_completion(tok, prompt, completion, max_length=16) is None
    room = 1 + len(prompt_ids) + prompts.MIN_ANSWER_TOKENS + 1
    assert prompts.encode_completion(tok, prompt, completion, max_length=room - 1) is None
    assert prompts.encode_completion(tok, prompt, completion, max_length=room).answer_cut
    # a short answer needs room for itself and EOS only
    letter = prompts.encode_completion(tok, prompt, " B", max_length=1 + len(prompt_ids) + 2)
    assert letter is not None and letter.input_ids[-1] == tok.eos_token_id and not letter.answer_cut


REAL_INSTRUCT = {"medical_instruct": JSONL, "medquad": MEDQUAD}


def question_kept_counts(tok, path, max_length: int, limit: int | None = None) -> dict[str, int]:
    """Encode every row of a real file; assert each kept example holds its whole prompt; count what was cut."""
    rows = load_instruct(path, show_progress=False)["train"].to_list()[:limit]
    counts = {"rows": len(rows), "dropped": 0, "answer_cut": 0, "without_question": 0}
    for row in rows:
        prompt, completion = prompts.instruct_parts(row)
        ex = prompts.encode_completion(tok, prompt, completion, max_length=max_length)
        if ex is None:
            counts["dropped"] += 1
            continue
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert len(ex.input_ids) <= max_length
        counts["without_question"] += ex.input_ids[1:1 + len(prompt_ids)] != prompt_ids
        counts["answer_cut"] += ex.answer_cut
    return counts


@needs_data
@pytest.mark.parametrize("name", list(REAL_INSTRUCT))
def test_real_examples_keep_their_question(mistral, name):
    """The first 200 rows (where cutting from the left lost the whole question in 26-52% of rows)."""
    counts = question_kept_counts(mistral, REAL_INSTRUCT[name], max_length=256, limit=200)
    assert counts["without_question"] == 0 and counts["dropped"] == 0, counts
    assert counts["answer_cut"] > 20, counts  # long answers exist in both: the cut is on them


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("name,max_length,expected", [
    ("medical_instruct", 256, {"rows": 2000, "dropped": 0, "answer_cut": 647, "without_question": 0}),
    ("medquad", 256, {"rows": 5000, "dropped": 0, "answer_cut": 2963, "without_question": 0}),
    ("medical_instruct", 64, None),
])
def test_every_real_row_keeps_its_question(mistral, name, max_length, expected):
    counts = question_kept_counts(mistral, REAL_INSTRUCT[name], max_length=max_length)
    print(name, max_length, counts)
    if expected is not None:
        assert counts == expected
    else:  # the few questions too long for 64 tokens are dropped, never trained without their question
        assert counts["without_question"] == 0 and 0 < counts["dropped"] < 0.05 * counts["rows"], counts


def test_a_file_without_instruct_columns_is_one_line_naming_its_columns(tmp_path):
    path = tmp_path / "prompts.jsonl"  # the stored `prompt` alone: the columns it is rebuilt from are missing
    path.write_text("".join(json.dumps({"prompt": f"<s>[INST] q{i} [/INST] a{i}</s>"}) + "\n" for i in range(40)))
    with pytest.raises(UserError) as e:
        load_instruct(path)
    assert str(e.value) == (f"{path}: not medical instruct data: no row has question or Question, answer or Answer; its "
                            "columns are prompt; expected instruction, input, output (Shekswess mistral-instruct or "
                            "medalpaca wikidoc); or question or Question, answer or Answer (MedQuAD); or id, instruction, "
                            "input, output, source (the canonical layout `prepare` writes)")
