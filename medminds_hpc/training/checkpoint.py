"""Checkpoints of trainable state only: one directory per step, committed by an atomic rename.

A checkpoint is `step-00000123/` with `state.pt` and `manifest.json` (sizes and sha256 of every file). It is
written under a temporary name and renamed when complete, so a kill mid-write leaves at worst a stray temp
directory; a directory whose files do not match its manifest (a truncated copy, a disk error) is skipped in
favour of the previous one, with a warning in the job log naming it and why.
"""

from __future__ import annotations

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
log = logging.getLogger(__name__)


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
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        return self.commit(step, tmp, meta)

    def commit(self, step: int, src: Path, meta: dict[str, Any] | None = None) -> Checkpoint:
        """Turn a fully written directory (e.g. a Trainer checkpoint) into checkpoint `step`."""
        src = Path(src)
        files = {
            str(p.relative_to(src)): {"size": p.stat().st_size, "sha256": fileio.sha256_file(p)}
            for p in sorted(src.rglob("*")) if p.is_file() and p.name != MANIFEST
        }
        fileio.atomic_write_json(src / MANIFEST, {"step": step, "saved_at": time.time(), "files": files, "meta": meta or {}})
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

    def _prune(self) -> None:
        for ckpt in self.all()[self.keep:]:
            shutil.rmtree(ckpt.dir, ignore_errors=True)
        for stray in self.root.glob(".tmp-step-*"):  # left by a job killed mid-save
            if not stray.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stray, ignore_errors=True)
