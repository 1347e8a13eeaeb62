"""A 4-way answer head on the LAST REAL token of a causal LM (base, expert, or base + trainable LoRA).

The token is found from the attention mask, never at position -1: with right padding the last column of a short
row is a pad, which is exactly the original code's bug (its answer depended on what else was in the batch).
The head returns raw logits; softmax happens only inside the cross-entropy loss (the original code applied it
twice and compared one-hot vectors with class ids).

Initialisation: "random" (the paper) or "letters", the LM-head rows of " A".." D" with bias 0, so that before
training the head's logits ARE the next-word letter logits and training starts from the zero-shot prediction.

    clf = LastTokenClassifier(lora_model, head_init="letters", letter_ids=prompts.letter_token_ids(tok))
    out = clf(input_ids=ids, attention_mask=mask, labels=y)      # {"loss", "logits"}
    save_classifier(clf, run_dir / "artifacts" / "classifier")   # LoRA (peft format) + head.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from medminds_hpc.errors import UserError
from medminds_hpc.modeling.arch import decoder_of, unwrap  # noqa: F401  (part of this module's API)

HEAD_INITS: tuple[str, ...] = ("random", "letters")
NUM_CHOICES = 4
HEAD_FILE = "head.safetensors"
LORA_DIR = "lora"
INFO_FILE = "classifier.json"


# reading a causal LM ---------------------------------------------------------------------------------------------
def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token (mask 1), for right or left padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values
    if (last < 0).any():
        raise ValueError("a row of the batch has no real token (its attention mask is all zeros)")
    return last


def last_hidden(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, hidden): the final (normed) hidden state at `index`, by default each row's last real token."""
    if index is None:
        index = last_real_index(attention_mask)
    out = decoder_of(lm)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state[torch.arange(input_ids.shape[0], device=input_ids.device), index.to(input_ids.device)]


def letter_rows(lm: Any, letter_ids: Sequence[int]) -> torch.Tensor:
    """(4, hidden) the LM-head rows of the letter tokens, in fp32."""
    head = unwrap(lm).get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or not weight.is_floating_point():
        raise UserError("head_init='letters' needs an unquantized LM head (its weight is missing or packed); use head_init='random'")
    if getattr(head, "bias", None) is not None:
        raise UserError("head_init='letters' assumes an LM head without bias; use head_init='random'")
    return weight.detach()[torch.as_tensor(list(letter_ids), device=weight.device)].float().clone()


# the head --------------------------------------------------------------------------------------------------------
class LastTokenClassifier(nn.Module):
    """`lm` (its trainable LoRA, if any, inside) + a Linear(hidden, 4) `score` on the last real token."""

    def __init__(self, lm: Any, head_init: str = "random", letter_ids: Sequence[int] | None = None,
                 seed: int = 0, num_choices: int = NUM_CHOICES) -> None:
        super().__init__()
        if head_init not in HEAD_INITS:
            raise UserError(f"head_init={head_init!r}; valid: random (the paper) or letters (the LM-head rows of ' A'..' D')")
        self.lm = lm
        self.config = unwrap(lm).config  # what the Trainer and loggers look up; not a module
        hidden = int(self.config.hidden_size)
        device = next(unwrap(lm).parameters()).device
        self.score = nn.Linear(hidden, num_choices, device=device, dtype=torch.float32)
        self.head_init = head_init
        with torch.no_grad():
            if head_init == "letters":
                if letter_ids is None or len(letter_ids) != num_choices:
                    raise UserError(f"head_init='letters' needs the {num_choices} letter token ids (prompts.letter_token_ids)")
                self.score.weight.copy_(letter_rows(lm, letter_ids))
            else:  # nn.Linear's own init, from a private seeded generator (the global RNG is not touched)
                g = torch.Generator().manual_seed(seed)
                bound = 1.0 / hidden**0.5
                self.score.weight.copy_(torch.empty(num_choices, hidden).uniform_(-bound, bound, generator=g))
            self.score.bias.zero_()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **_: Any) -> None:
        """How the Trainer turns gradient checkpointing on (TrainOptions.gradient_checkpointing): in the LM inside."""
        from medminds_hpc.modeling.lora import enable_gradient_checkpointing

        enable_gradient_checkpointing(self.lm, activation_checkpointing_kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable  # the name transformers < 5 calls

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = last_hidden(self.lm, input_ids, attention_mask)
        logits = self.score(hidden.to(self.score.weight.dtype))
        if labels is None:
            return {"logits": logits}
        # cross-entropy on raw logits against integer class ids: the one and only softmax is in here
        loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long())
        return {"loss": loss, "logits": logits}


# saving and loading ----------------------------------------------------------------------------------------------
def trainable_adapter(lm: Any) -> str | None:
    """The name of the LoRA adapter that trains (the one to save), or None when `lm` has no trainable LoRA."""
    for name in getattr(lm, "peft_config", {}):
        if any(p.requires_grad for n, p in lm.named_parameters() if f".{name}." in n):
            return name
    return None


def save_classifier(model: LastTokenClassifier, directory: str | Path, info: dict[str, Any] | None = None) -> None:
    """Write the trainable parts only: the LoRA in peft format (lora/) and the head (head.safetensors)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = trainable_adapter(model.lm)
    if name is not None:
        model.lm.save_pretrained(str(directory / LORA_DIR), selected_adapters=[name])
    save_file({k: v.detach().cpu().contiguous() for k, v in model.score.state_dict().items()}, str(directory / HEAD_FILE))
    meta = {"head_init": model.head_init, "num_choices": model.score.out_features, "lora_adapter": name,
            "lora": LORA_DIR if name is not None else None, "head": HEAD_FILE, **(info or {})}
    (directory / INFO_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_classifier_state(model: LastTokenClassifier, directory: str | Path) -> None:
    """Put the head and LoRA weights saved by `save_classifier` into `model` (same base and LoRA layout)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / HEAD_FILE).exists():
        raise UserError(f"{directory} holds no saved classifier ({HEAD_FILE} missing); point at a run's artifacts/classifier")
    model.score.load_state_dict(load_file(str(directory / HEAD_FILE), device=str(model.score.weight.device)))
    name = trainable_adapter(model.lm)
    lora_file = directory / LORA_DIR / "adapter_model.safetensors"
    if name is not None:
        if not lora_file.exists():
            raise UserError(f"{directory} has no LoRA weights ({lora_file} missing) but this model has a trainable LoRA")
        result = set_peft_model_state_dict(model.lm, load_file(str(lora_file)), adapter_name=name)
        if getattr(result, "unexpected_keys", None):
            raise UserError(f"{lora_file} does not fit this model: unexpected {result.unexpected_keys[:5]}")
