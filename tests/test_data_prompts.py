"""Prompts with the REAL Mistral tokenizer: single-token letters at the answer position, under either padding."""

from __future__ import annotations

import pytest

from medminds_hpc.data import prompts, synthetic
from medminds_hpc.errors import UserError
from tests.helpers import MISTRAL_TOKENIZER as TOKENIZER

MISTRAL_LETTERS = [330, 365, 334, 384]


@pytest.fixture(scope="module")
def tok():
    if not TOKENIZER.exists():
        pytest.skip(f"real Mistral tokenizer absent ({TOKENIZER}); it ships with CI's ../shared/data")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


ROW = {"id": "x", "question": "Drug of choice for absence seizures?", "options": ["Phenytoin", "Ethosuximide", "Carbamazepine", "Lamotrigine"],
       "answer": 1, "subject": "Pharmacology", "topic": "", "choice_type": "single"}


PAPER_FIGURE_3 = """Question: Drug of choice for absence seizures?

Options:

(A) Phenytoin
(B) Ethosuximide
(C) Carbamazepine
(D) Lamotrigine

[INST] Solve this Multiple Choice Question and provide the correct option out of four options (A,B,C,D) as the answer. [/INST]

Answer:"""


def test_templates():
    paper = prompts.mcq_prompt(ROW, "paper")
    assert paper == PAPER_FIGURE_3  # the paper's Figure 3, without its trailing </s>
    assert prompts.mcq_prompt(ROW, "harness") == (
        "Question: Drug of choice for absence seizures?\nChoices:\nA. Phenytoin\nB. Ethosuximide\nC. Carbamazepine\nD. Lamotrigine\nAnswer:")
    assert prompts.mcq_parts(ROW) == (paper, " B")
    with pytest.raises(UserError, match="paper .* or harness"):
        prompts.mcq_prompt(ROW, "alpaca")


def test_letter_token_ids_are_the_real_mistral_ids(tok):
    assert prompts.letter_token_ids(tok) == MISTRAL_LETTERS


@pytest.mark.parametrize("template", ["paper", "harness"])
def test_answer_letter_is_one_token_at_the_answer_position(tok, template):
    prompt = prompts.mcq_prompt(ROW, template)
    for answer, letter_id in enumerate(MISTRAL_LETTERS):
        with_answer = prompts.encode_prompts(tok, [prompt + prompts.answer_text(answer)], max_length=512)
        alone = prompts.encode_prompts(tok, [prompt], max_length=512)
        assert with_answer["input_ids"].shape[1] == alone["input_ids"].shape[1] + 1
        assert int(with_answer["input_ids"][0, int(with_answer["last_index"][0])]) == letter_id
        assert with_answer["input_ids"][0, :-1].tolist() == alone["input_ids"][0].tolist()  # the prompt's tokens unchanged


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_index_under_padding(tok, side):
    rows = synthetic.medmcqa_rows(6, seed=0)
    texts = [prompts.mcq_prompt(r) for r in rows] + ["Answer:"]
    batch = prompts.encode_prompts(tok, texts, max_length=512, padding_side=side)
    ids, mask, last = batch["input_ids"], batch["attention_mask"], batch["last_index"]
    answer_colon = tok("Answer:", add_special_tokens=False)["input_ids"][-1]
    for i, text in enumerate(texts):
        n = len(tok(text)["input_ids"])
        assert int(mask[i].sum()) == n
        assert int(ids[i, int(last[i])]) == answer_colon  # every prompt ends in "Answer:" -> ':' at last_index
        assert int(mask[i, int(last[i])]) == 1
        if side == "left":
            assert int(last[i]) == ids.shape[1] - 1 and mask[i, : ids.shape[1] - n].sum() == 0
        else:
            assert int(last[i]) == n - 1 and mask[i, n:].sum() == 0
    assert int(mask[-1].sum()) < int(mask[0].sum())  # the batch really was padded


def test_long_prompts_are_cut_from_the_left(tok):
    long_row = {**ROW, "question": "word " * 600 + "Which drug?"}
    batch = prompts.encode_prompts(tok, [prompts.mcq_prompt(long_row)], max_length=64)
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 64 and ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]).endswith("[/INST]\n\nAnswer:")


def test_multi_token_letters_are_refused():
    class CharTokenizer:
        name_or_path = "chars"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def convert_ids_to_tokens(self, ids):
            return [chr(i) for i in ids]

    with pytest.raises(UserError, match="expected exactly one"):
        prompts.letter_token_ids(CharTokenizer())


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


def test_instruct_prompt_follows_the_bases_own_chat_template():
    """A base whose chat template is not the [INST] format (ChatML here, as SmolLM2 and Qwen) is trained in its own
    format; no template, or Mistral's, keeps the paper's text exactly."""
    import copy

    from medminds_hpc.modeling import tokenizer as tokenizers

    tok = tokenizers.load_tokenizer_from(tokenizers.BUILTIN)
    row = {"instruction": "Answer briefly.", "input": "What does insulin lower?", "output": "Blood glucose."}
    paper = ("[INST] Answer briefly. This is the question: What does insulin lower? [/INST]", " Blood glucose.")
    assert tok.chat_template is None and prompts.instruct_parts(row, tok) == paper == prompts.instruct_parts(row)
    mistral = copy.deepcopy(tok)
    mistral.chat_template = MISTRAL_CHAT
    assert prompts.instruct_parts(row, mistral) == paper
    chatml = copy.deepcopy(tok)
    chatml.chat_template = CHATML
    prompt, completion = prompts.instruct_parts(row, chatml)
    assert prompt == ("<|im_start|>user\nAnswer briefly. This is the question: What does insulin lower?<|im_end|>\n"
                      "<|im_start|>assistant\n") and completion == "Blood glucose."
    ex = prompts.encode_completion(chatml, prompt, completion, max_length=256)
    answer = [t for t in ex.labels if t != prompts.IGNORE_INDEX]
    assert chatml.decode(answer[:-1]).strip() == "Blood glucose." and answer[-1] == chatml.eos_token_id
