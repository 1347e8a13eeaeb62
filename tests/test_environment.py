"""The lock files: what install.sh installs is exactly a lock, each lock meets pyproject's requirements, and CI's
GPU-lock environment differs from the GPU lock only in torch's build and what needs a GPU."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from medminds_hpc import environment
from tests.helpers import ROOT

LOCKS = ROOT / "locks"


def test_this_environment_is_exactly_its_lock():
    """install.sh installed this Python from a lock and nothing outside it: every version is the lock's."""
    lock = environment.lock_in_use()
    if lock is None:
        pytest.skip("this Python was not installed by install.sh (no lock recorded)")
    assert environment.differences() == [], f"{lock.name}: {environment.differences()}"


def test_differences_name_each_package_and_version(tmp_path):
    lock = tmp_path / "x.txt"
    lock.write_text("# header\ntorch==2.14.1\ntransformers==5.17.0\nTRL==1.15.0\nnumpy==2.4.6  # pinned\n")
    present = {"torch": "2.14.1+cu130", "transformers": "5.25.0", "trl": "1.15.0", "pip": "23.2.1", "rich": "15.0.0"}
    assert environment.differences(lock, present) == [
        "numpy==2.4.6 (x.txt) is not installed",
        "transformers 5.25.0 is installed; x.txt says 5.17.0",
        "rich 15.0.0 is installed but not in x.txt",
    ]
    lock.write_text("torch==2.13.0+cpu\n")
    assert environment.differences(lock, {"torch": "2.13.0"}) == ["torch 2.13.0 is installed; x.txt says 2.13.0+cpu"]


def requirements(extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize("lock, extras", [("cpu", {"dev", "real"}), ("gpu", {"dev", "real", "gpu"}), ("gpu-on-cpu", {"dev", "real"})])
def test_each_lock_meets_the_projects_requirements(lock, extras):
    """A requirement changed in pyproject.toml without `python3 locks/resolve.py` fails here, naming it."""
    pins = environment.read_lock(LOCKS / f"{lock}.txt")
    for req in requirements(extras):
        name = environment.canonical(req.name)
        assert name in pins, f"{lock}.txt has no {req.name} ({req}): run python3 locks/resolve.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock}.txt pins {name}=={pins[name]}, pyproject wants {req}"


def test_the_gpu_lock_tested_on_cpu_is_the_gpu_lock_but_torch_and_what_needs_a_gpu():
    gpu = environment.read_lock(LOCKS / "gpu.txt")
    on_cpu = environment.read_lock(LOCKS / "gpu-on-cpu.txt")
    cpu_torch = (ROOT / "constraints-cpu.txt").read_text().split("torch==", 1)[1].split()[0]
    assert on_cpu["torch"] == cpu_torch and gpu["torch"] != cpu_torch
    assert {n: v for n, v in on_cpu.items() if n != "torch"} == {n: gpu[n] for n in on_cpu if n != "torch"}
    left_out = set(gpu) - set(on_cpu)
    assert {"unsloth", "unsloth-zoo", "xformers", "triton"} <= left_out
    assert {"transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes"} <= set(on_cpu)
