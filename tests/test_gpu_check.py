"""The device check's script, run as a dry run on the CPU: every stage's path runs through to its figures."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_the_device_check_runs_every_stage_on_the_cpu(medminds_home):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--paths", "bf16,unsloth"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("libraries: torch ") and lines[1].startswith("against gpu.txt: ")
    for stage in ("expert", "classifier", "features", "ensemble", "mixture"):
        (line,) = [x for x in lines if re.match(rf"bf16\s+{stage}\s", x)]
        assert re.search(r"\|\s+[\d,]+ (tokens|rows)/s \| peak RSS\s+[\d.]+ GiB \| planner", line), line
    assert re.search(r"bf16\s+expert .*planner\s+[\d.]+ GiB", proc.stdout)  # the planner's estimate beside it
    assert "unsloth  skipped: a dry run has no CUDA" in proc.stdout and "FAILED" not in proc.stdout
