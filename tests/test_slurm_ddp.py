"""DDP on the real dev cluster (gloo on CPU, the nodes' fake GPUs): a classifier trained by 2 ranks, on one node or
on two, ends with the weights of one process with the same global batch; a 2-rank job stopped by USR2 resumes on
both ranks at the same step and ends equal to an uninterrupted 2-rank run; a rank killed alone requeues the job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from medminds_hpc import runs, submit
from medminds_hpc.data.prepare import prepare
from tests.helpers import any_gpu_profile, one_thread, params_toml, run_job, step_reached, wait_for, write_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

# dropout off and plain AdamW: what differs between 1 and 2 ranks is then only the order of float sums
PARAMS = dict(adapter="none", lora_dropout=0.0, learning_rate=1e-2, optimizer="adamw", batch_size=8, max_steps=6,
              max_train_rows=64, eval_rows=24, checkpoint_every_steps=2, eval_batch_size=8, max_length=128, selection="validation")
TOLERANCE = 1e-5


@pytest.fixture
def ddp_job(jobs_dir, medminds_home, monkeypatch):
    """Prepared micro data, the tiny model built once, and a classifier experiment `ddp-cls` on a100s."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    prepare("micro", source="synthetic", say=lambda *_: None)

    def write(resources: str, name: str = "ddp-cls", **changes) -> str:
        write_job(jobs_dir, name, f'stage = "baseline-classifier"\n[params]\n{params_toml({**PARAMS, **changes})}\n'
                                  f'[resources.micro]\npartition = "gpu-preempt"\n{resources}\n')
        return name

    return write


def _submit(name: str, cluster: str = "dev") -> submit.PlannedRun:
    (p,) = submit.submit(name, submit.SubmitOptions(dataset="micro", cluster=cluster, executor="slurm", model="tiny"), say=lambda _s: None)
    return p


def _weights(run: runs.Run) -> dict:
    from safetensors.torch import load_file

    from medminds_hpc import artifacts

    folder = artifacts.path(run, artifacts.CLASSIFIER)
    return {str(f.relative_to(folder)) + ":" + k: v for f in sorted(folder.rglob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _max_difference(a: runs.Run, b: runs.Run) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _reference(**changes) -> runs.Run:
    with one_thread():
        return run_job("ddp-cls-micro-reference", "baseline-classifier", {**PARAMS, **changes})


def _attempt_ranks(run_id: str) -> list[str]:
    """The ranks that logged each start of the job, from its Slurm log (submitit names every task)."""
    return sorted(p.name for p in (runs.get(run_id).dir / "logs").glob("*_log.out"))


def _assert_like_one_process(run: runs.Run, reference: runs.Run, what: str) -> None:
    """Two ranks (one start, two tasks) ended with the weights and the counts of one process."""
    assert run.data["resources"]["nodes"] * max(1, run.data["resources"]["gpus"]) == 2
    assert len(_attempt_ranks(run.id)) == 2  # two tasks ran (rank 0 alone records each start in run.json)
    difference = _max_difference(run, reference)
    print(f"{what} vs 1 process: max |delta| of the trained weights = {difference:.3g}")
    assert difference <= TOLERANCE
    assert run.metrics()["steps"] == reference.metrics()["steps"]
    assert run.metrics()["n"] == reference.metrics()["n"] == PARAMS["eval_rows"]  # scored by 2 ranks, gathered


def test_two_nodes_of_one_rank_train_the_weights_of_one_process(ddp_job, tmp_path):
    p = _submit(ddp_job('gpu = "any"\ngpus = 1\nnodes = 2'), cluster=str(any_gpu_profile(tmp_path)))
    reference = _reference()  # in this process while the job starts
    wait_for(p.run_id, {runs.COMPLETED}, timeout=400)
    run = runs.get(p.run_id)
    assert len(run.data["attempts"]) == 1 and run.data["resources"]["nodes"] == 2
    _assert_like_one_process(run, reference, "2 nodes x 1 rank")


def _rank_pid(job_id: str, rank: int) -> int | None:
    """The pid of one rank's Python process (`scontrol listpids` does not work with several slurmd on one host)."""
    for proc in Path("/proc").iterdir():
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(rank) and "submitit.core._submit" in cmdline:
            return int(proc.name)
    return None


def _steps_resumed(run: runs.Run) -> list[int]:
    return run.data.get("resumed_from_steps", [])


def test_two_ranks_on_one_node_train_like_one_process_and_resume_both_at_one_step_when_stopped(ddp_job):
    """Two 2-rank runs side by side, one stopped by USR2: the uninterrupted one ends with the weights of one process,
    the stopped one resumes both ranks at the same step and ends equal to the uninterrupted one."""
    steps = dict(max_steps=30, checkpoint_every_steps=10)
    ddp_job('gpu = "a100"\ngpus = 2', **steps)
    ddp_job('gpu = "v100"\ngpus = 2', name="ddp-cls-again", **steps)  # the same training, beside it on another node
    stopped, uninterrupted = _submit("ddp-cls"), _submit("ddp-cls-again")
    wait_for(stopped.run_id, {"RUNNING"}, timeout=180, also=lambda st: step_reached(stopped.run_id, 1))
    subprocess.run(["scancel", "--signal=USR2", stopped.job_ids[0]], check=True)  # every task gets it, each at its moment
    one_process = _reference(**steps)  # in this process while the jobs run
    wait_for(stopped.run_id, {runs.COMPLETED}, timeout=400)
    wait_for(uninterrupted.run_id, {runs.COMPLETED}, timeout=300)
    run, reference = runs.get(stopped.run_id), runs.get(uninterrupted.run_id)
    _assert_like_one_process(reference, one_process, "2 ranks on one node")
    assert run.data["requeues"] >= 1 and len(run.data["attempts"]) >= 2
    resumed = _steps_resumed(run)
    assert resumed and 0 < resumed[0] < steps["max_steps"]
    # both ranks resumed from that step: each rank's RNG state was committed with it, and both logged the resume
    logs = "".join(p.read_text(errors="replace") for p in (run.dir / "logs").glob("*_log.*"))
    assert logs.count(f"resumed at step {resumed[0]} as rank") == 2, logs[-3000:]
    assert _max_difference(run, reference) == 0.0


def test_a_rank_killed_alone_requeues_the_job_which_then_finishes(ddp_job):
    p = _submit(ddp_job('gpu = "a100"\ngpus = 2', max_steps=30, checkpoint_every_steps=5))
    checkpoints = runs.get(p.run_id).checkpoint_dir
    wait_for(p.run_id, {"RUNNING"}, timeout=180, also=lambda st: any(checkpoints.glob("step-*")))
    deadline = time.time() + 30
    while (pid := _rank_pid(p.job_ids[0], 1)) is None and time.time() < deadline:
        time.sleep(0.2)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no signal handler, no grace: rank 0 learns it from its next all-reduce
    wait_for(p.run_id, {runs.COMPLETED}, timeout=400)
    run = runs.get(p.run_id)
    assert run.data["requeues"] == 1 and len(run.data["lost_rank_faults"]) == 1 and len(run.data["attempts"]) == 2
    assert run.metrics()["steps"] == 30
    assert run.data["resumed_from_steps"][0] >= 5  # from its checkpoint, not from step 0
