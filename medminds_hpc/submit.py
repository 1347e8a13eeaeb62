"""`medminds submit`: resolve an experiment and what it needs into runs, and hand them to submitit.

    medminds submit moe-linear --dataset mini      # submits the missing experts first, with afterok dependencies

Each needed experiment resolves to a finished run (used as is), an active run (its job becomes a
dependency), or a new/failed run, submitted now. Dependants use `afterok` with `kill_on_invalid_dep=yes`, so
a failed upstream cancels them instead of leaving them pending forever.

Each run is decided and submitted under its submission lock (runs.submission_lock): identical commands started
at the same moment, on one host or several, make one job per run, and the others report that job. Ctrl-C while
waiting stops a local job (the run stays resumable) or, for Slurm, stops only the waiting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from medminds_hpc import clusters, compat, control, experiments, localjobs, memory, paths, preflight, runs, status
from medminds_hpc.errors import StageNotImplemented, UserError, many

EXECUTORS = ("slurm", "local", "debug")


@dataclass
class SubmitOptions:
    dataset: str
    cluster: str | None = None
    executor: str | None = None
    model: str | None = None
    overrides: list[str] = field(default_factory=list)
    dry_run: bool = False
    force: bool = False
    wait: bool | None = None  # default: wait for local/debug jobs, not for Slurm ones


@dataclass
class PlannedRun:
    resolved: experiments.Resolved
    resources: clusters.JobResources
    run_id: str
    needs: dict[str, str]
    existing: runs.Run | None
    action: Literal["new", "fresh", "resume", "active", "done"]
    live_state: str | None = None
    job_ids: list[str] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    force: bool = False  # start afresh (--force, for the command's own experiment)
    memory: memory.Fit | None = None  # the GPU memory estimate beside the GPU type's memory_gb

    @property
    def name(self) -> str:
        return self.resolved.experiment.name


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; valid executors: {', '.join(EXECUTORS)}")
    if executor == "slurm" and not shutil.which("sbatch"):
        raise UserError("--executor slurm: sbatch is not on PATH (not a Slurm login node?); use --executor local to run here")


class Problems:
    """Every problem found while planning, so one error lists them all (one line each) before anything is written."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @contextlib.contextmanager
    def collect(self) -> Any:
        try:
            yield
        except UserError as e:
            self.lines += e.problems

    def raise_any(self) -> None:
        if self.lines:
            raise many(self.lines)


UNPLANNED = "?"  # the run id downstream runs see for an upstream run whose planning failed (the command fails)


def plan(name: str, opts: SubmitOptions) -> list[PlannedRun]:
    """Every run the command involves, upstream first, with what will happen to each; every problem of every run
    (parameters, resources, model, data) in one error. Writes nothing."""
    experiments.check_dataset(opts.dataset)
    profile = clusters.load_profile(opts.cluster)
    ordered: list[PlannedRun] = []
    by_name: dict[str, str] = {}
    models: list[str] = []
    problems = Problems()
    routed, unrouted = experiments.split_overrides(name, _chain(name), opts.overrides)
    problems.lines += unrouted

    def visit(exp_name: str, chain: tuple[str, ...], top: bool) -> str:
        if exp_name in chain:
            raise UserError(f"experiment {exp_name} needs itself: {' -> '.join(chain + (exp_name,))}")
        if exp_name in by_name:
            return by_name[exp_name]
        exp = experiments.load(exp_name)
        needs = {n: visit(n, chain + (exp_name,), False) for n in exp.needs}
        by_name[exp_name] = UNPLANNED
        if (model := experiments.model_of(exp, opts.model)) is not None:
            models.append(model)
        resolved = experiments.bind(exp, opts.dataset, opts.model, routed.get(exp_name, []))
        p = plan_checked(resolved, needs, profile, problems, force=top and opts.force)
        if p is not None:
            by_name[exp_name] = p.run_id
            ordered.append(p)
        return by_name[exp_name]

    visit(name, (), True)
    problems.lines += preflight.problems(ordered, models)
    problems.raise_any()
    return ordered


def plan_checked(resolved: experiments.Resolved, needs: dict[str, str], profile: clusters.ClusterProfile,
                 problems: Problems, force: bool = False) -> PlannedRun | None:
    """`planned_run`, its problems and those of its parameters and resources (both checked) added to `problems`."""
    problems.lines += resolved.problems
    with problems.collect():
        resources = job_resources(resolved, profile)
        if not resolved.problems:
            return planned_run(resolved, needs, profile, force=force, resources=resources)
    return None


def job_resources(resolved: experiments.Resolved, profile: clusters.ClusterProfile) -> clusters.JobResources:
    exp, dataset = resolved.experiment, resolved.dataset
    return clusters.job_resources(profile, dataset, exp.resources.get(dataset, {}), resolved.resource_overrides,
                                  where=f"experiment {exp.name} on cluster {profile.name} ({dataset})")


def planned_run(resolved: experiments.Resolved, needs: dict[str, str], profile: clusters.ClusterProfile, force: bool = False,
                resources: clusters.JobResources | None = None) -> PlannedRun:
    """One run of an experiment bound to its upstream runs: its id, resources, memory estimate and what happens to it."""
    exp, dataset = resolved.experiment, resolved.dataset
    resources = resources or job_resources(resolved, profile)
    cfg = resolved.config
    if resources.world_size > 1 and isinstance(getattr(cfg, "batch_size", None), int) and isinstance(getattr(cfg, "grad_accum", None), int):
        from medminds_hpc.training.engine import per_device_batch  # imports no training library itself

        per_device_batch(cfg.batch_size, cfg.grad_accum, resources.world_size,
                         where=f"experiment {exp.name} ({dataset}, {resources.world_size} ranks: resources.nodes x gpus)")
    run_id = runs.make_run_id(exp.name, dataset, resolved.identity(needs))
    p = PlannedRun(resolved, resources, run_id, needs, None, "new", force=force)
    p.memory = memory.for_run(exp.name, run_id, exp.stage, resolved.params, resolved.model, resources.gpu,
                              {n: g.memory_gb for n, g in profile.gpus.items()})
    decide(p)
    return p


def decide(p: PlannedRun, *, locked: bool = False, since: float | None = None) -> None:
    """Set what happens to the run from what is on disk and in the scheduler now: new, fresh, resume, active, done.

    `locked`: the caller holds the run's submission lock, so a run still SUBMITTING with no job is a submission
    that died, not one in progress. `since`: when this command started; a run submitted after it was started
    afresh by an identical --force command running at the same time, and is not started afresh again.
    """
    existing = runs.get(p.run_id)
    p.existing, p.action, p.live_state, p.job_ids = existing, "new", None, []
    if existing is None:
        return
    recent = since is not None and any(s.get("submitted_s", 0) >= since for s in existing.data.get("submissions", []))
    if p.force and not recent:
        p.action = "fresh"
        return
    (st,) = status.collect([existing])
    p.live_state = st.state
    dead_submission = locked and existing.state == runs.SUBMITTING and not existing.job_ids
    if st.state == runs.COMPLETED:
        p.action = "done"
    elif st.state in runs.ACTIVE_STATES and not dead_submission:
        p.action, p.job_ids = "active", status.current_job_ids(existing)
    else:
        p.action = "resume"


def _chain(name: str) -> list[str]:
    """`name` and everything it needs, transitively (for routing overrides; cycles are reported by plan)."""
    seen: list[str] = []
    stack = [name]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.append(current)
            stack += experiments.load(current).needs
    return seen


def _folder(run_id: str) -> Path:
    return paths.runs_dir() / run_id / "logs"


def make_executor(executor: str, run_id: str, resources: clusters.JobResources, dependencies: list[str], script_only: bool = False,
                  folder: Path | None = None):
    """The submitit executor for one run; `script_only` (dry runs) renders sbatch scripts without Slurm installed.
    `folder`: where submitit writes (default: the run's logs/; a job array of several runs passes its own)."""
    import submitit

    folder = folder or _folder(run_id)
    if executor == "slurm":
        ex = compat.slurm_executor(folder, resources.max_requeues, script_only=script_only)
        extra: dict[str, Any] = {"requeue": True}
        params = resources.slurm_parameters()
        if dependencies:
            params["dependency"] = "afterok:" + ":".join(dependencies)
            extra["kill_on_invalid_dep"] = "yes"
        ex.update_parameters(job_name=run_id, comment=f"medminds {run_id}", additional_parameters=extra, **params)
        return ex
    if executor == "local":
        ex = localjobs.executor(folder, max_num_timeout=resources.max_requeues)
        ex.update_parameters(timeout_min=resources.time_min, signal_delay_s=min(resources.signal_delay_s, 30))
        return ex
    return submitit.DebugExecutor(folder=folder)


def sbatch_script(p: PlannedRun, dependencies: list[str]) -> str:
    """The sbatch script submitit will write for this run (for --dry-run and the golden test)."""
    ex = make_executor("slurm", p.run_id, p.resources, dependencies, script_only=True)
    if p.resolved.shards > 1:
        ex.parameters["map_count"] = p.resolved.shards
    return compat.sbatch_text(ex)


def _record(p: PlannedRun, executor: str) -> dict[str, Any]:
    return {
        "experiment": p.name, "stage": p.resolved.experiment.stage, "dataset": p.resolved.dataset,
        "config_hash": p.run_id.rsplit("-", 1)[-1],  # make_run_id's last part
        "model": p.resolved.model, "params": p.resolved.params, "needs": p.needs,
        "shards": p.resolved.shards, "executor": executor, "cluster": p.resources.cluster,
        "resources": vars(p.resources).copy(), "experiment_file": str(p.resolved.experiment.path),
        "python": sys.executable, "headline_metric": p.resolved.experiment.stage_info.headline,
    }


def _check_stages_implemented(to_run: list[PlannedRun]) -> None:
    """Refuse the whole command, naming the target's stage first, if any stage it needs is not built yet."""
    problems = []
    for p in reversed(to_run):
        try:
            p.resolved.experiment.stage_info.run_function()
        except StageNotImplemented as e:
            problems.append(f"experiment {p.name}: {e}")
    if problems:
        raise StageNotImplemented("; ".join(dict.fromkeys(problems)))


class Interrupted(Exception):
    """Ctrl-C during `submit`: the message says what became of the runs and how to go on."""


def submit(name: str, opts: SubmitOptions, say: Callable[[str], None] = print) -> list[PlannedRun]:
    executor = opts.executor or default_executor()
    # a dry run prints the profile's sbatch script anywhere, Slurm installed or not
    check_executor("debug" if opts.dry_run and executor == "slurm" else executor)
    planned = plan(name, opts)
    to_run = [p for p in planned if p.action in ("new", "fresh", "resume")]
    _check_stages_implemented(to_run)  # refuse before anything is written or submitted
    memory.refuse_overfull([p.memory for p in to_run], top=name)  # likewise: a run that cannot fit its GPU
    found = home_folders()
    if not opts.dry_run:
        paths.check_home()
    for note in preflight.model_notes(planned):
        say(note)
    if opts.dry_run:
        for p in planned:
            deps = [j for n in p.resolved.experiment.needs for j in _dep_ids(planned, n)]
            say(f"# {p.run_id}: {p.action} ({p.resources.summary()})")
            say(f"# config: {p.resolved.params}")
            if p.memory is not None:
                say(f"# GPU memory: {p.memory.describe()}")
            if p.action in ("new", "fresh", "resume"):
                say(sbatch_script(p, deps))
        return planned
    wait = opts.wait if opts.wait is not None else executor != "slurm"
    started = time.time()
    jobs: dict[str, Any] = {}
    try:
        for p in planned:
            if executor != "slurm":  # no scheduler: upstream runs end first (ours, or another command's)
                for n in p.resolved.experiment.needs:
                    _await_upstream(next(q for q in planned if q.name == n), jobs)
            with runs.submission_lock(p.run_id):
                decide(p, locked=True, since=started)
                if p.action == "done":
                    say(f"{p.run_id}: already COMPLETED ({p.existing.dir})")
                    continue
                if p.action == "active":
                    say(f"{p.run_id}: already {p.live_state} as job {', '.join(p.job_ids)}")
                    continue
                deps = [j for n in p.resolved.experiment.needs for j in _dep_ids(planned, n)] if executor == "slurm" else []
                run = _prepare_run(p, executor)
                with _interrupt_deferred():  # a job submitted is a job recorded
                    jobs[p.run_id] = _submit_one(p, run, executor, deps)
            verb = {"new": "submitted", "fresh": "submitted afresh", "resume": "resubmitted (resumes)"}[p.action]
            dep_text = f" after {', '.join(deps)}" if deps else ""
            where = f"slurm, {p.resources.summary()}" if executor == "slurm" else executor
            say(f"{p.run_id}: {verb} as job {', '.join(p.job_ids)}{dep_text} [{where}]")
        for p in planned:
            p.jobs = jobs.get(p.run_id, [])
        if wait:
            for p in planned:
                if p.jobs:
                    wait_for_run(p)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted([p for p in planned if p.run_id in jobs], executor)) from None
    except UserError:
        leave_as_found(found, [p.run_id for p in planned], restore_times=not jobs)
        raise
    return planned


def home_folders() -> dict[Path, tuple[int, int]]:
    """The home's folders that exist before a command writes, with their access and change times (what
    `leave_as_found` keeps)."""
    home = paths.home()
    found = {}
    for folder in (home, home / ".locks", paths.runs_dir(), home / "arrays"):
        with contextlib.suppress(OSError):
            st = folder.stat()
            if folder.is_dir():
                found[folder] = (st.st_atime_ns, st.st_mtime_ns)
    return found


def leave_as_found(found: dict[Path, tuple[int, int]], run_ids: list[str], restore_times: bool) -> None:
    """After a failed submission (sbatch refused it): the lock files of runs that do not exist, and the folders
    this command made that are empty again, go; when nothing was submitted, the folders it found keep their times
    too: the home is as found."""
    home = paths.home()
    for run_id in run_ids:
        if runs.get(run_id) is None:
            (home / ".locks" / f"{run_id}.lock").unlink(missing_ok=True)
    for folder in (home / ".locks", paths.runs_dir(), home / "arrays", home):
        if folder not in found:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    for folder, times in found.items() if restore_times else ():
        with contextlib.suppress(OSError):
            os.utime(folder, ns=times)


def _prepare_run(p: PlannedRun, executor: str) -> runs.Run:
    """The run directory the job will use: created, recreated (--force: its live jobs stopped first), or reused."""
    if p.action == "resume":
        run = p.existing
        run.update(lambda d: d.update(state=runs.SUBMITTING, executor=executor, resources=vars(p.resources).copy(),
                                      headline_metric=p.resolved.experiment.stage_info.headline))
        return run
    if p.action == "fresh":
        control.stop_jobs(p.existing)  # its old job must not write into the new directory
    return runs.create(p.run_id, _record(p, executor), force=p.action == "fresh")


def _await_upstream(upstream: PlannedRun, jobs: dict[str, Any]) -> None:
    """Without a scheduler, wait for an upstream run to end: our own job, or one another command started."""
    if upstream.run_id in jobs:
        _wait_for(jobs[upstream.run_id], upstream)
    elif upstream.action == "active":
        while (st := status.collect([runs.get(upstream.run_id)])[0]).state in runs.ACTIVE_STATES:
            time.sleep(1.0)
        if st.state != runs.COMPLETED:
            raise UserError(f"{upstream.run_id} (needed here) ended in state {st.state}: {st.detail or 'see `medminds logs ' + upstream.run_id + '`'}")


@contextlib.contextmanager
def _interrupt_deferred() -> Any:
    """Hold a Ctrl-C until the block is done (only the main thread receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending and previous is not signal.SIG_IGN:
        raise KeyboardInterrupt


def _interrupted(submitted: list[PlannedRun], executor: str) -> str:
    """Stop what this command started here (Slurm jobs keep running) and say where each run stands."""
    parts = []
    for p in submitted:
        run = runs.get(p.run_id)
        if run is None or run.state == runs.COMPLETED:
            continue
        if executor == "slurm":
            parts.append(f"{p.run_id}: stopped waiting; job {', '.join(p.job_ids)} goes on (`medminds status`, "
                         f"`medminds cancel {p.run_id}`)")
            continue
        control.stop_jobs(run)
        where = _position(run.reload())

        def resumable(d: dict[str, Any]) -> None:  # not FAILED: the job was stopped, nothing went wrong
            d.update(state=runs.CANCELLED, error=f"interrupted (Ctrl-C) {where}")
            d.pop("traceback", None)

        run.update(resumable)
        parts.append(f"{p.run_id}: interrupted {where}; the same command resumes it")
    return "; ".join(parts) or "interrupted; nothing was submitted"


def _position(run: runs.Run) -> str:
    """'at step 37 of 120 (last checkpoint: step 30)', from run.json's progress and the checkpoints on disk."""
    from medminds_hpc.training.checkpoint import CheckpointStore

    progress = (run.data.get("progress") or {}).get("0") or {}
    step, total = progress.get("step"), progress.get("total")
    saved = CheckpointStore(run.checkpoint_dir).all() or CheckpointStore(run.checkpoint_dir / "shard-0").all()
    text = f"at step {step}{f' of {total}' if total else ''}" if step is not None else "before its first step"
    return text + (f" (last checkpoint: step {saved[0].step})" if saved else " (no checkpoint yet: it starts over)")


def _dep_ids(planned: list[PlannedRun], need: str) -> list[str]:
    upstream = next(q for q in planned if q.name == need)
    return [j.split("_")[0] for j in upstream.job_ids if upstream.action != "done"][:1] if upstream.job_ids else []


def _submit_one(p: PlannedRun, run: runs.Run, executor: str, deps: list[str]) -> Any:
    return submit_runs([p], [run], executor, deps)[0]


def submit_runs(planned: list[PlannedRun], run_list: list[runs.Run], executor: str, deps: list[str],
                folder: Path | None = None) -> list[Any]:
    """Submit one job for a single run (a job array of its shards when it has several), or one job array whose
    task i runs `run_list[i]`; record each run's job ids. Returns the submitit jobs of each run."""
    from medminds_hpc.job import StageJob

    p0 = planned[0]
    ex = make_executor(executor, p0.run_id, p0.resources, deps, folder=folder)
    if len(run_list) > 1:
        calls, owner = [StageJob(run.dir) for run in run_list], list(range(len(run_list)))
    else:
        calls, owner = [StageJob(run_list[0].dir, i) for i in range(p0.resolved.shards)], [0] * p0.resolved.shards
    try:
        jobs = ex.submit_array(calls) if len(calls) > 1 else [ex.submit(calls[0])]
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = "submission failed: " + " | ".join(dict.fromkeys(lines))
        for p, run in zip(planned, run_list):
            if p.action in ("new", "fresh"):
                shutil.rmtree(run.dir, ignore_errors=True)  # nothing half-written: the run never existed
            else:
                run.update(lambda d: d.update(state=runs.FAILED, error=message))
        raise UserError(f"{', '.join(p.run_id for p in planned)}: {message}") from None
    per_run: list[list[Any]] = [[j for j, k in zip(jobs, owner) if k == i] for i in range(len(run_list))]
    for p, run, own in zip(planned, run_list, per_run):
        _record_jobs(p, run, [str(j.job_id) for j in own], executor, deps)
    return per_run


def _record_jobs(p: PlannedRun, run: runs.Run, job_ids: list[str], executor: str, deps: list[str]) -> None:
    p.job_ids = job_ids

    def change(d: dict[str, Any]) -> None:
        d["job_ids"] = list(dict.fromkeys(d.get("job_ids", []) + job_ids))
        d.setdefault("submissions", []).append({"job_ids": job_ids, "executor": executor, "at": runs.now(),
                                                "submitted_s": time.time(), "dependencies": deps})
        if d.get("state") == runs.SUBMITTING:
            d["state"] = runs.PENDING

    run.update(change)


def wait_for_run(p: PlannedRun) -> None:
    """Block until the run's jobs end; raise a UserError unless it COMPLETED."""
    _wait_for(p.jobs, p)


def _wait_for(jobs: list[Any], p: PlannedRun) -> None:
    for job in jobs:
        try:
            while not job.done():  # submitit's own wait polls once a second: a job of a second would take two
                time.sleep(0.1)
            job.result()
        except Exception as e:  # the job failed: its run.json says why (the stage's own message), else submitit
            recorded = runs.load(paths.runs_dir() / p.run_id).data.get("error")
            why = recorded or (str(e).strip().splitlines() or ["unknown"])[-1]
            raise UserError(f"{p.run_id}: job {job.job_id} failed: {why} (log: medminds logs {p.run_id})") from None
    run = runs.load(paths.runs_dir() / p.run_id)
    if run.state != runs.COMPLETED:
        raise UserError(f"{p.run_id}: ended in state {run.state}: {run.data.get('error', 'see `medminds logs ' + p.run_id + '`')}")
