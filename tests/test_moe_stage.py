"""The moe stage on the tiny model: the metrics contract with routing statistics, exact resume after a stop (same
metrics, statistics and weights), routers that moved, adapters that train with train_experts, the paper's
hyper-parameters in the experiment files, and bad settings refused at submission in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medminds_hpc import artifacts, experiments, fileio, results, runs
from medminds_hpc.context import StopRequested
from medminds_hpc.errors import UserError
from medminds_hpc.stages import moe
from tests.helpers import make_expert, prepare_synthetic, run_cli, shrink_prepared, stage_ctx

TRAIN, VALIDATION = 64, 24  # 4 steps an epoch at batch 16


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    """Prepared data (shrunk) and two finished experts with random LoRAs, made once for the module."""
    import torch

    home = tmp_path_factory.mktemp("moe-stage") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        torch.set_num_threads(1)
        prepare_synthetic("micro")
        shrink_prepared("micro", medmcqa_train=TRAIN, medmcqa_validation=VALIDATION)
        make_expert("task", seed=1)
        make_expert("domain", seed=2, targets=("q_proj", "k_proj", "o_proj", "down_proj"))
    return home


@pytest.fixture
def home(module_home, monkeypatch) -> Path:
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)
    return module_home


NEEDS = {"expert-task": "expert-task-micro-00000001", "expert-domain": "expert-domain-micro-00000002"}


def config(**kw) -> moe.Config:
    base = dict(batch_size=16, epochs=2.0, learning_rate=1e-2, warmup_steps=0, checkpoint_every_steps=3,
                eval_batch_size=16, max_length=256, seed=7)
    base.update(kw)
    return moe.Config(**base)


def trainable_of(run_id: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(artifacts.path(runs.get(run_id), artifacts.ROUTER) / "trainable.safetensors"))


@pytest.mark.slow
def test_a_run_writes_the_metrics_contract_routing_statistics_and_routers_that_moved(home):
    import torch

    from medminds_hpc.modeling import routers

    ctx = stage_ctx("moe-linear-micro-00000001", needs=NEEDS)
    cfg = config()
    out = moe.run(ctx, cfg)
    metrics = results.read(ctx.run_dir)
    assert results.problems(metrics) == [] and metrics["n"] == VALIDATION == out["n"] and out["steps"] == 8
    assert metrics["method"] == "moe-linear" and metrics["mix"] == "outputs" and metrics["hard"] is True
    assert [(e["epoch"], e["split"]) for e in metrics["epochs"]] == [(1.0, "dev"), (2.0, "dev")]  # judged every epoch
    assert metrics["selection"] == "dev" and metrics["train_rows"] + metrics["dev_rows"] == TRAIN
    routing = metrics["routing"]
    assert [e["epoch"] for e in routing["epochs"]] == [1.0, 2.0]
    for epoch in routing["epochs"]:
        assert [layer["layer"] for layer in epoch["layers"]] == [0, 1]
        for layer in epoch["layers"]:
            assert layer["units"] == metrics["train_rows"]  # every question trained on, once (sequence granularity)
            assert sum(layer["share"].values()) == pytest.approx(1.0) and set(layer["share"]) == {"task", "domain"}
    assert [v["layer"] for v in routing["validation"]] == [0, 1]
    questions = moe.read_question_routing(ctx.run_dir)  # each question's gates per layer, as the shares count them
    assert len(questions) == 2 * VALIDATION and set(questions["layer"]) == {0, 1}
    for v in routing["validation"]:
        layer = questions[questions["layer"] == v["layer"]]
        assert {n: pytest.approx(float((layer["expert"] == n).mean()), abs=1e-6) for n in ("task", "domain")} == v["share"]
        assert (layer["expert"] == layer[["gate_task", "gate_domain"]].idxmax(axis=1).str.removeprefix("gate_")).all()
    logged = [r for r in fileio.read_jsonl(ctx.run_dir / "metrics.jsonl") if r.get("routing")]
    assert [r["layers"] for r in logged] == [e["layers"] for e in routing["epochs"]]

    saved = trainable_of(ctx.run.id)
    router_keys = sorted(k for k in saved if ".router." in k)
    assert router_keys and all(k.startswith("score.") or ".router." in k for k in saved)  # no base, no experts
    for i in (0, 1):
        init = routers.build_router(cfg.spec(), hidden_size=64, seed=cfg.seed + i).state_dict()
        key = next(k for k in router_keys if f"layers.{i}.router.proj.weight" in k)
        assert not torch.allclose(saved[key], init["proj.weight"]), key
    info = fileio.read_json(artifacts.path(ctx.run, artifacts.ROUTER) / moe.INFO_FILE)
    assert info["router"] == "linear" and info["layers"] == 2 and set(info["experts"]) == {"task", "domain"}
    import pandas as pd

    preds = pd.read_parquet(ctx.run_dir / "predictions.parquet")
    assert len(preds) == VALIDATION and (preds["score_kind"] == "logit").all()


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [5, 4])  # inside the second epoch; on the first epoch's last step
def test_a_run_stopped_and_resumed_ends_like_an_uninterrupted_one(home, stop_at):
    import numpy as np
    import pandas as pd
    import torch

    cfg = config(router="topk", mix="deltas", granularity="token", capacity_factor=1.0, epochs=3.0)  # noise, overflow
    whole_id, stopped_id = f"moe-topk-micro-{stop_at:04d}0000", f"moe-topk-micro-{stop_at:04d}0001"
    whole = moe.run(stage_ctx(whole_id, needs=NEEDS), cfg)
    stopped = stage_ctx(stopped_id, needs=NEEDS, stop_at=stop_at)
    with pytest.raises(StopRequested):
        moe.run(stopped, cfg)
    assert stopped.resume().step == stop_at
    resumed = moe.run(stage_ctx(stopped_id, needs=NEEDS), cfg)
    assert resumed == whole
    a, b = (results.read(runs.get(r).dir) for r in (whole_id, stopped_id))
    assert b["routing"] == a["routing"] and b["epochs"] == a["epochs"]
    assert any(layer["rerouted"] > 0 for e in a["routing"]["epochs"] for layer in e["layers"])
    scores = [f"score_{c}" for c in "abcd"]
    pa, pb = (pd.read_parquet(runs.get(r).dir / "predictions.parquet") for r in (whole_id, stopped_id))
    np.testing.assert_allclose(pa[scores].to_numpy(), pb[scores].to_numpy(), atol=1e-6)
    wa, wb = trainable_of(whole_id), trainable_of(stopped_id)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_with_train_experts_both_adapters_train_and_are_saved(home):
    import torch
    from safetensors.torch import load_file

    experts = {name: runs.get(rid) for name, rid in (("task", NEEDS["expert-task"]), ("domain", NEEDS["expert-domain"]))}
    before = {name: load_file(str(artifacts.path(run, artifacts.ADAPTER) / "adapter_model.safetensors"))
              for name, run in experts.items()}
    ctx = stage_ctx("moe-linear-micro-00000020", needs=NEEDS)
    moe.run(ctx, config(train_experts=True, mix="deltas", max_steps=3, epochs=1.0))
    saved = artifacts.path(ctx.run, artifacts.ROUTER) / moe.ADAPTERS_DIR
    for name in ("task", "domain"):
        trained = load_file(str(saved / name / "adapter_model.safetensors"))
        assert trained.keys() == before[name].keys()
        assert any(not torch.allclose(trained[k], before[name][k]) for k in trained), name
        again = load_file(str(artifacts.path(experts[name], artifacts.ADAPTER) / "adapter_model.safetensors"))
        assert all(torch.equal(again[k], before[name][k]) for k in again)  # the expert runs' own files untouched
    metrics = results.read(ctx.run_dir)
    assert metrics["train_experts"] is True
    assert metrics["trainable_parameters"] > sum(t.numel() for k, t in trainable_of(ctx.run.id).items() if "lora_" not in k)


@pytest.mark.slow
def test_experts_on_different_bases_are_refused_before_anything_is_written(home):
    other = make_expert("domain", seed=3, model="tiny-4layer")
    ctx = stage_ctx("moe-linear-micro-00000099", needs={"expert-task": NEEDS["expert-task"], "expert-domain": other.id})
    with pytest.raises(UserError, match="different base models|was trained on 'tiny-4layer'"):
        moe.run(ctx, config())
    assert not artifacts.path(ctx.run, artifacts.ROUTER).exists() and not (ctx.run_dir / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("top_k=3", "top_k: expected a value in [1, 2], got 3"),
    ("top_k=0", "top_k: expected a value in [1, 2], got 0"),
    ("capacity_factor=0", "capacity_factor: expected a value in (0, 1000], got 0.0"),
    ("router=gru", "-o router: expected one of 'linear', 'topk', 'mlp', got 'gru'"),
    ("mix=sum", "-o mix: expected one of 'outputs', 'deltas', got 'sum'"),
])
def test_bad_settings_are_refused_at_submission_in_one_line(medminds_home, override, message):
    proc = run_cli("submit", "moe-topk", "-d", "micro", "--cluster", "dev", "-o", override, "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())  # rich may wrap the one line on a narrow terminal
    assert proc.stderr.startswith("error: experiment moe-topk: ") and message in text and "Traceback" not in text
    assert not (medminds_home / "runs").exists()


def test_the_experiment_files_carry_the_papers_hyperparameters():
    linear = experiments.resolve(experiments.load("moe-linear"), "mini").config
    assert (linear.router, linear.hard, linear.learning_rate, linear.batch_size, linear.max_length, linear.epochs) == \
        ("linear", True, 2e-4, 16, 128, 10.0)
    assert experiments.resolve(experiments.load("moe-linear"), "mega").config.epochs == 1.0
    topk = experiments.resolve(experiments.load("moe-topk"), "mini").config
    assert (topk.router, topk.top_k, topk.optimizer, topk.learning_rate, topk.weight_decay, topk.adam_eps,
            topk.batch_size, topk.max_length, topk.epochs) == ("topk", 1, "adam", 1e-3, 1e-3, 1e-4, 8, 300, 8.0)
    assert topk.capacity_factor > 0 and dataclasses.asdict(topk.spec())["top_k"] == 1
    for name in ("moe-linear", "moe-topk"):
        assert experiments.load(name).needs == ["prepare", "expert-task", "expert-domain"]
