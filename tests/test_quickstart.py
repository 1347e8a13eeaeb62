"""The README's first command: on an installed checkout it trains the tiny task expert end to end, and it learns."""

import json
import os
import subprocess

from tests.helpers import ROOT


def test_quickstart_trains_the_task_expert(tmp_path):
    env = {**os.environ, "MEDMINDS_HOME": str(tmp_path), "COLUMNS": "200"}
    env.pop("MEDMINDS_JOBS", None)
    proc = subprocess.run(["bash", str(ROOT / "quickstart.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "runs").glob("expert-task-micro-*")
    assert "expert-task-micro-" in proc.stdout and "COMPLETED" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task_accuracy"] >= 0.8, metrics["epochs"]  # held-out synthetic ARC-style questions; chance 0.25
    assert (run_dir / "artifacts" / "adapter" / "adapter_model.safetensors").exists()
