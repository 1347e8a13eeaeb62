"""The README's first command: on an installed checkout it trains the tiny task expert end to end, it learns, the
status table says so, and the checkout is left as it was (runs, data and the tiny model live outside it)."""

import json
import os
import re
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

NOTICE = "Failed to load CPU gemm_4bit_forward"


def untracked() -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True)
    return set(out.stdout.splitlines())


def test_quickstart_trains_the_task_expert_and_leaves_the_checkout_clean(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "200"}
    for var in ("MEDMINDS_HOME", "MEDMINDS_JOBS", "XDG_CACHE_HOME"):
        env.pop(var, None)
    before = untracked()
    proc = subprocess.run(["bash", str(ROOT / "quickstart.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = tmp_path / ".cache" / "medminds" / "quickstart"
    (run_dir,) = (home / "runs").glob("expert-task-micro-*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task_accuracy"] >= 0.8, metrics["epochs"]  # held-out synthetic ARC-style questions; chance 0.25
    assert (run_dir / "artifacts" / "adapter" / "adapter_model.safetensors").exists()
    table = proc.stdout.split("runs in ", 1)[1].splitlines()[3:]  # `medminds status`: title, header, rule, rows
    rows = {line.split()[0]: line for line in table if line.startswith(("expert-task-", "prepare-"))}
    expert = rows[run_dir.name]
    assert "COMPLETED" in expert and expert.endswith(f"task_accuracy {metrics['task_accuracy']:.3f}"), expert
    (prepare,) = [line for name, line in rows.items() if name.startswith("prepare-micro-")]
    assert re.search(r"COMPLETED .* rows [\d,]+$", prepare), prepare
    assert untracked() == before  # no runs/, data/ or models/ left in the checkout
    logs = "".join(p.read_text(errors="replace") for p in home.glob("runs/*/logs/*"))
    assert NOTICE not in proc.stdout + proc.stderr + logs
