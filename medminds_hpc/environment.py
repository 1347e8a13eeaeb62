"""The installed libraries against the lock install.sh installed them from (locks/*.txt): the versions CI tested.

    from medminds_hpc import environment
    environment.differences()        # [] when this Python has exactly its lock's versions

install.sh records the lock's name in the environment (`.medminds-lock` beside its python); `medminds doctor`
says, on each node, which installed versions differ from it. Imports nothing heavy.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from medminds_hpc import paths

LOCKS_DIR = paths.PROJECT_ROOT / "locks"
LOCK_RECORD = ".medminds-lock"  # in sys.prefix: the lock install.sh installed this environment from
# not pinned by a lock: the installer itself, and the toolkit (installed from this checkout)
UNLOCKED = {"pip", "medminds-hpc"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of each `name==version` line."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def lock_in_use() -> Path | None:
    """The lock this environment was installed from, as install.sh recorded it (None: not installed by it)."""
    record = Path(sys.prefix) / LOCK_RECORD
    if not record.is_file():
        return None
    return LOCKS_DIR / f"{record.read_text().strip()}.txt"


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def same_version(installed_version: str, locked: str) -> bool:
    """2.13.0+cpu is 2.13.0+cpu; a lock without a local label (2.14.1) takes any build of it (+cu130, +cpu)."""
    return installed_version == locked or ("+" not in locked and installed_version.split("+", 1)[0] == locked)


def differences(lock: Path | None = None, present: dict[str, str] | None = None) -> list[str]:
    """One line per package whose installed version is not the lock's, missing, or installed beside it."""
    lock = lock or lock_in_use()
    if lock is None:
        return ["not installed by install.sh (no lock recorded): versions unchecked"]
    if not lock.is_file():
        return [f"{lock} (the lock install.sh recorded) is not there: versions unchecked"]
    pins = read_lock(lock)
    present = installed() if present is None else present
    out = []
    for name, version in sorted(pins.items()):
        if name not in present:
            out.append(f"{name}=={version} ({lock.name}) is not installed")
        elif not same_version(present[name], version):
            out.append(f"{name} {present[name]} is installed; {lock.name} says {version}")
    out += [f"{name} {present[name]} is installed but not in {lock.name}" for name in sorted(set(present) - set(pins) - UNLOCKED)]
    return out


def main() -> None:
    """`python -m medminds_hpc.environment`: each difference from the lock on its own line; exit 1 if any."""
    lines = differences()
    for line in lines:
        print(line)
    raise SystemExit(1 if lines else 0)


if __name__ == "__main__":
    main()
