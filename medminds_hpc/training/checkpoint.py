"""Checkpoints of trainable state only: one directory per step, committed by an atomic rename.

A checkpoint is `step-00000123/` with `state.pt` and `manifest.json` (sizes and sha256 of every file). It is
written under a temporary name and renamed when complete, so a kill mid-write leaves at worst a stray temp
directory; a directory whose files do not match its manifest (a truncated copy, a disk error) is skipped in
favour of the previous one, with a warning in the job log naming it and why.

A save that runs out of space (ENOSPC, or EDQUOT on a quota'd share) removes what it half wrote and fails with one
line naming the step, the folder and what to do (`SaveFailed`); `failure_reason` gives the job that line for a
save that failed inside the Trainer too. The newest committed checkpoint stays valid, so a resubmission continues.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medminds_hpc import fileio

_STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "state.pt"
MANIFEST = "manifest.json"
TRAINER_STAGING = ".trainer"  # where the Trainer writes a checkpoint before `commit` (engine.py)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
log = logging.getLogger(__name__)


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (the disk is full); its message is the one line the run records."""


@dataclass
class Checkpoint:
    step: int
    dir: Path

    def load(self) -> dict[str, Any]:
        import torch  # lazily: the CLI never needs it

        return torch.load(self.dir / STATE_FILE, map_location="cpu", weights_only=False)

    def meta(self) -> dict[str, Any]:
        return fileio.read_json(self.dir / MANIFEST).get("meta", {})


class CheckpointStore:
    """Save/load a state dict per step in `root`, keeping the newest `keep`."""

    def __init__(self, root: Path | str, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Checkpoint:
        import torch

        tmp = self.staging_dir(step)
        try:
            with open(tmp / STATE_FILE, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            self._abandon(step, tmp, e)
            raise
        return self.commit(step, tmp, meta)

    def commit(self, step: int, src: Path, meta: dict[str, Any] | None = None) -> Checkpoint:
        """Turn a fully written directory (e.g. a Trainer checkpoint) into checkpoint `step`."""
        src = Path(src)
        files = {
            str(p.relative_to(src)): {"size": p.stat().st_size, "sha256": fileio.sha256_file(p)}
            for p in sorted(src.rglob("*")) if p.is_file() and p.name != MANIFEST
        }
        try:
            fileio.atomic_write_json(src / MANIFEST, {"step": step, "saved_at": time.time(), "files": files, "meta": meta or {}})
        except OSError as e:
            self._abandon(step, src, e)
            raise
        final = self.root / f"step-{step:08d}"
        fileio.swap_in(src, final)
        self._prune()
        return Checkpoint(step, final)

    def staging_dir(self, step: int) -> Path:
        """A fresh directory to write checkpoint `step` into before `commit` (ignored until committed)."""
        tmp = self.root / f".tmp-step-{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def all(self) -> list[Checkpoint]:
        """Committed checkpoints, newest first (validity not checked)."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and d.is_dir():
                out.append(Checkpoint(int(m.group(1)), d))
        return sorted(out, key=lambda c: c.step, reverse=True)

    @staticmethod
    def problem(ckpt: Checkpoint) -> str | None:
        """Why the checkpoint's files do not match its manifest (None: they do)."""
        try:
            manifest = fileio.read_json(ckpt.dir / MANIFEST)
        except FileNotFoundError:
            return f"no {MANIFEST} (never committed)"
        except (OSError, json.JSONDecodeError) as e:
            return f"unreadable {MANIFEST} ({e})"
        try:
            for name, info in manifest["files"].items():
                p = ckpt.dir / name
                if not p.is_file():
                    return f"{name} is missing"
                if p.stat().st_size != info["size"]:
                    return f"{name} has {p.stat().st_size} bytes, its manifest says {info['size']} (cut short?)"
                if fileio.sha256_file(p) != info["sha256"]:
                    return f"{name} does not match its sha256 in {MANIFEST} (corrupted)"
            if manifest.get("step") != ckpt.step:
                return f"{MANIFEST} is for step {manifest.get('step')}, not {ckpt.step}"
        except (OSError, KeyError, TypeError, AttributeError) as e:
            return f"malformed {MANIFEST} ({type(e).__name__}: {e})"
        return None

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint whose files match its manifest; each one skipped is named in the log."""
        for ckpt in self.all():
            why = self.problem(ckpt)
            if why is None:
                return ckpt
            log.warning("skipping checkpoint %s: %s; an older one (or the start) is used instead", ckpt.dir, why)
        return None

    def _abandon(self, step: int, half: Path, error: BaseException) -> None:
        """A save failed: remove what it half wrote (nothing may pick it up, and it holds the space the run's state
        file needs next); when the disk is full, fail with the one line that says so instead of `error`."""
        full = is_disk_full(error, self.root)  # asked before the space is freed
        shutil.rmtree(half, ignore_errors=True)
        if full:
            raise SaveFailed(disk_full_message(step, self)) from error

    def _prune(self) -> None:
        for ckpt in self.all()[self.keep:]:
            shutil.rmtree(ckpt.dir, ignore_errors=True)
        for stray in self.root.glob(".tmp-step-*"):  # left by a job killed mid-save
            if not stray.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stray, ignore_errors=True)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def is_disk_full(error: BaseException, where: Path) -> bool:
    """Whether `error` (or what caused it) is a full disk or quota. torch.save to a path reports it only as a
    RuntimeError about a short write: then the filesystem of `where` is asked whether it is (almost) full."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return True
        if any(text in str(e).lower() for text in _DISK_FULL_TEXT):
            return True
    short_write = any("inline_container" in str(e) or "file write failed" in str(e) for e in _chain(error))
    return short_write and _nearly_full(where)


def _nearly_full(where: Path) -> bool:
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free < 1 << 20
    except OSError:
        return False


def disk_full_message(step: int | None, store: CheckpointStore, error: BaseException | None = None) -> str:
    """The one line: what was being written where (checkpoint `step`, or what `error` says), what to do, and the
    step a resubmission continues from."""
    kept = store.latest()
    resume = f"it continues from step {kept.step}" if kept else "it starts from the beginning (no checkpoint was committed yet)"
    if step is not None:
        return f"no space left on device while saving checkpoint step {step} in {store.root}; free space there and resubmit: {resume}"
    said = " ".join(str(error).split())[:200] if error is not None else ""
    return (f"no space left on device while the run wrote its files ({type(error).__name__}: {said}); free space "
            f"under {store.root.parent} and resubmit: {resume}")


def failure_reason(error: BaseException, root: Path | str) -> str | None:
    """The one line a run records when it failed because its checkpoint folder `root` filled up (None: another
    failure). Half-written saves are removed first (the Trainer's staging and ours), freeing the space the run's
    state file needs."""
    root = Path(root)
    if isinstance(error, SaveFailed):
        return str(error)
    if not is_disk_full(error, root):
        return None
    steps = [int(m.group(1)) for d in (root / TRAINER_STAGING, root) if d.is_dir() for p in d.iterdir()
             if (m := re.match(r"^(?:checkpoint-|\.tmp-step-)(\d+)", p.name))]
    for half in [root / TRAINER_STAGING, *root.glob(".tmp-step-*")]:
        shutil.rmtree(half, ignore_errors=True)
    return disk_full_message(max(steps) if steps else None, CheckpointStore(root), error)
