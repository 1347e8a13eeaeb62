"""What submit refuses from the training data it knows: a split with no rows (before and after preparing), one
smaller than a batch, more warm-up steps than planned steps; and a model that cannot be loaded."""

from __future__ import annotations

import pytest

from medminds_hpc import submit
from medminds_hpc.errors import UserError
from tests.helpers import quiet, submit_options, write_medmcqa_source


def plan_problems(name: str, **kw) -> list[str]:
    """The problems `submit --dry-run` refuses with (none: it plans)."""
    kw.setdefault("model", "tiny")
    try:
        submit.submit(name, submit_options(dry_run=True, **kw), say=quiet)
    except UserError as e:
        return e.problems
    return []


@pytest.fixture
def prepared(tmp_path):
    """A local source of 40 MedMCQA training and 20 validation rows, prepared by its own prepare run."""
    source = write_medmcqa_source(tmp_path / "source", 40, 20)
    submit.submit("prepare", submit_options(executor="debug", overrides=[f"source={source}"]), say=quiet)
    return source


def test_a_split_smaller_than_a_batch_or_shorter_than_the_warm_up_is_refused(prepared):
    source = [f"prepare.source={prepared}"]
    # 40 rows less the dev split's 4: 36 to train on
    assert plan_problems("baseline-classifier-mistral", overrides=source + ["batch_size=8", "warmup_steps=5"]) == []
    (line,) = plan_problems("baseline-classifier-mistral", overrides=source + ["batch_size=64"])
    assert line.startswith("experiment baseline-classifier-mistral: batch_size=64: the training split has 36 rows")
    assert "less than one batch" in line
    (line,) = plan_problems("baseline-classifier-mistral", overrides=source + ["batch_size=8", "warmup_steps=6"])
    assert line.startswith("experiment baseline-classifier-mistral: warmup_steps=6: more than the 5 optimizer steps "
                           "planned (36 rows, batch_size 8, epochs 1)")


def test_a_source_with_validation_rows_only_trains_nothing_before_and_after_it_is_prepared(tmp_path):
    source = write_medmcqa_source(tmp_path / "source", 0, 20)
    (source / "medmcqa" / "train.jsonl").unlink()
    options = dict(overrides=[f"prepare.source={source}"])
    (line,) = plan_problems("baseline-classifier-mistral", **options)
    assert line.startswith("experiment baseline-classifier-mistral: trains on medmcqa_train, but its prepare source "
                           "gives no rows of it: add a MedMCQA train file")
    assert plan_problems("baseline-nextword", **options) == []  # scoring needs no training rows
    submit.submit("prepare", submit_options(executor="debug", overrides=[f"source={source}"]), say=quiet)
    (line,) = plan_problems("baseline-classifier-mistral", **options)  # now the card says where the file goes
    assert f"add a train file (e.g. train.json, in the format of validation.jsonl) to {source / 'medmcqa'}" in line


@pytest.mark.parametrize("model, words", [
    ("no-such-model", "--model no-such-model: unknown model 'no-such-model'"),
    ("{dir}", "holds a model but no tokenizer"),
])
def test_a_model_that_cannot_be_loaded_is_refused(model, words, tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a saved model's folder, without its tokenizer
    problems = plan_problems("baseline-nextword", model=model.format(dir=tmp_path), overrides=["prepare.source=synthetic"])
    assert len(problems) == 1 and words in problems[0], problems
