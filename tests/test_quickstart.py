"""The README's first command: on an installed checkout `medminds demo` runs the study in miniature through the
local executor (every stage of the subset ends, the experts learn), writes the report and prints its summary,
and leaves the checkout as it was (runs, data, the tiny model and the report live outside it)."""

import json
import os
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

NOTICE = "Failed to load CPU gemm_4bit_forward"
DEMO_RUNS = ["prepare", "expert-task", "expert-domain", "baseline-nextword", "baseline-classifier-mistral", "features",
             "ensemble-late-fusion", "ensemble-transformer", "ensemble-weighted", "moe-linear", "moe-topk", "merge-linear"]


def untracked() -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True)
    return set(out.stdout.splitlines())


def test_quickstart_runs_the_demo_writes_the_report_and_leaves_the_checkout_clean(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "200"}
    for var in ("MEDMINDS_HOME", "MEDMINDS_JOBS", "XDG_CACHE_HOME", "OMP_NUM_THREADS"):
        env.pop(var, None)
    before = untracked()
    proc = subprocess.run(["bash", str(ROOT / "quickstart.sh")], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = tmp_path / ".cache" / "medminds" / "quickstart"
    done = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("done  ")}
    assert sorted(done) == sorted(DEMO_RUNS)  # one progress line per run, as it ended
    (expert,) = (home / "runs").glob("expert-task-micro-*")
    metrics = json.loads((expert / "metrics.json").read_text())
    assert metrics["task_accuracy"] >= 0.8, metrics["epochs"]  # held-out synthetic ARC-style questions; chance 0.25
    assert f"task_accuracy {metrics['task_accuracy']:.3f}" in done["expert-task"]
    results = home / "results"
    assert {"summary.md", "summary.csv", "index.html", "README.md"} <= {p.name for p in results.iterdir()}
    assert f"10 finished run(s) in {home / 'runs'}" in proc.stdout  # every run but prepare and features evaluates
    summary = (results / "summary.md").read_text()
    assert all(name in summary for name in DEMO_RUNS if name not in ("prepare", "features"))
    assert f"to {results}:" in proc.stdout
    assert untracked() == before  # no runs/, data/, models/ or results left in the checkout
    logs = "".join(p.read_text(errors="replace") for p in home.glob("runs/*/logs/*") if p.is_file())
    assert NOTICE not in proc.stdout + proc.stderr + logs
