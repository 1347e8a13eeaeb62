"""Next-word scoring: one pass per question equals the four-sequence log-likelihood method (on real MedMCQA with
the real Mistral tokenizer), and a question's score does not depend on what else is in its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medminds_hpc.data import prompts, synthetic
from medminds_hpc.modeling.heads import last_real_index
from medminds_hpc.modeling.loading import load_model
from medminds_hpc.modeling.scoring import letter_logprobs, logits_at, loglik_letter_logprobs, score_prompts
from medminds_hpc.training.metrics import softmax as to_probs
from tests.helpers import MISTRAL_TOKENIZER
from tests.helpers import real_medmcqa_rows, require_shared_data

REAL_QUESTIONS = 200  # of the 970 in the sample: enough variety (lengths, subjects), a few seconds on CPU


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


@pytest.fixture
def tiny():
    return load_model("tiny")


def mixed_rows() -> list[dict]:
    """A short, an ordinary and a very long question: their batch has lots of padding for two of them."""
    short, middle, long = synthetic.medmcqa_rows(3, seed=5, split="validation")
    short = {**short, "question": "Gout?", "options": ["Allopurinol", "Timolol", "Adrenaline", "Fluoxetine"]}
    long = {**long, "question": " ".join([long["question"]] * 12)}
    return [long, middle, short]


@pytest.mark.slow
def test_one_pass_equals_four_sequence_loglik_on_real_medmcqa():
    require_shared_data(MISTRAL_TOKENIZER)
    rows = real_medmcqa_rows(REAL_QUESTIONS)
    model, tok = load_model("tiny", tokenizer=MISTRAL_TOKENIZER)
    assert prompts.letter_token_ids(tok) == [330, 365, 334, 384]  # the real Mistral letters
    one_pass = letter_logprobs(model, tok, rows, batch_size=16)
    four_seq = loglik_letter_logprobs(model, tok, rows, batch_size=64)
    assert one_pass.shape == four_seq.shape == (REAL_QUESTIONS, 4)
    assert (one_pass.argmax(1) == four_seq.argmax(1)).all()  # 100% agreement
    np.testing.assert_allclose(one_pass, four_seq, atol=1e-4, rtol=0)
    assert len(set(one_pass.argmax(1).tolist())) > 1  # not a degenerate constant answer


@pytest.mark.parametrize("template", ["paper", "harness"])
def test_nextword_is_padding_invariant(tiny, template):
    model, tok = tiny
    rows = mixed_rows()
    alone = np.concatenate([letter_logprobs(model, tok, [r], template, batch_size=1) for r in rows])
    together = letter_logprobs(model, tok, rows, template, batch_size=3)
    reordered = letter_logprobs(model, tok, rows[::-1], template, batch_size=3)[::-1]
    for got in (together, reordered):
        assert (got.argmax(1) == alone.argmax(1)).all()
        np.testing.assert_allclose(to_probs(got), to_probs(alone), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)


def test_reading_position_minus_one_would_not_be_invariant(tiny):
    """Guards the test above: with right padding, the original code's read at the last column differs for short rows."""
    model, tok = tiny
    texts = [prompts.mcq_prompt(r) for r in mixed_rows()]
    batch = prompts.encode_prompts(tok, texts, padding_side="right")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    right = logits[torch.arange(3), batch["last_index"]]
    wrong = logits[:, -1]
    assert torch.allclose(right[0], wrong[0])  # the longest row ends in the last column
    assert not torch.allclose(right[2], wrong[2], atol=1e-3)  # the short row's last column is a pad


def test_last_real_index_from_the_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_real_index(mask).tolist() == [2, 4, 4, 0]
    with pytest.raises(ValueError, match="no real token"):
        last_real_index(torch.zeros(1, 3, dtype=torch.long))


def test_logits_at_equals_the_full_forward(tiny):
    model, tok = tiny
    batch = prompts.encode_prompts(tok, [prompts.mcq_prompt(r) for r in mixed_rows()], padding_side="right")
    ids, mask, last = batch["input_ids"], batch["attention_mask"], batch["last_index"]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[torch.arange(3), last]
        torch.testing.assert_close(logits_at(model, ids, mask, last), full, atol=1e-5, rtol=1e-5)


def test_score_prompts_returns_rows_in_input_order(tiny):
    _, tok = tiny
    texts = ["a", "a much longer prompt than the others", "mid length prompt", "b"]
    seen: list[int] = []

    def score(ids, mask, last):  # each row's own length: tells whether rows come back where they started
        return (last + 1).float()[:, None]

    out = score_prompts(score, tok, texts, device="cpu", batch_size=2, progress=lambda done, total: seen.append(done))
    lengths = [len(prompts.encode_prompts(tok, [t])["input_ids"][0]) for t in texts]
    assert out[:, 0].tolist() == lengths
    assert seen == [2, 4]
