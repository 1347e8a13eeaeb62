"""`medminds submit`: resolve an experiment and what it needs into runs, and hand them to submitit.

    medminds submit moe-linear --dataset mini      # submits the missing experts first, with afterok dependencies

Each needed experiment resolves to a finished run (used as is), an active run (its job becomes a
dependency), or a new/failed run, submitted now. Dependants use `afterok` with `kill_on_invalid_dep=yes`, so
a failed upstream cancels them instead of leaving them pending forever.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from medminds_hpc import clusters, experiments, memory, paths, runs, status
from medminds_hpc.errors import StageNotImplemented, UserError

Executor = Literal["slurm", "local", "debug"]
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


def plan(name: str, opts: SubmitOptions) -> list[PlannedRun]:
    """Every run the command involves, upstream first, with what will happen to each. Writes nothing."""
    experiments.check_dataset(opts.dataset)
    profile = clusters.load_profile(opts.cluster)
    ordered: list[PlannedRun] = []
    by_name: dict[str, PlannedRun] = {}
    routed = experiments.split_overrides(name, _chain(name), opts.overrides)

    def visit(exp_name: str, chain: tuple[str, ...], top: bool) -> PlannedRun:
        if exp_name in chain:
            raise UserError(f"experiment {exp_name} needs itself: {' -> '.join(chain + (exp_name,))}")
        if exp_name in by_name:
            return by_name[exp_name]
        exp = experiments.load(exp_name)
        needs = {n: visit(n, chain + (exp_name,), False).run_id for n in exp.needs}
        resolved = experiments.resolve(exp, opts.dataset, opts.model, routed.get(exp_name, []))
        size_defaults = profile.sizes.get(opts.dataset)
        layers = [
            {k: v for k, v in vars(size_defaults).items() if v is not None} if size_defaults else {},
            exp.resources.get(opts.dataset, {}),
            resolved.resource_overrides,
        ]
        resources = profile.resolve(*layers, where=f"experiment {exp_name} on cluster {profile.name} ({opts.dataset})")
        run_id = runs.make_run_id(exp_name, opts.dataset, resolved.identity(needs))
        existing = runs.get(run_id)
        p = PlannedRun(resolved, resources, run_id, needs, existing, "new")
        p.memory = memory.for_run(exp_name, run_id, exp.stage, resolved.params, resolved.model, resources.gpu,
                                  {n: g.memory_gb for n, g in profile.gpus.items()})
        if existing is not None:
            if top and opts.force:
                p.action = "fresh"
            else:
                (st,) = status.collect([existing])
                p.live_state = st.state
                if st.state == runs.COMPLETED:
                    p.action = "done"
                elif st.state in runs.ACTIVE_STATES:
                    p.action, p.job_ids = "active", status.current_job_ids(existing)
                else:
                    p.action = "resume"
        by_name[exp_name] = p
        ordered.append(p)
        return p

    visit(name, (), True)
    return ordered


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


def make_executor(executor: str, run_id: str, resources: clusters.JobResources, dependencies: list[str]):
    import submitit

    folder = _folder(run_id)
    if executor == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=resources.max_requeues)
        extra: dict[str, Any] = {"requeue": True}
        params = resources.slurm_parameters()
        if dependencies:
            params["dependency"] = "afterok:" + ":".join(dependencies)
            extra["kill_on_invalid_dep"] = "yes"
        ex.update_parameters(job_name=run_id, comment=f"medminds {run_id}", additional_parameters=extra, **params)
        return ex
    if executor == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=resources.max_requeues)
        ex.update_parameters(timeout_min=resources.time_min, signal_delay_s=min(resources.signal_delay_s, 30))
        return ex
    return submitit.DebugExecutor(folder=folder)


def sbatch_script(p: PlannedRun, dependencies: list[str]) -> str:
    """The sbatch script submitit will write for this run (for --dry-run and the golden test)."""
    ex = make_executor("slurm", p.run_id, p.resources, dependencies)
    if p.resolved.experiment.shards > 1:
        ex.parameters["map_count"] = p.resolved.experiment.shards
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


def _record(p: PlannedRun, executor: str) -> dict[str, Any]:
    return {
        "experiment": p.name, "stage": p.resolved.experiment.stage, "dataset": p.resolved.dataset,
        "model": p.resolved.model, "params": p.resolved.params, "needs": p.needs,
        "shards": p.resolved.experiment.shards, "executor": executor, "cluster": p.resources.cluster,
        "resources": vars(p.resources).copy(), "experiment_file": str(p.resolved.experiment.path),
        "python": sys.executable,
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


def submit(name: str, opts: SubmitOptions, say: Callable[[str], None] = print) -> list[PlannedRun]:
    executor = opts.executor or default_executor()
    check_executor(executor)
    planned = plan(name, opts)
    to_run = [p for p in planned if p.action in ("new", "fresh", "resume")]
    _check_stages_implemented(to_run)  # refuse before anything is written or submitted
    memory.refuse_overfull([p.memory for p in to_run], top=name)  # likewise: a run that cannot fit its GPU
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
    jobs: dict[str, Any] = {}
    for p in planned:
        if p.action == "done":
            say(f"{p.run_id}: already COMPLETED ({p.existing.dir})")
            continue
        if p.action == "active":
            say(f"{p.run_id}: already {p.live_state} as job {', '.join(p.job_ids)}")
            continue
        deps = [j for n in p.resolved.experiment.needs for j in _dep_ids(planned, n)]
        if executor != "slurm":  # no scheduler: run upstream jobs to the end first
            for n in p.resolved.experiment.needs:
                upstream = next(q for q in planned if q.name == n)
                if upstream.run_id in jobs:
                    _wait_for(jobs[upstream.run_id], upstream)
            deps = []
        if p.action == "resume":
            run = p.existing
            run.update(lambda d: d.update(state=runs.SUBMITTING, executor=executor, resources=vars(p.resources).copy()))
        else:
            run = runs.create(p.run_id, _record(p, executor), force=p.action == "fresh")
        job = _submit_one(p, run, executor, deps)
        jobs[p.run_id] = job
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
    return planned


def _dep_ids(planned: list[PlannedRun], need: str) -> list[str]:
    upstream = next(q for q in planned if q.name == need)
    return [j.split("_")[0] for j in upstream.job_ids if upstream.action != "done"][:1] if upstream.job_ids else []


def _submit_one(p: PlannedRun, run: runs.Run, executor: str, deps: list[str]) -> Any:
    from medminds_hpc.job import StageJob

    ex = make_executor(executor, p.run_id, p.resources, deps)
    shards = p.resolved.experiment.shards
    try:
        jobs = ex.submit_array([StageJob(run.dir, i) for i in range(shards)]) if shards > 1 else [ex.submit(StageJob(run.dir))]
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = "submission failed: " + " | ".join(dict.fromkeys(lines))
        if p.action in ("new", "fresh"):
            shutil.rmtree(run.dir, ignore_errors=True)  # nothing half-written: the run never existed
        else:
            run.update(lambda d: d.update(state=runs.FAILED, error=message))
        raise UserError(f"{p.run_id}: {message}") from None
    p.job_ids = [str(j.job_id) for j in jobs]

    def change(d: dict[str, Any]) -> None:
        d["job_ids"] = list(dict.fromkeys(d.get("job_ids", []) + p.job_ids))
        d.setdefault("submissions", []).append({"job_ids": p.job_ids, "executor": executor, "at": runs.now(), "dependencies": deps})
        if d.get("state") == runs.SUBMITTING:
            d["state"] = runs.PENDING

    run.update(change)
    return jobs


def wait_for_run(p: PlannedRun) -> None:
    """Block until the run's jobs end; raise a UserError unless it COMPLETED."""
    _wait_for(p.jobs, p)


def _wait_for(jobs: list[Any], p: PlannedRun) -> None:
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # the job failed: its run.json says why (the stage's own message), else submitit
            recorded = runs.load(paths.runs_dir() / p.run_id).data.get("error")
            why = recorded or (str(e).strip().splitlines() or ["unknown"])[-1]
            raise UserError(f"{p.run_id}: job {job.job_id} failed: {why} (log: medminds logs {p.run_id})") from None
    run = runs.load(paths.runs_dir() / p.run_id)
    if run.state != runs.COMPLETED:
        raise UserError(f"{p.run_id}: ended in state {run.state}: {run.data.get('error', 'see `medminds logs ' + p.run_id + '`')}")


def quote_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
