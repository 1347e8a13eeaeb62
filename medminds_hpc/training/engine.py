"""The one training mechanism every stage uses: a transformers Trainer (or trl's SFTTrainer) made resumable.

What it adds to the Trainer:
- checkpoints hold trainable parameters only (adapters, heads, routers) plus the Trainer's optimizer, scheduler,
  scaler, RNG states and position in the data; each is committed atomically into the run's CheckpointStore and
  the newest *valid* one is resumed from, so a requeued job continues exactly where it saved;
- the StageJob stop flag (preemption, approaching time-out) saves at the next step boundary and stops;
- saves every N steps or M minutes, whichever comes first;
- per-epoch judging through the stage's own evaluate function (on the dev split or on validation, as
  `options.selection` says: see selection.py), keeping the best trainable weights;
- step metrics in metrics.jsonl and progress in run.json;
- DDP when the job has several ranks (medminds_hpc/distributed.py): the global batch stays `batch_size`
  (per-device batch = batch_size / (grad_accum x world size)); the stop flag and the every-M-minutes save are
  agreed across ranks at each step boundary, so all ranks save and stop at the same step; rank 0 commits a
  checkpoint only once every rank's files (the Trainer's rng_state_<rank>.pth) are written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from medminds_hpc import artifacts, compat, distributed, fileio
from medminds_hpc.context import StageContext, StopRequested
from medminds_hpc.errors import UserError
from medminds_hpc.training import checkpoint
from medminds_hpc.training.options import TrainOptions

TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class TrainPlan:
    """What a stage hands to `train`: the model with its trainable parts unfrozen, data, and how to judge it."""

    model: Any
    train_dataset: Any
    options: TrainOptions
    collator: Callable | None = None
    evaluate: Callable[[Any], dict[str, Any]] | None = None  # judges an epoch (rows: selection.Split.judged); returns at least "accuracy"
    save_best: Callable[[Any, Path], None] | None = None  # writes the trainable weights worth keeping into a dir
    trainer_class: Any = None  # default: transformers.Trainer; experts pass trl's SFTTrainer
    args_class: Any = None  # default: transformers.TrainingArguments; SFTTrainer takes trl's SFTConfig
    args_extra: dict[str, Any] = field(default_factory=dict)
    trainer_extra: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)  # more TrainerCallbacks (e.g. a benchmark's clock)


@dataclass
class TrainOutcome:
    steps: int
    train_seconds: float
    history: list[dict[str, Any]]
    best: dict[str, Any] | None


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: Any, directory: Path) -> None:
    """The trainable weights into `directory` as the checkpoints name them (a TrainPlan's `save_best`)."""
    from safetensors.torch import save_file

    save_file(trainable_state(model), str(Path(directory) / TRAINABLE_FILE))


def keep_weights(ctx: StageContext, model: Any, outcome: "TrainOutcome", keep: str) -> str:
    """Put the best judged weights (saved by `save_trainable`) back into `model` when `keep` is "best";
    returns which weights the model now holds, as reports name them."""
    if keep != "best" or outcome.best is None:
        return "last"
    load_trainable_state(model, artifacts.path(ctx.run, artifacts.BEST) / TRAINABLE_FILE)
    return f"best (epoch {outcome.best['epoch']})"


def load_trainable_state(model: Any, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    names = {n for n, p in params.items() if p.requires_grad}
    unexpected = set(state) - names
    missing = names - set(state)
    reshaped = sorted(f"{n} {tuple(state[n].shape)} vs {tuple(params[n].shape)}" for n in set(state) & names
                      if state[n].shape != params[n].shape)
    if unexpected or missing or reshaped:
        raise RuntimeError(f"{path}: checkpoint does not fit this model (missing {sorted(missing)[:5]}, unexpected "
                           f"{sorted(unexpected)[:5]}, other shapes {reshaped[:5]}); it was written by another model or "
                           f"version of this stage: start the run afresh with `medminds submit EXPERIMENT --force`")
    import torch

    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def resolve_optimizer(name: str) -> str:
    """The Trainer's optimizer name; 8-bit AdamW needs CUDA + bitsandbytes and falls back to AdamW.

    AdamW is torch's fused kernel (CPU and CUDA): one pass over each parameter instead of one per operation and
    tensor, which on small heads with many tensors was a third of a step. "adam" is AdamW with the stage's weight
    decay (0 for the ensembles, so Adam)."""
    from medminds_hpc.modeling.gpu import cuda_available

    if name == "adamw_8bit" and cuda_available():
        return "adamw_bnb_8bit"
    return "adamw_torch_fused"


def per_device_batch(batch_size: int, grad_accum: int, world_size: int, where: str = "") -> int:
    """The micro-batch each rank runs so that one optimizer step sees `batch_size` examples in all."""
    from medminds_hpc.errors import UserError

    share = max(1, grad_accum) * max(1, world_size)
    if world_size > 1 and batch_size % share:
        raise UserError(f"{where or 'training'}: batch_size = {batch_size} is not divisible by grad_accum x ranks = "
                        f"{max(1, grad_accum)} x {world_size}; set -o batch_size to a multiple of {share}, or change grad_accum "
                        f"or resources.gpus/nodes")
    return max(1, batch_size // share)


def training_arguments(options: TrainOptions, output_dir: Path, args_class: Any = None, **extra: Any) -> Any:
    from transformers import TrainingArguments

    from medminds_hpc.modeling.gpu import cuda_available, pick_precision
    from medminds_hpc.modeling.lora import NON_REENTRANT, checkpointing_wanted

    args_class = args_class or TrainingArguments
    precision = pick_precision(options.precision)
    world_size = distributed.from_env().world_size
    micro_batch = per_device_batch(options.batch_size, options.grad_accum, world_size)
    # the Trainer turns it on in the model it trains
    checkpointing = checkpointing_wanted(options.gradient_checkpointing)
    flag = compat.checkpointing_field(args_class)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.learning_rate,
        max_grad_norm=options.max_grad_norm,
        weight_decay=options.weight_decay,
        warmup_steps=options.warmup_steps,
        lr_scheduler_type=options.lr_scheduler,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps if options.max_steps > 0 else -1,
        optim=resolve_optimizer(options.optimizer),
        seed=options.seed,
        data_seed=options.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda_available(),
        save_strategy="steps",
        save_steps=options.checkpoint_every_steps,
        save_total_limit=None,
        eval_strategy="no",
        logging_steps=max(1, min(50, options.checkpoint_every_steps)),
        # a NaN or inf loss is logged as it is, not replaced by the window's mean (a diverged run must show it);
        # the filter also read the loss back from the device at every step
        logging_nan_inf_filter=False,
        report_to=[] if options.report_to == "none" else [options.report_to],
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_backend=None if cuda_available() or world_size < 2 else "gloo",
        ddp_timeout=distributed.DEFAULT_TIMEOUT_S,
        average_tokens_across_devices=True,  # a token-mean loss over the global batch, as in one process
        **{flag: checkpointing, f"{flag}_kwargs": dict(NON_REENTRANT) if checkpointing else None},
    )
    kwargs.update(extra)
    return args_class(**kwargs)


def resumable(trainer_class: Any, ctx: StageContext) -> Any:
    """`trainer_class` whose checkpoints hold trainable state only and are committed atomically."""

    def save_model(trainer: Any, out: Path) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        if trainer.args.should_save:
            save_file(trainable_state(trainer.model), str(out / TRAINABLE_FILE))

    def after_checkpoint(trainer: Any) -> None:
        step = trainer.state.global_step
        written = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        distributed.barrier()  # every rank's RNG state is in `written` before rank 0 commits it
        if trainer.args.should_save and written.is_dir():
            ctx.checkpoints.commit(step, written, meta={"epoch": trainer.state.epoch})
        distributed.barrier()  # and committed before any rank goes on (and, at the end, clears the staging)
        ctx.saved(step)

    def load_model(trainer: Any, checkpoint_dir: Path, model: Any) -> None:
        load_trainable_state(model, checkpoint_dir / TRAINABLE_FILE)

    cls = compat.trainer_with_hooks(trainer_class, save_model=save_model, after_checkpoint=after_checkpoint, load_model=load_model)
    cls.__name__ = cls.__qualname__ = f"Resumable{trainer_class.__name__}"
    return cls


def _callback(ctx: StageContext, plan: TrainPlan, best_dir: Path) -> Any:
    from transformers import TrainerCallback

    class StageCallback(TrainerCallback):
        def __init__(self) -> None:
            self.stopped = False
            best_file = best_dir / "best.json"
            self.best: dict[str, Any] | None = fileio.read_json(best_file) if best_file.exists() else None

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            ctx.progress(state.global_step, state.max_steps, epoch=round(state.epoch or 0.0, 4))
            stop, late = distributed.any_rank(ctx.stop_requested(), ctx.save_due_by_time())  # the same on every rank
            if stop:
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True
            elif late:
                control.should_save = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs:
                ctx.log({"step": state.global_step, "epoch": state.epoch, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            # A stop that landed on an epoch's last step saved before that epoch's validation (so the job leaves
            # within its grace time); the resumed attempt validates those same weights first.
            epoch = round(state.epoch or 0.0, 4)
            if plan.evaluate is not None and epoch > 0 and epoch == int(epoch) and epoch not in {r["epoch"] for r in eval_history(ctx.run_dir)}:
                self.validate(state, model)

        def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if plan.evaluate is not None and not self.stopped:
                self.validate(state, model)

        def validate(self, state: Any, model: Any) -> None:
            import torch

            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = plan.evaluate(model)
            model.train(was_training)
            record = {"epoch": round(state.epoch or 0.0, 4), "step": state.global_step, "split": plan.options.selection,
                      **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
            ctx.log({"eval": True, **record})
            ctx.record_headline(record, record["epoch"])
            acc = metrics.get("accuracy")
            if acc is not None and (self.best is None or acc > self.best["accuracy"]):
                self.best = {"accuracy": acc, "epoch": record["epoch"], "step": state.global_step}
                if plan.save_best is not None and ctx.is_rank_zero:
                    fileio.replace_dir(best_dir, lambda tmp: (plan.save_best(model, tmp), fileio.atomic_write_json(tmp / "best.json", self.best)))
                ctx.record_best("accuracy", acc)
            distributed.barrier()  # best/ is in place before any rank may read it back

    return StageCallback()


TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


@contextlib.contextmanager
def tracking(report_to: str, run_dir: Path, run_id: str) -> Iterator[None]:
    """Fail early if the asked-for tracker is not installed; log into the run directory, one W&B run across requeues.

    The settings are environment variables (the only way the Trainer's callbacks take them); values the user set
    win, and the previous environment is restored afterwards so in-process runs do not leak into each other.
    """
    import importlib.util

    from medminds_hpc.errors import UserError

    if report_to != "none" and not any(importlib.util.find_spec(m) is not None for m in TRACKERS[report_to]):
        raise UserError(f"report_to={report_to}: the {TRACKERS[report_to][0]} package is not installed in this environment; "
                        f"`pip install {TRACKERS[report_to][0]}` on the cluster, or set -o report_to=none")
    wanted = {
        # the Trainer's default (under output_dir) is the checkpoint staging folder, wiped on every attempt
        "tensorboard": {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard")},
        "wandb": {"WANDB_DIR": str(run_dir), "WANDB_RUN_ID": run_id, "WANDB_RESUME": "allow", "WANDB_NAME": run_id},
    }.get(report_to, {})
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def train(ctx: StageContext, plan: TrainPlan) -> TrainOutcome:
    """Train `plan.model` to the end, resuming from the newest valid checkpoint; raises StopRequested when asked to stop."""
    with tracking(plan.options.report_to, ctx.run_dir, ctx.run.id):
        return _train(ctx, plan)


def _train(ctx: StageContext, plan: TrainPlan) -> TrainOutcome:
    from transformers import Trainer

    rows = _length(plan.train_dataset)
    if rows == 0:  # the Trainer's own error here is a sampler's ("num_samples should be a positive integer value")
        raise untrainable(plan.options, rows)
    distributed.active()  # several ranks: join their group now, with its bounded timeout, before the Trainer does
    staging = ctx.checkpoints.root / checkpoint.TRAINER_STAGING
    if ctx.is_rank_zero:
        shutil.rmtree(staging, ignore_errors=True)  # half-written saves of a killed attempt
    args = training_arguments(plan.options, staging, plan.args_class, **plan.args_extra)
    callback = _callback(ctx, plan, artifacts.path(ctx.run, artifacts.BEST))
    trainer_cls = resumable(plan.trainer_class or Trainer, ctx)
    trainer = trainer_cls(model=plan.model, args=args, train_dataset=plan.train_dataset, data_collator=plan.collator,
                          callbacks=[callback, *plan.callbacks], **plan.trainer_extra)
    ckpt = ctx.resume()
    if ckpt is not None:
        print(f"resumed at step {ckpt.step} as rank {ctx.rank} of {ctx.world_size}", flush=True)
    if ckpt is not None and ctx.is_rank_zero:
        ctx.run.update(lambda d: d.setdefault("resumed_from_steps", []).append(ckpt.step))
    started = time.time()
    trainer.train(resume_from_checkpoint=str(ckpt.dir) if ckpt else None)
    total = _add_train_seconds(ctx, time.time() - started)
    if ctx.is_rank_zero:
        shutil.rmtree(staging, ignore_errors=True)
    if callback.stopped:
        raise StopRequested(f"stopped at step {trainer.state.global_step} after saving")
    # The run's global step, not this attempt's: one resumed from a checkpoint at the last step took its steps before.
    if trainer.state.global_step == 0:
        raise untrainable(plan.options, rows)
    return TrainOutcome(trainer.state.global_step, total, eval_history(ctx.run_dir), callback.best)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # a streamed (iterable) dataset
        return None


def untrainable(options: TrainOptions, rows: int | None) -> UserError:
    """Why a training stage took no optimizer step, and what to change: such a run fails rather than complete and
    report the metrics of weights it never trained."""
    data = f"{rows:,} training rows" if rows is not None else "a streamed training set"
    limits = f"batch_size {options.batch_size}, epochs {options.epochs:g}" + (f", max_steps {options.max_steps}" if options.max_steps else "")
    if rows == 0:
        fix = ("the training split is empty: check the prepared data (its card.json counts the rows per split), and "
               "-o max_train_rows (0: all rows) and -o dev_rows (the dev split is carved out of the training rows first)")
    else:
        fix = "give it more training rows (-o max_train_rows=0 uses all), more -o epochs or -o max_steps, or a smaller -o batch_size"
    return UserError(f"training took no optimizer step ({data}, {limits}), so the run cannot complete; {fix}")


def _add_train_seconds(ctx: StageContext, seconds: float) -> float:
    """Training time summed over every attempt (requeues included), kept in run.json."""
    key = f"train_seconds_shard{ctx.shard}" if ctx.num_shards > 1 else "train_seconds"
    if not ctx.is_rank_zero:
        return round(ctx.run.reload().data.get(key, 0.0) + seconds, 3)
    data = ctx.run.update(lambda d: d.__setitem__(key, round(d.get(key, 0.0) + seconds, 3)))
    return data[key]


def eval_history(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch judging records (dev or validation: their "split") across every attempt (an epoch replayed after a hard kill counts once)."""
    by_epoch: dict[float, dict[str, Any]] = {}
    for record in fileio.read_jsonl(run_dir / "metrics.jsonl"):
        if record.get("eval"):
            by_epoch[record["epoch"]] = {k: v for k, v in record.items() if k not in ("eval", "time", "shard")}
    return [by_epoch[e] for e in sorted(by_epoch)]


