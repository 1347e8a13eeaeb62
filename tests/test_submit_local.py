"""Submitting with the local and debug executors: the same code path as Slurm, minus the scheduler."""

import os
import signal
import time
from pathlib import Path

import pytest

from medminds_hpc import runs, status, submit
from medminds_hpc.errors import UserError
from tests.helpers import counter_job, quiet, submit_options, write_job
from tests.stages.counter import expected_value


def opts(**kw):
    kw.setdefault("executor", "local")
    return submit_options(**kw)



def test_debug_executor_runs_in_process(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=7))
    (p,) = submit.submit("count", opts(executor="debug"), say=quiet)
    run = runs.get(p.run_id)
    assert run.state == runs.COMPLETED
    assert run.result()["value"] == expected_value(7)


def test_local_job_completes_and_is_visible_in_status(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=4))
    (p,) = submit.submit("count", opts(), say=quiet)
    (st,) = status.collect([runs.get(p.run_id)])
    assert st.state == runs.COMPLETED and st.job_id == p.job_ids[0]
    assert st.as_json()["run_dir"] == str(runs.get(p.run_id).dir)
    assert st.progress == "4/4"


def test_identical_submission_does_not_duplicate(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=3))
    (first,) = submit.submit("count", opts(), say=quiet)
    said = []
    (second,) = submit.submit("count", opts(), say=said.append)
    assert second.run_id == first.run_id and second.action == "done"
    assert "already COMPLETED" in said[0]
    assert len(list((Path(os.environ["MEDMINDS_HOME"]) / "runs").iterdir())) == 1
    assert runs.get(first.run_id).job_ids == first.job_ids  # nothing resubmitted
    (other,) = submit.submit("count", opts(overrides=["steps=4"]), say=quiet)
    assert other.run_id != first.run_id


def test_failed_run_is_resubmitted_into_the_same_directory(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=3))
    (p,) = submit.submit("count", opts(executor="debug"), say=quiet)
    run = runs.get(p.run_id)
    run.update(lambda d: d.update(state=runs.FAILED, error="node died"))
    (again,) = submit.submit("count", opts(executor="debug"), say=quiet)
    assert again.action == "resume" and again.run_id == p.run_id
    run.reload()
    assert run.state == runs.COMPLETED and len(run.job_ids) == 2 and len(run.data["attempts"]) == 2


def test_force_starts_afresh(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=3))
    (p,) = submit.submit("count", opts(executor="debug"), say=quiet)
    (runs.get(p.run_id).dir / "marker").write_text("old")
    (again,) = submit.submit("count", opts(executor="debug", force=True), say=quiet)
    assert again.action == "fresh" and not (runs.get(p.run_id).dir / "marker").exists()
    assert len(runs.get(p.run_id).job_ids) == 1


def test_needs_run_first_and_are_reused(jobs_dir):
    write_job(jobs_dir, "up", counter_job(steps=2))
    write_job(jobs_dir, "down", counter_job(steps=3, needs='["up"]'))
    planned = submit.submit("down", opts(), say=quiet)
    assert [p.name for p in planned] == ["up", "down"]
    down = runs.get(planned[1].run_id)
    assert down.data["needs"] == {"up": planned[0].run_id}
    assert down.state == runs.COMPLETED and runs.get(planned[0].run_id).state == runs.COMPLETED
    again = submit.submit("down", opts(), say=quiet)
    assert [p.action for p in again] == ["done", "done"]


def test_failing_stage_marks_the_run_failed_with_the_reason(jobs_dir):
    write_job(jobs_dir, "boom", counter_job(extra="", steps=2).replace("steps = 2", "steps = 2\nfail = true"))
    with pytest.raises(UserError, match="failed"):
        submit.submit("boom", opts(), say=quiet)
    run = runs.find("boom")
    assert run.state == runs.FAILED and "told to fail" in run.data["error"]
    assert status.collect([run])[0].state == runs.FAILED


def test_unimplemented_stage_is_refused_before_anything_is_written(medminds_home):
    with pytest.raises(UserError, match="^experiment moe-linear: stage 'moe' is not implemented yet"):
        submit.submit("moe-linear", opts(model="tiny"), say=quiet)
    assert not (medminds_home / "runs").exists()


def test_dry_run_prints_the_script_and_writes_nothing(jobs_dir, medminds_home):
    write_job(jobs_dir, "count", counter_job(steps=2))
    said = []
    submit.submit("count", opts(executor="debug", dry_run=True), say=said.append)
    text = "\n".join(said)
    assert "#SBATCH --gres=gpu:v100:1" in text and "#SBATCH --requeue" in text and "'steps': 2" in text
    assert not (medminds_home / "runs").exists()


def test_local_job_resumes_after_usr2_with_the_same_result(jobs_dir):
    """The real signal path: USR2 to the job process -> save at the step boundary -> requeue -> resume."""
    write_job(jobs_dir, "slow", counter_job(steps=30, sleep_s=0.1))
    (p,) = submit.submit("slow", opts(wait=False), say=quiet)
    run = runs.get(p.run_id)
    controller = int(p.job_ids[0])
    deadline = time.time() + 60
    while time.time() < deadline:
        children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
        if children and run.reload().data.get("attempts"):
            break
        time.sleep(0.1)
    time.sleep(1.0)  # let it take some steps
    os.kill(int(children[0]), signal.SIGUSR2)
    p.jobs[0].result()
    run.reload()
    assert run.state == runs.COMPLETED and run.data["requeues"] == 1
    metrics = run.result()
    assert metrics["value"] == expected_value(30)
    assert 0 < metrics["resumed_from"] < 30  # the second start resumed mid-way, not from scratch
    assert len(run.data["attempts"]) == 2
