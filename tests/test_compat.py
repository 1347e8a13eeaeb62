"""Each private API behind medminds_hpc/compat.py, checked against the installed submitit and transformers:
it exists, with the signature the project calls it with, and does what the project relies on."""

import inspect
import signal

import pytest
import submitit
from submitit.core.job_environment import JobEnvironment
from submitit.core.utils import DelayedSubmission
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE, LocalJobEnvironment
from submitit.slurm.slurm import SlurmExecutor, SlurmJobEnvironment

from medminds_hpc import compat


def parameter_names(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_usr_signal_is_usr2():
    assert parameter_names(JobEnvironment._usr_sig) == []  # a classmethod without arguments
    assert compat.usr_signal(LocalJobEnvironment()) == signal.SIGUSR2


def test_requeue_takes_the_remaining_count(monkeypatch):
    assert parameter_names(SlurmJobEnvironment._requeue) == ["self", "countdown"]
    assert parameter_names(LocalJobEnvironment._requeue) == ["self", "countdown"]
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "123")
    with pytest.raises(SystemExit) as e:  # the local executor requeues by exiting with its own code
        compat.requeue(LocalJobEnvironment(), 3)
    assert e.value.code == LOCAL_REQUEUE_RETURN_CODE


def test_delayed_timeout_survives_a_pickle(tmp_path):
    delayed = DelayedSubmission(print, "x")
    delayed.set_timeout(90, 4)
    delayed.dump(tmp_path / "job.pkl")
    assert compat.delayed_timeout(DelayedSubmission.load(tmp_path / "job.pkl")) == (90, 4)


def test_temporary_save_path_replaces_the_file_in_one_rename(tmp_path):
    target = tmp_path / "logs" / "submitted.pkl"
    target.parent.mkdir()
    target.write_text("old")
    with compat.temporary_save_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new" and list(target.parent.iterdir()) == [target]


def test_sbatch_text_is_the_script_submitit_submits(tmp_path):
    assert parameter_names(SlurmExecutor._make_submission_file_text) == ["self", "command", "uid"]
    assert isinstance(inspect.getattr_static(SlurmExecutor, "_submitit_command_str"), property)
    ex = compat.slurm_executor(tmp_path / "logs", 5, script_only=True)
    ex.update_parameters(partition="gpu", time=30, gres="gpu:a100:1", signal_delay_s=60)
    text = compat.sbatch_text(ex)
    assert text.startswith("#!/bin/bash") and "#SBATCH --partition=gpu" in text and "#SBATCH --gres=gpu:a100:1" in text
    assert "#SBATCH --signal=USR2@60" in text and f"-m submitit.core._submit {tmp_path / 'logs'}" in text


def test_script_only_executor_needs_no_srun(tmp_path, monkeypatch):
    import submitit.slurm.slurm as slurm_module

    monkeypatch.setattr(slurm_module.shutil, "which", lambda name, *a, **kw: None)  # no Slurm on this machine
    ex = compat.slurm_executor(tmp_path, 3, script_only=True)
    assert isinstance(ex, submitit.SlurmExecutor) and "srun" in compat.sbatch_text(ex)


# transformers: importing it takes seconds ---------------------------------------------------------------------------
TRAINER_METHODS = {
    "_save": ["self", "output_dir", "state_dict"],
    "_save_checkpoint": ["self", "model", "trial"],
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(TRAINER_METHODS))
def test_trainer_method_the_engine_overrides(method):
    from transformers import Trainer
    from trl import SFTTrainer

    for cls in (Trainer, SFTTrainer):
        assert parameter_names(getattr(cls, method)) == TRAINER_METHODS[method], (cls, method)
    hooked = compat.trainer_with_hooks(Trainer, save_model=print, after_checkpoint=print, load_model=print)
    assert parameter_names(getattr(hooked, method)) == TRAINER_METHODS[method]


@pytest.mark.slow
def test_trainer_saves_the_model_through_the_hook(tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    saved = []
    hooked = compat.trainer_with_hooks(Trainer, save_model=lambda trainer, out: saved.append(out),
                                       after_checkpoint=print, load_model=print)
    trainer = hooked(model=torch.nn.Linear(2, 2), args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    trainer.save_model(str(tmp_path / "model"))
    assert saved == [tmp_path / "model"]


PRIVATE_USES = [r"\._usr_sig\b", r"\._requeue\(", r"\._make_submission_file_text\b", r"\._submitit_command_str\b",
                r"utils(\.| import )temporary_save_path\b", r"\._timeout_(min|countdown)\b", r"def _save\(", r"def _save_checkpoint\(",
                r"def _load_from_checkpoint\(", r"def _submit_command\(", r"local\.subprocess\b", r"\._active_adapter\b"]


def test_session_local_executor_starts_the_controller_in_its_own_session(tmp_path):
    import os
    import subprocess

    from submitit import LocalExecutor
    from submitit.local import local

    assert parameter_names(LocalExecutor._submit_command) == ["self", "command"]
    assert local.subprocess is subprocess  # start_controller calls subprocess.Popen through this module attribute
    log = tmp_path / "controller.log"
    ex = compat.session_local_executor(tmp_path, 3, log)
    ex.update_parameters(timeout_min=1)
    job = ex.submit(os.getsid, 0)
    assert job.result() != os.getsid(0) and log.exists()  # a session of its own, its output in the log
    assert local.subprocess is subprocess  # the patch is undone


def test_routing_lora_layers_to_one_adapter_keeps_both_trainable():
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["0"], init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, target_modules=["0"], init_lora_weights=False))
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    x = torch.randn(3, 4)
    outputs = {}
    for name in ("a", "b"):
        compat.route_adapter_layers(model, name)
        layer = next(m for m in model.modules() if isinstance(m, BaseTunerLayer))
        assert layer.active_adapters == [name] or layer.active_adapter == name
        outputs[name] = model(x)
    (outputs["a"].sum() + outputs["b"].sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert not torch.allclose(outputs["a"], outputs["b"])


def test_no_module_but_compat_touches_these_private_apis():
    import re

    from tests.helpers import ROOT

    offenders = [f"{path.relative_to(ROOT)}: {pattern}" for path in sorted((ROOT / "medminds_hpc").rglob("*.py")) if path.name != "compat.py"
                 for pattern in PRIVATE_USES if re.search(pattern, path.read_text())]
    assert offenders == []


def test_the_checkpointing_field_is_one_the_arguments_have():
    """TrainingArguments and trl's SFTConfig of the installed releases take the flag under the name compat gives."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import SFTConfig

    for args_class in (TrainingArguments, SFTConfig):
        name = compat.checkpointing_field(args_class)
        assert name in {f.name for f in dataclasses.fields(args_class)} and f"{name}_kwargs" in {f.name for f in dataclasses.fields(args_class)}
