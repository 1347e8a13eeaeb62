"""How fast the login-node commands answer: `medminds --help`, and `medminds status` over 1,000 and 10,000 runs.

For each count, creates synthetic run directories (a third finished Slurm runs with metrics, a third running
Slurm runs with progress, a third finished local runs) in a temporary MEDMINDS_HOME, puts counting wrappers for
sacct/squeue in front of the real ones (the real dev cluster answers when it is up; without Slurm they print
nothing), and times each command against `python -c pass` in the same run: the first `status` (which settles
ended runs into their run.json for at most status.SETTLE_BUDGET_S), then, once every ended run is settled, the
everyday `status`, `--json` and the filters. Then proves, with `python -X importtime` on the real console
script, that neither `--help` nor `status` imports torch, transformers or any other heavy library.

    .venv/bin/python benchmarks/cli_speed.py [--runs 1000,10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
        if kind != 1:  # the size of a real one: 21 subjects, a 4x4 confusion matrix
            per_subject = {f"subject {s}": {"accuracy": 0.5, "n": 24, "correct": 12} for s in range(21)}
            (d / "metrics.json").write_text(json.dumps({"accuracy": 0.5 + (i % 40) / 100, "n": 500, "per_subject": per_subject,
                                                        "confusion_matrix": [[30, 2, 3, 1]] * 4, "accuracy_ci95": [0.4, 0.6]}, indent=2))


def counting_wrappers(bin_dir: Path, log: Path) -> None:
    """sacct/squeue that record each call, then run the real command if there is one."""
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        real = shutil.which(name)
        body = f'#!/bin/sh\necho {name} "$@" >> "{log}"\n' + (f'exec "{real}" "$@"\n' if real else "exit 0\n")
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU seconds of the command and its children): on a shared login node the
    wall time also measures the neighbours; the CPU time is the command's own."""
    times, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return statistics.median(times), min(times), statistics.median(cpu)


def calls_text(log: Path, repeat: int) -> str:
    """sacct/squeue calls per command and how many job ids each was asked about."""
    lines = log.read_text().splitlines()
    out = []
    for name in ("sacct", "squeue"):
        mine = [line.split() for line in lines if line.split()[:1] == [name]]
        ids = [len(words[words.index("-j") + 1].split(",")) for words in mine if "-j" in words]
        out.append(f"{name} {len(mine) / repeat:g} call(s){f' of {max(ids)} ids' if ids else ''}")
    return ", ".join(out)


def settle_all(home: Path) -> int:
    """Settle every ended run at once (what a few `status` reads do), in a child with the budget lifted."""
    code = ("from medminds_hpc import runs, status; status.SETTLE_BUDGET_S = float('inf'); "
            "print(sum(r.state in status.FINAL_RUN_STATES for r in status.collect(runs.list_runs()[0])))")
    env = {**os.environ, "MEDMINDS_HOME": str(home)}
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", str(CLI), *args], env=env, capture_output=True, text=True)
    seen = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            top = line.rsplit("|", 1)[1].strip().split(".")[0]
            if top in HEAVY:
                seen.add(top)
    return sorted(seen)


def bench_status(count: int, repeat: int, tmp_path: Path) -> None:
    home = tmp_path / f"home-{count}"
    make_runs(home, count)
    calls = tmp_path / f"calls-{count}.log"
    counting_wrappers(tmp_path / f"bin-{count}", calls)
    env = {**os.environ, "MEDMINDS_HOME": str(home), "PATH": f"{tmp_path / f'bin-{count}'}:{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    print(f"{count:,} run directories, median (min) of {repeat} runs each; slurm: {'real' if shutil.which('sacct') else 'absent'}")
    base, base_min, base_cpu = timed([sys.executable, "-c", "pass"], env, repeat)
    print(f"  {'python -c pass':<36} {base:6.3f} s ({base_min:.3f}), CPU {base_cpu:.3f} s")
    calls.write_text("")
    first, _, first_cpu = timed([str(CLI), "status"], env, 1)
    print(f"  {'first status (settles for <= 1 s)':<36} {first:6.3f} s,         CPU {first_cpu:.3f} s  "
          f"= {first / base:5.1f}x python -c pass  {calls_text(calls, 1)}")
    settled = settle_all(home)
    rows = [("medminds status", ["status"]), ("medminds status --json", ["status", "--json"]),
            ("status --state running", ["status", "--state", "running"]), ("status -e 'expert-*' --json", ["status", "-e", "expert-*", "--json"])]
    for label, cli_args in rows:
        calls.write_text("")
        med, low, cpu = timed([str(CLI), *cli_args], env, repeat)
        verdict = "OK" if med <= 0.5 else "OVER 0.5 s"
        print(f"  {label:<36} {med:6.3f} s ({low:.3f}), CPU {cpu:.3f} s  = {med / base:5.1f}x python -c pass  "
              f"{calls_text(calls, repeat)}  [{verdict}]")
    listed = json.loads(subprocess.run([str(CLI), "status", "--json"], env=env, capture_output=True, text=True).stdout)
    print(f"  status --json listed {len(listed):,} runs, {settled:,} of them ended and settled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="1000,10000", help="comma-separated run counts")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not CLI.exists():
        raise SystemExit(f"{CLI} not found: run `bash install.sh` and use .venv/bin/python")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "MEDMINDS_HOME": str(tmp_path / "empty"), "COLUMNS": "200"}
        base, _, _ = timed([sys.executable, "-c", "pass"], env, args.repeat)
        med, low, _ = timed([str(CLI), "--help"], env, args.repeat)
        print(f"python -c pass {base:.3f} s; medminds --help {med:.3f} s ({low:.3f}) = {med / base:.1f}x")
        for count in (int(c) for c in args.runs.split(",")):
            bench_status(count, args.repeat, tmp_path)
        for label, cli_args in (("medminds --help", ["--help"]), ("medminds status", ["status"])):
            heavy = heavy_imports(cli_args, env)
            print(f"{label}: heavy modules imported: {heavy or 'none'} (checked with python -X importtime)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, transformers"], env=env, capture_output=True)
        print(f"for scale: python -c 'import torch, transformers' takes {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
