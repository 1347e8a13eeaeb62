"""The chaos suite in full, on the real dev cluster: every scenario of tests/chaos repeated R times with recorded
random seeds, then one table: faults injected, runs that finished equal to an uninterrupted reference, steps redone
per fault (mean, max) against the checkpoint interval, and steps lost (must be 0).

    bash slurm/dev-cluster/up.sh                       # as root, once
    .venv/bin/python benchmarks/chaos.py --repeat 2    # ~12 min on 2 shared cores (measured)
    .venv/bin/python benchmarks/chaos.py --repeat 1 --only preemptions,full-disk --seed 1234   # replay

Runs go to a temporary $MEDMINDS_HOME (deleted afterwards); the full-disk scenario needs root (a tmpfs mount).
The controller-down scenario stops slurmctld, so it stays in the tests (tests/chaos/test_faults.py) only.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import bench_home  # noqa: E402


def scenarios(k: int, n: int, scratch: Path) -> dict[str, Callable[[Path, random.Random, Any], Any]]:
    """Each scenario by name: a function of (jobs dir, seeded rng, references) returning a ChaosOutcome."""
    from tests import helpers as h

    return {
        "preemptions": lambda jobs, rng, ref: h.chaos_preemptions(jobs, rng, k, ref.counter),
        "expert-epoch-end": lambda jobs, rng, ref: h.chaos_expert_preemption(jobs, rng, ref.expert()),
        "kill-9": lambda jobs, rng, ref: h.chaos_kills(jobs, rng, ref.counter, k=max(1, k - 1)),
        "classifier-kill-9": lambda jobs, rng, ref: h.chaos_classifier_kill(jobs, rng, ref.classifier()),
        "time-outs": lambda jobs, rng, ref: h.chaos_time_outs(jobs, rng, ref.counter, Path(tempfile.mkdtemp(dir=scratch))),
        "full-disk": lambda jobs, rng, ref: h.chaos_disk_full(jobs, rng, ref.counter),
        "concurrent-submits": lambda jobs, rng, ref: h.chaos_concurrent_submits(jobs, rng, ref.counter, n=n),
    }


class References:
    """Uninterrupted runs, each computed once: the counter's value per step count, the expert's and the classifier's run."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.expert_run: Any = None
        self.classifier_run: Any = None

    def counter(self, steps: int) -> int:
        from tests.helpers import counter_reference

        if steps not in self.values:
            self.values[steps] = counter_reference(steps)
        return self.values[steps]

    def expert(self) -> Any:
        from tests.helpers import expert_reference

        if self.expert_run is None:
            self.expert_run = expert_reference()
        return self.expert_run

    def classifier(self) -> Any:
        from tests.helpers import classifier_reference

        if self.classifier_run is None:
            self.classifier_run = classifier_reference()
        return self.classifier_run


def table(rows: list[tuple[str, int, Any]]) -> str:
    """One line per scenario over its repetitions."""
    head = (f"{'scenario':<20} {'reps':>4} {'faults':>6} {'runs':>5} {'equal':>5} {'redone mean':>11} {'redone max':>10} "
            f"{'interval':>8} {'lost':>4} {'checks failed':>13} {'s/rep':>6}")
    lines = [head, "-" * len(head)]
    for name in dict.fromkeys(r[0] for r in rows):
        outs = [o for n, _, o in rows if n == name]
        done = [o for o in outs if not isinstance(o, str)]
        redone = [x for o in done for x in o.redone]
        failed = sum(not ok for o in done for ok in o.checks.values()) + len(outs) - len(done)
        lines.append(
            f"{name:<20} {len(outs):>4} {sum(o.faults for o in done):>6} {sum(o.runs for o in done):>5} "
            f"{sum(o.equal for o in done):>5} {f'{statistics.mean(redone):.2f}' if redone else '-':>11} {max(redone) if redone else '-':>10} "
            f"{done[0].interval if done else '-':>8} {sum(o.lost for o in done):>4} {failed:>13} "
            f"{statistics.mean(o.seconds for o in done) if done else 0:>6.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of each scenario")
    parser.add_argument("--seed", type=int, default=None, help="the seed that draws each repetition's seed (default: random)")
    parser.add_argument("--k", type=int, default=3, help="preemptions per run (kills: k-1)")
    parser.add_argument("--n", type=int, default=6, help="concurrent submits of one experiment (and as many others)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    master = args.seed if args.seed is not None else random.randrange(10**6)
    draw = random.Random(master)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with bench_home():
        os.environ.pop("MEDMINDS_TOKENIZER", None)  # the built-in tokenizer, as in the tests
        scratch = Path(os.environ["MEDMINDS_HOME"])
        jobs = scratch / "jobs"
        jobs.mkdir(exist_ok=True)
        os.environ["MEDMINDS_JOBS"] = str(jobs)
        os.chdir(Path(__file__).resolve().parents[1])  # jobs import tests.stages from the checkout
        from tests.helpers import slurm_up

        if not slurm_up():
            sys.exit("no Slurm cluster answers: start the dev cluster with `bash slurm/dev-cluster/up.sh` (as root)")
        chosen = scenarios(args.k, args.n, scratch)
        if args.only:
            unknown = set(args.only.split(",")) - set(chosen)
            if unknown:
                sys.exit(f"--only: unknown scenario(s) {sorted(unknown)}; known: {', '.join(chosen)}")
            chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
        refs, rows = References(), []
        print(f"master seed {master}; {args.repeat} repetitions; k={args.k} n={args.n}", flush=True)
        for name, run in chosen.items():
            for rep in range(args.repeat):
                seed = draw.randrange(10**6)
                started = time.time()
                try:
                    outcome: Any = run(jobs, random.Random(seed), refs)
                except Exception as e:  # a scenario that broke counts as failed checks, and the others go on
                    traceback.print_exc()
                    outcome = f"{type(e).__name__}: {e}"
                rows.append((name, seed, outcome))
                said = outcome if isinstance(outcome, str) else (
                    f"faults {outcome.faults} equal {outcome.equal}/{outcome.runs} redone {outcome.redone} lost {outcome.lost} "
                    f"checks {outcome.checks} {'; '.join(outcome.notes)}")
                print(f"  {name} rep {rep + 1} seed {seed} ({time.time() - started:.0f} s): {said}", flush=True)
        print()
        print(table(rows))


if __name__ == "__main__":
    main()
