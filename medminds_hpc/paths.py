"""Where things live: the experiment and cluster-profile folders, and $MEDMINDS_HOME (runs, data).

$MEDMINDS_HOME must be on the cluster's shared filesystem: the login node writes run.json, compute nodes
write checkpoints and metrics into the same run directory.
"""

from __future__ import annotations

import os
import sys
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
