"""Every private API of submitit and transformers the project uses, behind one small module.

Private names change without notice in any release. Keeping them here means one file to fix after an upgrade;
tests/test_compat.py checks each against the installed versions (it exists, with the signature used here), and
pyproject.toml caps each library below its next major version, so a breaking upgrade fails in CI, not in a job
on a cluster. Libraries are imported inside the functions: the CLI imports this module without loading them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from pathlib import Path
from typing import Any, Callable, Iterator


# submitit --------------------------------------------------------------------------------------------------------
def usr_signal(env: Any) -> int:
    """The signal submitit's jobs receive before preemption or time-out (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    return env._usr_sig()


def requeue(env: Any, countdown: int) -> None:
    """Requeue the running job (Slurm: scontrol requeue; local: exit with submitit's requeue code)."""
    env._requeue(countdown)


def delayed_timeout(delayed: Any) -> tuple[int, int]:
    """(timeout in minutes, time-outs left) of a submitit DelayedSubmission, to carry over into a fresh pickle."""
    return delayed._timeout_min, delayed._timeout_countdown


@contextlib.contextmanager
def temporary_save_path(path: str | Path) -> Iterator[Path]:
    """A path to write to; on exit it replaces `path` in one rename (what submitit itself uses for its pickles)."""
    from submitit.core.utils import temporary_save_path as save_path

    with save_path(path) as tmp:
        yield tmp


def slurm_executor(folder: str | Path, max_num_timeout: int, script_only: bool = False) -> Any:
    """A submitit SlurmExecutor. `script_only` renders sbatch scripts where Slurm is not installed (a dry run on
    a laptop): submitit refuses to build an executor without `srun` on PATH, although the script needs neither."""
    import submitit

    cls = _script_only_executor() if script_only else submitit.SlurmExecutor
    return cls(folder=folder, max_num_timeout=max_num_timeout)


@functools.cache
def _script_only_executor() -> type:
    import submitit

    class ScriptOnlySlurmExecutor(submitit.SlurmExecutor):
        """Builds without Slurm; submitting with it fails at sbatch like any executor on a machine without Slurm."""

        @classmethod
        def affinity(cls) -> int:
            return 2  # what SlurmExecutor answers when srun is on PATH

    return ScriptOnlySlurmExecutor


def session_local_executor(folder: str | Path, max_num_timeout: int, controller_log: Path) -> Any:
    """A submitit LocalExecutor that starts each job's controller in a session of its own (stdin closed, output
    appended to `controller_log`). submitit starts it in the submitting command's session, where Ctrl-C in that
    terminal reaches the job and a cancel is one SIGINT; it offers no option for this, so `_submit_command` is
    wrapped and the one `subprocess.Popen` call of `submitit.local.local.start_controller` gets start_new_session."""
    return _session_local_executor_class()(folder=folder, max_num_timeout=max_num_timeout, controller_log=controller_log)


_POPEN_PATCH = threading.Lock()


@functools.cache
def _session_local_executor_class() -> type:
    import subprocess
    from types import SimpleNamespace

    import submitit
    from submitit.local import local

    class SessionLocalExecutor(submitit.LocalExecutor):
        def __init__(self, *args: Any, controller_log: Path, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._controller_log = Path(controller_log)

        def _submit_command(self, command: str) -> Any:
            with open(self._controller_log, "ab") as log, _POPEN_PATCH:
                popen = functools.partial(subprocess.Popen, start_new_session=True, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)
                original, local.subprocess = local.subprocess, SimpleNamespace(Popen=popen)
                try:
                    return super()._submit_command(command)
                finally:
                    local.subprocess = original

    return SessionLocalExecutor


def sbatch_text(executor: Any) -> str:
    """The sbatch script a SlurmExecutor would submit for one job with its current parameters."""
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


# transformers ----------------------------------------------------------------------------------------------------
def trainer_with_hooks(
    trainer_class: type,
    *,
    save_model: Callable[[Any, Path], None],
    after_checkpoint: Callable[[Any], None],
    load_model: Callable[[Any, Path, Any], None],
) -> type:
    """A subclass of a transformers Trainer (or trl's) whose checkpoints go through the given functions.

    - `save_model(trainer, out_dir)` replaces `Trainer._save`: what a save writes of the model;
    - `after_checkpoint(trainer)` runs after `Trainer._save_checkpoint` wrote `checkpoint-<step>/` (model,
      optimizer, scheduler, RNG, trainer state);
    - `load_model(trainer, checkpoint_dir, model)` replaces `Trainer._load_from_checkpoint` on resume.

    Without clipping, the gradients' norm, which the Trainer computes at every step only to log it, is computed
    on the steps that log (every `logging_steps`): on an ensemble head it was about a tenth of a step.
    """

    ask_once_for_lomo()

    class Hooked(trainer_class):  # type: ignore[misc,valid-type]
        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            save_model(self, Path(output_dir or self.args.output_dir))

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            after_checkpoint(self)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            load_model(self, Path(resume_from_checkpoint), model if model is not None else self.model)

        def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
            every = self.args.logging_steps
            logs_next = not isinstance(every, int) or every < 1 or (self.state.global_step + 1) % every == 0
            if grad_norm is None and not logs_next:
                return None
            return super()._get_grad_norm(model, grad_norm=grad_norm)

    Hooked.__name__ = Hooked.__qualname__ = f"Hooked{trainer_class.__name__}"
    return Hooked


def checkpointing_field(args_class: type) -> str:
    """The TrainingArguments field that turns gradient checkpointing on: `activation_checkpointing` in recent
    transformers 5, `gradient_checkpointing` before (5.17 of the GPU lock still has only that one)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def sft_trains_without_triton() -> bool:
    """Whether trl's SFTTrainer can compute its loss with no Triton (a CPU build of torch has none): it always goes
    through a fused LM head, which trl 1.15 (the GPU lock's) has only as Triton kernels (None without), 1.16 in
    torch too."""
    from trl.trainer import utils

    return getattr(utils, "_ChunkedLogProbFunction", object()) is not None


def ask_once_for_lomo() -> None:
    """accelerate's optimizer step asks importlib whether the `lomo_optim` package is installed, twice per step
    (~0.5 ms: a tenth of an ensemble head's step); what is installed does not change while a run trains."""
    try:
        import accelerate.optimizer as accelerated
    except ImportError:
        return
    check = getattr(accelerated, "is_lomo_available", None)
    if callable(check) and not hasattr(check, "cache_info"):
        accelerated.is_lomo_available = functools.lru_cache(maxsize=None)(check)  # type: ignore[attr-defined]


# peft ------------------------------------------------------------------------------------------------------------
def route_adapter_layers(model: Any, name: str | list[str]) -> None:
    """Make every LoRA layer in `model` (a PeftModel or any module inside one) compute with adapter `name` alone, or
    with the adapters of a list summed (an empty list: the base layer alone), leaving requires_grad as it is.
    peft's own `set_adapter` also freezes every other adapter, which would stop two adapters from training side
    by side in one forward pass (one pass per adapter)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._active_adapter = list(name) if isinstance(name, list) else name
