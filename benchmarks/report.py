"""How long `medminds report` takes over a whole study: 1,000 finished runs, figures of the 20 most recent included.

Writes 1,000 synthetic finished runs into a temporary MEDMINDS_HOME through the stages' own functions
(`runs.create`, `training.metrics.write_predictions`, `results.write`): 15 experiments x 3 dataset sizes (500, 2,000
and 4,183 validation questions, 21 subjects) x seeds, each with per-epoch validation, a step log and Slurm resources.
Then times the command as a user runs it (a new process, imports included), each format alone, and the parts
in-process: reading the runs, the summary and per-subject tables, the paired tests (reading predictions.parquet),
rendering, the figures.

    .venv/bin/python benchmarks/report.py [--runs 1000] [--repeat 3] [--home /tmp/study]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENTS = ("expert-task", "expert-domain", "baseline-nextword", "baseline-classifier-mistral", "baseline-classifier-domain",
               "baseline-classifier-task", "baseline-classifier-biomistral", "merge-linear", "merge-ties", "merge-dare",
               "ensemble-weighted", "ensemble-transformer", "ensemble-late-fusion", "moe-linear", "moe-topk")
QUESTIONS = {"micro": 500, "mini": 2000, "mega": 4183}
SUBJECTS = ("Anaesthesia", "Anatomy", "Biochemistry", "Dental", "ENT", "Forensic Medicine", "Gynaecology & Obstetrics",
            "Medicine", "Microbiology", "Ophthalmology", "Orthopaedics", "Pathology", "Pediatrics", "Pharmacology",
            "Physiology", "Psychiatry", "Radiology", "Skin", "Social & Preventive Medicine", "Surgery", "Unknown")


def make_study(count: int) -> None:
    import numpy as np

    from tests.helpers import finished_run

    gold = {size: [random.Random(f"{size}{i}").randrange(4) for i in range(n)] for size, n in QUESTIONS.items()}
    subjects = {size: [SUBJECTS[i % len(SUBJECTS)] for i in range(n)] for size, n in QUESTIONS.items()}
    for i in range(count):
        experiment = EXPERIMENTS[i % len(EXPERIMENTS)]
        size = tuple(QUESTIONS)[(i // len(EXPERIMENTS)) % len(QUESTIONS)]
        seed = i // (len(EXPERIMENTS) * len(QUESTIONS))
        rng = np.random.default_rng(i)
        skill = 0.25 + 0.02 * (i % len(EXPERIMENTS))
        g = np.asarray(gold[size])
        predicted = np.where(rng.random(len(g)) < skill, g, rng.integers(0, 4, len(g))).tolist()
        epochs = [{"epoch": float(e), "accuracy": skill + 0.01 * e, "eval_loss": 1.4 - 0.05 * e} for e in range(1, 4)]
        routing = {"routing": [[[0.5 + 0.01 * layer, 0.5 - 0.01 * layer]] * 3 for layer in range(32)]} if experiment.startswith("moe") else {}
        run = finished_run(experiment, predicted, gold[size], dataset=size, model="mistral-7b-instruct", seed=seed,
                           subjects=subjects[size], extra={"epochs": epochs, **routing},
                           record={"executor": "slurm", "resources": {"gpu": "a100", "gpus": 1}})
        with open(run.dir / "metrics.jsonl", "w") as f:
            f.writelines(f'{{"step": {s}, "epoch": {s / 20}, "loss": {1.5 - s / 100}}}\n' for s in range(1, 61))


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far, theirs included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    """CPU seconds of this process and of its finished children (the figure workers)."""
    return time.process_time() + children_cpu()


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `cmd` (CPU: all its processes; on a shared machine the steadier figure)."""
    times, cpus = [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), children_cpu()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
        cpus.append(children_cpu() - cpu)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return statistics.median(times), statistics.median(cpus)


def parts() -> list[tuple[str, float, float]]:
    """The report's parts, timed one after the other in this process (imports paid by the first that needs them);
    `medminds report` overlaps the figures with reading the predictions and testing the pairs."""
    from medminds_hpc import documents, figures, finished, paper, report

    out, started, cpu = [], time.perf_counter(), own_cpu()

    def lap(name: str) -> None:
        nonlocal started, cpu
        now, now_cpu = time.perf_counter(), own_cpu()
        out.append((name, now - started, now_cpu - cpu))
        started, cpu = now, now_cpu

    published = paper.load()
    done, _ = finished.collect()
    lap(f"read {len(done)} run.json + metrics.json")
    groups = report.group_runs(done)
    lines = [report.summarize(g, paper.by_experiment(published)) for g in groups] + report.references(groups, published)
    grid = report.subject_grid(groups)
    lap(f"summary ({len(groups)} rows) and per-subject tables")
    reader = finished.AnswerReader()
    cache: dict[str, finished.Answers | None] = {}

    def answers(f: finished.Finished) -> finished.Answers | None:
        if f.id not in cache:
            got = reader(f.run.dir)
            cache[f.id] = got if isinstance(got, finished.Answers) else None
        return cache[f.id]

    for f in done:
        answers(f)
    lap(f"read {len(cache)} predictions.parquet")
    found, _ = report.pairs(groups, answers)
    lap(f"paired tests ({len(found)} pairs)")
    tables = [report.summary_table(lines), report.significance_table(found, 0, {}), report.per_subject_table(grid)]
    for t in tables:
        documents.markdown(t), documents.csv_text(t), documents.latex(t)
    lap("render md, csv, tex")
    recent = sorted(done, key=lambda f: f.recency, reverse=True)[:report.RECENT_RUN_FIGURES]
    planned, _ = report.plan_figures(lines, grid, recent)
    kinds = sorted({job[0] for _, _, job in planned})
    with figures.Drawing([job for _, _, job in planned]) as drawing:
        drawing.pngs()
    lap(f"{len(planned)} figures in {drawing.workers or 'no'} worker processes (their imports included)")
    import matplotlib.figure  # noqa: F401 - its import, timed apart from the drawing
    lap("import matplotlib (in this process)")
    for kind in kinds:
        jobs = [job for _, _, job in planned if job[0] == kind]
        for job in jobs:
            figures.draw(*job)
        lap(f"  {len(jobs)} x {kind}, in this process")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--home", type=Path, help="keep the synthetic study in this folder and reuse it when it is there "
                                              "(writing it takes ~20 s); default: a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home.absolute() if args.home else Path(tmp) / "home"
        os.environ["MEDMINDS_HOME"] = str(home)
        if (home / "runs").is_dir():
            print(f"the synthetic study in {home}, reused; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        else:
            started = time.perf_counter()
            make_study(args.runs)
            print(f"{args.runs} synthetic finished runs written in {time.perf_counter() - started:.1f} s "
                  f"({len(EXPERIMENTS)} experiments x {len(QUESTIONS)} sizes x seeds); load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
        cli = [sys.executable, "-m", "medminds_hpc.cli", "report"]
        print(f"`medminds report`, median of {args.repeat} (a new process each time, imports included); "
              "wall seconds, and CPU seconds of all its processes:")
        base = timed([sys.executable, "-c", "pass"], env, args.repeat)
        print(f"  {'python -c pass':<30} {base[0]:6.2f} s  {base[1]:6.2f} s CPU")
        for label, extra in (("all formats (default)", []), ("--format md,csv,tex", ["--format", "md,csv,tex"]),
                             ("--format png", ["--format", "png"]), ("--format html", ["--format", "html"])):
            seconds, cpu = timed([*cli, "--out", str(Path(tmp) / "out"), *extra], env, args.repeat)
            verdict = "" if extra else ("  [target <= 3 s: OK]" if seconds <= 3.0 else "  [target <= 3 s: OVER]")
            print(f"  {label:<30} {seconds:6.2f} s  {cpu:6.2f} s CPU{verdict}")
        print("the parts, one after the other in one process (wall, CPU):")
        for name, seconds, cpu in parts():
            print(f"  {name:<58} {seconds:6.2f} s  {cpu:6.2f} s CPU")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
