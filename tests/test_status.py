"""status: parsing sacct, the squeue fallback, local runs, following logs, settled runs, filters and --watch."""

import io
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from medminds_hpc import cli as cli_mod
from medminds_hpc import control, runs, status, submit
from medminds_hpc.errors import UserError
from tests.helpers import (assert_user_error, cli, counter_job, quiet, run_cli, submit_options, tree_snapshot,
                           without_root_override, write_job)


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


def script(bin_dir, name, body):
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_a_squeue_that_cannot_reach_the_controller_is_said_not_hidden(tmp_path, monkeypatch):
    """sacct (slurmdbd) answers but does not know job 13; squeue must be asked: a controller that refuses, or one
    that does not answer within the time limit, is reported; squeue's "Invalid job id" is an answer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "sacct", "11|RUNNING|50|cpu=1|gpu001|0:0|x")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    script(bin_dir, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1")
    assert set(status.scheduler_states(["11", "13"])) == {"11"}
    assert status.UNANSWERED == ["squeue: slurm_load_jobs error: Unable to contact slurm controller (connect failure)"]
    script(bin_dir, "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1")
    status.scheduler_states(["11", "13"])
    assert status.UNANSWERED == []
    script(bin_dir, "squeue", "exec sleep 5")
    monkeypatch.setattr(status, "SQUEUE_TIMEOUT_S", 0.3)
    start = time.monotonic()
    status.scheduler_states(["11", "13"])
    assert time.monotonic() - start < 3 and status.UNANSWERED == ["squeue gave no answer within 0.3 s"]
    status.scheduler_states(["11"])  # sacct knew everything: squeue is not asked, nothing is missing
    assert status.UNANSWERED == []


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


def slurm_run(run_id: str, state: str, job_ids: list[str], **extra) -> runs.Run:
    experiment = run_id.rsplit("-", 2)[0]
    run = runs.create(run_id, {"experiment": experiment, "dataset": "micro", "executor": "slurm"})
    run.update(lambda d: d.update(state=state, job_ids=job_ids, submissions=[{"job_ids": job_ids}], **extra))
    return run


def sacct_calls(bin_dir) -> list[str]:
    calls = bin_dir / "sacct.calls"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sacct and squeue on PATH that log their calls; sacct knows jobs 51 (ended), 52 (running) and 54 (preempted)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "sacct", "51|COMPLETED|7200|gres/gpu=2|gpu001|0:0|x\n52|RUNNING|60|gres/gpu=1|gpu002|0:0|x\n"
                                "54|PREEMPTED|60|gres/gpu=1|gpu002|0:0|x")
    fake_tool(bin_dir, "squeue", "")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_an_ended_run_is_settled_once_then_read_without_sacct_or_metrics(fake_slurm):
    done = slurm_run("a-micro-00000051", runs.COMPLETED, ["51"], headline_metric="accuracy")
    (done.dir / "metrics.json").write_text('{"accuracy": 0.42}')
    live = slurm_run("b-micro-00000052", runs.RUNNING, ["52"])
    first = status.collect([done, live])
    assert [r.state for r in first] == ["COMPLETED", "RUNNING"] and first[0].gpu_hours == 4.0
    (call,) = sacct_calls(fake_slurm)
    assert "-j 51,52 " in call
    done = runs.get(done.id)
    assert status.settled(done) is not None and status.settled(runs.get(live.id)) is None
    (done.dir / "metrics.json").unlink()  # the settled run needs it no more
    again = status.collect([done, runs.get(live.id)])
    assert "-j 52 " in sacct_calls(fake_slurm)[1]  # only the running run's job is asked about
    assert (again[0].state, again[0].gpu_hours, again[0].headline, again[0].node) == ("COMPLETED", 4.0, "accuracy 0.420", "gpu001")
    assert (again[1].state, again[1].gpu_hours) == (first[1].state, first[1].gpu_hours)
    status.collect([runs.get(done.id)])
    assert len(sacct_calls(fake_slurm)) == 2  # nothing left to ask sacct about
    # a resubmission changes the run: it is asked about again
    done.update(lambda d: d.update(state=runs.PENDING, job_ids=["51", "53"], submissions=[{"job_ids": ["51"]}, {"job_ids": ["53"]}]))
    assert status.settled(done) is None
    assert status.collect([done])[0].state == runs.PENDING and "-j 51,53 " in sacct_calls(fake_slurm)[-1]


def test_a_run_is_not_settled_while_its_job_may_still_change(fake_slurm):
    # the run recorded COMPLETED, but its job is still in sacct's RUNNING (the job's last moments)
    ending = slurm_run("c-micro-00000052", runs.COMPLETED, ["52"])
    # sacct does not know job 60: settled only when the run ended over an hour ago (sacct purged it)
    recent = slurm_run("d-micro-00000060", runs.FAILED, ["60"], error="boom")
    old = slurm_run("e-micro-00000060", runs.FAILED, ["60"], error="boom")
    old.update(lambda d: d.update(updated_at="2026-01-01T00:00:00+00:00"), touch=False)
    # Slurm may still requeue a preempted job under the same id
    preempted = slurm_run("h-micro-00000054", runs.CANCELLED, ["54"], error="cancelled by the user")
    status.collect([ending, recent, old, preempted])
    assert [status.settled(runs.get(r.id)) is not None for r in (ending, recent, old, preempted)] == [False, False, True, False]
    # sacct failing says nothing about what it knows
    (fake_slurm / "sacct").write_text("#!/bin/sh\nexit 1\n")
    older = slurm_run("f-micro-00000061", runs.FAILED, ["61"], error="boom")
    older.update(lambda d: d.update(updated_at="2026-01-01T00:00:00+00:00"), touch=False)
    status.collect([older])
    assert status.settled(runs.get(older.id)) is None


def test_a_run_this_user_cannot_write_is_shown_all_the_same_only_not_settled(fake_slurm):
    done = slurm_run("g-micro-00000051", runs.COMPLETED, ["51"])
    os.chmod(done.dir, 0o555)  # a colleague's run
    try:
        proc = run_cli("status", "--json", env={"PATH": os.environ["PATH"]}, preexec_fn=without_root_override)
    finally:
        os.chmod(done.dir, 0o755)
    assert proc.returncode == 0, proc.stderr
    assert [(r["state"], r["gpu_hours"]) for r in json.loads(proc.stdout)] == [("COMPLETED", 4.0)]
    assert status.settled(runs.get(done.id)) is None


def filter_runs() -> None:
    for run_id, state, exe in [("expert-task-micro-00000071", runs.RUNNING, "local"), ("expert-arc-micro-00000072", runs.COMPLETED, "local"),
                               ("moe-linear-micro-00000073", runs.FAILED, "local")]:
        runs.create(run_id, {"experiment": run_id.rsplit("-", 2)[0], "dataset": "micro", "executor": exe}).update(
            lambda d, state=state: d.update(state=state, error="boom" if state == runs.FAILED else None))


def table_ids(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[3:] if line and not line.startswith(("no run matches", "... and"))]


def test_state_and_experiment_filters_in_the_table_and_in_json():
    filter_runs()

    def shown(**query) -> list[str]:
        return [r.run.id for r in status.answer(status.Query(**query)).rows]

    assert shown(experiment="expert-*") == ["expert-arc-micro-00000072", "expert-task-micro-00000071"]
    assert shown(experiment="expert-task") == ["expert-task-micro-00000071"]  # a glob matches whole names
    assert shown(experiment="expert-*", states={"RUNNING", "FAILED"}) == ["expert-task-micro-00000071"]
    proc = run_cli("status", "--state", "completed,Failed", "--json")
    assert proc.returncode == 0 and [r["run"] for r in json.loads(proc.stdout)] == ["expert-arc-micro-00000072", "moe-linear-micro-00000073"]
    proc = run_cli("status", "-e", "expert-*", "--state", "running")
    assert proc.returncode == 0 and table_ids(proc.stdout) == ["expert-task-micro-00000071"]


def test_filters_matching_nothing_show_an_empty_table_and_say_so():
    filter_runs()
    proc = run_cli("status", "--experiment", "baseline-*", "--state", "pending")
    assert proc.returncode == 0, proc.stderr
    assert table_ids(proc.stdout) == [] and proc.stdout.splitlines()[1].split() == list(status.HEADERS)
    assert "no run matches --experiment 'baseline-*' --state PENDING (3 runs in" in proc.stdout
    proc = run_cli("status", "--experiment", "baseline-*", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == [] and "no run matches --experiment 'baseline-*'" in proc.stderr


# $MEDMINDS_HOME: a file is one line and exit 2; a home not made yet has no runs; status writes nothing either way
HOME_ERROR_ARGS = [["status"], ["status", "--json"], ["status", "-e", "expert-*"], ["status", "some-run"], ["status", "--watch", "2"]]


@pytest.mark.parametrize("below", [False, True], ids=["home-is-a-file", "home-under-a-file"])
def test_a_home_that_is_a_file_is_one_line_naming_it_and_nothing_is_written(tmp_path, below):
    taken = tmp_path / "home-file"
    taken.write_text("not a folder")
    home = taken / "below" if below else taken
    before = tree_snapshot(tmp_path)
    for args in HOME_ERROR_ARGS:
        proc = run_cli(*args, env={"MEDMINDS_HOME": str(home)}, timeout=60)
        assert_user_error(proc, f"MEDMINDS_HOME={home}", f"{taken} is a file, not a directory",
                          "set MEDMINDS_HOME to the folder that holds your runs/")
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # one line (rich may wrap it)
    assert tree_snapshot(tmp_path) == before
    assert taken.read_text() == "not a folder"


def test_a_runs_entry_that_is_a_file_is_one_line(medminds_home, tmp_path):
    (medminds_home / "runs").write_text("")
    before = tree_snapshot(tmp_path)
    assert_user_error(run_cli("status"), f"holds a file {medminds_home / 'runs'} where its runs folder belongs")
    assert tree_snapshot(tmp_path) == before


def test_a_home_not_made_yet_has_no_runs_said_in_one_line_and_status_makes_nothing(tmp_path):
    home = tmp_path / "not-yet" / "home"
    env = {"MEDMINDS_HOME": str(home)}
    before = tree_snapshot(tmp_path)
    proc = run_cli("status", env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"no runs yet: MEDMINDS_HOME={home} does not exist") and "medminds submit" in line
    proc = run_cli("status", "--json", env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [] and proc.stderr.startswith("no runs yet: ")
    proc = run_cli("status", "-e", "expert-*", env=env)  # a filter still shows what it matched against
    assert proc.returncode == 0 and "no run matches --experiment 'expert-*' (0 runs in" in proc.stdout
    assert_user_error(run_cli("status", "expert-task-micro-00000001", env=env), "no run matches", "there are no runs yet")
    assert tree_snapshot(tmp_path) == before and not (tmp_path / "not-yet").exists()


def test_an_empty_home_says_there_are_no_runs_yet_and_stays_empty(medminds_home, tmp_path):
    before = tree_snapshot(tmp_path)
    proc = run_cli("status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"no runs yet in {medminds_home / 'runs'}: submit one with `medminds submit "
                                        "EXPERIMENT --dataset micro` (`medminds list` shows them), or try `medminds demo`"]
    ans = status.answer(status.Query())
    assert ans.home_exists and status.render(ans, status.Query(), "title") == proc.stdout.strip()
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("args, needles", [
    (["--state", "runing"], ["--state 'runing'", "unknown state RUNING", "RUNNING, SUBMITTING"]),
    (["--state", ","], ["--state ','", "no state given", "valid states"]),
    (["--watch", "0.5"], ["--watch 0.5", "at least 2 seconds", "use --watch 2 or more"]),
    (["--watch", "--json"], ["--watch", "--json", "use one of them"]),
])
def test_bad_status_options_stop_with_one_line_and_exit_code_2(args, needles):
    assert_user_error(run_cli("status", *args), *needles)


def test_watch_without_a_value_takes_the_default_interval():
    assert cli_mod.optional_value(["m", "status", "--watch"], "--watch", "2") == ["m", "status", "--watch", "2"]
    assert cli_mod.optional_value(["m", "status", "--watch", "-e", "x*"], "--watch", "2") == ["m", "status", "--watch", "2", "-e", "x*"]
    assert cli_mod.optional_value(["m", "status", "--watch", "7.5", "r1"], "--watch", "2") == ["m", "status", "--watch", "7.5", "r1"]
    assert cli_mod.optional_value(["m", "status", "r1"], "--watch", "2") == ["m", "status", "r1"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_watch_redraws_each_interval_and_stops_cleanly_on_ctrl_c(tty, monkeypatch):
    monkeypatch.setenv("COLUMNS", "7")
    monkeypatch.setenv("LINES", "30")
    frames, asked = [], []

    def frame(max_rows):
        asked.append(max_rows)
        if len(asked) == 3:
            raise KeyboardInterrupt  # Ctrl-C while a frame is built (e.g. during the sacct call)
        frames.append(time.monotonic())
        return f"frame {len(asked)}\nrow"

    out = Terminal() if tty else io.StringIO()
    status.watch(frame, 0.2, out)
    assert len(frames) == 2 and frames[1] - frames[0] >= 0.19
    text = out.getvalue()
    if tty:  # cursor home, each line cut to the width and cleared to its end: overwritten, never blanked
        assert text.count("\x1b[H") == 3 and "frame 2\x1b[K\nrow\x1b[K\x1b[J" in text and asked == [24, 24, 24]
        monkeypatch.setenv("COLUMNS", "5")
        out = Terminal()
        asked.clear()
        status.watch(frame, 0.01, out)
        assert "\x1b[Hframe\x1b[K\nrow\x1b[K\x1b[J" in out.getvalue()
    else:
        assert text == "frame 1\nrow\n\nframe 2\nrow\n\n\n" and asked == [None, None, None]


def test_watch_shows_what_fits_the_terminal_and_how_many_more():
    rows = [status.RunStatus(runs.Run(runs.paths.runs_dir() / f"r{i}", {"run_id": f"r{i}"}), "RUNNING", str(i)) for i in range(5)]
    text = status.render(status.Answer(rows, 5, []), status.Query(), "title", max_rows=2)
    assert table_ids(text) == ["r0", "r1"] and text.endswith("... and 3 more runs; narrow them with --state or --experiment")


@pytest.mark.slow
@pytest.mark.slurm
def test_watch_asks_sacct_once_per_refresh_and_exits_0_on_ctrl_c(tmp_path):
    """A real job on the dev cluster, sacct behind a wrapper that logs each call and runs the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        real = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
        (bin_dir / name).write_text(f'#!/bin/sh\necho "$@" >> {bin_dir}/{name}.calls\nexec {real} "$@"\n')
        (bin_dir / name).chmod(0o755)
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 60"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        slurm_run("watched-micro-00000081", runs.RUNNING, [job])
        started = time.monotonic()
        proc = subprocess.Popen(cli("status", "--watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
        time.sleep(5.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["scancel", job], check=False)
    assert proc.returncode == 0 and "Traceback" not in err and err == "", err
    frames = [block for block in out.split("\n\n") if "(every 2 s, Ctrl-C to stop)" in block]
    calls = sacct_calls(bin_dir)
    assert 2 <= len(frames) <= elapsed / 2 + 1, (len(frames), elapsed)
    assert len(calls) == len(frames) and all(f"-j {job} " in c for c in calls)
    assert all(job in f and ("RUNNING" in f or "PENDING" in f) for f in frames)


@pytest.mark.slow
def test_status_of_10000_runs(tmp_path):
    """Half finished local runs, half running Slurm jobs: one table, one sacct call (its time is printed;
    the target lives in benchmarks/cli_speed.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "sacct", "")
    fake_tool(bin_dir, "squeue", "")
    root = runs.paths.runs_dir()
    for i in range(10_000):
        slurm = i % 2 == 0
        run_id = f"{'expert-task' if slurm else 'baseline'}-micro-{i:08x}"
        (root / run_id).mkdir(parents=True)
        (root / run_id / runs.RUN_FILE).write_text(json.dumps(
            {"run_id": run_id, "experiment": run_id.rsplit("-", 2)[0], "dataset": "micro", "executor": "slurm" if slurm else "local",
             "state": runs.RUNNING if slurm else runs.COMPLETED, "job_ids": [str(100000 + i)], "updated_at": "2026-11-01T00:00:00+00:00",
             "progress": {"0": {"step": i % 250, "total": 250}}}))
    started = time.perf_counter()
    proc = run_cli("status", "--json", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    print(f"status --json of 10,000 runs: {time.perf_counter() - started:.2f} s")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert len(listed) == 10_000 and sum(r["state"] == runs.RUNNING for r in listed) == 5_000
    (call,) = sacct_calls(bin_dir)
    assert len(call.split("-j ")[1].split()[0].split(",")) == 5_000  # the running runs' jobs only


# doctor: every input and every GPU type's run checked before anything is written ----------------------------------
@pytest.mark.parametrize("case, args, needles", [
    ("cluster", ["--cluster", "nope", "--executor", "local"], ["unknown cluster profile 'nope'", "valid profiles: dev"]),
    ("executor", ["--cluster", "dev", "--executor", "bogus"], ["unknown executor 'bogus'", "valid executors: slurm, local, debug"]),
    ("gpu", ["--cluster", "dev", "--executor", "local", "--gpu", "a100", "--gpu", "zz"], ["--gpu: unknown GPU type(s) zz", "valid GPU types: a100"]),
    ("no-sbatch", ["--cluster", "dev", "--executor", "slurm"], ["--executor slurm: sbatch is not on PATH", "--executor local"]),
    ("home-file", ["--cluster", "dev", "--executor", "local"], ["is not a directory", "set MEDMINDS_HOME to a directory you can write"]),
    ("home-under-file", ["--cluster", "dev", "--executor", "local"], ["cannot be created:", "is not a directory"]),
])
def test_doctor_that_fails_is_one_line_and_writes_nothing(medminds_home, tmp_path, case, args, needles):
    env = {}
    if case == "no-sbatch":
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")
    if case.startswith("home-"):
        (tmp_path / "home-file").write_text("not a folder")
        env["MEDMINDS_HOME"] = str(tmp_path / "home-file" / "below" if case == "home-under-file" else tmp_path / "home-file")
    before = tree_snapshot(tmp_path)
    proc = run_cli("doctor", *args, env=env, timeout=120)
    assert_user_error(proc, *needles)
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # one line (rich may wrap it)
    assert tree_snapshot(tmp_path) == before  # no lock, no runs/, no run folder


def test_doctor_checks_every_gpu_types_run_before_submitting_the_first(medminds_home, tmp_path, monkeypatch):
    """A check that only the third GPU type's run fails (here: its planning) stops doctor before the first is submitted."""
    checked = []
    plan = submit.plan

    def plan_failing_on_v100(name, opts):
        checked.append(next(o for o in opts.overrides if o.startswith("resources.gpu=")))
        if "resources.gpu=v100" in opts.overrides:
            raise UserError("the v100 run cannot be planned")
        return plan(name, opts)

    def never(*_args, **_kw):
        raise AssertionError("a run was created before every GPU type's run was checked")

    monkeypatch.setattr(submit, "plan", plan_failing_on_v100)
    monkeypatch.setattr(submit, "_prepare_run", never)
    before = tree_snapshot(tmp_path)
    with pytest.raises(UserError, match="the v100 run cannot be planned"):
        control.doctor("dev", "local", [], say=quiet)
    assert checked == ["resources.gpu=a100", "resources.gpu=rtx8000", "resources.gpu=v100"]
    assert tree_snapshot(tmp_path) == before
