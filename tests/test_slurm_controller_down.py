"""Against the real dev cluster with its controller stopped: `status`, `submit` and `cancel` each answer within
10 s with one clear line and an exit code, never a traceback or a hang; the controller is started again after."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from medminds_hpc import submit
from tests.helpers import ROOT, counter_job, quiet, run_cli, slurm_options as opts, write_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

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
