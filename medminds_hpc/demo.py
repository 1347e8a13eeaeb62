"""`medminds demo`: the study in miniature on this machine, no Slurm, GPU or download needed.

    medminds demo        # prepare, both experts, baselines, every ensemble and mixture, one merge; then the report

It is `medminds submit all` on the local executor with the tiny model on synthetic data, a subset of the
experiments and overrides that make each stage take seconds (one epoch, a few hundred rows) while its numbers
still mean something: the experts learn their synthetic task, the combiners train on MedMCQA-style questions.
A second call reuses every finished run and only rewrites the report.
"""

from __future__ import annotations

import os
from typing import Callable

from medminds_hpc import paths, study

EXPERIMENTS = ["expert-task", "expert-domain", "baseline-nextword", "baseline-classifier-mistral", "ensemble-*", "moe-*",
               "merge-linear"]
# The random-init tiny model learns the synthetic rule with a larger step than the paper's 7B setting (2e-4 with
# 8-bit AdamW), in one epoch over the experts' whole micro data (~110 steps); the other trainable stages get one
# epoch over 400 rows. Every trainable stage validates on 200 questions, the scoring stages on all 500.
OVERRIDES = ["prepare.source=synthetic", "epochs=1", "max_train_rows=400", "eval_rows=200"] + [
    f"expert-{kind}.{key}" for kind in ("task", "domain") for key in ("max_train_rows=0", "learning_rate=1e-2", "optimizer=adamw")]


def options() -> study.StudyOptions:
    """Two runs at a time where the graph allows (each with one torch thread, see run_demo): on 2 cores the second
    job's Python start and imports, most of a tiny run's time, overlap the first one's work."""
    return study.StudyOptions("micro", only=list(EXPERIMENTS), executor="local", model="tiny", overrides=list(OVERRIDES),
                              parallel=max(1, min(2, os.cpu_count() or 1)))


def run_demo(say: Callable[[str], None] = print, width: int = 120) -> None:
    """Run the subset stage by stage (one line as each ends), then write the report and print its summary."""
    from medminds_hpc import report

    home = paths.check_home()
    # one torch thread per job: the tiny model's operations are too small to share, and a second thread beside
    # any other process on a 2-core machine spin-waits many times slower (see DESIGN.md, the synthetic task)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    say(f"medminds demo: {' '.join(EXPERIMENTS)} and what they need, on the tiny model with synthetic data, in {home}")
    study.run_study(options(), say=say, tree=False)
    say(report.terminal_summary(report.write_report(), width))
