"""Precision choice, the load plan per machine (CUDA faked), and unsloth staying out of CPU processes."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medminds_hpc.errors import UserError
from medminds_hpc.modeling import gpu
from medminds_hpc.modeling.loading import load_model, plan_load, resolve_model

FAKE_UNSLOTH = '''
"""A stand-in for unsloth: records how FastLanguageModel.from_pretrained was called."""
CALLS = []
RESULT = None


class FastLanguageModel:
    @staticmethod
    def from_pretrained(**kwargs):
        CALLS.append(kwargs)
        return RESULT
'''


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


@pytest.fixture
def fake_unsloth(tmp_path, monkeypatch) -> Path:
    """Make `unsloth` importable (as if installed) without importing it."""
    pkg = tmp_path / "site" / "unsloth"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_UNSLOTH)
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    importlib.invalidate_caches()
    return pkg


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend to be on an Ampere GPU; `monkeypatch.setattr(gpu, "bf16_supported", ...)` makes it older."""
    monkeypatch.setattr(gpu, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu, "bf16_supported", lambda device=None: True)


def test_pick_precision_on_cpu():
    if gpu.cuda_available():
        pytest.skip("this test describes a CPU-only machine")
    assert gpu.pick_precision("auto") == "fp32"
    assert gpu.pick_precision("fp32") == "fp32" and gpu.pick_precision("bf16") == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        gpu.pick_precision("fp16")
    with pytest.raises(UserError, match="auto, fp32, bf16, fp16"):
        gpu.pick_precision("fp8")
    assert gpu.torch_dtype("bf16") is torch.bfloat16 and gpu.torch_dtype(torch.float16) is torch.float16
    assert gpu.precision_name(torch.float32) == "fp32"
    assert not gpu.unsloth_available()


def test_pick_precision_on_cuda(fake_cuda, monkeypatch):
    assert gpu.pick_precision("auto") == "bf16"
    assert gpu.pick_precision("auto", device="cpu") == "fp32"
    monkeypatch.setattr(gpu, "bf16_supported", lambda device=None: False)  # V100 / RTX8000
    assert gpu.pick_precision("auto") == "fp16" and gpu.pick_precision("fp16") == "fp16"
    with pytest.raises(UserError, match="use precision=fp16"):
        gpu.pick_precision("bf16")


def test_load_plan_on_cpu(fake_unsloth):
    if gpu.cuda_available():
        pytest.skip("this test describes a CPU-only machine")
    plan = plan_load(resolve_model("mistral-7b-instruct"))
    assert (plan.backend, plan.source, plan.device, plan.quantize_4bit, plan.precision) == (
        "transformers", "mistralai/Mistral-7B-Instruct-v0.2", "cpu", False, "fp32")
    assert plan_load(resolve_model("mistral-7b-instruct"), quantize="4bit").quantize_4bit  # bnb runs on CPU too
    tiny = plan_load(resolve_model("tiny"))
    assert tiny.local_only and not tiny.quantize_4bit and tiny.backend == "transformers"
    with pytest.raises(UserError, match="no CUDA GPU"):
        plan_load(resolve_model("tiny"), device="cuda")


def test_load_plan_on_cuda(fake_cuda, fake_unsloth, monkeypatch, tmp_path):
    paper = resolve_model("mistral-7b-instruct")
    plan = plan_load(paper)
    assert (plan.backend, plan.source, plan.device, plan.quantize_4bit, plan.precision, plan.local_only) == (
        "unsloth", "unsloth/mistral-7b-instruct-v0.2-bnb-4bit", "cuda", True, "bf16", False)
    assert plan_load(paper, quantize="none").source == "mistralai/Mistral-7B-Instruct-v0.2"
    cls = plan_load(paper, for_classification=True)  # unsloth loads causal LMs only
    assert (cls.backend, cls.source, cls.quantize_4bit) == ("transformers", "mistralai/Mistral-7B-Instruct-v0.2", True)
    bio = plan_load(resolve_model("biomistral-7b"))
    assert (bio.backend, bio.source, bio.quantize_4bit) == ("unsloth", "BioMistral/BioMistral-7B", True)
    assert not plan_load(resolve_model("tiny")).quantize_4bit  # auto never quantizes the test models
    assert plan_load(resolve_model("tiny"), quantize="4bit").quantize_4bit
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text('{"model_type": "mistral"}')
    lp = plan_load(resolve_model(str(local)))
    assert (lp.backend, lp.quantize_4bit, lp.local_only) == ("transformers", True, True)
    monkeypatch.setattr(gpu, "bf16_supported", lambda device=None: False)
    assert plan_load(paper).precision == "fp16"
    monkeypatch.setattr(gpu, "unsloth_available", lambda: False)
    plain = plan_load(paper)
    assert (plain.backend, plain.source, plain.quantize_4bit) == ("transformers", "mistralai/Mistral-7B-Instruct-v0.2", True)


def test_cpu_loads_never_import_unsloth(fake_unsloth, medminds_home, caplog):
    assert importlib.util.find_spec("unsloth") is not None  # "installed"
    model, tok = load_model("tiny")
    assert "unsloth" not in sys.modules
    with caplog.at_level("INFO", logger="medminds_hpc.modeling.loading"):
        with pytest.raises(UserError, match="huggingface-cli download mistralai/Mistral-7B-Instruct-v0.2"):
            load_model("mistral-7b-instruct")  # offline: a clear error, and still no unsloth
    assert "unsloth" not in sys.modules
    # the fallback is said: installed, not used, and why
    assert "unsloth is installed but not used for mistral-7b-instruct (device cpu, unsloth needs CUDA)" in caplog.text


def test_unsloth_path_on_cuda_is_called_as_planned(fake_cuda, fake_unsloth, medminds_home):
    model, tok = load_model("tiny", device="cpu")
    tok.pad_token = None  # unsloth hands back Mistral's tokenizer, which has no pad token
    import unsloth

    unsloth.RESULT = (model, tok)
    got, got_tok = load_model("mistral-7b-instruct")
    assert unsloth.CALLS == [{"model_name": "unsloth/mistral-7b-instruct-v0.2-bnb-4bit", "dtype": torch.bfloat16, "load_in_4bit": True}]
    assert got is model and got_tok.pad_token == got_tok.unk_token and got.config.pad_token_id == got_tok.pad_token_id


def test_importing_the_loader_imports_nothing_heavy():
    code = (
        "import sys, medminds_hpc.modeling.loading, medminds_hpc.modeling.gpu; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'unsloth') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
