"""status without the scheduler: parsing sacct, the squeue fallback, local runs, and following logs."""

import io
import os
import stat
import time

import pytest

from medminds_hpc import control, runs, status, submit
from tests.helpers import counter_job, quiet, run_cli, submit_options, write_job


def fake_tool(bin_dir, name, output):
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir}/{name}.calls\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_one_sacct_call_and_squeue_for_what_sacct_does_not_show_yet(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # sacct knows job 11 (requeued once: two records, GPU time summed) and array task 12_1; 13 was submitted a moment ago
    fake_tool(bin_dir, "sacct", "11|PREEMPTED|100|billing=1,cpu=1,gres/gpu=2,mem=500M|gpu001|0:0|x\n"
                                "11|RUNNING|50|billing=1,cpu=1,gres/gpu:a100=2,mem=500M|gpu001|0:0|x\n"
                                "12_1|CANCELLED by 0|10|cpu=1|gpu002|0:15|x")
    fake_tool(bin_dir, "squeue", "13|PENDING|0:00|")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    info = status.scheduler_states(["11", "12_1", "13"])
    assert info["11"].state == "RUNNING" and info["11"].gpu_seconds == 300 and info["11"].node == "gpu001"
    assert info["12_1"].state == "CANCELLED"
    assert info["13"].state == "PENDING"
    assert len((bin_dir / "sacct.calls").read_text().splitlines()) == 1
    assert "-j 11,12,13" in (bin_dir / "sacct.calls").read_text()
    assert (bin_dir / "squeue.calls").read_text().split()[1:3] == ["-j", "13"]


def test_slurm_run_state_comes_from_the_scheduler_unless_the_job_recorded_an_end(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "sacct", "21|TIMEOUT|3600|gres/gpu=1|gpu002|0:0|x")
    fake_tool(bin_dir, "squeue", "")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = runs.create("x-micro-00000021", {"experiment": "x", "dataset": "micro", "executor": "slurm"})
    run.update(lambda d: d.update(state=runs.RUNNING, job_ids=["21"], submissions=[{"job_ids": ["21"]}]))
    (st,) = status.collect([run])
    assert st.state == "TIMEOUT" and st.gpu_hours == 1.0
    run.update(lambda d: d.update(state=runs.COMPLETED))
    assert status.collect([run])[0].state == runs.COMPLETED


@pytest.mark.slow
def test_follow_logs_until_the_local_job_ends(jobs_dir):
    write_job(jobs_dir, "count", counter_job(steps=6, sleep_s=0.3).replace("[params]", "[params]\nmarker = \"hello\""))
    (p,) = submit.submit("count", submit_options(wait=False), say=quiet)
    out = io.StringIO()
    started = time.time()
    control.print_logs(p.run_id, follow=True, out=out, poll_s=0.2, max_wait_s=120)
    assert runs.get(p.run_id).reload().state == runs.COMPLETED
    assert "Starting with JobEnvironment" in out.getvalue() or "Job completed successfully" in out.getvalue()
    assert time.time() - started < 120


def test_status_table_lists_every_run_with_state_progress_and_long_elapsed(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "sacct", "31|RUNNING|180000|gres/gpu=1|gpu001|0:0|x")  # 50 h: must not wrap around a day
    fake_tool(bin_dir, "squeue", "")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = runs.create("y-mega-00000031", {"experiment": "y", "dataset": "mega", "executor": "slurm"})
    run.update(lambda d: d.update(state=runs.RUNNING, job_ids=["31"], submissions=[{"job_ids": ["31"]}], requeues=2,
                                  progress={"0": {"step": 40, "total": 100}}))
    done = runs.create("z-micro-00000032", {"experiment": "z", "dataset": "micro", "executor": "local"})
    done.update(lambda d: d.update(state=runs.COMPLETED))
    proc = run_cli("status", env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    header, rule, *rows = proc.stdout.splitlines()[1:]
    assert header.split() == ["run", "state", "job", "elapsed", "GPU-h", "progress", "metric"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert rows[0].split() == ["y-mega-00000031", "RUNNING", "(requeued", "2x)", "31", "2-02:00:00", "50.00", "40/100"]
    assert rows[1].split() == ["z-micro-00000032", "COMPLETED"]


def test_status_shows_each_stage_headline_metric_while_running_and_when_done():
    from medminds_hpc import experiments
    from medminds_hpc.context import StageContext

    expert = runs.create("expert-task-micro-00000041", {"experiment": "expert-task", "dataset": "micro", "executor": "local",
                                                         "headline_metric": "task_accuracy"})
    ctx = StageContext(run=expert)
    ctx.record_headline({"epoch": 1.0, "accuracy": 0.175, "task_accuracy": 0.75}, epoch=1.0)  # what the engine does per epoch
    assert status.collect([expert.reload()])[0].headline == "task_accuracy 0.750 (epoch 1)"
    (expert.dir / "metrics.json").write_text('{"accuracy": 0.175, "task_accuracy": 0.99}')
    expert.update(lambda d: d.update(state=runs.COMPLETED))
    assert status.collect([expert])[0].headline == "task_accuracy 0.990"  # the same name when done
    baseline = runs.create("baseline-nextword-micro-00000042", {"experiment": "baseline-nextword", "dataset": "micro"})
    (baseline.dir / "metrics.json").write_text('{"accuracy": 0.31}')
    assert status.collect([baseline])[0].headline == "accuracy 0.310"
    # what each stage declares, and submit records in run.json
    assert experiments.load("expert-task").stage_info.headline == "task_accuracy"
    assert experiments.load("prepare").stage_info.headline == "rows"
    assert experiments.load("baseline-nextword").stage_info.headline == "accuracy"
    prepared = runs.create("prepare-micro-00000043", {"experiment": "prepare", "dataset": "micro", "headline_metric": "rows"})
    prepared.update(lambda d: d.update(state=runs.COMPLETED, results={"0": {"rows": 12500, "up_to_date": False}}))
    assert status.collect([prepared])[0].headline == "rows 12,500"  # what the stage returned (prepare writes no metrics.json)
