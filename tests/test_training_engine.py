"""The shared training mechanism: learns, checkpoints trainable state only, resumes bit-exactly."""

from __future__ import annotations

import os

import pytest
import torch

from medminds_hpc import runs
from medminds_hpc.context import StageContext, StopRequested
from medminds_hpc.training.engine import TRAINABLE_FILE, TrainPlan, train
from medminds_hpc.training.options import TrainOptions

VOCAB, LEN = 48, 8


def tiny_classifier(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForSequenceClassification

    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, num_labels=4, pad_token_id=0)
    base = MistralForSequenceClassification(cfg)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], modules_to_save=["score"], task_type="SEQ_CLS")
    return get_peft_model(base, lora)


class Rows(torch.utils.data.Dataset):
    """Label = which of four cue tokens appears in the sequence: learnable, balanced."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(5, VOCAB, (n, LEN), generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.x[torch.arange(n), torch.randint(0, LEN, (n,), generator=g)] = self.y + 1  # cue tokens 1..4

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones(LEN, dtype=torch.long), "labels": self.y[i]}


def accuracy(model, data: Rows) -> dict:
    logits = model(input_ids=data.x, attention_mask=torch.ones_like(data.x)).logits
    return {"accuracy": (logits.argmax(-1) == data.y).float().mean().item()}


def make_ctx(run_id: str, stop_at: int | None = None) -> StageContext:
    run = runs.get(run_id) or runs.create(run_id, {"experiment": "t", "dataset": "micro"})
    fired = {"done": False}
    ctx = StageContext(run=run, checkpoint_every_steps=4, checkpoint_every_minutes=60)

    def stop():
        return stop_at is not None and not fired["done"] and _step[0] >= stop_at

    _step = [0]
    original = ctx.progress

    def progress(step, total=None, force=False, **m):
        _step[0] = step
        original(step, total, force, **m)

    ctx.progress = progress  # the stop flag fires once the given step is done, as a USR2 would
    ctx.stop_requested = stop
    return ctx


def plan_for(model, epochs=3.0, **opt) -> TrainPlan:
    options = TrainOptions(learning_rate=2e-2, batch_size=8, epochs=epochs, warmup_steps=2, seed=7, weight_decay=0.0, checkpoint_every_steps=4, **opt)
    val = Rows(64, seed=99)
    return TrainPlan(model=model, train_dataset=Rows(96, seed=1), options=options, evaluate=lambda m: accuracy(m, val),
                     save_best=lambda m, d: m.save_pretrained(d))


def final_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_learns_and_keeps_the_best(medminds_home):
    model = tiny_classifier()
    outcome = train(make_ctx("learn-micro-00000001"), plan_for(model, epochs=10.0))
    assert outcome.steps == 10 * 12
    assert [round(h["epoch"]) for h in outcome.history] == list(range(1, 11))
    assert outcome.best["accuracy"] >= 0.6  # chance is 0.25
    best_dir = runs.get("learn-micro-00000001").dir / "artifacts" / "best"
    assert (best_dir / "adapter_model.safetensors").exists() and (best_dir / "best.json").exists()
    assert runs.get("learn-micro-00000001").data["best"]["value"] == outcome.best["accuracy"]


def test_checkpoints_hold_trainable_state_only(medminds_home):
    from safetensors.torch import load_file

    model = tiny_classifier()
    ctx = make_ctx("ckpt-micro-00000001")
    train(ctx, plan_for(model, epochs=1.0))
    ckpt = ctx.checkpoints.latest()
    state = load_file(str(ckpt.dir / TRAINABLE_FILE))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert not any("embed_tokens" in k or ("base_layer" in k) for k in state)
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {p.name for p in ckpt.dir.iterdir()}
    assert any(p.name.startswith("rng_state") for p in ckpt.dir.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["none", "hard-kill", "truncated"])
def test_interrupted_and_resumed_equals_uninterrupted(medminds_home, damage):
    reference = tiny_classifier()
    ref_outcome = train(make_ctx("ref-micro-00000001"), plan_for(reference))
    expected = final_weights(reference)

    ctx = make_ctx("int-micro-00000001", stop_at=18)  # mid-epoch 2 (12 steps per epoch)
    with pytest.raises(StopRequested):
        train(ctx, plan_for(tiny_classifier()))
    assert [c.step for c in ctx.checkpoints.all()] == [18, 16]
    if damage == "hard-kill":  # killed without the signal: the step-18 save never happened
        import shutil

        shutil.rmtree(ctx.checkpoints.root / "step-00000018")
    elif damage == "truncated":
        f = ctx.checkpoints.root / "step-00000018" / TRAINABLE_FILE
        f.write_bytes(f.read_bytes()[:64])
    resumed = tiny_classifier()  # a requeued job loads the same frozen base; trainable state must come from disk
    with torch.no_grad():
        for p in resumed.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    outcome = train(make_ctx("int-micro-00000001"), plan_for(resumed))
    got = final_weights(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert [h["accuracy"] for h in outcome.history] == [h["accuracy"] for h in ref_outcome.history]


@pytest.mark.slow
def test_a_stop_on_an_epochs_last_step_still_validates_that_epoch(medminds_home):
    reference = tiny_classifier()
    ref_outcome = train(make_ctx("ref-micro-00000002"), plan_for(reference))
    ctx = make_ctx("edge-micro-00000002", stop_at=12)  # the last step of epoch 1: saved and stopped before validating it
    with pytest.raises(StopRequested):
        train(ctx, plan_for(tiny_classifier()))
    assert ctx.checkpoints.latest().step == 12
    outcome = train(make_ctx("edge-micro-00000002"), plan_for(tiny_classifier()))
    assert [round(h["epoch"]) for h in outcome.history] == [1, 2, 3]
    assert outcome.history == ref_outcome.history and outcome.best == ref_outcome.best


def test_tensorboard_logs_into_the_run_directory(medminds_home, monkeypatch):
    # the Trainer's real TensorBoard callback, writing through tensorboardX (the dev extra)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    ctx = make_ctx("tb-micro-00000001")
    train(ctx, plan_for(tiny_classifier(), epochs=1.0, report_to="tensorboard"))
    events = list((ctx.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert b"train/loss" in events[0].read_bytes()
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # restored: the next in-process run logs into its own folder


def test_missing_tracker_package_is_a_clear_error(medminds_home, monkeypatch):
    import importlib.util

    from medminds_hpc.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"report_to=wandb: the wandb package is not installed.*-o report_to=none"):
        train(make_ctx("wandb-micro-00000001"), plan_for(tiny_classifier(), epochs=1.0, report_to="wandb"))


def test_max_grad_norm_reaches_the_trainer_and_the_ensembles_do_not_clip(tmp_path):
    from medminds_hpc.stages import ensemble
    from medminds_hpc.training.engine import training_arguments

    assert training_arguments(TrainOptions(), tmp_path).max_grad_norm == 1.0
    assert training_arguments(TrainOptions(max_grad_norm=0.5), tmp_path).max_grad_norm == 0.5
    assert ensemble.Config().max_grad_norm == 0.0  # plain Adam steps, as the paper's ensembles
    assert training_arguments(ensemble.Config(), tmp_path).max_grad_norm == 0.0


@pytest.mark.parametrize("max_grad_norm,norms", [(0.0, 3), (1.0, 12)])
def test_the_gradient_norm_is_computed_to_clip_or_on_logging_steps_only(medminds_home, monkeypatch, max_grad_norm, norms):
    from accelerate import Accelerator

    calls = []
    original = Accelerator.clip_grad_norm_

    def counted(self, parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return original(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", counted)
    outcome = train(make_ctx(f"norm-micro-0000000{int(max_grad_norm)}"),
                    plan_for(tiny_classifier(), epochs=1.0, max_grad_norm=max_grad_norm))
    assert outcome.steps == 12  # logging every 4 steps (checkpoint_every_steps)
    assert len(calls) == norms and all(c == (max_grad_norm or float("inf")) for c in calls)


def test_accelerate_asks_for_lomo_once_and_gets_the_same_answer():
    import accelerate.optimizer as accelerated
    from transformers import Trainer

    from medminds_hpc import compat
    from accelerate.utils import imports

    compat.trainer_with_hooks(Trainer, save_model=print, after_checkpoint=print, load_model=print)
    assert hasattr(accelerated.is_lomo_available, "cache_info")
    assert accelerated.is_lomo_available() == imports.is_lomo_available()
    compat.ask_once_for_lomo()  # a second class wraps nothing twice
    assert not hasattr(accelerated.is_lomo_available.__wrapped__, "cache_info")


def test_trainable_weights_of_another_shape_are_refused_with_what_to_do(tmp_path):
    from safetensors.torch import save_file

    from medminds_hpc.training.engine import load_trainable_state

    model = torch.nn.Linear(8, 4)
    save_file({"weight": torch.zeros(8, 4), "bias": torch.zeros(4)}, str(tmp_path / TRAINABLE_FILE))
    before = model.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"other shapes \['weight \(8, 4\) vs \(4, 8\)'\].*medminds submit EXPERIMENT --force"):
        load_trainable_state(model, tmp_path / TRAINABLE_FILE)
    assert torch.equal(model.weight, before)  # nothing half-loaded


def test_a_diverged_loss_is_logged_as_nan_not_hidden(medminds_home):
    import math

    from medminds_hpc import fileio

    class Diverging(torch.nn.Module):
        """A loss that turns NaN at the 6th step (and stays NaN: the step's update makes the weight NaN)."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, input_ids, attention_mask, labels):
            self.calls += 1
            loss = (self.w - 1).square().sum()
            return {"loss": loss * float("nan") if self.calls == 6 else loss}

    ctx = make_ctx("nan-micro-00000001")
    options = TrainOptions(learning_rate=1e-2, batch_size=8, epochs=1.0, seed=7, weight_decay=0.0, checkpoint_every_steps=4)
    train(ctx, TrainPlan(model=Diverging(), train_dataset=Rows(96, seed=1), options=options))
    logged = {r["step"]: r["loss"] for r in fileio.read_jsonl(ctx.run_dir / "metrics.jsonl") if "loss" in r}
    assert sorted(logged) == [4, 8, 12]
    assert math.isfinite(logged[4]) and math.isnan(logged[8]) and math.isnan(logged[12])


# a run that cannot train never completes -----------------------------------------------------------------------------
class Quadratic(torch.nn.Module):
    """One weight pulled towards 1: a model that trains in microseconds a step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, labels):
        return {"loss": (self.w - 1).square().sum()}


def quadratic_plan(rows: int, **kw) -> TrainPlan:
    options = TrainOptions(learning_rate=1e-2, batch_size=8, epochs=1.0, seed=7, weight_decay=0.0, warmup_steps=0,
                           checkpoint_every_steps=4)
    return TrainPlan(model=Quadratic(), train_dataset=Rows(rows, seed=1), options=options, **kw)


def test_an_empty_training_split_fails_in_one_line_saying_why_and_what_to_change(medminds_home):
    from medminds_hpc.errors import UserError

    ctx = make_ctx("empty-micro-00000001")
    with pytest.raises(UserError) as failed:
        train(ctx, quadratic_plan(0))
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("training took no optimizer step (0 training rows, batch_size 8, epochs 1), so the run cannot complete")
    assert "the training split is empty" in message and "-o max_train_rows (0: all rows)" in message
    assert ctx.checkpoints.latest() is None and not (ctx.run_dir / "metrics.jsonl").exists()


def test_a_training_loop_that_ends_before_its_first_step_fails_instead_of_completing(medminds_home):
    from transformers import Trainer

    from medminds_hpc.errors import UserError

    class EndsAtOnce(Trainer):
        """Whatever the reason (data, epochs, max_steps), the loop returns before one optimizer step."""

        def train(self, *args, **kwargs):
            return None

    with pytest.raises(UserError) as failed:
        train(make_ctx("nostep-micro-00000001"), quadratic_plan(16, trainer_class=EndsAtOnce))
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("training took no optimizer step (16 training rows, batch_size 8, epochs 1), so the run cannot complete")
    assert "more -o epochs or -o max_steps, or a smaller -o batch_size" in message


def test_a_run_resumed_at_its_last_step_took_its_steps_before_and_completes(medminds_home, capsys):
    first = train(make_ctx("last-micro-00000001"), quadratic_plan(16))
    assert first.steps == 2
    again = train(make_ctx("last-micro-00000001"), quadratic_plan(16))  # a requeue after the final save: no step now
    assert "resumed at step 2" in capsys.readouterr().out
    assert again.steps == 2
