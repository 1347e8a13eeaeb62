"""Shared fixtures: an isolated $MEDMINDS_HOME per test, offline Hugging Face, and test experiments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def medminds_home(tmp_path, monkeypatch):
    """Every test gets its own $MEDMINDS_HOME; jobs run from the repo root so `tests.stages` imports."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MEDMINDS_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("MEDMINDS_JOBS", raising=False)
    monkeypatch.delenv("MEDMINDS_CLUSTER", raising=False)
    monkeypatch.chdir(ROOT)
    return home


@pytest.fixture
def jobs_dir(tmp_path, monkeypatch):
    """A private jobs/ folder; write experiments into it with `write_job`."""
    d = tmp_path / "jobs"
    d.mkdir()
    monkeypatch.setenv("MEDMINDS_JOBS", str(d))
    return d


def submit_options(**kw):
    """SubmitOptions for the dev cluster profile; `executor` defaults to local."""
    from medminds_hpc.submit import SubmitOptions

    kw.setdefault("dataset", "micro")
    kw.setdefault("cluster", "dev")
    kw.setdefault("executor", "local")
    return SubmitOptions(**kw)


def quiet(_message: str) -> None:
    pass


def write_job(jobs_dir: Path, name: str, text: str) -> Path:
    p = jobs_dir / f"{name}.toml"
    p.write_text(text)
    return p


def counter_job(steps: int = 5, sleep_s: float = 0.0, extra: str = "", needs: str = "[]", resources: str = "") -> str:
    return f'''stage = "tests.stages.counter"
needs = {needs}
{extra}
[params]
steps = {steps}
sleep_s = {sleep_s}
{resources}
'''


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m medminds_hpc.cli ...` as a user would (new process, real exit code)."""
    return subprocess.run([sys.executable, "-m", "medminds_hpc.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pytest_collection_modifyitems(config, items):
    if slurm_up():
        return
    skip = pytest.mark.skip(reason="no running Slurm: start the dev cluster with `bash slurm/dev-cluster/up.sh`")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
