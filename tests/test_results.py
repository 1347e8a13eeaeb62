"""metrics.json: evaluation results only, with the run's identity, checked against one schema; artifact names;
the stage contract every registered stage follows."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from medminds_hpc import artifacts, results, runs
from medminds_hpc.context import StageContext
from medminds_hpc.stages import STAGES
from medminds_hpc.training.metrics import evaluate_predictions


def finished_run() -> runs.Run:
    return runs.create("expert-task-micro-1a2b3c4d", {"experiment": "expert-task", "stage": "expert", "dataset": "micro",
                                                      "model": "tiny", "params": {"seed": 7, "epochs": 1.0},
                                                      "config_hash": "1a2b3c4d"})


def evaluation() -> dict:
    return evaluate_predictions(["a", "b", "c"], [0, 1, 2], np.eye(4)[[0, 1, 3]], subjects=["x", "x", "y"])


def test_metrics_carry_the_runs_identity_and_timings():
    run = finished_run()
    extra = {"numpy": np.float32(0.5), "count": np.int64(3), "arr": np.arange(2), "flag": np.bool_(True)}
    path = results.write(run, {**evaluation(), **extra}, train_seconds=12.5, eval_seconds=np.float64(3.0))
    data = json.loads(path.read_text())
    assert path == run.dir / "metrics.json" and results.problems(data) == []
    assert data["run"] == {"run_id": run.id, "experiment": "expert-task", "stage": "expert", "dataset": "micro",
                           "model": "tiny", "seed": 7, "config_hash": "1a2b3c4d"}
    assert data["format"] == results.FORMAT and data["train_seconds"] == 12.5 and data["eval_seconds"] == 3.0
    assert data["accuracy"] == pytest.approx(2 / 3) and data["n"] == 3
    assert (data["numpy"], data["count"], data["arr"], data["flag"]) == (0.5, 3, [0, 1], True)
    assert run.metrics() == data


def test_a_record_outside_the_schema_is_refused_and_nothing_is_written():
    run = finished_run()
    with pytest.raises(ValueError, match="missing 'confusion_matrix'"):
        results.write(run, {"accuracy": 0.5, "accuracy_ci95": None, "n": 2, "per_subject": {}}, train_seconds=0, eval_seconds=0)
    with pytest.raises(ValueError, match="accuracy 1.5 is outside"):
        results.write(run, {**evaluation(), "accuracy": 1.5}, train_seconds=0, eval_seconds=0)
    assert not (run.dir / "metrics.json").exists() and run.metrics() is None


def test_schema_names_each_problem():
    good = json.loads(results.write(finished_run(), evaluation(), train_seconds=1, eval_seconds=1).read_text())
    assert results.problems([]) == ["expected a JSON object, got list"]
    broken = {**good, "n": "3", "run": {**good["run"], "seed": "7"}}
    del broken["run"]["stage"]
    assert results.problems(broken) == ["'n' is str, expected int", "missing run.stage", "run.seed is str, expected int or NoneType"]


def test_only_evaluation_goes_to_metrics_json():
    ctx = StageContext(run=finished_run())
    with pytest.raises(ValueError, match="write_metrics"):
        ctx.write_json("metrics.json", {"value": 1})
    ctx.write_json("doctor.json", {"node": "n1"})
    assert json.loads((ctx.run_dir / "doctor.json").read_text()) == {"node": "n1"} and ctx.run.metrics() is None


def test_artifact_names_are_one_list():
    run = finished_run()
    assert artifacts.path(run, artifacts.ADAPTER) == run.dir / "artifacts" / "adapter"
    assert {artifacts.ADAPTER, artifacts.BEST, artifacts.CLASSIFIER, artifacts.FEATURES, artifacts.ROUTER} <= set(artifacts.NAMES)
    with pytest.raises(ValueError, match="unknown artifact 'adaptor'; known artifacts: adapter"):
        artifacts.path(run, "adaptor")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_follows_the_contract(name):
    """A typed Config dataclass (every field with a default), and a run(ctx, cfg) function where the stage runs."""
    info = STAGES[name]
    cls = info.config_class()
    assert dataclasses.is_dataclass(cls)
    cfg = cls()  # every field has a default
    for f in dataclasses.fields(cfg):
        assert f.type is not None, f.name
    if info.implemented:
        params = list(inspect.signature(info.run_function()).parameters)
        assert params[:2] == ["ctx", "cfg"], params


def test_results_module_stays_light():
    code = "import sys, medminds_hpc.results, medminds_hpc.artifacts; print(sorted(m for m in ('numpy', 'torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
