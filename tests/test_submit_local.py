"""Submitting with the local and debug executors: the same code path as Slurm, minus the scheduler."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from medminds_hpc import runs, status, submit
from medminds_hpc.errors import UserError
from medminds_hpc.training.checkpoint import CheckpointStore
from tests.helpers import ROOT, cli, counter_job, processes_of, quiet, run_cli, submit_options, write_job
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


def test_unimplemented_stage_is_refused_before_anything_is_written(medminds_home, jobs_dir):
    write_job(jobs_dir, "unbuilt", 'stage = "tests.stages.unbuilt"\n')
    with pytest.raises(UserError, match="^experiment unbuilt: stage 'tests.stages.unbuilt' has a config but no run function yet"):
        submit.submit("unbuilt", opts(model="tiny"), say=quiet)
    assert not (medminds_home / "runs").exists()


def test_dry_run_prints_the_script_and_writes_nothing(jobs_dir, medminds_home):
    write_job(jobs_dir, "count", counter_job(steps=2))
    said = []
    submit.submit("count", opts(executor="debug", dry_run=True), say=said.append)
    text = "\n".join(said)
    assert "#SBATCH --gres=gpu:v100:1" in text and "#SBATCH --requeue" in text and "'steps': 2" in text
    assert not (medminds_home / "runs").exists()


@pytest.mark.slow
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


def until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


LOCAL = ("-d", "micro", "--cluster", "dev", "--executor", "local")


@pytest.mark.slow
def test_identical_submits_at_once_make_one_job_per_run(jobs_dir):
    write_job(jobs_dir, "up", counter_job(steps=3, sleep_s=0.2))
    write_job(jobs_dir, "down", counter_job(steps=3, needs='["up"]'))
    said, errors, start = [], [], threading.Barrier(8)

    def one() -> None:
        start.wait()
        try:
            submit.submit("down", opts(wait=False), say=said.append)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for name in ("up", "down"):
        run = runs.find(f"{name}-micro")
        assert len(run.job_ids) == 1 and len(run.data["submissions"]) == 1, run.data
        mine = [line for line in said if line.startswith(run.id)]
        assert len(mine) == 8 and sum(" submitted as job " in line for line in mine) == 1, mine
        # the others name that job, or find the run already finished (a late thread, on a busy machine)
        assert all(line.split(" as job ")[1].split()[0].strip(",") == run.job_ids[0] if " as job " in line
                   else "already COMPLETED" in line for line in mine), mine
    until(lambda: runs.find("down-micro").state == runs.COMPLETED, what="down to complete")


@pytest.mark.slow
def test_cancel_stops_a_local_job_started_from_a_script_for_good(jobs_dir):
    """A script (or nohup) starts jobs with SIGINT ignored: cancel must still end every process of the job."""
    write_job(jobs_dir, "long", counter_job(steps=900, sleep_s=0.1))
    proc = run_cli("submit", "long", *LOCAL, "--no-wait", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stderr
    run = runs.find("long-micro")
    until(lambda: run.reload().data.get("progress"), what="the job's first step")
    assert len(processes_of(run.dir)) >= 2  # the controller and the task
    out = run_cli("cancel", run.id)
    assert out.returncode == 0 and f"{run.id}: cancelled job {run.job_ids[0]}" in out.stdout, out.stdout + out.stderr
    assert processes_of(run.dir) == []  # gone by the time cancel reports it
    assert runs.get(run.id).state == runs.CANCELLED and status.collect([runs.get(run.id)])[0].state == runs.CANCELLED
    again = run_cli("cancel", run.id)
    assert again.returncode == 0 and "nothing to cancel (state CANCELLED)" in again.stdout


@pytest.mark.slow
def test_ctrl_c_while_waiting_stops_the_job_and_the_same_command_resumes_it(jobs_dir, medminds_home):
    write_job(jobs_dir, "slow", counter_job(steps=80, sleep_s=0.1) + "checkpoint_every_steps = 5\n")
    command = cli("submit", "slow", *LOCAL, "--wait")
    # as from a terminal: Ctrl-C at its default (an earlier test may have left this process ignoring it, which a
    # child inherits, and Python then never turns it into KeyboardInterrupt)
    waiting = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    until(lambda: list(medminds_home.glob("runs/slow-*/checkpoints/step-*")), what="a first checkpoint")
    os.killpg(waiting.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole foreground process group
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, out + err
    (line,) = err.strip().splitlines()
    run = runs.find("slow-micro")
    assert re.fullmatch(rf"{run.id}: interrupted at step \d+ of 80 \(last checkpoint: step \d+\); the same command resumes it", line), line
    assert run.state == runs.CANCELLED and "interrupted (Ctrl-C) at step" in run.data["error"] and processes_of(run.dir) == []
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "resubmitted (resumes)" in again.stdout, again.stdout + again.stderr
    metrics = run.reload().result()
    assert run.state == runs.COMPLETED and metrics["value"] == expected_value(80) and metrics["resumed_from"] >= 5


@pytest.mark.slow
def test_force_stops_the_running_job_before_starting_afresh(jobs_dir):
    write_job(jobs_dir, "long", counter_job(steps=900, sleep_s=0.1))
    (p,) = submit.submit("long", opts(wait=False), say=quiet)
    run = runs.get(p.run_id)
    until(lambda: run.reload().data.get("progress"), what="the job's first step")
    (again,) = submit.submit("long", opts(wait=False, force=True), say=quiet)
    old, new = p.job_ids[0], again.job_ids[0]
    assert again.action == "fresh" and new != old
    assert not Path(f"/proc/{old}").exists() or Path(f"/proc/{old}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert runs.get(p.run_id).job_ids == [new]
    submit_mod_cancel = run_cli("cancel", p.run_id)
    assert submit_mod_cancel.returncode == 0 and processes_of(run.dir) == []


@pytest.mark.slow
def test_a_checkpoint_skipped_on_resume_is_named_in_the_job_log(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=10) + "checkpoint_every_steps = 3\nkeep_checkpoints = 3\n")
    (p,) = submit.submit("count", opts(), say=quiet)
    run = runs.get(p.run_id)
    newest = CheckpointStore(run.checkpoint_dir).all()[0]
    assert newest.step == 9
    (newest.dir / "state.pt").write_bytes((newest.dir / "state.pt").read_bytes()[:50])
    run.update(lambda d: d.update(state=runs.FAILED, error="node died"))
    (again,) = submit.submit("count", opts(), say=quiet)
    log = "".join(f.read_text() for f in run.log_dir.glob(f"{again.job_ids[0]}_*log.err"))
    assert f"skipping checkpoint {newest.dir}: state.pt has 50 bytes" in log, log
    metrics = run.reload().result()
    assert metrics["resumed_from"] == 6 and metrics["value"] == expected_value(10)
