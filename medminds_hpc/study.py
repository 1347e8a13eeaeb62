"""`medminds submit all`: every experiment of the study as one dependency graph, several seeds as job arrays.

    medminds submit all --dataset mini                          # prepare -> experts -> features -> combiners
    medminds submit all -d mega --seeds 3                       # seeds 0, 1, 2 of every seeded stage
    medminds submit all -d micro --only 'ensemble-*' --dry-run  # the ensembles and what they need; submit nothing

The graph holds every experiment in jobs/ but `doctor`, or those `--only`/`--skip` select plus everything they
need. Each experiment resolves to one run per seed (one run when it is not seeded and nothing it needs is, e.g.
`prepare` and `baseline-nextword`); a run whose upstream is seeded uses the upstream's run of the same seed.
Finished runs are reused and active ones waited for, as by `medminds submit` (its planning and locking are used
here run by run).

On Slurm, the runs of one experiment still to run are submitted as ONE job array (task i runs the i-th of them:
seed i when none is finished yet), depending `afterok` on the whole arrays of its upstreams. Not `aftercorr`:
arrays of one command may hold different seeds (finished seeds are reused, not resubmitted), so task i of one
array is not always task i of the next; and the seeds of an array start together anyway, so waiting for the
whole upstream array costs the spread of its tasks' run times, not the sum. An array's files (script, pickles,
logs) live in $MEDMINDS_HOME/arrays/, each task's log linked into its own run's `logs/`. Without a scheduler
(local, debug) the runs go here in dependency order, `parallel` at a time.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medminds_hpc import clusters, config, experiments, memory, paths, preflight, runs, status, submit
from medminds_hpc.errors import UserError
from medminds_hpc.submit import PlannedRun

ALL = "all"
NOT_IN_STUDY = {"doctor"}  # stages that check the cluster, not part of the study
ONE_FOR_ALL_SEEDS = {"prepare"}  # its seed picks the data split: one preparation serves every seed
TO_RUN = ("new", "fresh", "resume")


@dataclass
class StudyOptions:
    dataset: str
    seeds: int | None = None  # None: each stage's configured seed, one run per experiment
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    cluster: str | None = None
    executor: str | None = None
    model: str | None = None
    overrides: list[str] = field(default_factory=list)
    dry_run: bool = False
    wait: bool | None = None  # Slurm: wait for the jobs (default no); local and debug runs always run here
    parallel: int = 1  # local executor: runs at a time (each once its upstream runs have ended)


@dataclass
class Node:
    """One experiment of the graph: its runs (one per seed, or one), where it is printed and what it waits for."""

    experiment: experiments.Experiment
    seeds: list[int | None]
    runs: list[PlannedRun]
    target: bool  # selected by --only/--skip (else: needed by a selected experiment)
    parent: str | None = None  # printed under this need
    after: list[str] = field(default_factory=list)  # the other needs not implied by the parent

    @property
    def name(self) -> str:
        return self.experiment.name

    def run_for(self, seed: int | None) -> PlannedRun:
        return self.runs[self.seeds.index(seed)] if seed in self.seeds else self.runs[0]


def check_seeds(seeds: int | None) -> None:
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds}: expected a positive number of seeds; --seeds N runs seeds 0..N-1 of every "
                        "seeded stage (leave it out for one run of each)")


def select(names: list[str], only: list[str], skip: list[str]) -> list[str]:
    """The experiments named by shell-style patterns (all when `only` is empty), minus those `skip` names."""
    for option, patterns in (("--only", only), ("--skip", skip)):
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise UserError(f"{option} {pattern!r} matches no experiment; experiments: {', '.join(names)}")
    chosen = [n for n in names if (not only or any(fnmatch.fnmatchcase(n, p) for p in only))
              and not any(fnmatch.fnmatchcase(n, p) for p in skip)]
    if not chosen:
        raise UserError(f"--only {' '.join(only) or '*'} --skip {' '.join(skip)} leave no experiment; experiments: {', '.join(names)}")
    return chosen


def _closure(targets: list[str], loaded: dict[str, experiments.Experiment]) -> list[str]:
    """`targets` and everything they need, by depth in the graph (prepare, then the experts and the baselines,
    then what needs the experts...); within a depth, those more runs wait for first (run here in that order,
    the experts start before the baselines), then by name."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise UserError(f"experiment {name} needs itself: {' -> '.join(chain + (name,))}")
        if name in order:
            return
        if name not in loaded:
            loaded[name] = experiments.load(name)
        for need in loaded[name].needs:
            visit(need, chain + (name,))
        order.append(name)

    for name in targets:
        visit(name, ())
    depth: dict[str, int] = {}
    dependants: dict[str, set[str]] = {name: set() for name in order}
    for name in order:  # upstream first, so every need has its depth already
        depth[name] = 1 + max((depth[n] for n in loaded[name].needs), default=-1)
    for name in reversed(order):  # downstream first, so every dependant has its own dependants already
        for need in loaded[name].needs:
            dependants[need] |= {name} | dependants[name]
    return sorted(order, key=lambda n: (depth[n], -len(dependants[n]), n))


def route_overrides(order: list[str], loaded: dict[str, experiments.Experiment], overrides: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """`NAME.key=v` goes to experiment NAME; `key=v` to every experiment whose stage has parameter `key`;
    `resources.key=v` to every experiment. Returns the routes and a line for each item that goes nowhere."""
    routed: dict[str, list[str]] = {name: [] for name in order}
    problems = []
    for item, (key, value) in zip(overrides, experiments.parse_overrides(overrides)):
        head, dot, rest = key.partition(".")
        if dot and head != "resources":
            problems += experiments.route_named(item, head, f"{rest}={value}", routed, "study")
        elif head == "resources":
            for name in order:
                routed[name].append(item)
        else:
            takers = [n for n in order if key in config.field_types(loaded[n].stage_info.config_class())]
            if not takers:
                problems.append(f"-o {item!r}: no experiment of this study has a parameter {key!r} (`medminds list NAME` "
                                f"shows an experiment's parameters; -o NAME.{key}=... sets one experiment's)")
            for name in takers:
                routed[name].append(f"{key}={value}")
    return routed, problems


def _seeded(exp: experiments.Experiment) -> bool:
    return exp.name not in ONE_FOR_ALL_SEEDS and exp.stage not in ONE_FOR_ALL_SEEDS and \
        "seed" in config.field_types(exp.stage_info.config_class())


def _reduced_needs(name: str, loaded: dict[str, experiments.Experiment], order: list[str]) -> list[str]:
    """The direct needs not already needed by another need (the edges a tree has to show), upstream first."""
    def upstream(n: str) -> set[str]:
        found, stack = set(), list(loaded[n].needs)
        while stack:
            m = stack.pop()
            if m not in found:
                found.add(m)
                stack += loaded[m].needs
        return found

    needs = loaded[name].needs
    implied = set().union(*(upstream(n) for n in needs)) if needs else set()
    return sorted((n for n in needs if n not in implied), key=order.index)


def plan(opts: StudyOptions) -> list[Node]:
    """Every experiment of the study with its runs and what will happen to each, upstream first; every problem of
    every run of the graph (parameters with each experiment's overrides, resources, models, data) in one error.
    Writes nothing."""
    experiments.check_dataset(opts.dataset)
    check_seeds(opts.seeds)
    profile = clusters.load_profile(opts.cluster)
    loaded = {e.name: e for e in experiments.load_all() if e.stage not in NOT_IN_STUDY}
    targets = select(sorted(loaded), opts.only, opts.skip)
    order = _closure(targets, loaded)
    routed, unrouted = route_overrides(order, loaded, opts.overrides)
    problems = submit.Problems()
    problems.lines += unrouted
    nodes: dict[str, Node] = {}
    for name in order:
        exp = loaded[name]
        seeded = opts.seeds is not None and _seeded(exp)
        fans = seeded or any(nodes[n].seeds != [None] for n in exp.needs)
        seeds: list[int | None] = list(range(opts.seeds)) if fans and opts.seeds else [None]
        planned = []
        for seed in seeds:
            needs = {n: nodes[n].run_for(seed).run_id if nodes[n].runs else submit.UNPLANNED for n in exp.needs}
            resolved = experiments.bind(exp, opts.dataset, opts.model, routed[name] + ([f"seed={seed}"] if seeded else []))
            p = submit.plan_checked(resolved, needs, profile, problems)
            if p is not None:
                planned.append(p)
        reduced = _reduced_needs(name, loaded, order)
        nodes[name] = Node(exp, seeds if len(planned) == len(seeds) else [], planned, name in targets,
                           reduced[-1] if reduced else None, reduced[:-1])
    models = [experiments.model_of(loaded[name], opts.model) for name in order]
    problems.lines += preflight.problems([p for node in nodes.values() for p in node.runs], filter(None, models))
    problems.raise_any()
    return list(nodes.values())


def run_study(opts: StudyOptions, say: Callable[[str], None] = print, tree: bool = True) -> list[Node]:
    """Plan, refuse what cannot run (before anything is written), then submit (Slurm) or run here (local, debug;
    one line per run as it ends, then the tree unless `tree` is false)."""
    executor = opts.executor or submit.default_executor()
    submit.check_executor("debug" if opts.dry_run and executor == "slurm" else executor)
    nodes = plan(opts)
    to_run = [p for node in nodes for p in node.runs if p.action in TO_RUN]
    submit._check_stages_implemented(to_run)
    memory.refuse_overfull([p.memory for p in to_run], top=ALL)
    found = submit.home_folders()
    if not opts.dry_run:
        paths.check_home()
    for note in preflight.model_notes(to_run):
        say(note)
    if opts.dry_run:
        say(render_tree(nodes, opts, executor, dry_run=True))
        return nodes
    started = time.time()
    submitted: list[PlannedRun] = []
    try:
        if executor == "slurm":
            for node in nodes:
                submitted += _submit_node(node, nodes, started)
            say(render_tree(nodes, opts, executor))
            if opts.wait:
                for p in submitted:
                    submit.wait_for_run(p)
        else:
            _run_here(nodes, executor, started, submitted, say, opts.parallel)
            if tree:
                say(render_tree(nodes, opts, executor))
    except KeyboardInterrupt:
        raise submit.Interrupted(submit._interrupted(submitted, executor)) from None
    except UserError:
        submit.leave_as_found(found, [p.run_id for node in nodes for p in node.runs], restore_times=not submitted)
        raise
    return nodes


def _upstream_job_ids(p: PlannedRun, by_name: dict[str, Node], seed: int | None) -> list[str]:
    """Job ids (whole arrays) of the upstream runs still to finish."""
    ids = []
    for need in p.resolved.experiment.needs:
        q = by_name[need].run_for(seed)
        if q.action != "done" and q.job_ids:
            ids.append(q.job_ids[0].split("_")[0])
    return ids


def _submit_node(node: Node, nodes: list[Node], started: float) -> list[PlannedRun]:
    """Submit the node's runs still to run, as one job array when there are several (one job, or its shards'
    array, when one). Under every run's submission lock, taken in a fixed order."""
    by_name = {n.name: n for n in nodes}
    with contextlib.ExitStack() as locks:
        for p in sorted(node.runs, key=lambda q: q.run_id):
            locks.enter_context(runs.submission_lock(p.run_id))
        for p in node.runs:
            submit.decide(p, locked=True, since=started)
        todo = [(seed, p) for seed, p in zip(node.seeds, node.runs) if p.action in TO_RUN]
        if not todo:
            return []
        deps = list(dict.fromkeys(j for seed, p in todo for j in _upstream_job_ids(p, by_name, seed)))
        planned = [p for _, p in todo]
        run_list = [submit._prepare_run(p, "slurm") for p in planned]
        with submit._interrupt_deferred():  # a job submitted is a job recorded
            if len(planned) > 1 and all(p.resolved.shards == 1 for p in planned):
                jobs = submit.submit_runs(planned, run_list, "slurm", deps, folder=_array_folder(node, run_list))
                _link_logs(run_list, jobs)
            else:
                jobs = [submit.submit_runs([p], [run], "slurm", deps)[0] for p, run in zip(planned, run_list)]
        for p, own in zip(planned, jobs):
            p.jobs = own
    return planned


def _array_folder(node: Node, run_list: list[runs.Run]) -> Path:
    """submitit's folder for one job array over several runs (its script, pickles and the tasks' logs)."""
    return paths.home() / "arrays" / f"{node.name}-{runs.config_hash([r.id for r in run_list])}"


def _link_logs(run_list: list[runs.Run], jobs: list[list[Any]]) -> None:
    """Link each array task's log files into its own run's logs/, where `medminds logs RUN` looks (the links
    dangle until Slurm starts the task)."""
    for run, own in zip(run_list, jobs):
        run.log_dir.mkdir(parents=True, exist_ok=True)
        for job in own:
            for target in (job.paths.stdout, job.paths.stderr):
                link = run.log_dir / target.name
                if not link.is_symlink():
                    link.symlink_to(target)


def _run_here(nodes: list[Node], executor: str, started: float, submitted: list[PlannedRun], say: Callable[[str], None],
              parallel: int) -> None:
    """Run the graph on this machine, up to `parallel` runs at a time, each once its upstream runs have ended;
    one line per run as it ends. A failed run stops the command (runs already started go on to their end)."""
    by_name = {n.name: n for n in nodes}
    waiting = [(p, [by_name[need].run_for(seed).run_id for need in p.resolved.experiment.needs])
               for node in nodes for seed, p in zip(node.seeds, node.runs)]
    ended: set[str] = set()
    running: dict[str, float] = {}  # run id -> when it started here
    planned = {p.run_id: p for p, _ in waiting}
    while waiting or running:
        for p, upstream in list(waiting):
            if len(running) >= parallel:
                break
            if all(u in ended for u in upstream):
                waiting.remove((p, upstream))
                running[p.run_id] = time.monotonic()
                _start_here(p, executor, started, submitted)
        for run_id, t0 in list(running.items()):
            p = planned[run_id]
            if _has_ended(p):
                if p.jobs:  # both raise unless the run COMPLETED
                    submit.wait_for_run(p)
                else:
                    submit._await_upstream(p, {})
                del running[run_id]
                ended.add(run_id)
                say(progress_line(p, time.monotonic() - t0))
        if running:
            time.sleep(0.2)


def _start_here(p: PlannedRun, executor: str, started: float, submitted: list[PlannedRun]) -> None:
    with runs.submission_lock(p.run_id):
        submit.decide(p, locked=True, since=started)
        if p.action in TO_RUN:
            run = submit._prepare_run(p, executor)
            with submit._interrupt_deferred():
                p.jobs = submit.submit_runs([p], [run], executor, [])[0]
            submitted.append(p)


def _has_ended(p: PlannedRun) -> bool:
    """Our own job is done, or a run another command started is no longer active (a finished one has ended)."""
    if p.jobs:
        return all(job.done() for job in p.jobs)
    return p.action == "done" or status.collect([runs.get(p.run_id)])[0].state not in runs.ACTIVE_STATES


def progress_line(p: PlannedRun, seconds: float) -> str:
    """One line per finished run: experiment, run id, headline metric, time (or that an earlier run was reused)."""
    (st,) = status.collect([runs.get(p.run_id)])
    took = "reused" if p.action == "done" else f"{seconds:.0f} s"
    return f"done  {p.name:<28} {st.headline or st.state:<32} {took:>7}  {p.run_id}"


def _state_text(p: PlannedRun, dry_run: bool) -> str:
    if p.action == "done":
        return "reused"
    if p.action == "active" and not p.jobs:
        return f"{(p.live_state or 'active').lower()} as job {', '.join(p.job_ids)}"
    if dry_run:
        return {"new": "would submit", "fresh": "would submit afresh", "resume": "would resume"}.get(p.action, p.action)
    return f"job {', '.join(p.job_ids)}" if p.job_ids else p.action


def render_tree(nodes: list[Node], opts: StudyOptions, executor: str, dry_run: bool = False) -> str:
    """The graph as a tree: each experiment under the need it waits for last (other needs named after it), with
    its run id(s), job id(s) or what would happen, and resources."""
    all_runs = [p for n in nodes for p in n.runs]
    count = sum(p.action in TO_RUN for p in all_runs)
    reused = sum(p.action == "done" for p in all_runs)
    head = (f"study on {opts.dataset}: {len(nodes)} experiments, {len(all_runs)} runs "
            f"({count} {'to submit' if dry_run else 'submitted'}, {reused} reused) "
            f"[{executor}{', cluster ' + nodes[0].runs[0].resources.cluster if executor == 'slurm' else ''}]")
    rows: list[tuple[str, str]] = []  # (the tree's part, the rest), the tree's part padded to one width below
    children: dict[str | None, list[Node]] = {}
    for n in nodes:
        children.setdefault(n.parent, []).append(n)
    id_width = max(len(p.run_id) for p in all_runs)
    state_width = max(len(_state_text(p, dry_run)) for p in all_runs)

    def show(node: Node, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        below = prefix + ("" if top else ("   " if last else "│  "))
        kids = children.get(node.name, [])
        notes = ([f"after {', '.join(node.after)}"] if node.after else []) + ([] if node.target else ["needed"])
        res = node.runs[0].resources.summary() if executor == "slurm" else executor
        extra = f"  ({'; '.join(notes)})" if notes else ""
        if len(node.runs) == 1:
            p = node.runs[0]
            rows.append((prefix + branch + node.name,
                         f"{p.run_id.ljust(id_width)}  {_state_text(p, dry_run).ljust(state_width)}  [{res}]{extra}"))
        else:
            kind = "one job array" if executor == "slurm" else "one after the other"
            rows.append((prefix + branch + node.name, f"{len(node.runs)} seeds, {kind}  [{res}]{extra}"))
            for seed, p in zip(node.seeds, node.runs):
                rows.append((f"{below}{'│  ' if kids else '   '}seed {seed}", f"{p.run_id.ljust(id_width)}  {_state_text(p, dry_run)}"))
        for i, kid in enumerate(kids):
            show(kid, below, i == len(kids) - 1, False)

    for root in children.get(None, []):
        show(root, "", True, True)
    width = max(len(tree) for tree, _ in rows)
    return "\n".join([head] + [f"{tree.ljust(width)}  {rest}".rstrip() for tree, rest in rows])
