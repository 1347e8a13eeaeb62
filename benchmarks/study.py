"""How long `medminds submit all --dry-run` takes for each dataset size (1 and 3 seeds), and `medminds demo` end to end.

Each figure is the wall time of the real command in a new process (python start and imports included), in a
temporary $MEDMINDS_HOME; `python -c pass` is timed beside it. The demo runs once (a few minutes); --no-demo skips it.

    .venv/bin/python benchmarks/study.py [--repeat 5] [--no-demo]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import ROOT, bench_home


def timed(args: list[str], drop: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**env, "COLUMNS": "120"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return seconds, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "medminds_hpc.cli"]
    with bench_home():
        base = statistics.median(timed([sys.executable, "-c", "pass"])[0] for _ in range(args.repeat))
        print(f"python -c pass: {base:.2f} s (median of {args.repeat})")
        for size in ("micro", "mini", "mega"):
            for seeds in (1, 3):
                command = [*cli, "submit", "all", "-d", size, "--seeds", str(seeds), "--dry-run", "--cluster", "unity",
                           "--executor", "slurm"]
                times, proc = [], None
                for _ in range(args.repeat):
                    seconds, proc = timed(command)
                    times.append(seconds)
                print(f"submit all -d {size} --seeds {seeds} --dry-run: {statistics.median(times):.2f} s "
                      f"(median of {args.repeat}; {proc.stdout.splitlines()[0]})")
        if not args.no_demo:
            # as on a fresh machine: the tiny model's built-in tokenizer (the real Mistral one, which bench_home
            # sets when ../shared/data has it, gives the tiny model a 32,000-row vocabulary: several times slower)
            seconds, proc = timed([*cli, "demo"], drop=("MEDMINDS_TOKENIZER", "OMP_NUM_THREADS"))
            stages = [line for line in proc.stdout.splitlines() if line.startswith("done")]
            print(f"demo: {seconds:.0f} s for {len(stages)} runs, then the report")
            for line in stages:
                print("  " + line)


if __name__ == "__main__":
    main()
