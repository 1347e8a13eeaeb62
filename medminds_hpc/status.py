"""Live state of every run: one `sacct` call for all job ids (squeue for jobs sacct does not show yet).

Never imports torch: `medminds status` must answer in well under a second on a login node.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from medminds_hpc import localjobs, paths, runs
from medminds_hpc.errors import UserError
from medminds_hpc.tables import plain_duration, plain_table

SACCT_FIELDS = ["JobID", "State", "ElapsedRaw", "AllocTRES", "NodeList", "ExitCode", "Start"]
SACCT_IDS_PER_CALL = 8000


@dataclass
class JobInfo:
    job_id: str
    state: str
    elapsed_s: int = 0
    gpu_seconds: float = 0.0  # summed over every attempt (requeues) of this job id
    node: str = ""
    exit_code: str = ""


def _base_state(raw: str) -> str:
    return raw.split()[0].rstrip("+") if raw else runs.UNKNOWN


def _gpus_from_tres(tres: str) -> int:
    m = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", tres or "")
    return int(m.group(1)) if m else 0


def scheduler_states(job_ids: list[str]) -> dict[str, JobInfo]:
    """State of each Slurm job id (array tasks as '123_4'), from one sacct call plus one squeue call."""
    return _scheduler(job_ids)[0]


SQUEUE_TIMEOUT_S = 5.0  # squeue retries an unreachable controller for ~8 s; status and cancel answer within 10 s
UNANSWERED: list[str] = []  # why the last scheduler query could not learn every job's state (empty: it could)


def _scheduler(job_ids: list[str]) -> tuple[dict[str, JobInfo], bool]:
    """(scheduler_states, whether sacct answered): a job sacct does not know only counts as forgotten when it did.
    When squeue had to be asked and did not answer, UNANSWERED says why."""
    UNANSWERED.clear()
    job_ids = [j for j in dict.fromkeys(job_ids) if j and re.fullmatch(r"\d+(_\d+)?", j)]
    if not job_ids:
        return {}, True
    out: dict[str, JobInfo] = {}
    text = _sacct(sorted({j.split("_")[0] for j in job_ids}, key=int))
    for line in (text or "").splitlines():
        parts = line.split("|")
        if len(parts) < len(SACCT_FIELDS):
            continue
        jid, state, elapsed, tres, node, exit_code, _start = parts[: len(SACCT_FIELDS)]
        elapsed_s = int(elapsed) if elapsed.isdigit() else 0
        info = out.get(jid)
        gpu_s = elapsed_s * _gpus_from_tres(tres)
        # -D lists every attempt of a requeued job, oldest first: keep the newest state, sum the GPU time.
        out[jid] = JobInfo(jid, _base_state(state), elapsed_s, (info.gpu_seconds if info else 0.0) + gpu_s, node, exit_code)
    missing = [j for j in job_ids if j not in out]
    if missing and shutil.which("squeue"):
        try:
            proc = subprocess.run(
                ["squeue", "-h", "-j", ",".join(sorted({j.split("_")[0] for j in missing}, key=int)), "-o", "%i|%T|%M|%N"],
                capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S,
            )
            squeue = proc.stdout
            # squeue names ids it no longer knows "Invalid job id" (exit 1): an answer; anything else is not
            failed = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and "Invalid job id" not in ln]
            if proc.returncode != 0 and failed:
                UNANSWERED.append(f"squeue: {failed[-1]}")
        except subprocess.TimeoutExpired:
            squeue = ""
            UNANSWERED.append(f"squeue gave no answer within {SQUEUE_TIMEOUT_S:g} s")
        except (subprocess.SubprocessError, OSError) as e:
            squeue = ""
            UNANSWERED.append(f"squeue: {e}")
        for line in squeue.splitlines():
            parts = line.split("|")
            if len(parts) == 4:
                out.setdefault(parts[0], JobInfo(parts[0], _base_state(parts[1]), _slurm_duration(parts[2]), 0.0, parts[3]))
    return out, text is not None


def _sacct(bases: list[str]) -> str | None:
    """sacct's records of these job ids (every attempt), or None when sacct is missing or failed. One call up to
    SACCT_IDS_PER_CALL ids (a command-line argument holds at most 128 KiB); `status` only asks about unsettled runs."""
    if not shutil.which("sacct"):
        return None
    out = []
    for start in range(0, len(bases), SACCT_IDS_PER_CALL):
        try:
            out.append(subprocess.run(
                ["sacct", "-X", "-D", "-P", "-n", "-j", ",".join(bases[start:start + SACCT_IDS_PER_CALL]),
                 f"--format={','.join(SACCT_FIELDS)}"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout)
        except (subprocess.SubprocessError, OSError):
            return None
    return "".join(out)


def _slurm_duration(text: str) -> int:
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not m:
        return 0
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


@dataclass
class RunStatus:
    run: runs.Run
    state: str
    job_id: str | None
    elapsed_s: int = 0
    gpu_hours: float = 0.0
    node: str = ""
    progress: str = ""
    headline: str = ""
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        d = self.run.data
        return {
            "run": self.run.id, "experiment": d.get("experiment"), "dataset": d.get("dataset"), "state": self.state,
            "job_id": self.job_id, "job_ids": self.run.job_ids, "run_dir": str(self.run.dir), "executor": d.get("executor"),
            "elapsed_s": self.elapsed_s, "gpu_hours": round(self.gpu_hours, 4), "node": self.node, "progress": self.progress,
            "headline": self.headline, "requeues": d.get("requeues", 0), "detail": self.detail,
        }


def _aggregate(states: list[str]) -> str:
    if not states:
        return runs.UNKNOWN
    for s in ("RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "REQUEUED", "FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "PREEMPTED", "CANCELLED"):
        if s in states:
            return s
    return states[0] if len(set(states)) == 1 else runs.UNKNOWN


def _progress_text(d: dict[str, Any]) -> str:
    prog = d.get("progress") or {}
    parts = []
    for _shard, p in sorted(prog.items()):
        step, total = p.get("step"), p.get("total")
        parts.append(f"{step}/{total}" if total else f"{step}")
    return ", ".join(parts)


def headline_metric(run: runs.Run) -> str:
    """The name of the one number that says how the run went (its stage's, recorded at submission)."""
    return run.data.get("headline_metric") or "accuracy"


def _headline_text(run: runs.Run) -> str:
    """`task_accuracy 0.990`: the finished run's value (metrics.json, else what its stage returned), else the last
    validated epoch's."""
    name = headline_metric(run)
    for done in (run.metrics(), run.result()):
        if done and _is_number(done.get(name)):
            return f"{name} {_number(done[name])}"
    latest = run.data.get("headline")
    if isinstance(latest, dict) and latest.get("metric") == name and _is_number(latest.get("value")):
        epoch = f" (epoch {latest['epoch']:g})" if _is_number(latest.get("epoch")) else ""
        return f"{name} {_number(latest['value'])}{epoch}"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def current_job_ids(run: runs.Run) -> list[str]:
    """The job ids of the run's latest submission (several for an array)."""
    last = run.data.get("submissions", [])
    return list(last[-1]["job_ids"]) if last else run.job_ids[-1:]


def run_status(run: runs.Run, live: dict[str, JobInfo], headline: str | None = None) -> RunStatus:
    d = run.data
    ids = current_job_ids(run)
    recorded = run.state
    state, detail = recorded, d.get("error", "")
    infos = [live[j] for j in ids if j in live]
    if d.get("executor") == "slurm":
        if recorded in (runs.COMPLETED,) or (recorded == runs.FAILED and d.get("error")):
            state = recorded
        elif infos:
            state = _aggregate([i.state for i in infos])
            if state == runs.COMPLETED and recorded != runs.COMPLETED:
                state, detail = runs.FAILED, "the job ended without finishing its stage; see `medminds logs`"
        elif recorded in runs.ACTIVE_STATES and ids:
            state = runs.PENDING if recorded == runs.SUBMITTING else recorded
    elif d.get("executor") == "local" and recorded in runs.ACTIVE_STATES and ids:
        if not any(localjobs.alive(j, run.log_dir) for j in ids):
            state, detail = runs.FAILED, detail or "the local job's process is gone; see `medminds logs`"
    all_infos = [live[j] for j in run.job_ids if j in live]
    return RunStatus(
        run=run, state=state, job_id=ids[-1] if ids else None,
        elapsed_s=max((i.elapsed_s for i in infos), default=0),
        gpu_hours=sum(i.gpu_seconds for i in all_infos) / 3600.0,
        node=",".join(sorted({i.node for i in infos if i.node and i.node != "None assigned"})),
        progress=_progress_text(d), headline=_headline_text(run) if headline is None else headline, detail=detail,
    )


def collect(selected: list[runs.Run], *, settle: bool = True) -> list[RunStatus]:
    """Each run's status: settled runs from their run.json alone, the others from one sacct call for all of
    their job ids. With `settle`, a run found ended (and its jobs) is settled for the next read."""
    cached = [settled(r) for r in selected]
    asked = [j for r, c in zip(selected, cached) if c is None and r.data.get("executor") == "slurm" for j in r.job_ids]
    live, sacct_answered = _scheduler(asked)
    rows = []
    settle_until = time.monotonic() + SETTLE_BUDGET_S
    for run, cache in zip(selected, cached):
        if cache is not None:
            rows.append(_from_settled(run, cache))
            continue
        row = run_status(run, live)
        rows.append(row)
        if settle and time.monotonic() < settle_until and _ended(run, live, sacct_answered):
            _settle(run, row)
    return rows


# A run that has ended, and every job of it, keeps what `status` showed in run.json under SETTLED: later reads
# need neither sacct nor metrics.json. It holds while the run's state, job ids, attempts and updated_at are the
# ones it was settled with (a resubmission, a requeue or any change by the job alters them).
SETTLED = "status_settled"
FINAL_RUN_STATES = {runs.COMPLETED, runs.FAILED, runs.CANCELLED}
# Job states Slurm never leaves (not PREEMPTED: Slurm may requeue a preempted job under the same id).
ENDED_JOB_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
# Seconds one `status` spends settling runs at most (each is a locked, fsynced write of run.json: thousands of
# runs ended since the last read are settled over a few reads rather than making one of them slow).
SETTLE_BUDGET_S = 1.0
# A final run whose jobs sacct answers it does not know (its accounting purged them) ended at least this long ago.
FORGOTTEN_AFTER_S = 3600.0


def _settle_key(d: dict[str, Any]) -> list[Any]:
    return [d.get("state"), list(d.get("job_ids", [])), len(d.get("attempts", [])), d.get("updated_at")]


def settled(run: runs.Run) -> dict[str, Any] | None:
    """What `status` recorded when the run had ended, if the run has not changed since."""
    cache = run.data.get(SETTLED)
    return cache if isinstance(cache, dict) and cache.get("key") == _settle_key(run.data) else None


def _from_settled(run: runs.Run, cache: dict[str, Any]) -> RunStatus:
    return RunStatus(run=run, state=cache["state"], job_id=cache.get("job_id"), elapsed_s=int(cache.get("elapsed_s", 0)),
                     gpu_hours=float(cache.get("gpu_seconds", 0.0)) / 3600.0, node=cache.get("node", ""),
                     progress=_progress_text(run.data), headline=cache.get("headline", ""), detail=cache.get("detail", ""))


def _ended(run: runs.Run, live: dict[str, JobInfo], sacct_answered: bool) -> bool:
    """Whether the run and its jobs are done for good: nothing `status` shows of it can change any more."""
    if run.state not in FINAL_RUN_STATES:
        return False
    if run.data.get("executor") != "slurm":
        return True
    infos = [live.get(j) for j in run.job_ids]
    if all(i is not None and i.state in ENDED_JOB_STATES for i in infos):
        return True
    forgotten = all(i is None or i.state in ENDED_JOB_STATES for i in infos)
    return sacct_answered and forgotten and _age_s(run.data.get("updated_at")) > FORGOTTEN_AFTER_S


def _age_s(stamp: Any) -> float:
    try:
        return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(str(stamp))).total_seconds()
    except (TypeError, ValueError):
        return 0.0


def _settle(run: runs.Run, row: RunStatus) -> None:
    """Record `row` in run.json (atomically, under its lock) unless the run changed meanwhile. A run directory
    this user cannot write (a colleague's) is shown all the same, only not cached."""
    key = _settle_key(run.data)
    cache = {"key": key, "state": row.state, "job_id": row.job_id, "elapsed_s": row.elapsed_s,
             "gpu_seconds": round(row.gpu_hours * 3600.0, 3), "node": row.node, "headline": row.headline, "detail": row.detail}

    def change(d: dict[str, Any]) -> None:
        if _settle_key(d) == key:
            d[SETTLED] = cache

    try:
        run.update(change, touch=False)
    except (OSError, UserError):
        pass


# What to show: filters, the table, and --watch ------------------------------------------------------------------
# Every state a run can show: Slurm's job states (sacct/squeue) and the toolkit's own.
STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "CONFIGURING", "DEADLINE", "FAILED", "NODE_FAIL",
          "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "REVOKED",
          "RUNNING", "SUBMITTING", "SUSPENDED", "TIMEOUT", "UNKNOWN")
MIN_WATCH_S = 2.0  # each refresh asks sacct once; a busy slurmdbd serves many users


def parse_states(text: str) -> set[str]:
    """`--state running,pending` -> {'RUNNING', 'PENDING'}; an unknown name is a UserError listing the valid ones."""
    wanted = {s.strip().upper() for s in text.split(",") if s.strip()}
    unknown = sorted(wanted - set(STATES))
    if unknown or not wanted:
        what = f"unknown state {', '.join(unknown)}" if unknown else "no state given"
        raise UserError(f"--state {text!r}: {what}; valid states (comma-separated, any case): {', '.join(STATES)}")
    return wanted


def check_interval(seconds: float) -> float:
    if not seconds >= MIN_WATCH_S:  # also NaN
        raise UserError(f"--watch {seconds:g}: the interval must be at least {MIN_WATCH_S:g} seconds (each refresh asks "
                        f"sacct once); use --watch {MIN_WATCH_S:g} or more")
    return seconds


@dataclass
class Query:
    """Which runs `status` shows: named ones (default every run), by experiment glob and by state."""

    run_ids: list[str] = field(default_factory=list)
    experiment: str | None = None
    states: set[str] | None = None

    def filters(self) -> str:
        parts = [f"--experiment {self.experiment!r}"] if self.experiment else []
        return " ".join(parts + ([f"--state {','.join(sorted(self.states))}"] if self.states else []))


@dataclass
class Answer:
    rows: list[RunStatus]
    total: int  # runs before the filters
    problems: list[str]
    unanswered: str = ""  # Slurm did not answer for some jobs: their states are as last recorded
    home_exists: bool = True  # False: $MEDMINDS_HOME does not exist yet (nothing was submitted there)


def answer(query: Query, reuse: dict[str, Any] | None = None) -> Answer:
    """The statuses `query` asks for: the experiment filter before sacct is asked (fewer job ids), the state one
    after. `reuse`: see runs.list_runs (what --watch keeps between refreshes). A home that is a file (or under
    one) is a UserError; one that does not exist yet has no runs. Nothing is created either way."""
    home_exists = paths.existing_home() is not None
    if query.run_ids:
        selected, problems = [runs.find(r) for r in query.run_ids], []
    else:
        selected, problems = runs.list_runs(reuse)
    total = len(selected)
    if query.experiment:
        selected = [r for r in selected if fnmatch.fnmatchcase(str(r.data.get("experiment", "")), query.experiment)]
    rows = collect(selected)
    unanswered = "; ".join(UNANSWERED)
    if query.states:
        rows = [r for r in rows if r.state in query.states]
    return Answer(rows, total, problems, unanswered, home_exists)


def no_runs_yet(ans: Answer, query: Query) -> str:
    """The one line `status` says when there is no run at all (rather than a bare header), else ""."""
    if ans.total or ans.problems or query.run_ids or query.filters():
        return ""
    if not ans.home_exists:
        return (f"no runs yet: {paths.home_name(paths.home())} does not exist (the first `medminds submit` creates it); "
                "submit one with `medminds submit EXPERIMENT --dataset micro` (`medminds list` shows them), or, if your "
                "runs are elsewhere, set MEDMINDS_HOME to the folder that holds them")
    return (f"no runs yet in {paths.runs_dir()}: submit one with `medminds submit EXPERIMENT --dataset micro` "
            "(`medminds list` shows them), or try `medminds demo`")


HEADERS = ("run", "state", "job", "elapsed", "GPU-h", "progress", "metric")


def table_rows(rows: list[RunStatus]) -> list[tuple[str, ...]]:
    return [
        (r.run.id, r.state + (f" (requeued {r.run.data['requeues']}x)" if r.run.data.get("requeues") else ""), r.job_id or "",
         plain_duration(r.elapsed_s) if r.elapsed_s else "", f"{r.gpu_hours:.2f}" if r.gpu_hours else "", r.progress, r.headline)
        for r in rows
    ]


def render(ans: Answer, query: Query, title: str, max_rows: int | None = None) -> str:
    """The table, with a line when the filters left nothing and, past `max_rows`, how many rows are not shown;
    with no run at all, one line saying so (`no_runs_yet`)."""
    empty = no_runs_yet(ans, query)
    if empty:
        return empty
    shown = ans.rows if max_rows is None else ans.rows[:max(max_rows, 0)]
    lines = [plain_table(HEADERS, table_rows(shown), title=title)]
    if not ans.rows and query.filters():
        lines.append(f"no run matches {query.filters()} ({ans.total} runs in {runs.paths.runs_dir()})")
    elif len(shown) < len(ans.rows):
        lines.append(f"... and {len(ans.rows) - len(shown)} more runs; narrow them with --state or --experiment")
    return "\n".join(lines)


def watch(frame: Callable[[int | None], str], interval_s: float, out: TextIO) -> None:
    """Redraw `frame(max_rows)` every `interval_s` until Ctrl-C. On a terminal the cursor goes home and each line,
    cut to the width, is overwritten in place (no blank screen between frames, so no flicker, and no scrolling);
    in a pipe whole frames follow each other."""
    tty = out.isatty()
    if tty:
        out.write("\x1b[H\x1b[2J")
    try:
        while True:
            started = time.monotonic()
            if tty:
                size = shutil.get_terminal_size()
                lines = [line[: size.columns] for line in frame(size.lines - 6).splitlines()]
                out.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\x1b[J")
            else:
                out.write(frame(None) + "\n\n")
            out.flush()
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
