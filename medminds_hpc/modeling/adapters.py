"""Several LoRA adapters on ONE base model (peft named adapters), and switching between them.

Both experts are adapters of the same base, so the (4-bit) base is loaded once and each expert adds only its
LoRA weights: memory is about one model, not two.

    model = attach_adapters(base, {"task": run_a / "adapter", "domain": run_b / "adapter"})
    set_active_adapter(model, "task")      # forward passes use base + task LoRA
    set_active_adapter(model, None)        # base only (adapter layers disabled, weights kept)
    with use_adapter(model, "domain"):     # temporarily; the previous state comes back on exit
        ...

Adapters are attached frozen (requires_grad False) unless `trainable=True`; switching keeps them frozen unless
asked (peft's set_adapter would otherwise silently make the active adapter trainable).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from medminds_hpc.errors import UserError


def _check_adapter_dir(name: str, path: str | os.PathLike) -> str:
    p = Path(path).expanduser()
    if not (p / "adapter_config.json").exists():
        raise UserError(
            f"adapter {name!r}: {p} is not a saved LoRA adapter (no adapter_config.json). Point it at the adapter "
            "directory an expert run wrote (e.g. runs/<run-id>/adapter), or finish that run first"
        )
    return str(p)


def attach_adapters(model: Any, adapters: dict[str, str | os.PathLike], *, trainable: bool = False) -> Any:
    """Load every adapter onto `model` under its name and return the PeftModel; the first one is active.

    `model` may already be a PeftModel (more adapters are added to it). The base is modified in place, as peft does.
    """
    from peft import PeftModel

    if not adapters:
        raise UserError("attach_adapters needs at least one adapter: {name: directory}")
    checked = {name: _check_adapter_dir(name, path) for name, path in adapters.items()}
    items = list(checked.items())
    if isinstance(model, PeftModel):
        clash = sorted(set(checked) & set(model.peft_config))
        if clash:
            raise UserError(f"adapter name(s) {clash} already attached; choose other names")
        peft_model = model
    else:
        first_name, first_path = items.pop(0)
        peft_model = PeftModel.from_pretrained(model, first_path, adapter_name=first_name, is_trainable=trainable)
    for name, path in items:
        peft_model.load_adapter(path, adapter_name=name, is_trainable=trainable)
    first = next(iter(checked))
    set_active_adapter(peft_model, first, trainable=trainable)
    return peft_model


def adapter_names(model: Any) -> list[str]:
    """Names of the adapters attached to a PeftModel, in the order they were attached."""
    return list(getattr(model, "peft_config", {}).keys())


def active_adapter(model: Any) -> str | None:
    """The adapter forward passes use now, or None when adapters are disabled (base only)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            return None if module.disable_adapters else model.active_adapter
    return None


def set_active_adapter(model: Any, name: str | None, *, trainable: bool = False) -> None:
    """Route forward passes through base + adapter `name`, or through the base alone when `name` is None.

    None disables the adapter layers (the LoRA weights stay loaded); naming an adapter re-enables them. Only the
    active adapter can be trainable, and only when `trainable=True`.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise UserError("set_active_adapter needs the model returned by attach_adapters (a PeftModel)")
    if name is None:
        model.base_model.disable_adapter_layers()
        return
    if name not in model.peft_config:
        raise UserError(f"no adapter named {name!r}; attached: {', '.join(adapter_names(model))}")
    model.base_model.enable_adapter_layers()  # makes the active adapter trainable: set_adapter below decides
    model.set_adapter(name, inference_mode=not trainable)


@contextlib.contextmanager
def use_adapter(model: Any, name: str | None) -> Iterator[Any]:
    """Temporarily make `name` (or None: base only) active; restores the previous adapter and trainability."""
    previous = active_adapter(model)
    prev_trainable = previous is not None and any(
        p.requires_grad for n, p in model.named_parameters() if f".{previous}." in n
    )
    set_active_adapter(model, name)
    try:
        yield model
    finally:
        set_active_adapter(model, previous, trainable=prev_trainable)
