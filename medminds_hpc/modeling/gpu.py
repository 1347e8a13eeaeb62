"""What the machine can do: CUDA, bf16, unsloth — asked lazily so a CPU process never imports the GPU stack.

`pick_precision("auto")` is the one place that turns the user's `precision` option into a dtype name:
bf16 on Ampere and newer (A100, L4), fp16 on older CUDA cards (V100, RTX8000), fp32 on CPU.

    python -c "from medminds_hpc.modeling import gpu; print(gpu.cuda_available(), gpu.pick_precision('auto'))"
"""

from __future__ import annotations

import importlib.util
from typing import Any

from medminds_hpc.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cuda_available() -> bool:
    """True when torch sees a CUDA device (imports torch, nothing else)."""
    import torch

    return bool(torch.cuda.is_available())


def bf16_supported(device: str | None = None) -> bool:
    """bf16 matmuls need compute capability 8.0+ (Ampere); emulated bf16 on older cards is slow, so say no."""
    if not cuda_available():
        return False
    import torch

    index = torch.device(device).index if device and device.startswith("cuda") else None
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 8


def unsloth_installed() -> bool:
    """Checks without importing it: importing unsloth patches transformers globally (and raises without a GPU)."""
    return importlib.util.find_spec("unsloth") is not None


def unsloth_available() -> bool:
    """unsloth is installed AND usable here (it needs CUDA)."""
    return unsloth_installed() and cuda_available()


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _on_cuda(device: str | None) -> bool:
    if device is None:
        return cuda_available()
    return str(device).startswith("cuda")


def pick_precision(pref: str = "auto", device: str | None = None) -> str:
    """Resolve a precision preference to "fp32", "bf16" or "fp16" for `device` (default: CUDA if present).

    auto: bf16 on Ampere+, fp16 on older CUDA, fp32 on CPU. An explicit choice the hardware cannot do is an
    error rather than a silent downgrade, so a run's recorded precision is the one it used.
    """
    if pref not in PRECISIONS:
        raise UserError(f"precision {pref!r} is not one of {', '.join(PRECISIONS)}")
    cuda = _on_cuda(device)
    if pref == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if bf16_supported(device) else "fp16"
    if pref == "fp16" and not cuda:
        raise UserError("precision fp16 needs a CUDA GPU (CPU fp16 training is unsupported); use precision=fp32 or auto")
    if pref == "bf16" and cuda and not bf16_supported(device):
        raise UserError(
            "precision bf16 needs an Ampere or newer GPU (A100, L4); this card is older (V100/RTX8000?): "
            "use precision=fp16 or auto, or request an A100/L4 in the cluster profile"
        )
    return pref


def torch_dtype(precision: str | Any) -> Any:
    """"fp32"/"bf16"/"fp16" (or an already-resolved torch.dtype) -> torch.dtype."""
    import torch

    if isinstance(precision, torch.dtype):
        return precision
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
             "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    try:
        return table[str(precision)]
    except KeyError:
        raise UserError(f"dtype {precision!r} is not one of fp32, bf16, fp16 (or a torch.dtype)") from None


def precision_name(dtype: Any) -> str:
    """torch.dtype -> "fp32"/"bf16"/"fp16" (for recording what a run used)."""
    import torch

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    if dtype not in names:
        raise UserError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    return names[dtype]
