"""Faults on the real dev cluster. With its controller stopped, `status`, `submit` and `cancel` each answer within
10 s with one clear line and an exit code, never a traceback or a hang. A worker killed with SIGKILL (no signal to
catch, no requeue) resumes from its newest checkpoint when the same `submit` runs again."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from medminds_hpc import submit
from tests.helpers import ROOT, counter_job, job_worker_pids, quiet, run_cli, slurm_options as opts, write_job

pytestmark = [pytest.mark.slurm, pytest.mark.chaos, pytest.mark.timeout(300)]

CLUSTER_DIR = Path(os.environ.get("MEDMINDS_SLURM_DIR", "/var/lib/medminds-dev"))


def _controller_pid() -> int:
    return int((CLUSTER_DIR / "run" / "slurmctld.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _timed(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = run_cli(*args, timeout=60)
    return proc, time.monotonic() - start


def test_status_submit_and_cancel_answer_quickly_while_the_controller_is_down(jobs_dir):
    write_job(jobs_dir, "slow", counter_job(steps=60, sleep_s=1.0))
    write_job(jobs_dir, "other", counter_job(steps=2))
    (p,) = submit.submit("slow", opts(), say=quiet)
    pid = _controller_pid()
    os.kill(pid, 15)
    try:
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), "slurmctld did not stop"

        status, took = _timed("status")
        assert took < 10 and "Traceback" not in status.stderr and p.run_id in status.stdout
        # accounting (slurmdbd, still up) may know the job already: then that is the answer; if squeue had to be
        # asked, it could not answer, and status says so
        assert (status.returncode, status.stderr) == (0, "") or (
            status.returncode == 1 and status.stderr.count("\n") == 1 and "Slurm did not answer" in status.stderr)

        sub, took = _timed("submit", "other", "-d", "micro", "--cluster", "dev", "--executor", "slurm", "--no-wait")
        assert took < 10 and sub.returncode == 2 and "Traceback" not in sub.stderr
        assert "slurm controller" in sub.stderr.lower()

        cancel, took = _timed("cancel", p.run_id)
        assert took < 10 and cancel.returncode == 2 and "Traceback" not in cancel.stderr
        assert cancel.stderr.count("\n") == 1 and (
            "nothing was cancelled" in cancel.stderr or "unable to contact slurm controller" in cancel.stderr.lower())
    finally:
        subprocess.run(["bash", str(ROOT / "slurm" / "dev-cluster" / "up.sh")], capture_output=True, timeout=120, check=True)
    assert run_cli("cancel", p.run_id).returncode == 0  # the controller is back: the same command now works


def test_a_worker_killed_without_a_signal_resumes_from_its_newest_checkpoint_when_resubmitted(jobs_dir):
    """kill -9 gives the job no chance to save or requeue: Slurm ends it, and the same `submit` resumes the run from
    the newest checkpoint on disk (saved every 5 steps), never from step 0, and ends with the uninterrupted value."""
    from medminds_hpc import runs
    from tests.helpers import step_reached, wait_for, wait_until_ended
    from tests.stages.counter import expected_value

    steps, every = 40, 5
    write_job(jobs_dir, "walk", f'stage = "tests.stages.counter"\nneeds = []\n[params]\nsteps = {steps}\n'
                                f'sleep_s = 0.25\ncheckpoint_every_steps = {every}\n')
    (p,) = submit.submit("walk", opts(), say=quiet)
    wait_for(p.run_id, {"RUNNING"}, also=lambda st: step_reached(p.run_id, 12))
    killed = job_worker_pids(p.job_ids[0])
    assert killed
    reached = runs.get(p.run_id).data["progress"]["0"]["step"]
    for pid in killed:
        os.kill(pid, 9)
    wait_for(p.run_id, {runs.FAILED, runs.CANCELLED}, timeout=120)
    (again,) = submit.submit("walk", opts(), say=quiet)
    assert again.run_id == p.run_id and again.job_ids != p.job_ids
    result = wait_until_ended(p.run_id).result()
    assert result["value"] == expected_value(steps) and result["steps"] == steps
    # the newest checkpoint before the kill: at most one interval (plus the steps done while the kill landed) redone
    assert 10 <= result["resumed_from"] <= reached + 2 and result["resumed_from"] % every == 0
