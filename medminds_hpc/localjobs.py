"""Jobs of the local executor: each job's controller in a session of its own, and stopping a job for good.

submitit starts a local job's controller in the session and process group of the command that submitted it, so
Ctrl-C in that terminal reaches the job too, and its cancel is one SIGINT to the controller, which a job started
from a script or under nohup (SIGINT ignored) never notices. Here the controller leads its own process group
(its output goes to logs/controller.log, not to whichever terminal submitted it), and `stop` escalates SIGINT,
SIGTERM, SIGKILL to the job's processes, returning only once they are gone.

A local job id is the controller's pid. Pids are reused, so a pid counts as the job only while its command line
is that run's controller; its process group cannot be reused while any of the job's processes remains in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from medminds_hpc import compat, fileio

CONTROLLER_MODULE = "submitit.local._local"
CONTROLLER_LOG = "controller.log"
# how long each signal gets before the next, stronger one (SIGINT, SIGTERM, SIGKILL)
STOP_WAITS_S = (3.0, 3.0, 5.0)


def executor(folder: Path, max_num_timeout: int) -> Any:
    """A submitit LocalExecutor whose jobs run in their own process group, output in logs/controller.log."""
    return compat.session_local_executor(folder, max_num_timeout, Path(folder) / CONTROLLER_LOG)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live (not zombie) process on this host."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def _is_controller(pid: int, folder: Path) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    if CONTROLLER_MODULE not in args:
        return False
    with contextlib.suppress(OSError):
        return any(a and Path(a).resolve() == Path(folder).resolve() for a in args[args.index(CONTROLLER_MODULE) + 1:])
    return False


def processes(job_id: str, folder: Path) -> list[int]:
    """The live processes of local job `job_id` (its controller, and everything in its process group or below it)."""
    try:
        pid = int(job_id)
    except ValueError:
        return []
    table = _process_table()
    if pid in table and not _is_controller(pid, folder):
        return []  # the pid now belongs to another program: the job and its group are gone
    members = {p for p, (_, group) in table.items() if group == pid}
    if pid in table:
        members.add(pid)
        frontier = [pid]
        while frontier:  # descendants outside the group (a job submitted before controllers had their own)
            parent = frontier.pop()
            children = [p for p, (ppid, _) in table.items() if ppid == parent and p not in members]
            members.update(children)
            frontier += children
    return sorted(members)


def alive(job_id: str, folder: Path) -> bool:
    """Whether any process of the job is left (`medminds status`: cheap while the controller runs, the usual case)."""
    try:
        pid = int(job_id)
    except ValueError:
        return False
    if fileio.pid_alive(pid):
        return _is_controller(pid, folder)  # else the pid was reused: the job's group is gone with it
    return bool(processes(job_id, folder))  # a task left behind by a killed controller


def stop(job_id: str, folder: Path, waits_s: tuple[float, float, float] = STOP_WAITS_S) -> bool:
    """SIGINT, then SIGTERM, then SIGKILL to the job's processes, each followed by a short wait until they are
    gone. True once none is left; False if some survived even SIGKILL (e.g. stuck in the kernel)."""
    for sig, wait_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), waits_s):
        deadline = time.monotonic() + wait_s
        sent: set[int] = set()
        while True:
            left = processes(job_id, folder)
            if not left:
                return True
            for pid in set(left) - sent:  # a process started after the signal gets it too
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                sent.add(pid)
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return not processes(job_id, folder)
