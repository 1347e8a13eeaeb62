"""The run directory: run.json (resolved config, job ids across requeues, state, progress) and its artifacts.

A run's id is derived from what it computes (experiment, dataset, model, parameters, upstream runs), so
submitting the same thing twice finds the existing run. Every write of run.json is atomic and locked: the
login node (submit) and the compute node (the job) both update it. Deciding whether a run needs a job and
submitting it happen under the run's submission lock, so identical commands started at once make one job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from medminds_hpc import fileio, paths
from medminds_hpc.errors import UserError

RUN_FILE = "run.json"
METRICS_LOG = "metrics.jsonl"

# States a run can be in, in Slurm's words where Slurm has one.
SUBMITTING, PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "SUBMITTING", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
REQUEUED, PREEMPTED, TIMEOUT, UNKNOWN = "REQUEUED", "PREEMPTED", "TIMEOUT", "UNKNOWN"
ACTIVE_STATES = {SUBMITTING, PENDING, RUNNING, REQUEUED, "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def make_run_id(experiment: str, dataset: str, identity: dict[str, Any]) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_.") or "run"
    return f"{safe}-{dataset}-{config_hash(identity)}"


@dataclass
class Run:
    """A run directory and the last-read content of its run.json."""

    dir: Path
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return self.data["run_id"]

    @property
    def path(self) -> Path:
        return self.dir / RUN_FILE

    @property
    def state(self) -> str:
        return self.data.get("state", UNKNOWN)

    @property
    def job_ids(self) -> list[str]:
        return list(self.data.get("job_ids", []))

    @property
    def last_job_id(self) -> str | None:
        ids = self.job_ids
        return ids[-1] if ids else None

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def artifacts_dir(self) -> Path:
        return self.dir / "artifacts"

    def metrics(self) -> dict[str, Any] | None:
        """The run's evaluation results (metrics.json), or None before it has any."""
        from medminds_hpc import results

        return results.read(self.dir)

    def result(self, shard: int = 0) -> dict[str, Any] | None:
        """What the stage's run function returned for `shard` (its scalar values, kept in run.json)."""
        return self.data.get("results", {}).get(str(shard))

    def update(self, change: Callable[[dict[str, Any]], None], *, touch: bool = True) -> dict[str, Any]:
        """Read-modify-write run.json under its lock; `change` edits the dict in place. `touch=False` keeps
        updated_at (a cache written by a reader is not a change of the run)."""
        with fileio.locked(self.path):
            data = _read_record(self.path)
            change(data)
            if touch:
                data["updated_at"] = now()
            fileio.atomic_write_json(self.path, data)
        self.data = data
        return data

    def reload(self) -> "Run":
        self.data = _read_record(self.path)
        return self


def _read_record(path: Path | str) -> dict[str, Any]:
    try:
        data = fileio.read_json(path)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: unreadable run record (invalid JSON at line {e.lineno}); fix or delete that run directory") from None
    except OSError as e:
        raise UserError(f"{path}: unreadable run record ({e.strerror}); check the permissions of that run directory") from None
    if not isinstance(data, dict) or "run_id" not in data:
        raise UserError(f"{path}: unreadable run record (no run_id); fix or delete that run directory")
    return data


def load(run_dir: Path | str) -> Run:
    run_dir = Path(run_dir)
    return Run(run_dir, _read_record(run_dir / RUN_FILE))


def create(run_id: str, record: dict[str, Any], *, force: bool = False) -> Run:
    """Create (or with force, wipe and recreate) a run directory holding `record`."""
    run_dir = paths.runs_dir() / run_id
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {**record, "run_id": run_id, "created_at": now(), "updated_at": now(), "state": SUBMITTING, "job_ids": [], "attempts": [], "requeues": 0}
    fileio.atomic_write_json(run_dir / RUN_FILE, data)
    return Run(run_dir, data)


def get(run_id: str) -> Run | None:
    run_dir = paths.runs_dir() / run_id
    return load(run_dir) if (run_dir / RUN_FILE).exists() else None


def submission_lock(run_id: str) -> AbstractContextManager[None]:
    """Held from "does this run need a job?" to "its job id is recorded" (and while cancelling): a lock file in
    $MEDMINDS_HOME/.locks, on the shared filesystem like the runs, outside the run directory (--force deletes it)."""
    return fileio.exclusive(paths.home() / ".locks" / f"{run_id}.lock")


def iter_run_dirs() -> Iterator[Path]:
    root = paths.runs_dir()
    for name in _dir_names(root):
        if (root / name / RUN_FILE).exists():
            yield root / name


def _dir_names(root: Path) -> list[str]:
    """The sorted names of the folders in `root` (os.scandir: no stat per entry on most filesystems)."""
    try:
        with os.scandir(root) as entries:
            return sorted(e.name for e in entries if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_runs(reuse: dict[str, tuple[Any, Run]] | None = None) -> tuple[list[Run], list[str]]:
    """Every readable run, and one message per unreadable run directory (a folder without run.json is no run).

    `reuse`, kept by the caller between calls (`status --watch`), holds the runs read last time: a run whose
    run.json has not changed since (same inode, size and times; every write replaces the file) is not parsed again.
    """
    root = paths.runs_dir()
    runs, problems = [], []
    for name in _dir_names(root):
        record = os.path.join(root, name, RUN_FILE)  # a str: building Paths costs more than reading 10,000 runs
        try:
            if reuse is not None:
                st = os.stat(record)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                last = reuse.get(name)
                if last is not None and last[0] == stamp:
                    runs.append(last[1])
                    continue
            run = Run(root / name, _read_record(record))
            runs.append(run)
            if reuse is not None:
                reuse[name] = (stamp, run)
        except FileNotFoundError:
            continue
        except UserError as e:
            if os.path.exists(record):
                problems.append(str(e))
    return runs, problems


def find(query: str) -> Run:
    """A run by exact id, by unique id prefix, or the newest run of '<experiment>-<dataset>'."""
    if not query or "/" in query or query in {".", ".."}:
        raise UserError(f"invalid run id {query!r}; run `medminds status` to see run ids")
    exact = paths.runs_dir() / query
    if (exact / RUN_FILE).exists():
        return load(exact)
    dirs = [d for d in iter_run_dirs() if d.name.startswith(query)]
    if len(dirs) == 1:
        return load(dirs[0])
    if dirs:
        prefix_runs = [load(d) for d in dirs]
        by_name = [r for r in prefix_runs if f"{r.data.get('experiment')}-{r.data.get('dataset')}" == query]
        if by_name:
            return max(by_name, key=lambda r: r.data.get("created_at", ""))
        raise UserError(f"run {query!r} is ambiguous: it matches {', '.join(d.name for d in dirs)}; give more of the id")
    known = [d.name for d in iter_run_dirs()]
    hint = f"known runs: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''}" if known else "there are no runs yet"
    raise UserError(f"no run matches {query!r} under {paths.runs_dir()}; {hint}")


def record_attempt(run: Run, job_id: str | None, shard: int) -> None:
    def change(d: dict[str, Any]) -> None:
        d["state"] = RUNNING
        d.setdefault("attempts", []).append(
            {"job_id": job_id, "shard": shard, "host": os.uname().nodename, "started_at": now(),
             "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}
        )
        d.pop("error", None)
    run.update(change)
