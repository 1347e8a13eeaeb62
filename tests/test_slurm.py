"""Against the real dev cluster (slurm/dev-cluster/up.sh): submit, status, dependencies, arrays, cancel,
preemption by signal, by partition and by time-out, each ending exactly like an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from medminds_hpc import runs, status, submit
from tests.helpers import (ROOT, assert_was_preempted, cli, counter_job, preempt_victim_node, quiet, run_cli, sacct_rows,
                           sacct_states, settled_sacct, slurm_options as opts, state_of, step_reached, wait_for, write_job)
from tests.stages.counter import expected_value

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]


def test_submit_completes_and_shows_in_status(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=3))
    (p,) = submit.submit("count", opts(), say=quiet)
    st = wait_for(p.run_id, {runs.COMPLETED})
    assert st.job_id == p.job_ids[0] and st.node == "gpu002"  # micro -> v100 on the dev cluster
    assert runs.get(p.run_id).result()["value"] == expected_value(3)
    rows = json.loads(run_cli("status", "--json").stdout)
    assert [(r["run"], r["state"], r["job_id"]) for r in rows] == [(p.run_id, "COMPLETED", p.job_ids[0])]
    assert settled_sacct(p.job_ids[0]) == ["COMPLETED"]


def test_a100_job_lands_on_the_a100_node_with_cuda_visible_devices(medminds_home):
    p = run_cli("doctor", "--cluster", "dev", "--gpu", "a100", "--executor", "slurm", timeout=200)
    assert p.returncode == 0, p.stderr
    run = next(r for r in runs.list_runs()[0] if r.data["experiment"] == "doctor")
    report = json.loads((run.dir / "doctor.json").read_text())
    assert report["slurm_nodelist"] == "gpu001" and report["cuda_visible_devices"] not in ("", "(unset)")
    assert report["expected_gpu"] == "a100" and "cuda_visible_devices: 0" in p.stdout
    settled_sacct(run.reload().last_job_id)  # GPU time comes from accounting, which lags the job's end under load
    assert status.collect([run])[0].gpu_hours > 0


def probe_job_id() -> int:
    """The id Slurm gives a new job now (ids are sequential): a held job, cancelled at once."""
    job = subprocess.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["scancel", job], check=True)
    return int(job)


def test_impossible_requests_are_refused_before_sbatch(medminds_home):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    first_probe = probe_job_id()
    for override, needle in [("resources.gpus=3", "3 a100 GPUs on one node is impossible"), ("resources.gpu=h100", "unknown GPU type 'h100'")]:
        extra = ["-o", "resources.gpu=a100"] if "gpus=3" in override else []
        proc = run_cli("submit", "doctor", "-d", "micro", "--cluster", "dev", "--executor", "slurm", *extra, "-o", override)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert probe_job_id() == first_probe + 1  # sbatch was never called in between
    # what only sbatch can know (memory no node has) is also one line, exit 2, and leaves no run behind
    proc = run_cli("submit", "doctor", "-d", "micro", "--cluster", "dev", "--executor", "slurm", "-o", "resources.mem=900G")
    assert proc.returncode == 2 and "submission failed: sbatch: error" in proc.stderr
    assert not (medminds_home / "runs").exists() or not any((medminds_home / "runs").iterdir())
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before


def test_dependant_waits_for_upstream(jobs_dir):
    write_job(jobs_dir, "up", counter_job(steps=8, sleep_s=0.5))
    write_job(jobs_dir, "down", counter_job(steps=2, needs='["up"]'))
    up, down = submit.submit("down", opts(), say=quiet)
    assert runs.get(down.run_id).data["submissions"][0]["dependencies"] == [up.job_ids[0]]
    # held for the upstream job while that one is still in the queue (pending or running: its steps take 4 s)
    reason = subprocess.run(["squeue", "-h", "-j", down.job_ids[0], "-o", "%T %r"], capture_output=True, text=True).stdout
    upstream_queued = subprocess.run(["squeue", "-h", "-j", up.job_ids[0], "-o", "%T"], capture_output=True, text=True).stdout
    assert reason.split()[0] == "PENDING" and "Dependency" in reason, reason
    assert upstream_queued.split()[0] in {"PENDING", "CONFIGURING", "RUNNING"}, upstream_queued
    wait_for(down.run_id, {runs.COMPLETED})
    assert state_of(up.run_id).state == runs.COMPLETED
    for job in (up.job_ids[0], down.job_ids[0]):
        settled_sacct(job)  # accounting lags the jobs under load
    (up_row,), (down_row,) = sacct_rows(up.job_ids[0]), sacct_rows(down.job_ids[0])
    assert down_row["Start"] >= up_row["End"]  # ISO times: the dependant started once the upstream had ended


def test_dependant_is_cancelled_when_upstream_fails(jobs_dir):
    write_job(jobs_dir, "up", counter_job(steps=2).replace("steps = 2", "steps = 2\nfail = true"))
    write_job(jobs_dir, "down", counter_job(steps=2, needs='["up"]'))
    up, down = submit.submit("down", opts(), say=quiet)
    st = wait_for(up.run_id, {runs.FAILED})
    assert "told to fail" in st.detail
    wait_for(down.run_id, {runs.CANCELLED}, timeout=60)
    assert settled_sacct(down.job_ids[0]) == ["CANCELLED"]


def test_array_of_four(jobs_dir):
    write_job(jobs_dir, "sharded", counter_job(steps=3, extra="shards = 4"))
    (p,) = submit.submit("sharded", opts(), say=quiet)
    assert len(p.job_ids) == 4 and len({j.split("_")[0] for j in p.job_ids}) == 1
    wait_for(p.run_id, {runs.COMPLETED})
    run = runs.get(p.run_id)
    assert run.data["shards_done"] == [0, 1, 2, 3]
    assert [run.result(i)["shard"] for i in range(4)] == [0, 1, 2, 3] and len({run.result(i)["value"] for i in range(4)}) == 1
    assert all(settled_sacct(j) == ["COMPLETED"] for j in p.job_ids)


def test_cancel(jobs_dir):
    write_job(jobs_dir, "long", counter_job(steps=600, sleep_s=0.5))
    (p,) = submit.submit("long", opts(), say=quiet)
    wait_for(p.run_id, {"RUNNING"})
    proc = run_cli("cancel", p.run_id)
    assert proc.returncode == 0 and "cancelled" in proc.stdout
    wait_for(p.run_id, {runs.CANCELLED}, timeout=60)
    assert settled_sacct(p.job_ids[0]) == ["CANCELLED"]


def test_identical_resubmission_reports_the_running_job(jobs_dir):
    write_job(jobs_dir, "long", counter_job(steps=20, sleep_s=0.3))
    (p,) = submit.submit("long", opts(), say=quiet)
    said = []
    (again,) = submit.submit("long", opts(), say=said.append)
    assert again.action == "active" and again.job_ids == p.job_ids and "already" in said[0]
    assert runs.get(p.run_id).job_ids == p.job_ids
    subprocess.run(["scancel", p.job_ids[0]])


def _assert_resumed_exactly(run_id: str, steps: int) -> dict:
    run = runs.get(run_id)
    metrics = run.result()
    assert metrics["value"] == expected_value(steps), "resumed run ended differently from an uninterrupted one"
    assert 0 < metrics["resumed_from"] < steps, metrics
    assert run.data["requeues"] >= 1 and len(run.data["attempts"]) >= 2
    assert len(set(run.job_ids)) == 1  # requeued, not resubmitted: one job id across attempts
    return run.data


def test_usr2_signal_checkpoints_requeues_and_resumes(jobs_dir):
    steps = 40
    write_job(jobs_dir, "slow", counter_job(steps=steps, sleep_s=0.25))
    (p,) = submit.submit("slow", opts(), say=quiet)
    wait_for(p.run_id, {"RUNNING"}, also=lambda st: step_reached(p.run_id, 1))
    time.sleep(1.5)
    subprocess.run(["scancel", "--signal=USR2", p.job_ids[0]], check=True)
    wait_for(p.run_id, {runs.COMPLETED}, timeout=240)
    _assert_resumed_exactly(p.run_id, steps)
    assert "REQUEUED" in sacct_states(p.job_ids[0])


def test_partition_preemption_resumes(jobs_dir):
    steps = 60
    write_job(jobs_dir, "victim", counter_job(steps=steps, sleep_s=0.25, resources='[resources.micro]\ngpu = "a100"\ngpus = 1\npartition = "gpu-preempt"'))
    (p,) = submit.submit("victim", opts(), say=quiet)
    wait_for(p.run_id, {"RUNNING"}, also=lambda st: step_reached(p.run_id, 1))
    time.sleep(1.0)
    hog = preempt_victim_node(3)
    wait_for(p.run_id, {runs.COMPLETED}, timeout=300)
    _assert_resumed_exactly(p.run_id, steps)
    assert_was_preempted(p, hog)


def test_home_with_spaces_and_quotes_runs_on_slurm(tmp_path, monkeypatch, jobs_dir):
    home = tmp_path / "a b 'c' \"d\" ;$(touch PWNED)"
    home.mkdir()
    monkeypatch.setenv("MEDMINDS_HOME", str(home))
    write_job(jobs_dir, "count", counter_job(steps=2))
    (p,) = submit.submit("count", opts(overrides=["marker=x'; touch PWNED2 #"]), say=quiet)
    wait_for(p.run_id, {runs.COMPLETED})
    assert runs.get(p.run_id).dir.parent.parent == home
    assert not list(Path.cwd().glob("PWNED*")) and not list(home.glob("PWNED*"))


def test_status_asks_sacct_once_for_all_runs(jobs_dir, monkeypatch):
    for i in range(3):
        write_job(jobs_dir, f"c{i}", counter_job(steps=1))
        submit.submit(f"c{i}", opts(), say=quiet)
    calls = []
    real = subprocess.run

    def spy(cmd, *a, **kw):
        calls.append(cmd[0])
        return real(cmd, *a, **kw)

    monkeypatch.setattr(status.subprocess, "run", spy)
    all_runs, _ = runs.list_runs()
    status.collect(all_runs)
    assert calls.count("sacct") == 1 and calls.count("squeue") <= 1


def own_run_id() -> str:
    """A parameter that gives these runs ids (= Slurm job names) no other test run on the shared cluster has."""
    return f'marker = "{uuid.uuid4().hex}"\n'


def jobs_named(name: str) -> list[str]:
    """Every job Slurm has by this name: still queued (squeue) or already accounted (sacct)."""
    queued = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.split()
    accounted = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1days", "--name", name, "--format=JobID"],
                               capture_output=True, text=True).stdout.split()
    return sorted({j.split("_")[0] for j in queued + accounted})


def queued_named(name: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True).stdout.splitlines()


def until_gone_from_squeue(*names: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while any(queued_named(n) for n in names):
        assert time.time() < deadline, {n: queued_named(n) for n in names}
        time.sleep(0.5)


def test_eight_identical_submits_at_once_make_one_job_per_run_and_cancel_stops_it(jobs_dir):
    marker = own_run_id()
    write_job(jobs_dir, "up", counter_job(steps=600, sleep_s=0.5) + marker)
    write_job(jobs_dir, "down", counter_job(steps=2, needs='["up"]') + marker)
    command = cli("submit", "down", "-d", "micro", "--cluster", "dev", "--executor", "slurm")
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [(p.communicate(timeout=180), p.returncode) for p in procs]
    assert all(code == 0 for _, code in outs), outs
    said = [line for (out, _), _ in outs for line in out.splitlines()]
    up, down = runs.find("up-micro"), runs.find("down-micro")
    for run in (up, down):
        assert len(run.job_ids) == 1 and jobs_named(run.id) == run.job_ids, (run.job_ids, jobs_named(run.id))
        mine = [line for line in said if line.startswith(f"{run.id}:")]
        assert len(mine) == 8 and sum(" submitted as job " in line for line in mine) == 1, mine
        assert all(f" as job {run.job_ids[0]}" in line for line in mine), mine  # the losers name the winner's job
    assert down.data["submissions"][0]["dependencies"] == up.job_ids
    for run in (down, up):
        proc = run_cli("cancel", run.id)
        assert proc.returncode == 0 and f"cancelled job {run.job_ids[0]}" in proc.stdout, proc.stdout + proc.stderr
    until_gone_from_squeue(up.id, down.id)
    assert run_cli("cancel", up.id).stdout.strip().endswith("nothing to cancel (state CANCELLED)")


def test_cancel_stops_every_job_the_run_recorded_array_tasks_included(jobs_dir):
    write_job(jobs_dir, "long", counter_job(steps=600, sleep_s=0.5, extra="shards = 2") + own_run_id())
    (p,) = submit.submit("long", opts(), say=quiet)
    run = runs.get(p.run_id)
    submit._submit_one(p, run, "slurm", [])  # a second submission recorded for the run (a resubmission, or a stray duplicate)
    ids = run.reload().job_ids
    assert len(ids) == 4 and len({j.split("_")[0] for j in ids}) == 2
    proc = run_cli("cancel", run.id)
    assert proc.returncode == 0 and all(j in proc.stdout for j in ids), proc.stdout + proc.stderr
    until_gone_from_squeue(run.id)
    bases = sorted({j.split("_")[0] for j in ids})  # tasks cancelled before they started are accounted as the array
    assert all(set(settled_sacct(b)) == {"CANCELLED"} for b in bases), {b: sacct_states(b) for b in bases}
    assert state_of(run.id).state == runs.CANCELLED
