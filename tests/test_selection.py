"""Model selection without peeking: the dev split carved from the training rows (disjoint, seeded, stratified by
answer letter), epochs judged on it and MedMCQA validation scored once; selection=validation as the paper did; bad
values refused in one line; the report marks rows chosen on validation."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from medminds_hpc import experiments, report
from medminds_hpc.data.splits import carve_dev
from medminds_hpc.errors import UserError
from medminds_hpc.training import selection
from medminds_hpc.training.options import TrainOptions
from tests.helpers import assert_user_error, prepare_synthetic, run_cli, shrink_prepared, stage_ctx

ANSWERS = [0] * 400 + [1] * 300 + [2] * 200 + [3] * 100  # 40 / 30 / 20 / 10 %


# the dev split ---------------------------------------------------------------------------------------------------
def test_the_dev_split_is_disjoint_whole_seeded_and_stratified_by_answer():
    keys = [str(a) for a in ANSWERS]
    rest, dev = carve_dev(keys, 100, seed=7)
    assert len(dev) == 100 and not set(rest) & set(dev) and sorted(rest + dev) == list(range(len(keys)))
    assert Counter(ANSWERS[i] for i in dev) == {0: 40, 1: 30, 2: 20, 3: 10}
    assert carve_dev(keys, 100, seed=7) == (rest, dev)
    assert carve_dev(keys, 100, seed=8)[1] != dev


def test_selection_dev_holds_out_a_tenth_then_caps_what_is_trained_on():
    split = selection.split(TrainOptions(seed=3), ANSWERS, max_train_rows=500)
    assert split.on_dev and len(split.dev) == 100 and len(split.train) == 500
    assert not set(split.train) & set(split.dev)
    assert split.record() == {"selection": "dev", "dev_rows": 100}
    assert len(selection.split(TrainOptions(dev_rows=37), ANSWERS).dev) == 37


@pytest.mark.parametrize("total,asked,expected", [(0, 0, 0), (1, 0, 0), (2, 0, 1), (9, 0, 1), (50_000, 0, 2_000),
                                                  (10, 50, 9)])
def test_the_dev_split_is_a_tenth_at_most_2000_and_leaves_rows_to_train_on(total, asked, expected):
    assert selection.dev_size(total, asked) == expected


def test_selection_validation_trains_on_every_row_as_before():
    split = selection.split(TrainOptions(selection="validation"), ANSWERS, max_train_rows=500)
    assert split.train == list(range(500)) and split.dev == []
    assert split.judged(["t"] * 3, ["v1", "v2"]) == ["v1", "v2"]


# bad values ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("selection=test", "-o selection: expected one of 'dev', 'validation', got 'test'"),
    ("dev_rows=-5", "dev_rows: expected at least 0, got -5"),
])
@pytest.mark.parametrize("experiment", ["baseline-classifier-task", "ensemble-weighted", "moe-topk", "expert-task"])
def test_bad_selection_settings_are_refused(experiment, override, message):
    with pytest.raises(UserError) as e:
        experiments.resolve(experiments.load(experiment), "micro", overrides=[override])
    assert str(e.value).startswith(f"experiment {experiment}: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_bad_selection_exits_2_in_one_line_and_submits_nothing(medminds_home):
    proc = run_cli("submit", "baseline-classifier-task", "-d", "micro", "-o", "selection=best", "--dry-run")
    assert_user_error(proc, "-o selection: expected one of 'dev', 'validation', got 'best'")
    assert not (medminds_home / "runs").exists()


def test_the_default_is_dev_and_the_experiment_files_leave_it_there():
    for name in ("baseline-classifier-mistral", "ensemble-late-fusion", "moe-linear", "expert-domain"):
        assert experiments.resolve(experiments.load(name), "micro").config.selection == "dev"


# the report ------------------------------------------------------------------------------------------------------
def _group(*params: dict) -> report.Group:
    group = report.Group("baseline-classifier-task", "micro", "tiny", "{}")
    group.members = [SimpleNamespace(run=SimpleNamespace(data={"params": p})) for p in params]  # type: ignore[misc]
    return group


@pytest.mark.parametrize("params,marked", [
    ({"selection": "validation"}, True),
    ({"selection": "dev", "keep": "best"}, False),
    ({"keep": "best"}, True),  # a run from before `selection`: it kept the epoch best on validation
    ({"keep": "last"}, False),
])
def test_the_report_marks_rows_whose_epochs_were_chosen_on_validation(params, marked):
    assert _group(params).on_validation is marked
    assert _group(params).label.endswith(" †") is marked


# a stage, end to end ---------------------------------------------------------------------------------------------
@pytest.fixture
def evaluated(monkeypatch):
    """The ids of every set of rows the run evaluates, in order, and the prompts it trains on."""
    from medminds_hpc.training import engine, metrics

    seen: dict[str, list] = {"evaluated": [], "trained": []}
    evaluate, train = metrics.evaluate_predictions, engine.train

    def spy_evaluate(ids, *args, **kw):
        seen["evaluated"].append(list(ids))
        return evaluate(ids, *args, **kw)

    def spy_train(ctx, plan):
        seen["trained"] = list(plan.train_dataset["prompt"])
        return train(ctx, plan)

    monkeypatch.setattr(metrics, "evaluate_predictions", spy_evaluate)
    monkeypatch.setattr(engine, "train", spy_train)
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)
    return seen


def _classifier(run_id: str, **kw) -> tuple[dict, list[dict], list[dict]]:
    """A finished baseline-classifier-task run on 48 training and 16 validation rows (2 epochs of 2 steps)."""
    from medminds_hpc.data.prepare import load_prepared
    from medminds_hpc.stages.baseline import ClassifierConfig, run_classifier

    prepare_synthetic()
    shrink_prepared("micro", medmcqa_train=48, medmcqa_validation=16)
    cfg = ClassifierConfig(learning_rate=1e-2, batch_size=16, epochs=2.0, warmup_steps=1, eval_batch_size=64, seed=7,
                           keep="best", max_length=96, **kw)
    ctx = stage_ctx(run_id)
    run_classifier(ctx, cfg)
    rows = {s: load_prepared("micro", s).to_list() for s in ("medmcqa_train", "medmcqa_validation")}
    return json.loads((ctx.run_dir / "metrics.json").read_text()), rows["medmcqa_train"], rows["medmcqa_validation"]


@pytest.mark.slow
def test_with_dev_epochs_are_judged_on_held_out_training_rows_and_validation_is_scored_once(evaluated, one_torch_thread):
    from medminds_hpc.data.prompts import mcq_prompt

    metrics, train, validation = _classifier("baseline-classifier-task-micro-00000001", dev_rows=16)
    val_ids, by_id = [r["id"] for r in validation], {r["id"]: r for r in train}
    *per_epoch, final = evaluated["evaluated"]
    assert final == val_ids and all(ids != val_ids for ids in per_epoch) and len(per_epoch) == 2
    dev = per_epoch[0]
    assert all(ids == dev for ids in per_epoch) and len(dev) == 16 and set(dev) <= set(by_id)
    assert not {mcq_prompt(by_id[i], "paper") for i in dev} & set(evaluated["trained"])
    assert len(evaluated["trained"]) == metrics["train_rows"] == 32
    assert metrics["selection"] == "dev" and metrics["dev_rows"] == 16 and metrics["n"] == 16
    assert [e["split"] for e in metrics["epochs"]] == ["dev"] * 2
    best = max(metrics["epochs"], key=lambda e: e["accuracy"])
    assert metrics["best"]["epoch"] == best["epoch"] and metrics["kept"] == f"best (epoch {best['epoch']})"
