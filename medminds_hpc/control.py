"""Acting on existing runs: logs, cancel, and `doctor` (a short job per GPU type that reports what it sees)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, TextIO

from medminds_hpc import clusters, fileio, localjobs, runs, status
from medminds_hpc.errors import UserError


def log_files(run: runs.Run) -> list[Path]:
    """The log files of the run's latest job (submitit: <job>_<task>_log.out, arrays <array>_<i>_0_log.out)."""
    ids = status.current_job_ids(run)
    files: list[Path] = []
    for jid in ids:
        for suffix in ("out", "err"):
            files += sorted(run.log_dir.glob(f"{jid}_*log.{suffix}"))
    return files


def print_logs(query: str, follow: bool, out: TextIO, poll_s: float = 1.0, max_wait_s: float | None = None) -> None:
    run = runs.find(query)
    if not run.job_ids:
        raise UserError(f"run {run.id} has no job yet (state {run.state})")
    offsets: dict[Path, int] = {}
    started = time.monotonic()
    while True:
        for f in log_files(run):
            pos = offsets.get(f, 0)
            try:
                with open(f, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except OSError:
                continue
            if chunk:
                if len(log_files(run)) > 1 and pos == 0:
                    out.write(f"==> {f} <==\n")
                out.write(chunk.decode("utf-8", "replace"))
                out.flush()
                offsets[f] = pos + len(chunk)
        if not follow:
            if not offsets:
                out.write(f"(no log yet for job {run.last_job_id} in {run.log_dir}; state {status.collect([run])[0].state})\n")
            return
        (st,) = status.collect([run.reload()])
        if st.state not in runs.ACTIVE_STATES and offsets:
            return
        if max_wait_s is not None and time.monotonic() - started > max_wait_s:
            return
        time.sleep(poll_s)


def cancel(query: str) -> str:
    """Stop every live job the run has recorded (every submission, every array task), then mark it CANCELLED."""
    run = runs.find(query)
    with runs.submission_lock(run.id):  # no submission of this run can slip in between
        run.reload()
        stopped = stop_jobs(run)
        if not stopped:
            return f"{run.id}: nothing to cancel (state {status.collect([run])[0].state})"
        if run.state != runs.COMPLETED:  # a finished run stays finished (the live job was a stray duplicate)
            run.update(lambda d: d.update(state=runs.CANCELLED, error="cancelled by the user"))
    return f"{run.id}: cancelled job {', '.join(stopped)}"


def live_job_ids(run: runs.Run) -> list[str]:
    """The run's recorded job ids whose jobs may still be running or waiting."""
    ids = run.job_ids
    executor = run.data.get("executor")
    if executor == "local":
        return [j for j in ids if localjobs.alive(j, run.log_dir)]
    if executor != "slurm":
        return []
    known = status.scheduler_states(ids)
    if status.UNANSWERED and any(j not in known for j in ids):
        raise UserError(f"{run.id}: Slurm did not answer ({'; '.join(status.UNANSWERED)}); nothing was cancelled: "
                        "try again when `squeue` answers")
    final = {runs.COMPLETED, runs.FAILED, runs.CANCELLED, "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
    # A job neither sacct nor squeue knows (yet) was just submitted, and a preempted or timed-out one may be on its
    # way back into the queue (requeue), unless the run itself has ended.
    maybe = {runs.TIMEOUT, runs.PREEMPTED}
    run_active = run.state in runs.ACTIVE_STATES
    return [j for j in ids if (run_active if j not in known or known[j].state in maybe else known[j].state not in final)]


def stop_jobs(run: runs.Run) -> list[str]:
    """Cancel the run's live jobs; returns their ids. Local jobs are stopped for good before this returns."""
    ids = live_job_ids(run)
    if not ids:
        return []
    if run.data.get("executor") == "slurm":
        proc = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
        gone = ("already completing or completed", "Invalid job id")
        errors = [line for line in proc.stderr.splitlines() if line.strip() and not any(g in line for g in gone)]
        if proc.returncode != 0 and errors:
            raise UserError(f"scancel {' '.join(ids)} failed: {' | '.join(errors)}")
    else:
        stuck = [j for j in ids if not localjobs.stop(j, run.log_dir)]
        if stuck:
            raise UserError(f"{run.id}: local job {', '.join(stuck)} survived SIGKILL; see `ps -g {stuck[0]}` "
                            "(a process stuck in the kernel, e.g. on a hung filesystem)")
    return ids


def doctor(cluster: str | None, executor: str | None, gpu_types: list[str], say: Callable[[str], None]) -> list[runs.Run]:
    """Submit the `doctor` experiment once per GPU type and print what each job found.

    Every input (cluster, executor, GPU types, $MEDMINDS_HOME) and every GPU type's run is checked before the
    first is submitted: a bad one is one line, and nothing is written (no lock, no run folder).
    """
    import dataclasses

    from medminds_hpc import paths, submit as submit_mod

    profile = clusters.load_profile(cluster)
    chosen = list(dict.fromkeys(gpu_types)) or sorted(profile.gpus)
    unknown = [g for g in chosen if g not in profile.gpus]
    if unknown:
        raise UserError(f"--gpu: unknown GPU type(s) {', '.join(unknown)} on cluster {profile.name}; valid GPU types: {', '.join(sorted(profile.gpus))}")
    submit_mod.check_executor(executor or submit_mod.default_executor())
    options = [submit_mod.SubmitOptions(dataset="micro", cluster=profile.name if not cluster else cluster, executor=executor,
                                        overrides=[f"expect_gpu={gpu}", f"resources.gpu={gpu}", "resources.time=00:10:00"],
                                        force=True, wait=False) for gpu in chosen]
    for opts in options:  # a dry run plans and checks the run, writing nothing
        submit_mod.submit("doctor", dataclasses.replace(opts, dry_run=True), say=lambda _message: None)
    paths.check_home()  # last: its probe file, removed at once, still touches the folder's mtime
    out = []
    for opts in options:
        planned = submit_mod.submit("doctor", opts, say=say)
        out.append(planned[-1])
    reports = []
    for p in out:
        run = runs.get(p.run_id)
        say(f"waiting for {p.run_id} (job {', '.join(p.job_ids)}) ...")
        submit_mod.wait_for_run(p)
        run = run.reload()
        reports.append(run)
        from medminds_hpc.stages.doctor import REPORT_FILE

        report_file = run.dir / REPORT_FILE
        metrics = fileio.read_json(report_file) if report_file.exists() else {}
        say(f"== {p.resolved.config.expect_gpu} ({p.run_id}) ==")
        for key, value in metrics.items():
            say(f"  {key}: {value}")
    return reports
