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
    name = home_name(where)
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


def home_name(where: Path) -> str:
    """How messages name the home: the variable when it is set, else the current directory."""
    return f"MEDMINDS_HOME={where}" if os.environ.get("MEDMINDS_HOME") else f"the current directory {where} (MEDMINDS_HOME is not set)"


READ_HINT = ("set MEDMINDS_HOME to the folder that holds your runs/ (the one `medminds submit` wrote them into), "
             "or unset it to use the current directory")


def existing_home() -> Path | None:
    """$MEDMINDS_HOME for commands that only read runs (status, report): the home, or None when it does not exist
    yet (nothing was submitted there). Creates and writes nothing.

    A home that is a file, lies under one, cannot be read, or holds a file where its runs/ folder belongs is one
    line naming it and what to do, rather than an empty answer that hides the mistake.
    """
    where = home()
    name = home_name(where)

    def unreadable(folder: Path) -> UserError:
        what = "" if folder == where else f": {folder} is not readable"
        return UserError(f"{name} cannot be read{what} (permission denied); ask its owner for read access, or {READ_HINT}")

    existing = where
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except PermissionError:  # a folder above it cannot be searched
        raise unreadable(existing.parent) from None
    if not existing.is_dir():
        what = "is a file" if existing == where else f"cannot exist: {existing} is a file"
        raise UserError(f"{name} {what}, not a directory; {READ_HINT}")
    if existing != where:
        return None
    if not os.access(where, os.R_OK | os.X_OK):
        raise unreadable(where)
    runs = where / "runs"
    if runs.exists() and not runs.is_dir():
        raise UserError(f"{name} holds a file {runs} where its runs folder belongs; move that file away, or {READ_HINT}")
    if runs.exists() and not os.access(runs, os.R_OK | os.X_OK):
        raise unreadable(runs)
    return where


def runs_dir() -> Path:
    return home() / "runs"


def data_dir() -> Path:
    return home() / "data"


def prepared_dir(prepare_run_id: str) -> Path:
    """The folder a `prepare` run fills; every stage that needs that run reads its data there."""
    return data_dir() / prepare_run_id


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names the file and the line, a file that is not UTF-8 text (or cannot be
    read at all) is one line naming it, never a traceback."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as e:  # missing, a directory, no permission; a path with a NUL in it
        raise UserError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write: still UTF-8 text
        data = data[3:]
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise UserError(f"{path}: not UTF-8 text: a NUL byte at line {line} (a binary file?); "
                        f"a TOML file is plain UTF-8 text") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} cannot be read as UTF-8; "
                        f"save the file as UTF-8 (a binary file is no TOML)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        if "end of document" in message:
            message += f" (line {len(text.splitlines()) or 1}, the last)"
        raise UserError(f"{path}: malformed TOML: {message}") from None
