"""The architecture facts the stages need, read from the loaded model instead of assumed to be Mistral's.

Any transformers *ForCausalLM works as a base when these can be found: the decoder stack (`base_model`, e.g.
MistralModel, LlamaModel, Qwen2Model), its list of decoder layers (the ModuleList of the model's
`_no_split_modules` layer class, e.g. LlamaDecoderLayer), and the linear projections inside a decoder layer that
LoRA adapts (q/k/v/o/gate/up/down on Mistral, Llama, Qwen; whatever linear layers another family has). Where one
cannot be found the error names the model class and what was looked for.

    layers = arch.decoder_layers(lm)          # nn.ModuleList, replaceable in place (the mixture of experts does)
    targets = arch.lora_targets(lm)           # ("q_proj", ..., "down_proj") on Mistral and Llama
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medminds_hpc.errors import UserError

# Mistral's, Llama's and Qwen's projections, in the order the paper lists them (kept when a model has all of them)
STANDARD_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def unwrap(lm: Any) -> Any:
    """The transformers model under a PeftModel (its LoRA layers stay injected, so they still act)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def decoder_of(lm: Any) -> nn.Module:
    """The decoder stack (e.g. MistralModel) of a *ForCausalLM: hidden states without the vocabulary-wide LM head."""
    inner = unwrap(lm)
    prefix = getattr(inner, "base_model_prefix", "model") or "model"
    decoder = getattr(inner, prefix, None)
    if not isinstance(decoder, nn.Module) or decoder is inner:
        raise UserError(f"{type(inner).__name__} has no decoder stack under .{prefix}; expected a transformers *ForCausalLM")
    return decoder


def decoder_layer_class(lm: Any) -> set[str]:
    """The class name(s) of the model's decoder layer, as transformers declares them (e.g. {"LlamaDecoderLayer"})."""
    return set(getattr(unwrap(lm), "_no_split_modules", None) or ())


def decoder_layers(lm: Any) -> nn.ModuleList:
    """The decoder stack's list of layers: the ModuleList of the declared decoder-layer class, else the one
    ModuleList as long as config.num_hidden_layers."""
    decoder = decoder_of(lm)
    classes = decoder_layer_class(lm)
    lists = [m for m in decoder.children() if isinstance(m, nn.ModuleList) and len(m) > 0]
    found = [m for m in lists if type(m[0]).__name__ in classes]
    if not found:
        count = getattr(getattr(decoder, "config", None), "num_hidden_layers", None)
        found = [m for m in lists if len(m) == count]
    if len(found) != 1:
        raise UserError(f"{type(unwrap(lm)).__name__}: cannot tell which module list of {type(decoder).__name__} holds "
                        f"the decoder layers (looked for {', '.join(sorted(classes)) or 'a declared layer class'}); "
                        "the mixture of experts needs one list of decoder layers")
    return found[0]


def lora_targets(lm: Any) -> tuple[str, ...]:
    """The names of the linear projections in a decoder layer (what LoRA adapts on every layer): the standard seven
    when the model has them all, else every linear layer of the first decoder layer, by its own name."""
    layer = decoder_layers(lm)[0]
    names: list[str] = []
    wrapped: list[str] = []  # a peft LoRA layer counts by its own name, never by the linear layers inside it
    for name, module in layer.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        if _is_linear(getattr(module, "base_layer", None)):
            wrapped.append(name)
        elif not _is_linear(module):
            continue
        names.append(name.rsplit(".", 1)[-1])
    if set(STANDARD_PROJECTIONS) <= set(names):
        return STANDARD_PROJECTIONS
    unique = tuple(dict.fromkeys(names))
    if not unique:
        raise UserError(f"{type(unwrap(lm)).__name__}: its decoder layer {type(layer).__name__} has no linear layer for "
                        "LoRA to adapt")
    return unique



def _is_linear(module: Any) -> bool:
    """nn.Linear (bitsandbytes' Linear4bit is one) or transformers' Conv1D (GPT-2's transposed linear), both of which
    peft's LoRA adapts."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))
