"""The input contract in figures: what the property tests cover, and what the whole-graph check costs a dry run.

1. Runs tests/test_input_contract.py (the fast tier's property tests, seeded) with MEDMINDS_CONTRACT_STATS set and
   prints, per test: cases drawn, distinct (experiment, parameter) pairs, and the share refused cleanly (exit 2,
   every line naming the key, nothing written, no sbatch call) or, for values inside the domains, accepted.
2. Times `medminds submit all -d mega --seeds 3 --dry-run --executor slurm` with this tree and with the tree of
   --before (a git revision without the check, checked out in a temporary worktree), side by side in one run:
   the whole command (a new process each time) and the planning alone (study.plan in one process), the median of
   --repeat runs each, alternating the two trees.

    .venv/bin/python benchmarks/input_contract.py [--before bf38ae0] [--repeat 15]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["submit", "all", "-d", "mega", "--seeds", "3", "--dry-run", "--executor", "slurm"]
PLAN_ONLY = """
import statistics, sys, time
from medminds_hpc import study
assert study.__file__.startswith(sys.argv[1]), study.__file__
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    study.plan(study.StudyOptions(dataset="mega", seeds=3, executor="slurm", dry_run=True))
    times.append(time.perf_counter() - t)
print(statistics.median(times[1:]))
"""


def property_figures() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        env = {**os.environ, "MEDMINDS_CONTRACT_STATS": str(stats_file), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_input_contract.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        took = time.monotonic() - started
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
        cases = json.loads(stats_file.read_text()) if stats_file.exists() else []
    print(f"property tests: {took:.1f} s in all (pytest, one process)")
    by_test: dict[str, list[dict]] = collections.defaultdict(list)
    for case in cases:
        by_test[case["test"]].append(case)
    print(f"{'test':<16} {'cases':>6} {'pairs':>6} {'clean':>8}")
    for test, rows in by_test.items():
        pairs = {(r.get("experiment", ""), r["key"]) for r in rows}
        clean = sum(r["clean"] for r in rows) / len(rows)
        print(f"{test:<16} {len(rows):>6} {len(pairs):>6} {100 * clean:>7.1f}%")
    refused = [c for c in cases if c["test"] != "inside"]
    if refused:
        pairs = {(c.get("experiment", ""), c["key"]) for c in refused if c["test"] == "parameter"}
        print(f"refusals: {len(refused)} cases, {sum(c['clean'] for c in refused)} clean "
              f"({100 * sum(c['clean'] for c in refused) / len(refused):.1f}%); (experiment, parameter) pairs: {len(pairs)}")
        for c in [c for c in refused if not c["clean"]][:5]:
            print("  not clean:", c)


def timing_figures(before: str, repeat: int) -> None:
    worktree = Path(tempfile.mkdtemp(prefix="medminds-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), before], cwd=ROOT, check=True, capture_output=True)
    home = tempfile.mkdtemp(prefix="medminds-bench-")
    try:
        trees = {"before": worktree, "now": ROOT}
        whole: dict[str, list[float]] = {k: [] for k in trees}
        for _ in range(repeat):
            for name, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree), "MEDMINDS_HOME": home}
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "medminds_hpc.cli", *COMMAND], cwd=tree, env=env, capture_output=True, text=True)
                whole[name].append(time.perf_counter() - started)
                if proc.returncode != 0:
                    raise SystemExit(f"{name}: exit {proc.returncode}: {proc.stderr[-500:]}")
        plan = {}
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree), "MEDMINDS_HOME": home}
            out = subprocess.run([sys.executable, "-c", PLAN_ONLY, str(tree), str(repeat + 1)], cwd=tree, env=env,
                                 capture_output=True, text=True, check=True).stdout
            plan[name] = float(out.strip())
        print(f"`medminds {' '.join(COMMAND)}` (median of {repeat}, alternating; before = {before})")
        for name in trees:
            print(f"  {name:<7} whole command {statistics.median(whole[name]):.3f} s   planning alone {plan[name]:.3f} s")
        added = statistics.median(whole["now"]) - statistics.median(whole["before"])
        print(f"  added by the check: {added:+.3f} s (whole command), {plan['now'] - plan['before']:+.3f} s (planning); target <= 0.1 s")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="bf38ae0", help="a revision without the whole-graph check")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    property_figures()
    timing_figures(args.before, args.repeat)


if __name__ == "__main__":
    main()
