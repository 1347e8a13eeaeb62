"""Adding a trainable LoRA to a base: through unsloth when the base came from unsloth, else through peft; and
turning gradient checkpointing on for training.

Gradient checkpointing (TrainOptions.gradient_checkpointing, on by default when training on CUDA) keeps only each
decoder layer's input in the forward and recomputes the layer in the backward: ~20-30% more compute for a fraction
of the activation memory (see medminds_hpc/memory.py). It is non-reentrant, which needs no `requires_grad` on the
embeddings' output and works with a frozen base under a LoRA. The Trainer turns it on from the training arguments
(training/engine.py), through `activation_checkpointing_enable` on the model it trains.
"""

from __future__ import annotations

from typing import Any, Sequence

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Mistral/Llama's
NON_REENTRANT = {"use_reentrant": False}


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def checkpointing_wanted(setting: str | bool, device: str | None = None) -> bool:
    """TrainOptions.gradient_checkpointing -> on or off: "auto" is on for training on CUDA, off on the CPU (where
    memory is plentiful and the recomputation would only slow tests down)."""
    if setting == "auto":
        if device is None:
            from medminds_hpc.modeling.gpu import cuda_available

            return cuda_available()
        return str(device).startswith("cuda")
    return bool(setting)


def transformers_model(model: Any) -> Any:
    """The transformers model inside `model` (a PeftModel, a LastTokenClassifier, or the model itself)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no transformers model to checkpoint")


def enable_gradient_checkpointing(model: Any, kwargs: dict[str, Any] | None = None) -> None:
    """Non-reentrant gradient checkpointing on every decoder layer of the transformers model inside `model`."""
    inner = transformers_model(model)
    options = {**NON_REENTRANT, **(kwargs or {})}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    inner.config.use_cache = False  # a KV cache is useless in training and incompatible with recomputation


def is_checkpointing(model: Any) -> bool:
    """True when some decoder layer of `model` recomputes its activations in the backward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def add_lora(model: Any, *, r: int, alpha: int, dropout: float, seed: int, targets: Sequence[str] | None = None,
             modules_to_save: Sequence[str] | None = None, task_type: str = "CAUSAL_LM", adapter_name: str = "default",
             gradient_checkpointing: bool | None = None) -> Any:
    """Wrap `model` with a fresh LoRA (seeded init) and return the PeftModel; only LoRA (and modules_to_save) train.

    targets: the projection names to adapt; default every projection of the model's decoder layers (arch.lora_targets:
    the seven of the paper on Mistral and Llama).
    gradient_checkpointing: True or False decides now (the only way to reach unsloth, which checkpoints its own
    way); None leaves it to the Trainer, which turns it on when the training arguments say so.
    """
    import torch

    from medminds_hpc.modeling.arch import lora_targets

    if targets is None:
        targets = lora_targets(model)
    torch.manual_seed(seed)
    if getattr(model, "_medminds_backend", None) == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(model, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                                                modules_to_save=list(modules_to_save) if modules_to_save else None,
                                                use_gradient_checkpointing=False if gradient_checkpointing is False else "unsloth",
                                                random_state=seed)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(gradient_checkpointing),
                                                gradient_checkpointing_kwargs=dict(NON_REENTRANT))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        modules_to_save=list(modules_to_save) if modules_to_save else None, task_type=task_type)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    if gradient_checkpointing:
        enable_gradient_checkpointing(peft_model)
    return peft_model
