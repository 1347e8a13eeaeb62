"""Options of the features and ensemble experiments refused at submit time: one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from medminds_hpc import experiments
from tests.helpers import run_cli


@pytest.mark.parametrize("experiment, option, message", [
    ("ensemble-weighted", "method=mixture", "method: expected one of 'weighted', 'transformer', 'late-fusion', got 'mixture'"),
    ("ensemble-late-fusion", "reduce=mean", "reduce: expected one of 'learned', 'letters', got 'mean'"),
    ("ensemble-transformer", "freeze_experts=maybe", "freeze_experts"),
    ("ensemble-weighted", "max_grad_norm=-1", "max_grad_norm: expected at least 0, got -1.0"),
    ("features", "shards=0", "shards=0: expected a positive integer"),
    ("features", "rows_per_shard=0", "rows_per_shard: expected at least 1, got 0"),
])
def test_bad_options_are_refused_in_one_line_and_nothing_is_written(experiment, option, message, medminds_home):
    proc = run_cli("submit", experiment, "-d", "micro", "--model", "tiny", "-o", option, "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and experiment in lines[0] and message in lines[0], proc.stderr
    assert not (medminds_home / "runs").exists() or not any((medminds_home / "runs").iterdir())


def test_shards_override_makes_a_job_array_and_a_run_of_its_own():
    exp = experiments.load("features")
    one = experiments.resolve(exp, "micro", "tiny")
    four = experiments.resolve(exp, "micro", "tiny", ["shards=4"])
    assert (one.shards, four.shards) == (1, 4)
    assert one.identity({}) != four.identity({}) and four.identity({})["shards"] == 4


def test_every_ensemble_experiment_needs_the_one_features_run():
    for name in ("ensemble-weighted", "ensemble-transformer", "ensemble-late-fusion"):
        exp = experiments.load(name)
        assert "features" in exp.needs and {"expert-task", "expert-domain"} <= set(exp.needs)
    assert experiments.load("features").needs == ["prepare", "expert-task", "expert-domain"]
