"""GPU memory: the planner's estimate against the measured peak of the tiny models, gradient checkpointing (on by
default on CUDA, on request on the CPU, with unchanged gradients), and `submit` printing the estimate and refusing,
before anything is written, a run that cannot fit its GPU."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medminds_hpc import experiments, memory, submit
from medminds_hpc.errors import UserError
from medminds_hpc.modeling.lora import checkpointing_wanted, enable_gradient_checkpointing, is_checkpointing
from medminds_hpc.training.options import TrainOptions
from medminds_hpc.training.peak_memory import forward_memory, train_step_memory
from tests.helpers import ROOT, quiet, run_cli, run_expert, slurm_options, small_expert, submit_options, tiny_lora, tiny_loss

TOLERANCE = 0.25


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def workload(model, head: str, batch: int, length: int, checkpointing: bool, dropout: float = 0.0, **kw) -> memory.Workload:
    """The planner's description of what the test measures: fp32 on the CPU."""
    shape = memory.ModelShape.from_config(model.config.to_dict())
    return memory.Workload(shape, batch, length, loss=head, checkpointing=checkpointing, lora_r=16, lora_dropout=dropout,
                           head_params=(shape.hidden + 1) * 4 if head == "classes" else 0, device="cpu", **kw)


def measure(model, head: str, batch: int, length: int, checkpointing: bool):
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return train_step_memory(model, optimizer, tiny_loss(model, head, batch, length))


# the estimate against measured peaks ------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpointing", [False, True], ids=["keep", "checkpoint"])
@pytest.mark.parametrize("name,head,batch,length,dropout", [
    ("tiny", "lm", 4, 32, 0.0),
    ("tiny", "lm", 8, 64, 0.0),
    ("tiny", "classes", 8, 64, 0.05),
    ("tiny-4layer", "lm", 4, 64, 0.0),
    ("tiny-4layer", "classes", 8, 128, 0.0),
    ("tiny-4layer", "classes", 4, 64, 0.05),
])
def test_estimate_is_within_25_percent_of_the_measured_peak(name, head, batch, length, dropout, checkpointing):
    model = tiny_lora(name, head=head, dropout=dropout)
    got = measure(model, head, batch, length, checkpointing)
    est = memory.estimate(workload(model, head, batch, length, checkpointing, dropout))
    assert est.context == 0 and est.total == pytest.approx(est.allocated * 1.1, rel=1e-6)  # no CUDA context on the CPU
    assert abs(est.allocated / got.peak - 1) < TOLERANCE, (est, got)
    # what is held between steps: the weights, LoRA/head weights and AdamW's moments (the gradients come and go)
    assert abs((est.weights + est.trainable * 12 / 16) / got.resident - 1) < 0.05


def test_checkpointing_cuts_the_measured_peak_as_the_estimate_says():
    measured, estimated = {}, {}
    for checkpointing in (False, True):
        model = tiny_lora("tiny-4layer", head="classes")
        measured[checkpointing] = measure(model, "classes", 4, 128, checkpointing).transient
        estimated[checkpointing] = memory.estimate(workload(model, "classes", 4, 128, checkpointing)).activations
    assert measured[True] < 0.6 * measured[False]
    assert abs(estimated[True] / estimated[False] - measured[True] / measured[False]) < 0.1


@pytest.mark.parametrize("name,batch,length", [("tiny", 8, 64), ("tiny-4layer", 8, 128)])
def test_scoring_estimate_is_within_25_percent_of_the_measured_peak(name, batch, length):
    from medminds_hpc.modeling import tiny, tokenizer
    from medminds_hpc.modeling.loading import REGISTRY
    from medminds_hpc.modeling.scoring import logits_at

    base = tiny.build(REGISTRY[name].tiny, tokenizer.load_tokenizer_from(tokenizer.BUILTIN))
    ids = torch.randint(4, base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    got = forward_memory(base, lambda m: logits_at(m, ids, mask, mask.sum(1) - 1))
    shape = memory.ModelShape.from_config(base.config.to_dict())
    est = memory.estimate(memory.Workload(shape, train=False, eval_batch=batch, eval_len=length, device="cpu"))
    assert abs(est.allocated / got.peak - 1) < TOLERANCE, (est, got)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True], ids=["keep", "checkpoint"])
def test_estimate_of_a_4bit_base_under_bf16_autocast_is_within_25_percent(checkpointing):
    """The GPU's configuration, on the CPU: bitsandbytes 4-bit weights, an fp32 residual stream after k-bit
    preparation, bf16 autocast (the Trainer's mixed precision)."""
    from medminds_hpc.modeling.loading import load_model

    base, _ = load_model("tiny-4layer", quantize="4bit", dtype="bf16")
    model = tiny_lora(head="classes", base=base)
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    loss = tiny_loss(model, "classes", 8, 128)

    def autocast_loss(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss(m)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    got = train_step_memory(model, optimizer, autocast_loss)
    est = memory.estimate(workload(model, "classes", 8, 128, checkpointing, quantized=True, act_bytes=2))
    assert abs(est.allocated / got.peak - 1) < TOLERANCE, (est, got)


# gradient checkpointing ---------------------------------------------------------------------------------------
def test_checkpointing_is_on_by_default_on_cuda_only():
    assert checkpointing_wanted("auto", "cuda") and checkpointing_wanted("auto", "cuda:1")
    assert not checkpointing_wanted("auto", "cpu")
    assert not checkpointing_wanted(False, "cuda") and checkpointing_wanted(True, "cpu")


def test_the_option_takes_auto_true_false_and_nothing_else():
    exp = experiments.load("expert-task")
    assert experiments.resolve(exp, "micro").config.gradient_checkpointing == "auto"
    assert experiments.resolve(exp, "micro", overrides=["gradient_checkpointing=false"]).config.gradient_checkpointing is False
    assert experiments.resolve(exp, "micro", overrides=["gradient_checkpointing=true"]).config.gradient_checkpointing is True
    with pytest.raises(UserError, match=r"^experiment expert-task: -o gradient_checkpointing: expected 'auto' or bool, got 'maybe'"):
        experiments.resolve(exp, "micro", overrides=["gradient_checkpointing=maybe"])


def test_bad_option_value_exits_2_with_one_line(medminds_home):
    r = run_cli("submit", "expert-task", "-d", "micro", "--executor", "local", "-o", "gradient_checkpointing=sometimes")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "gradient_checkpointing: expected 'auto' or bool" in r.stderr
    assert not (medminds_home / "runs").exists()


def test_training_arguments_carry_the_setting(tmp_path):
    from transformers import TrainingArguments
    from trl import SFTConfig

    from medminds_hpc.compat import checkpointing_field
    from medminds_hpc.training.engine import training_arguments

    flag = checkpointing_field(TrainingArguments)  # the name differs between transformers releases
    assert not getattr(training_arguments(TrainOptions(), tmp_path), flag)  # auto on the CPU: off
    # trl turns it on by default; the option decides
    assert not getattr(training_arguments(TrainOptions(), tmp_path, SFTConfig), checkpointing_field(SFTConfig))
    on = training_arguments(TrainOptions(gradient_checkpointing=True), tmp_path)
    assert getattr(on, flag) and getattr(on, f"{flag}_kwargs") == {"use_reentrant": False}


def gradients(model, loss) -> dict[str, torch.Tensor]:
    model.train()
    loss(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("head", ["lm", "classes"])
def test_checkpointing_on_request_on_the_cpu_gives_the_same_gradients(head):
    plain, checkpointed = tiny_lora("tiny-4layer", head=head), tiny_lora("tiny-4layer", head=head)
    for model in (plain, checkpointed):  # lora_B starts at zero, which would leave lora_A without a gradient
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.1)
    enable_gradient_checkpointing(checkpointed)
    assert is_checkpointing(checkpointed) and not is_checkpointing(plain)
    loss = tiny_loss(plain, head, 4, 32)
    expected, got = gradients(plain, loss), gradients(checkpointed, loss)
    assert expected.keys() == got.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
        assert got[name].abs().sum() > 0, name


@pytest.mark.slow
@pytest.mark.parametrize("head", ["lm", "classes"])
def test_the_trainer_turns_it_on_from_the_options_and_trains_alike(head, tmp_path):
    """Through the training engine's arguments: the peft model (expert) and the classifier head on it both get
    checkpointed, and one step changes the weights exactly as without."""
    import datasets
    from transformers import Trainer

    from medminds_hpc.training.engine import trainable_state, training_arguments

    after = {}
    for on in (False, True):
        model = tiny_lora("tiny", head=head)
        loss = tiny_loss(model, head, 4, 32)

        class OneBatch(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                return loss(model)

        options = TrainOptions(gradient_checkpointing=on, batch_size=4, max_steps=2, learning_rate=1e-2, warmup_steps=0)
        args = training_arguments(options, tmp_path / str(on), save_strategy="no")
        OneBatch(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"x": [0] * 8})).train()
        assert is_checkpointing(model) is on
        after[on] = trainable_state(model)
    for name, value in after[False].items():
        torch.testing.assert_close(after[True][name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_expert_stage_checkpoints_on_request_and_ends_with_the_same_adapter(medminds_home, monkeypatch):
    """The real stage (trl's SFTTrainer through the engine): -o gradient_checkpointing=true reaches the model and
    changes nothing but memory."""
    from safetensors.torch import load_file
    from transformers import PreTrainedModel

    from medminds_hpc.data.prepare import prepare

    prepare("micro", source="synthetic", say=quiet)
    calls = []
    enable = PreTrainedModel.activation_checkpointing_enable
    monkeypatch.setattr(PreTrainedModel, "activation_checkpointing_enable", lambda self, *a, **kw: (calls.append(kw), enable(self, *a, **kw))[1])
    adapters = {}
    for on in (False, True):
        run_id = f"expert-task-micro-0000000{int(on)}"
        before = len(calls)
        run_expert(run_id, small_expert(gradient_checkpointing=on, max_steps=3, max_train_rows=48, eval_rows=8, holdout_rows=8))
        adapters[on] = load_file(str(medminds_home / "runs" / run_id / "artifacts" / "adapter" / "adapter_model.safetensors"))
        assert (len(calls) > before) is on
    assert all(kw["activation_checkpointing_kwargs"] == {"use_reentrant": False} for kw in calls)
    for name, value in adapters[False].items():
        torch.testing.assert_close(adapters[True][name], value, rtol=1e-4, atol=1e-6)


def test_add_lora_can_decide_on_the_spot():
    assert is_checkpointing(tiny_lora_with(gradient_checkpointing=True))
    assert not is_checkpointing(tiny_lora_with(gradient_checkpointing=None))  # left to the Trainer


def tiny_lora_with(**kw):
    from medminds_hpc.modeling import tiny, tokenizer
    from medminds_hpc.modeling.lora import add_lora

    base = tiny.build(tiny.TINY, tokenizer.load_tokenizer_from(tokenizer.BUILTIN))
    return add_lora(base, r=4, alpha=8, dropout=0.0, seed=0, **kw)


# the planner on runs ------------------------------------------------------------------------------------------
def planned(name: str, cluster: str = "unity", dataset: str = "micro", **kw) -> dict[str, submit.PlannedRun]:
    return {p.name: p for p in submit.plan(name, submit_options(cluster=cluster, dataset=dataset, **kw))}


def test_paper_runs_fit_a_v100_with_checkpointing_and_not_without(medminds_home):
    on = planned("baseline-classifier-task")
    off = planned("baseline-classifier-task", overrides=["gradient_checkpointing=false", "expert-task.gradient_checkpointing=false"])
    for name in ("expert-task", "baseline-classifier-task"):
        assert on[name].resources.gpu == "v100" and on[name].memory.capacity_gib == 32
        assert on[name].memory.fits and on[name].memory.estimate.workload.checkpointing
        assert not off[name].memory.fits
    classifier = on["baseline-classifier-task"].memory.estimate.workload
    assert (classifier.micro_batch, classifier.seq_len, classifier.loss, classifier.quantized) == (32, 256, "classes", True)
    expert = on["expert-task"].memory.estimate.workload
    assert (expert.micro_batch, expert.seq_len, expert.loss, expert.optimizer) == (16, 256, "lm", "adamw_8bit")
    assert on["prepare"].memory is None  # a CPU job
    assert not (medminds_home / "runs").exists()


def test_mistral_7b_layer_matches_the_design_notes():
    """~300 KiB per token and layer without checkpointing (4-bit, bf16, r=16), 16 KiB (an fp32 input) with it."""
    w = memory.workload_for("expert", {"batch_size": 16, "max_length": 256}, "mistral-7b-instruct")
    assert 280 * 1024 < memory.layer_saved(w) < 320 * 1024
    est = memory.estimate(w)
    assert 3.5 * memory.GiB < est.weights < 5 * memory.GiB  # nf4 linear layers + fp32 embeddings and LM head
    assert 35 * memory.GiB < memory.estimate(dataclasses.replace(w, checkpointing=False)).activations < 45 * memory.GiB


def test_dry_run_prints_the_estimate_and_writes_nothing(medminds_home):
    said = []
    submit.submit("expert-task", submit_options(dry_run=True), say=said.append)
    lines = [s for s in said if s.startswith("# GPU memory:")]
    assert len(lines) == 1  # the expert; prepare is a CPU job
    assert "weights 4.3" in lines[0] and "gradient checkpointing on" in lines[0] and "a v100 has 32 GiB: fits" in lines[0]
    assert not (medminds_home / "runs").exists()


@pytest.fixture
def small_gpu_profile(tmp_path) -> Path:
    """The dev profile with a 1 GiB v100 (micro's GPU)."""
    text = (ROOT / "slurm" / "dev.toml").read_text()
    path = tmp_path / "small.toml"
    path.write_text(text.replace('[gpus.v100]\ngres = "v100"\nper_node = 2\nmemory_gb = 32', '[gpus.v100]\ngres = "v100"\nper_node = 2\nmemory_gb = 1'))
    assert "memory_gb = 1\n" in path.read_text()
    return path


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_run_too_big_for_its_gpu_is_refused_before_anything_is_written(small_gpu_profile, medminds_home, monkeypatch, dry_run):
    monkeypatch.setattr(submit, "_submit_one", lambda *a: pytest.fail("submitted"))
    with pytest.raises(UserError) as e:
        submit.submit("expert-task", submit_options(cluster=str(small_gpu_profile), dry_run=dry_run), say=quiet)
    message = str(e.value)
    assert message.startswith("expert-task-micro-") and "\n" not in message
    assert "more than the 1 GiB of a v100" in message and "-o resources.gpu=rtx8000 (48 GiB)" in message
    assert not (medminds_home / "runs").exists()


@pytest.mark.slurm
def test_refused_on_the_real_cluster_before_sbatch(small_gpu_profile, medminds_home):
    import time

    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    names = {p.run_id for p in submit.plan("expert-task", slurm_options(cluster=str(small_gpu_profile)))}  # prepare + expert
    with pytest.raises(UserError, match="^expert-task-micro-"):
        submit.submit("expert-task", slurm_options(cluster=str(small_gpu_profile)), say=quiet)
    queued = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout.split()
    accounted = subprocess.run(["sacct", "-n", "-X", "-o", "JobName%80", "-S", since], capture_output=True, text=True).stdout.split()
    assert not names & set(queued + accounted)
    assert not (medminds_home / "runs").exists()


def test_the_cli_refuses_with_exit_2_and_one_line(small_gpu_profile, medminds_home):
    r = run_cli("submit", "expert-task", "-d", "micro", "--cluster", str(small_gpu_profile), "--executor", "local")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "expert-task-micro-" in r.stderr and "1 GiB of a v100" in r.stderr
    assert not (medminds_home / "runs").exists()


def test_the_refusal_names_the_fixes_that_fit_and_where_they_go(medminds_home):
    with pytest.raises(UserError) as e:
        submit.submit("baseline-classifier-task", submit_options(cluster="unity", overrides=["expert-task.gradient_checkpointing=false"]), say=quiet)
    message = str(e.value)
    assert message.startswith("expert-task-micro-") and "baseline-classifier" not in message  # the classifier fits
    assert "-o expert-task.gradient_checkpointing=true (~11.0 GiB)" in message
    assert "-o expert-task.grad_accum=2" in message and "-o expert-task.resources.gpu=a100 (80 GiB)" in message
    assert not (medminds_home / "runs").exists()


def test_a_gpu_type_without_memory_gb_is_not_checked():
    w = memory.workload_for("expert", {"gradient_checkpointing": False}, "mistral-7b-instruct")
    fit = memory.Fit("expert-task", "expert-task-micro-1", "h100", 0, memory.estimate(w), {"h100": 0})
    assert fit.fits and "no memory_gb for h100" in fit.describe()
    memory.refuse_overfull([fit, None], top="expert-task")


def test_stages_without_a_model_on_the_gpu_get_no_estimate():
    assert memory.for_run("prepare", "p", "prepare", {}, None, None, {}) is None
    assert memory.for_run("doctor", "d", "doctor", {}, None, "v100", {"v100": 32}) is None
    assert memory.for_run("moe-linear", "m", "moe", {}, "tiny", "v100", {"v100": 32}) is None
    nextword = memory.for_run("baseline-nextword", "n", "baseline-nextword", {"eval_batch_size": 32, "max_length": 512},
                              "mistral-7b-instruct", "v100", {"v100": 32})
    assert nextword.fits and not nextword.estimate.workload.train and nextword.estimate.trainable == 0


def test_a_local_model_directory_is_read_from_its_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, '
                                       '"num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000}')
    assert memory.model_shape(str(model)) == (memory.MISTRAL_7B, True)
    (model / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(UserError, match=r"config.json: no num_hidden_layers, .*Mistral/Llama-style"):
        memory.model_shape(str(model))
    assert memory.for_run("expert-task", "e", "expert", {}, str(model), "v100", {"v100": 32}) is None  # the job will say


def test_the_planner_never_imports_torch():
    code = ("import sys; from medminds_hpc import memory; "
            "w = memory.workload_for('expert', {}, 'mistral-7b-instruct'); memory.estimate(w); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
