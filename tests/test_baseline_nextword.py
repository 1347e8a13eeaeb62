"""baseline-nextword: the stage scores MedMCQA validation in one pass per question, on the base or on an expert
adapter found through the run registry, writes predictions + metrics, honours the stop flag, and is reachable
through the real submit path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medminds_hpc import results, runs
from medminds_hpc.context import StopRequested
from medminds_hpc.errors import UserError
from medminds_hpc.stages.baseline import NextWordConfig, run_nextword
from medminds_hpc.training.metrics import read_predictions
from tests.helpers import ROOT, write_job
from tests.helpers import make_expert, prepare_synthetic, stage_ctx


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


def test_scores_validation_and_writes_predictions_and_metrics():
    prepare_synthetic()
    ctx = stage_ctx("baseline-nextword-micro-00000001")
    result = run_nextword(ctx, NextWordConfig(eval_batch_size=64))
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert results.problems(metrics) == []
    assert metrics["n"] == 500 and result["n"] == 500 and result["accuracy"] == metrics["accuracy"]
    assert metrics["train_seconds"] == 0.0 and metrics["eval_seconds"] > 0
    assert np.array(metrics["confusion_matrix"]).sum() == 500
    assert sum(s["n"] for s in metrics["per_subject"].values()) == 500
    assert metrics["method"] == "nextword" and metrics["adapter"] == "none" and 0 < metrics["letter_mass_mean"] <= 1
    lo, hi = metrics["accuracy_ci95"]
    assert lo <= metrics["accuracy"] <= hi
    preds = read_predictions(ctx.run_dir)
    assert len(preds) == 500 and preds["id"].is_unique
    np.testing.assert_allclose(preds[["prob_a", "prob_b", "prob_c", "prob_d"]].sum(axis=1), 1.0, atol=1e-9)
    assert (preds["predicted"] == preds[["prob_a", "prob_b", "prob_c", "prob_d"]].to_numpy().argmax(1)).all()
    raw = preds[["score_a", "score_b", "score_c", "score_d"]].to_numpy()  # log P(" A".." D") over the whole vocabulary
    assert set(preds["score_kind"]) == {"logprob"}
    np.testing.assert_allclose(np.exp(raw).sum(axis=1).mean(), metrics["letter_mass_mean"], rtol=1e-9)
    np.testing.assert_allclose(np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True), preds[["prob_a", "prob_b", "prob_c", "prob_d"]], atol=1e-12)
    ctx.flush_progress()
    assert runs.get(ctx.run.id).data["progress"]["0"]["step"] == 500  # questions scored, for `medminds status`


def test_an_expert_adapter_loaded_by_name_changes_the_predictions():
    prepare_synthetic()
    expert = make_expert("task", seed=11)
    base_ctx = stage_ctx("baseline-nextword-micro-00000002")
    task_ctx = stage_ctx("baseline-nextword-micro-00000003", needs={"expert-task": expert.id})
    run_nextword(base_ctx, NextWordConfig())
    run_nextword(task_ctx, NextWordConfig(adapter="task"))
    base, task = read_predictions(base_ctx.run_dir), read_predictions(task_ctx.run_dir)
    assert (base["id"] == task["id"]).all()
    probs = ["prob_a", "prob_b", "prob_c", "prob_d"]
    assert np.abs(base[probs].to_numpy() - task[probs].to_numpy()).max() > 1e-3
    assert (base["predicted"] != task["predicted"]).any()
    assert json.loads((task_ctx.run_dir / "metrics.json").read_text())["adapter"] == "task"


def test_an_expert_of_another_base_model_is_refused():
    prepare_synthetic()
    expert = make_expert("domain", seed=12)
    expert.update(lambda d: d.update(model="mistral-7b-instruct"))
    ctx = stage_ctx("baseline-nextword-micro-00000004", needs={"expert-domain": expert.id})
    with pytest.raises(UserError, match="trained on 'mistral-7b-instruct' but this run uses 'tiny'"):
        run_nextword(ctx, NextWordConfig(adapter="domain"))


def test_a_missing_adapter_says_what_to_do():
    prepare_synthetic()
    expert = runs.create("expert-task-micro-00000009", {"experiment": "expert-task", "dataset": "micro", "model": "tiny"})
    ctx = stage_ctx("baseline-nextword-micro-00000005", needs={"expert-task": expert.id})
    with pytest.raises(UserError, match="not a saved LoRA adapter"):
        run_nextword(ctx, NextWordConfig(adapter="task"))


def test_stops_between_batches_when_asked():
    prepare_synthetic()
    ctx = stage_ctx("baseline-nextword-micro-00000006")
    ctx.stop_requested = lambda: True
    with pytest.raises(StopRequested, match="scoring restarts"):
        run_nextword(ctx, NextWordConfig(eval_batch_size=100))
    assert not (ctx.run_dir / "metrics.json").exists()
    assert runs.get(ctx.run.id).data["progress"]["0"]["step"] == 100


def test_reachable_through_submit(jobs_dir):
    """`submit("baseline-nextword", ...)` with the debug executor: prepare (synthetic here: no Hub in tests) runs
    first as its dependency, then the stage, found through the stage registry."""
    from medminds_hpc.submit import SubmitOptions, submit

    prepare_toml = (ROOT / "jobs" / "prepare.toml").read_text().replace('source = "hub"', 'source = "synthetic"')
    assert 'source = "synthetic"' in prepare_toml
    write_job(jobs_dir, "prepare", prepare_toml)
    write_job(jobs_dir, "baseline-nextword", (ROOT / "jobs" / "baseline-nextword.toml").read_text())
    planned = submit("baseline-nextword", SubmitOptions(dataset="micro", executor="debug", model="tiny", cluster="dev"),
                     say=lambda _line: None)
    assert [p.name for p in planned] == ["prepare", "baseline-nextword"]
    run = runs.get(planned[-1].run_id)
    assert run.state == runs.COMPLETED, run.data.get("error")
    assert run.data["results"]["0"]["n"] == 500
    metrics = run.metrics()
    assert metrics["n"] == 500 and metrics["model"] == "tiny"
    assert pd.read_parquet(run.dir / "predictions.parquet")["id"].nunique() == 500
