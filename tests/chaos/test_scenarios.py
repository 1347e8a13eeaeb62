"""Chaos on the real dev cluster, in its reduced form (one repetition each; a counter stage of a few dozen steps,
an expert of 20 steps on the tiny model): the expert preempted while it saves at an epoch's end, so that the stop is
pending through that epoch's evaluation; the classifier baseline killed with SIGKILL and resubmitted; a run that times out several times; 2N `medminds submit` at once. Each run
ends with the result of an uninterrupted run of the same config (the expert: its metrics and adapter bytes) and no
step lost. The full disk is in test_disk_full.py, kill -9 and the controller stopped in test_faults.py.
`benchmarks/chaos.py` runs every scenario with repetitions, K preemptions at random steps of one run among them.

Set MEDMINDS_CHAOS_SEED to replay a failure (each test says the seed it used)."""

from __future__ import annotations

import os
import random

import pytest

from tests.helpers import (ChaosOutcome, chaos_classifier_kill, chaos_concurrent_submits, chaos_expert_preemption,
                           chaos_time_outs, classifier_reference, counter_reference, expert_reference)

pytestmark = [pytest.mark.slurm, pytest.mark.chaos, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted counter's value for a number of steps, each run once in this module (in process)."""
    values: dict[int, int] = {}

    def value(steps: int) -> int:
        if steps not in values:
            values[steps] = counter_reference(steps)
        return values[steps]

    return value


@pytest.fixture
def rng():
    seed = int(os.environ.get("MEDMINDS_CHAOS_SEED") or random.randrange(10**6))
    generator = random.Random(seed)
    generator.seed_used = seed  # type: ignore[attr-defined]
    return generator


def assert_nothing_lost(outcome: ChaosOutcome, seed: int, redone_at_most: int = 0) -> None:
    said = f"seed {seed}: {outcome}"
    assert outcome.equal == outcome.runs and outcome.lost == 0, said
    assert all(outcome.checks.values()) and outcome.checks, said
    assert max(outcome.redone, default=0) <= redone_at_most, said


def test_an_expert_preempted_during_a_save_before_an_evaluation_ends_with_the_same_metrics_and_adapter(jobs_dir, rng):
    """Its checks: the stop came at the step after the epoch's save (so during the save, and the evaluation ran
    with it pending), every epoch was evaluated once, the run resumed rather than restarted."""
    outcome = chaos_expert_preemption(jobs_dir, rng, expert_reference())
    assert_nothing_lost(outcome, rng.seed_used)


def test_a_classifier_killed_without_a_signal_resumes_when_resubmitted_and_ends_with_the_same_metrics_and_weights(jobs_dir, rng):
    """Its checks: the resubmission resumed from a checkpoint at or after the one seen before the kill (never from
    step 0), and it was one resubmission (two job ids)."""
    outcome = chaos_classifier_kill(jobs_dir, rng, classifier_reference())
    assert_nothing_lost(outcome, rng.seed_used)


def test_a_run_longer_than_its_time_limit_times_out_several_times_and_finishes(jobs_dir, rng, reference, tmp_path):
    outcome = chaos_time_outs(jobs_dir, rng, reference, tmp_path / "profiles")
    assert len(outcome.redone) == outcome.faults
    assert_nothing_lost(outcome, rng.seed_used)


def test_concurrent_submits_make_one_run_per_experiment_and_one_job_per_run(jobs_dir, rng, reference):
    outcome = chaos_concurrent_submits(jobs_dir, rng, reference, n=4)
    assert outcome.runs == 5
    assert_nothing_lost(outcome, rng.seed_used)
