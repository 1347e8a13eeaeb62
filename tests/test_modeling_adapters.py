"""Two LoRA adapters by name on one tiny base: each changes the output differently; switching and disabling work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medminds_hpc.errors import UserError
from medminds_hpc.modeling.loading import (
    active_adapter,
    adapter_names,
    attach_adapters,
    load_model,
    set_active_adapter,
    use_adapter,
)

PROMPTS = ["Question: Which vitamin deficiency causes scurvy? Answer: C", "Answer:"]


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two saved LoRA adapters of the tiny model with random (non-zero) B, so each visibly changes the output."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(root / "home"))
        dirs = {}
        for seed, name, targets in ((1, "task", ["q_proj", "v_proj"]), (2, "domain", ["q_proj", "v_proj", "up_proj"])):
            base, _ = load_model("tiny")
            torch.manual_seed(seed)
            lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
            lora.save_pretrained(root / name)
            dirs[name] = root / name
    return dirs


@pytest.fixture
def home(adapter_dirs, monkeypatch):
    monkeypatch.setenv("MEDMINDS_HOME", str(adapter_dirs["task"].parent / "home"))


def run(model, tok) -> torch.Tensor:
    batch = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_two_named_adapters_on_one_base(adapter_dirs, home):
    from peft import PeftModel

    base, tok = load_model("tiny")
    base_out = run(base, tok)
    model = attach_adapters(base, {"task": adapter_dirs["task"], "domain": adapter_dirs["domain"]})
    assert adapter_names(model) == ["task", "domain"] and active_adapter(model) == "task"
    assert not any(p.requires_grad for p in model.parameters())  # attached frozen

    task = run(model, tok)
    set_active_adapter(model, "domain")
    domain = run(model, tok)
    set_active_adapter(model, None)
    assert active_adapter(model) is None
    off = run(model, tok)
    assert torch.allclose(off, base_out, atol=1e-6)  # None: the base model exactly
    for a, b in ((task, base_out), (domain, base_out), (task, domain)):
        assert (a - b).abs().max() > 1e-3

    # each named adapter reproduces that adapter loaded on its own
    alone_base, _ = load_model("tiny")
    alone = PeftModel.from_pretrained(alone_base, adapter_dirs["domain"])
    assert torch.allclose(run(alone, tok), domain, atol=1e-6)

    set_active_adapter(model, "task")
    assert torch.allclose(run(model, tok), task, atol=1e-6)
    with use_adapter(model, "domain"):
        assert active_adapter(model) == "domain" and torch.allclose(run(model, tok), domain, atol=1e-6)
    with use_adapter(model, None):
        assert torch.allclose(run(model, tok), base_out, atol=1e-6)
    assert active_adapter(model) == "task" and torch.allclose(run(model, tok), task, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())

    set_active_adapter(model, "domain", trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".domain." in n for n in trainable)


def test_adapter_errors_say_what_to_do(adapter_dirs, home, tmp_path):
    base, _ = load_model("tiny")
    with pytest.raises(UserError, match="adapter_config.json"):
        attach_adapters(base, {"task": tmp_path / "missing"})
    with pytest.raises(UserError, match="at least one"):
        attach_adapters(base, {})
    with pytest.raises(UserError, match="PeftModel"):
        set_active_adapter(base, "task")
    model = attach_adapters(base, {"task": adapter_dirs["task"]})
    with pytest.raises(UserError, match="attached: task"):
        set_active_adapter(model, "nope")
    with pytest.raises(UserError, match="already attached"):
        attach_adapters(model, {"task": adapter_dirs["task"]})
    model = attach_adapters(model, {"domain": adapter_dirs["domain"]})  # adding to an existing PeftModel
    assert adapter_names(model) == ["task", "domain"]
