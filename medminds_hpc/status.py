"""Live state of every run: one `sacct` call for all job ids (squeue for jobs sacct does not show yet).

Never imports torch: `medminds status` must answer in well under a second on a login node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from medminds_hpc import localjobs, runs

SACCT_FIELDS = ["JobID", "State", "ElapsedRaw", "AllocTRES", "NodeList", "ExitCode", "Start"]


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
    job_ids = [j for j in dict.fromkeys(job_ids) if j and re.fullmatch(r"\d+(_\d+)?", j)]
    if not job_ids:
        return {}
    out: dict[str, JobInfo] = {}
    bases = sorted({j.split("_")[0] for j in job_ids}, key=int)
    if shutil.which("sacct"):
        try:
            text = subprocess.run(
                ["sacct", "-X", "-D", "-P", "-n", "-j", ",".join(bases), f"--format={','.join(SACCT_FIELDS)}"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout
        except (subprocess.SubprocessError, OSError):
            text = ""
        for line in text.splitlines():
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
            text = subprocess.run(
                ["squeue", "-h", "-j", ",".join(sorted({j.split("_")[0] for j in missing}, key=int)), "-o", "%i|%T|%M|%N"],
                capture_output=True, text=True, timeout=30,
            ).stdout
        except (subprocess.SubprocessError, OSError):
            text = ""
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) == 4:
                out.setdefault(parts[0], JobInfo(parts[0], _base_state(parts[1]), _slurm_duration(parts[2]), 0.0, parts[3]))
    return out


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


def run_status(run: runs.Run, live: dict[str, JobInfo]) -> RunStatus:
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
        progress=_progress_text(d), headline=_headline_text(run), detail=detail,
    )


def collect(selected: list[runs.Run]) -> list[RunStatus]:
    slurm_ids = [j for r in selected if r.data.get("executor") == "slurm" for j in r.job_ids]
    live = scheduler_states(slurm_ids)
    return [run_status(r, live) for r in selected]
