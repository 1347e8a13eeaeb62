"""Training on the real dev cluster: an expert interrupted by USR2 or by partition preemption resumes from its
checkpoint and ends with exactly the metrics and adapter of an uninterrupted run."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from medminds_hpc import runs, submit
from medminds_hpc.data.prepare import prepare
from tests.helpers import one_thread, params_toml, write_job
from tests.helpers import run_expert as run_stage, small_expert as small
from tests.helpers import assert_was_preempted, preempt_victim_node, step_reached, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

PARAMS = dict(epochs=2.0, max_train_rows=480)


@pytest.fixture(scope="module")
def references() -> dict[str, runs.Run]:
    """The uninterrupted reference run, once for the module (every test here interrupts the same job)."""
    return {}


@pytest.fixture
def expert_job(jobs_dir, medminds_home, monkeypatch, references):
    """The job (which inherits this environment) and the in-process reference both use one torch thread: results
    are bitwise equal only for one thread count. Returns a function giving the reference run, trained on first use:
    a test asks for it once its job is interrupted, so the reference trains beside the job's resumed attempt."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    prepare("micro", source="synthetic", say=lambda *_: None)
    cfg = small(**PARAMS)
    write_job(jobs_dir, "expert-small", 'stage = "expert"\n[params]\n' + params_toml(cfg) + '\n[resources.micro]\ngpu = "a100"\ngpus = 1\npartition = "gpu-preempt"\n')

    def reference() -> runs.Run:
        if "run" not in references:
            with one_thread():
                run_stage("expert-task-micro-reference", cfg)
            references["run"] = runs.get("expert-task-micro-reference")
        return references["run"]

    return reference


def _submit():
    (p,) = submit.submit("expert-small", submit.SubmitOptions(dataset="micro", cluster="dev", executor="slurm", model="tiny"), say=lambda _s: None)
    return p


def _assert_same_as_reference(run_id: str, reference_run: runs.Run) -> None:
    from safetensors.torch import load_file

    run = runs.get(run_id)
    assert run.data["requeues"] >= 1 and len(run.data["attempts"]) >= 2
    assert run.data["resumed_from_steps"] and min(run.data["resumed_from_steps"]) > 0  # resumed, not restarted
    got, want = run.metrics(), reference_run.metrics()
    for key in ("accuracy", "task_accuracy", "confusion_matrix", "per_subject", "epochs", "steps"):
        assert got[key] == want[key], key
    wa = load_file(str(reference_run.artifacts_dir / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(run.artifacts_dir / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_expert_resumes_exactly_after_usr2(expert_job):
    p = _submit()
    wait_for(p.run_id, {"RUNNING"}, timeout=120, also=lambda st: step_reached(p.run_id, 1))
    time.sleep(3)
    subprocess.run(["scancel", "--signal=USR2", p.job_ids[0]], check=True)
    reference_run = expert_job()
    wait_for(p.run_id, {runs.COMPLETED}, timeout=400)
    _assert_same_as_reference(p.run_id, reference_run)


def test_expert_resumes_exactly_after_partition_preemption(expert_job):
    p = _submit()
    wait_for(p.run_id, {"RUNNING"}, timeout=120, also=lambda st: step_reached(p.run_id, 1))
    time.sleep(3)
    hog = preempt_victim_node(2)
    reference_run = expert_job()
    wait_for(p.run_id, {runs.COMPLETED}, timeout=500)
    _assert_same_as_reference(p.run_id, reference_run)
    assert_was_preempted(p, hog)
