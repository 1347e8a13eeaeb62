"""Adding a trainable LoRA to a base: through unsloth when the base came from unsloth, else through peft."""

from __future__ import annotations

from typing import Any, Sequence

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def add_lora(model: Any, *, r: int, alpha: int, dropout: float, seed: int, targets: Sequence[str] = ALL_PROJECTIONS,
             modules_to_save: Sequence[str] | None = None, task_type: str = "CAUSAL_LM", adapter_name: str = "default") -> Any:
    """Wrap `model` with a fresh LoRA (seeded init) and return the PeftModel; only LoRA (and modules_to_save) train."""
    import torch

    torch.manual_seed(seed)
    if getattr(model, "_medminds_backend", None) == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(model, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                                                modules_to_save=list(modules_to_save) if modules_to_save else None,
                                                use_gradient_checkpointing="unsloth", random_state=seed)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        modules_to_save=list(modules_to_save) if modules_to_save else None, task_type=task_type)
    return get_peft_model(model, config, adapter_name=adapter_name)
