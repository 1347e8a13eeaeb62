"""Prompt templates and the tokenisation every stage uses to find the answer position.

Multiple choice (a canonical MCQ row), chosen by name:
  paper    the paper's Figure 3: "Question: ...", "Options:", "(A) ..".."(D) ..", the [INST] instruction, "Answer:"
  harness  lm-evaluation-harness medmcqa: "Question: ...\\nChoices:\\nA. ...\\nAnswer:"
The answer is the continuation " A".." D" (leading space): one token each for Llama/Mistral tokenizers
(" A"=330, " B"=365, " C"=334, " D"=384 for Mistral), read at the LAST REAL token of the prompt.

Instruct SFT: "<s>[INST] {instruction} This is the question: {input} [/INST] {output}</s>", built from the columns
as (prompt, completion) so the loss can be put on the completion only; <s> and </s> are the tokenizer's BOS/EOS ids,
never text. An over-long example keeps its whole prompt and loses the end of its answer (as trl's SFTTrainer
truncates); one whose prompt alone leaves no room for a few answer tokens is dropped by the caller.

    from medminds_hpc.data import prompts
    batch = prompts.encode_prompts(tok, [prompts.mcq_prompt(r) for r in rows], max_length=256, padding_side="left")
    logits[torch.arange(len(rows)), batch["last_index"]][:, prompts.letter_token_ids(tok)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from medminds_hpc.data.schema import LETTERS, NUM_OPTIONS
from medminds_hpc.errors import UserError

if TYPE_CHECKING:
    import torch

Template = Literal["paper", "harness"]
TEMPLATES: tuple[str, ...] = ("paper", "harness")
# tokens of each template with a one-letter question and options, as Mistral's tokenizer counts them
TEMPLATE_TOKENS: dict[str, int] = {"paper": 72, "harness": 29}
PAPER_INSTRUCTION = ("[INST] Solve this Multiple Choice Question and provide the correct option out of four options "
                     "(A,B,C,D) as the answer. [/INST]")
OPTION_MARKS: dict[str, str] = {"paper": "({}) {}", "harness": "{}. {}"}  # "(A) text" vs "A. text"
IGNORE_INDEX = -100  # label of tokens that carry no loss (transformers' convention)
MIN_ANSWER_TOKENS = 8  # an SFT example must have room for this many answer tokens (or the whole answer) + EOS


def check_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UserError(f"unknown prompt template {name!r}; valid: paper (the paper's [INST] prompt) or harness (lm-evaluation-harness medmcqa)")
    return name  # type: ignore[return-value]


def _options(row: Mapping[str, Any], template: Template) -> str:
    options = row["options"]
    if len(options) != NUM_OPTIONS:
        raise ValueError(f"row {row.get('id')!r} has {len(options)} options, expected {NUM_OPTIONS}")
    return "\n".join(OPTION_MARKS[template].format(letter, text) for letter, text in zip(LETTERS, options))


def mcq_prompt(row: Mapping[str, Any], template: str = "paper") -> str:
    """The prompt for one canonical MCQ row, ending in "Answer:" (no trailing space: the letter brings it)."""
    if check_template(template) == "paper":
        return (f"Question: {row['question']}\n\nOptions:\n\n{_options(row, 'paper')}\n\n"
                f"{PAPER_INSTRUCTION}\n\nAnswer:")
    return f"Question: {row['question']}\nChoices:\n{_options(row, 'harness')}\nAnswer:"


def answer_text(answer: int) -> str:
    """The continuation for answer index 0-3: " A" .. " D"."""
    if not 0 <= answer < NUM_OPTIONS:
        raise ValueError(f"answer {answer} is not an option index 0-3")
    return " " + LETTERS[answer]


def mcq_parts(row: Mapping[str, Any], template: str = "paper") -> tuple[str, str]:
    """(prompt, completion) for SFT on multiple choice (the task expert): the loss goes on " C" only."""
    return mcq_prompt(row, template), answer_text(int(row["answer"]))


def instruct_parts(row: Mapping[str, Any], tokenizer: Any = None) -> tuple[str, str]:
    """(prompt, completion) of a canonical instruct row; BOS/EOS are added as ids by `encode_completion`.
    The paper's [INST] format, unless `tokenizer` brings a chat template of another format (Llama 3, Qwen,
    SmolLM2's ChatML): then the base learns its answers in its own format (`chat_prompt`)."""
    message = f"{row['instruction']} This is the question: {row['input']}"
    chat = chat_prompt(tokenizer, message)
    if chat is None:
        return f"[INST] {message} [/INST]", f" {row['output']}"
    return chat, str(row["output"])


def chat_prompt(tokenizer: Any, message: str) -> str | None:
    """`message` as a user turn followed by the assistant's opening, rendered by the tokenizer's own chat template;
    None without one, or when it is the [INST] format, which the paper's text already is. A leading BOS is left to
    `encode_completion`, which adds it as an id."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or "[INST]" in str(template):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text


def instruct_text(row: Mapping[str, Any]) -> str:
    """The whole SFT example as text, for display (what the original `prompt` column meant to hold)."""
    prompt, completion = instruct_parts(row)
    return f"<s>{prompt}{completion}</s>"


# tokenisation ------------------------------------------------------------------------------------------------
def pad_token_id(tokenizer: Any) -> int:
    """The pad id; Mistral has none, so EOS (masked out by attention_mask anyway)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def letter_token_ids(tokenizer: Any) -> list[int]:
    """The 4 token ids of " A".." D" as continuations of "Answer:"; a clear error if any is not a single token."""
    probe = "Answer:"
    base = tokenizer(probe, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for letter in LETTERS:
        full = tokenizer(probe + " " + letter, add_special_tokens=False)["input_ids"]
        extra = full[len(base):]
        if full[: len(base)] != base or len(extra) != 1:
            pieces = tokenizer.convert_ids_to_tokens(extra) if extra else []
            raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: ' {letter}' after 'Answer:' becomes "
                            f"{len(extra)} tokens {pieces}, expected exactly one; next-word scoring needs single-token "
                            f"letters (Llama/Mistral tokenizers have them)")
        ids.append(extra[0])
    if len(set(ids)) != NUM_OPTIONS:
        raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} maps ' A'..' D' to non-distinct ids {ids}")
    return ids


def _left_truncate(ids: list[int], max_length: int, bos: int | None) -> list[int]:
    """Keep the END of a long prompt ("Answer:" must survive) and its BOS."""
    if len(ids) <= max_length:
        return ids
    keep_bos = bos is not None and bool(ids) and ids[0] == bos
    return ([bos] if keep_bos else []) + ids[len(ids) - (max_length - int(keep_bos)):]


def encode_prompts(tokenizer: Any, texts: Sequence[str], max_length: int = 256, padding_side: str = "left",
                   add_special_tokens: bool = True) -> dict[str, "torch.Tensor"]:
    """Tokenise prompts into a padded batch: input_ids, attention_mask and last_index (position of the last real token).

    Long prompts are cut from the left (BOS kept) so the "Answer:" end survives. `last_index` is right for both
    padding sides: with left padding it is always the last column; with right padding it is length - 1.
    """
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    bos = tokenizer.bos_token_id if add_special_tokens else None
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    rows = [_left_truncate(list(ids), max_length, bos) for ids in encoded]
    for i, ids in enumerate(rows):
        if not ids:
            raise ValueError(f"prompt {i} tokenises to nothing; every prompt needs at least one token")
    width = max((len(r) for r in rows), default=0)
    pad = pad_token_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    last_index = torch.empty(len(rows), dtype=torch.long)
    for i, ids in enumerate(rows):
        n = len(ids)
        start = width - n if padding_side == "left" else 0
        input_ids[i, start:start + n] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, start:start + n] = 1
        last_index[i] = start + n - 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "last_index": last_index}


@dataclass(frozen=True)
class SFTExample:
    """One tokenised SFT example; `answer_cut` when max_length took the end of its answer (and its EOS)."""

    input_ids: list[int]
    labels: list[int]
    answer_cut: bool = False

    def features(self) -> dict[str, list[int]]:
        """The columns a Trainer reads: input_ids, attention_mask, labels."""
        return {"input_ids": self.input_ids, "attention_mask": [1] * len(self.input_ids), "labels": self.labels}


def _split_ids(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt and completion, split where the text splits (offsets on a fast tokenizer: no token is
    cut in two)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        n_prompt = sum(1 for start, _end in enc["offset_mapping"] if start < len(prompt))
        return ids[:n_prompt], ids[n_prompt:]
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return list(p), list(c)


def encode_completion(tokenizer: Any, prompt: str, completion: str, max_length: int = 256,
                      add_eos: bool = True, min_answer_tokens: int = MIN_ANSWER_TOKENS) -> SFTExample | None:
    """One SFT example: BOS + prompt + completion (+ EOS), labels = IGNORE_INDEX on BOS and the prompt.

    The whole prompt is always kept: training on an answer without its question teaches nothing. Too long, the
    completion is cut from the right (EOS goes with it: the model must not learn to stop mid-answer). None when the
    prompt alone leaves no room for `min_answer_tokens` answer tokens (or the whole, shorter answer) plus EOS; the
    caller drops and counts such rows.
    """
    prompt_ids, answer_ids = _split_ids(tokenizer, prompt, completion)
    head = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
    tail = [int(tokenizer.eos_token_id)] if add_eos and tokenizer.eos_token_id is not None else []
    room = max_length - len(head) - len(prompt_ids)
    if room < min(len(answer_ids), min_answer_tokens) + len(tail):
        return None
    cut = len(answer_ids) + len(tail) > room
    completion_ids = answer_ids[:room] if cut else answer_ids + tail
    return SFTExample(head + prompt_ids + completion_ids, [IGNORE_INDEX] * (len(head) + len(prompt_ids)) + completion_ids, cut)
