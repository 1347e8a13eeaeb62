"""Atomic writes, and locks: one for read-modify-write of small state files, one across hosts for submissions.

A job can be killed at any instant (preemption, time-out, OOM); a reader must only ever see the old file or
the new one, never half of one. Everything that records state goes through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from medminds_hpc.errors import UserError


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; collaborators on a shared filesystem must read it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def umask() -> int:
    """The process umask, read without changing it (os.umask would flip it for every thread for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def staging_dir(target: Path | str) -> Path:
    """A fresh, empty directory beside `target` to build its next version in (hidden, unique to this process)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    return tmp


def swap_in(tmp: Path | str, target: Path | str) -> None:
    """Put the fully written directory `tmp` in place of `target`: a reader sees the old one or the new one, whole.

    The old version is renamed aside first; a kill between the two renames leaves it at `.NAME.old-*`, which
    `recover_swap` puts back.
    """
    tmp, target = Path(tmp), Path(target)
    old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def replace_dir(target: Path | str, write: Callable[[Path], Any]) -> None:
    """Build a directory with `write(tmp)` under a temporary name, then swap it in place of `target`."""
    tmp = staging_dir(target)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, target)


def recover_swap(target: Path | str) -> None:
    """Undo what a killed swap left beside `target`: put back a version moved aside between the two renames, and
    remove stale temporary folders. Call it only while no other process writes `target` (hold its lock)."""
    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=_swap_time)
    if not target.exists() and olds:
        os.rename(olds.pop(), target)
    for stale in olds:
        shutil.rmtree(stale, ignore_errors=True)


def _swap_time(path: Path) -> int:
    """When a version was moved aside (the nanoseconds in its name; a rename keeps a directory's mtime)."""
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path | str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def locked(path: Path | str) -> Iterator[None]:
    """Exclusive advisory lock on `path` + '.lock' (fcntl works on the NFS/Lustre shares clusters use)."""
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# A lock file created with O_EXCL (atomic on local filesystems and on NFSv3+, unlike flock, which some NFS
# mounts keep local to one host). It names its holder, so a lock left by a killed process can be taken over.
LOCK_STALE_AFTER_S = 300.0


@contextlib.contextmanager
def exclusive(path: Path | str, *, stale_after_s: float = LOCK_STALE_AFTER_S, poll_s: float = 0.05,
              wait_s: float | None = None) -> Iterator[None]:
    """Hold the lock file `path` while the block runs, waiting for any other holder on any host.

    A lock is taken over when its holder is gone: same host and a dead pid, or older than `stale_after_s` (a
    holder on another host cannot be asked). Waiting gives up after `wait_s` (default: just past stale_after_s,
    when any lock has become stale) with a UserError naming the holder and the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + (wait_s if wait_s is not None else stale_after_s + 30)
    while not _try_create(path, token):
        holder = _read_lock(path)
        if holder is not None and _is_stale(path, holder, stale_after_s):
            _break(path, holder)
            continue
        if time.monotonic() > deadline:
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "an unknown process"
            raise UserError(f"{path} is held by {who}; wait for that command to finish, or delete the file if it no longer runs")
        time.sleep(poll_s)
    try:
        yield
    finally:
        holder = _read_lock(path)
        if holder is not None and holder.get("token") == token:  # not taken over meanwhile as stale
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _try_create(path: Path, token: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~umask())
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "created": time.time(), "token": token}, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The holder's record; {} while a holder is still writing it (or died before it could); None when free."""
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("created", mtime)
    return data


def _is_stale(path: Path, holder: dict[str, Any], stale_after_s: float) -> bool:
    if "token" not in holder:  # created but never written: its writer died at once, or is writing right now
        return time.time() - float(holder["created"]) > 10
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0))):
        return True
    return time.time() - float(holder["created"]) > stale_after_s


def _break(path: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock, but never a live one that replaced it a moment ago (renamed aside, then checked)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_lock(aside) or {}
    if moved.get("token") != stale.get("token"):  # a new holder's lock: put it back unless yet another exists
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and has not finished (a zombie counts as finished)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def append_jsonl(path: Path | str, record: dict) -> None:
    """Append one line; a line torn by a kill is skipped by `read_jsonl`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        f.flush()


def read_jsonl(path: Path | str) -> list[dict]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a hard kill
    return out
