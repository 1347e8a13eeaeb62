"""Shared fixtures: an isolated $MEDMINDS_HOME per test, offline Hugging Face, and test experiments."""

from __future__ import annotations

import os

import pytest

from tests.helpers import ROOT, one_thread, slurm_up


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


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test (see helpers.one_thread)."""
    with one_thread():
        yield


def pytest_report_header(config):
    """The libraries these tests ran against and the lock they came from: a failure names its versions."""
    from medminds_hpc import environment

    present = environment.installed()
    names = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "submitit")
    lock = environment.lock_in_use()
    differ = environment.differences()
    versions = ", ".join(f"{n} {present.get(n, '-')}" for n in names)
    return [f"libraries: {versions}",
            f"lock: {lock.name if lock else 'none recorded'}; differences: {'; '.join(differ) if differ else 'none'}"]


def pytest_collection_modifyitems(config, items):
    if slurm_up():
        return
    skip = pytest.mark.skip(reason="no running Slurm: start the dev cluster with `bash slurm/dev-cluster/up.sh`")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
