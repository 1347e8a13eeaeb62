"""Where things live: the experiment and cluster-profile folders, and $MEDMINDS_HOME (runs, data).

$MEDMINDS_HOME must be on the cluster's shared filesystem: the login node writes run.json, compute nodes
write checkpoints and metrics into the same run directory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from medminds_hpc.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def jobs_dir() -> Path:
    return Path(os.environ.get("MEDMINDS_JOBS") or PROJECT_ROOT / "jobs")


def profiles_dir() -> Path:
    return Path(os.environ.get("MEDMINDS_PROFILES") or PROJECT_ROOT / "slurm")


def home() -> Path:
    return Path(os.environ.get("MEDMINDS_HOME") or Path.cwd()).absolute()


# kernel filesystems: writing there fails, or worse, does something other than store a file
VIRTUAL_FILESYSTEMS = (Path("/proc"), Path("/sys"))
HOME_HINT = ("set MEDMINDS_HOME to a directory you can write on the cluster's shared filesystem "
             "(e.g. /work/pi_<group>/$USER/medminds), or unset it to use the current directory")


def check_home() -> Path:
    """$MEDMINDS_HOME, once known to be usable for runs and data: a writable directory, or one that can be made.

    Checked before anything is written, so a bad home is one line naming it and what to do, not a traceback
    from deep inside a submission. Nothing is left behind (the probe file is removed at once).
    """
    where = home()
    name = f"MEDMINDS_HOME={where}" if os.environ.get("MEDMINDS_HOME") else f"the current directory {where} (MEDMINDS_HOME is not set)"
    real = where.resolve()
    for virtual in VIRTUAL_FILESYSTEMS:
        if real == virtual or virtual in real.parents:
            raise UserError(f"{name} is under {virtual}, a kernel filesystem that cannot hold runs; {HOME_HINT}")
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == where else f"cannot be created: {existing} is"
        raise UserError(f"{name} {what} not a directory; {HOME_HINT}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medminds-probe-", dir=existing)
    except OSError as e:
        what = "is" if existing == where else f"cannot be created: {existing} is"
        raise UserError(f"{name} {what} not writable ({e.strerror}); {HOME_HINT}") from None
    os.close(fd)
    os.unlink(probe)
    return where


def runs_dir() -> Path:
    return home() / "runs"


def data_dir() -> Path:
    return home() / "data"


def prepared_dir(prepare_run_id: str) -> Path:
    """The folder a `prepare` run fills; every stage that needs that run reads its data there."""
    return data_dir() / prepare_run_id


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names the file and the line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        text = str(e)
        if "end of document" in text:
            text += f" (line {len(Path(path).read_text(errors='replace').splitlines()) or 1}, the last)"
        raise UserError(f"{path}: malformed TOML: {text}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
