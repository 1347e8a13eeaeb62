"""How fast the login-node commands answer: `medminds --help` and `medminds status` over 1,000 runs.

Creates 1,000 synthetic run directories (a third finished Slurm runs with metrics, a third running Slurm runs
with progress, a third local runs) in a temporary MEDMINDS_HOME, puts counting wrappers for sacct/squeue in
front of the real ones (the real dev cluster answers when it is up; without Slurm they print nothing), and
times each command against `python -c pass` in the same run. Then proves, with `python -X importtime` on the
real console script, that neither command imports torch, transformers or any other heavy library.

    .venv/bin/python benchmarks/cli_speed.py [--runs 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = Path(sys.executable).parent / "medminds"
HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "unsloth", "pandas", "numpy")


def make_runs(home: Path, count: int) -> None:
    for i in range(count):
        kind = i % 3
        run_id = f"expert-task-micro-{i:08x}"
        d = home / "runs" / run_id
        d.mkdir(parents=True)
        job = str(900000 + i)
        record = {
            "run_id": run_id, "experiment": "expert-task", "dataset": "micro", "stage": "expert",
            "executor": "local" if kind == 2 else "slurm", "job_ids": [str(10**6 + i)] if kind == 2 else [job],
            "submissions": [{"job_ids": [str(10**6 + i)] if kind == 2 else [job]}],
            "state": ["COMPLETED", "RUNNING", "COMPLETED"][kind], "requeues": i % 2,
            "progress": {"0": {"step": 120 + i % 50, "total": 250}},
            "config": {"lr": 2e-4, "epochs": 1, "lora_r": 16, "model": "mistral-7b-instruct"},
            "created_at": "2026-11-26T10:00:00+00:00", "updated_at": "2026-11-26T10:05:00+00:00",
        }
        (d / "run.json").write_text(json.dumps(record, indent=2))
        if kind != 1:
            (d / "metrics.json").write_text(json.dumps({"accuracy": 0.5 + (i % 40) / 100, "n": 500}))


def counting_wrappers(bin_dir: Path, log: Path) -> None:
    """sacct/squeue that record each call, then run the real command if there is one."""
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        real = shutil.which(name)
        body = f'#!/bin/sh\necho {name} >> "{log}"\n' + (f'exec "{real}" "$@"\n' if real else "exit 0\n")
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return statistics.median(times), min(times)


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", str(CLI), *args], env=env, capture_output=True, text=True)
    seen = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            top = line.rsplit("|", 1)[1].strip().split(".")[0]
            if top in HEAVY:
                seen.add(top)
    return sorted(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    if not CLI.exists():
        raise SystemExit(f"{CLI} not found: run `bash install.sh` and use .venv/bin/python")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        home = tmp_path / "home"
        make_runs(home, args.runs)
        calls = tmp_path / "calls.log"
        counting_wrappers(tmp_path / "bin", calls)
        env = {**os.environ, "MEDMINDS_HOME": str(home), "PATH": f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}", "COLUMNS": "200"}
        print(f"{args.runs} run directories, median (min) of {args.repeat} runs each; slurm: {'real' if shutil.which('sacct') else 'absent'}")
        base, base_min = timed([sys.executable, "-c", "pass"], env, args.repeat)
        print(f"  python -c pass            {base:6.3f} s ({base_min:.3f})")
        rows = [("medminds --help", ["--help"]), ("medminds status", ["status"]), ("medminds status --json", ["status", "--json"])]
        for label, cli_args in rows:
            calls.write_text("")
            med, low = timed([str(CLI), *cli_args], env, args.repeat)
            per_call = calls.read_text().split()
            counts = {n: per_call.count(n) // args.repeat for n in ("sacct", "squeue")}
            verdict = "OK" if med <= 0.5 else "OVER 0.5 s"
            print(f"  {label:<25} {med:6.3f} s ({low:.3f})  = {med / base:4.1f}x python -c pass  "
                  f"sacct calls {counts['sacct']}, squeue calls {counts['squeue']}  [{verdict}]")
        listed = json.loads(subprocess.run([str(CLI), "status", "--json"], env=env, capture_output=True, text=True).stdout)
        print(f"  status --json listed {len(listed)} runs")
        for label, cli_args in rows[:2]:
            heavy = heavy_imports(cli_args, env)
            print(f"  {label}: heavy modules imported: {heavy or 'none'} (checked with python -X importtime)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, transformers"], env=env, capture_output=True)
        print(f"  for scale: python -c 'import torch, transformers' takes {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
