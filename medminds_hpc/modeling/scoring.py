"""Scoring multiple-choice prompts: (N, 4) scores per question, by the next-word letters or by a trained head.

`letter_logprobs` reads all four letters from ONE forward pass per question (batched, right-padded, read at the
last real token), which is what every stage's validation uses. `loglik_letter_logprobs` is the standard
log-likelihood method (lm-evaluation-harness: score each " X" as a continuation, four sequences per question);
it exists to prove the one-pass method gives the same answers, at a quarter of the cost. `head_logits` runs a
modeling.heads.LastTokenClassifier over the same batches.

All three go through `score_prompts`: right padding (a real token never sees a pad, so a question's score does not
depend on its batch), longest prompts first (similar lengths share a batch, so little padding, and an out-of-memory
batch size fails on the first batch, not the last), results returned in the input order. The LM head is applied at
the one position each row needs, not at every position (`logits_at`): for a 32,000-word vocabulary that is most of
a small model's work and a (batch, length, 32,000) tensor of memory. In a job of several DDP ranks every rank calls
it: each scores rows[rank::world] and the scores are gathered back into input order, so every rank returns the
same array as one process would.

    python benchmarks/nextword_vs_loglik.py --questions 300
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medminds_hpc import distributed


Progress = Callable[[int, int], None]


def _batches(n: int, size: int):
    for start in range(0, n, max(1, size)):
        yield start, min(n, start + size)


def _model_device(model: Any) -> Any:
    return next(model.parameters()).device


def score_prompts(score: Callable[[Any, Any, Any], Any], tokenizer: Any, texts: Sequence[str], *, device: Any,
                  batch_size: int = 32, max_length: int = 512, progress: Progress | None = None) -> np.ndarray:
    """Stack `score(input_ids, attention_mask, last_index) -> (b, ...)` over right-padded batches of `texts`.

    Batches are formed longest-first and the rows put back in input order; `progress(done, total)` after each batch.
    Under DDP each rank scores its share and all ranks get every row (call it on every rank).
    """
    mine = distributed.my_share(len(texts))
    if len(mine) == len(texts):
        return _score_in_order(score, tokenizer, texts, device=device, batch_size=batch_size, max_length=max_length, progress=progress)
    part = _score_in_order(score, tokenizer, [texts[i] for i in mine], device=device, batch_size=batch_size, max_length=max_length,
                           progress=progress)
    return distributed.gather_rows(part, len(texts))


def _score_in_order(score: Callable[[Any, Any, Any], Any], tokenizer: Any, texts: Sequence[str], *, device: Any,
                    batch_size: int, max_length: int, progress: Progress | None) -> np.ndarray:
    import torch

    from medminds_hpc.data import prompts

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    parts: list[np.ndarray] = []
    with torch.no_grad():
        for start, end in _batches(len(order), batch_size):
            chunk = [texts[i] for i in order[start:end]]
            batch = prompts.encode_prompts(tokenizer, chunk, max_length=max_length, padding_side="right")
            values = score(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["last_index"].to(device))
            parts.append(values.float().cpu().numpy().astype(np.float64))
            if progress is not None:
                progress(end, len(order))
    if not parts:
        return np.zeros((0,), dtype=np.float64)
    stacked = np.concatenate(parts)
    out = np.empty_like(stacked)
    out[np.asarray(order)] = stacked
    return out


def _plain_lm_head(model: Any) -> Any | None:
    """The LM head when logits are exactly lm_head(final hidden state) (Mistral, Llama), else None."""
    from medminds_hpc.modeling.heads import unwrap

    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if head is not None and hasattr(inner, "model") else None


def logits_at(model: Any, input_ids: Any, attention_mask: Any, index: Any) -> Any:
    """(b, vocab) next-token logits at position `index` of each row, running the LM head on that position only."""
    import torch

    head = _plain_lm_head(model)
    if head is None:  # unknown architecture: the full forward, then pick the position
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[torch.arange(input_ids.shape[0], device=logits.device), index.to(logits.device)]
    from medminds_hpc.modeling.heads import last_hidden

    return head(last_hidden(model, input_ids, attention_mask, index))


def letter_logprobs(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], template: str = "paper",
                    batch_size: int = 32, max_length: int = 512, progress: Progress | None = None) -> np.ndarray:
    """(N, 4) log P(letter | prompt) over the whole vocabulary, one forward pass per question."""
    import torch

    from medminds_hpc.data import prompts

    device = _model_device(model)
    letters = torch.tensor(prompts.letter_token_ids(tokenizer), device=device)
    texts = [prompts.mcq_prompt(r, template) for r in rows]

    def score(ids: Any, mask: Any, last: Any) -> Any:
        return torch.log_softmax(logits_at(model, ids, mask, last).float(), dim=-1)[:, letters]

    out = score_prompts(score, tokenizer, texts, device=device, batch_size=batch_size, max_length=max_length, progress=progress)
    return out.reshape(len(texts), 4)


def loglik_letter_logprobs(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], template: str = "paper",
                           batch_size: int = 32, max_length: int = 512, progress: Progress | None = None) -> np.ndarray:
    """(N, 4) the same quantity by the four-sequence log-likelihood method: prompt + " X" scored as a continuation."""
    import torch

    from medminds_hpc.data import prompts

    device = _model_device(model)
    texts = [prompts.mcq_prompt(r, template) + prompts.answer_text(k) for r in rows for k in range(4)]

    def score(ids: Any, mask: Any, last: Any) -> Any:
        # the continuation token sits at `last`; the model predicts it at `last - 1`
        logp = torch.log_softmax(logits_at(model, ids, mask, last - 1).float(), dim=-1)
        return logp.gather(1, ids[torch.arange(ids.shape[0], device=ids.device), last][:, None])[:, 0]

    out = score_prompts(score, tokenizer, texts, device=device, batch_size=batch_size, max_length=max_length + 1, progress=progress)
    return out.reshape(len(rows), 4)


def head_logits(classifier: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], template: str = "paper",
                batch_size: int = 32, max_length: int = 512, progress: Progress | None = None) -> np.ndarray:
    """(N, 4) raw logits of a LastTokenClassifier (softmax them for probabilities; the argmax is the answer)."""
    from medminds_hpc.data import prompts

    texts = [prompts.mcq_prompt(r, template) for r in rows]

    def score(ids: Any, mask: Any, last: Any) -> Any:
        return classifier(input_ids=ids, attention_mask=mask)["logits"]

    out = score_prompts(score, tokenizer, texts, device=_model_device(classifier), batch_size=batch_size,
                        max_length=max_length, progress=progress)
    return out.reshape(len(texts), 4)
