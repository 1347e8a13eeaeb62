"""What the per-run submission lock costs: uncontended, under 8 processes at once, and taking over a dead holder's.

`medminds submit` holds it from "does this run need a job?" to "its job id is recorded" (an sbatch, ~0.1-1 s), so
its own cost should vanish beside that. Runs in a temporary folder (pass --dir to measure a shared filesystem).

    .venv/bin/python benchmarks/submit_lock.py [--dir /work/pi_x/$USER/tmp] [--holders 8] [--rounds 50]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from medminds_hpc import fileio


def uncontended(lock: Path, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with fileio.exclusive(lock):
            pass
    return (time.perf_counter() - t0) / n


def holder(lock: str, counter: str, rounds: int, hold_s: float, waits: "multiprocessing.Queue[float]") -> None:
    for _ in range(rounds):
        t0 = time.perf_counter()
        with fileio.exclusive(lock, poll_s=0.005):
            waits.put(time.perf_counter() - t0)
            value = int(Path(counter).read_text())
            time.sleep(hold_s)
            Path(counter).write_text(str(value + 1))


def contended(folder: Path, holders: int, rounds: int, hold_s: float) -> tuple[float, list[float], int]:
    lock, counter = folder / "contended.lock", folder / "counter"
    counter.write_text("0")
    waits: multiprocessing.Queue[float] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=holder, args=(str(lock), str(counter), rounds, hold_s, waits)) for _ in range(holders)]
    t0 = time.perf_counter()
    [p.start() for p in procs]
    got = [waits.get() for _ in range(holders * rounds)]
    [p.join() for p in procs]
    return time.perf_counter() - t0, got, int(counter.read_text())


def takeover(folder: Path) -> float:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = folder / "stale.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "created": time.time(), "token": "x"}))
    t0 = time.perf_counter()
    with fileio.exclusive(lock):
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to put the lock files (default: a temporary folder)")
    ap.add_argument("--holders", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--hold-ms", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        per = uncontended(folder / "alone.lock", 1000)
        print(f"uncontended acquire + release: {per * 1e6:.0f} us")
        total, waits, count = contended(folder, args.holders, args.rounds, args.hold_ms / 1000)
        expected = args.holders * args.rounds
        print(f"{args.holders} processes x {args.rounds} rounds holding {args.hold_ms:g} ms: {total:.2f} s, "
              f"{expected / total:.0f} acquisitions/s; wait median {statistics.median(waits) * 1000:.1f} ms, "
              f"max {max(waits) * 1000:.1f} ms; counter {count}/{expected} ({'exclusive' if count == expected else 'LOST UPDATES'})")
        print(f"taking over a dead holder's lock (same host): {takeover(folder) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
