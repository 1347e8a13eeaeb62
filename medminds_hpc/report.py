"""`medminds report`: every finished run's metrics.json, aggregated into tables and figures beside the paper's.

    medminds report                              # into $MEDMINDS_HOME/results
    medminds report --out /tmp/r --format md,csv

What it writes (each format asked for; default all):
- summary.{md,csv,tex}: one row per experiment x dataset x model (and parameter variant): accuracy with its 95%
  interval (one run: the Wilson interval over questions; several runs, e.g. seeds: mean, sd and the t-interval of the
  mean over runs), macro-F1, n, GPU-hours, wall time, the paper's accuracy beside it and where it falls; reference
  rows: chance, always answering the validation set's most common letter, and the paper's rows no run reproduces;
- significance.{md,csv,tex}: every pair of rows evaluated on the same questions: McNemar's exact test and a paired
  bootstrap interval of the accuracy difference (medminds_hpc/significance.py), Holm-adjusted across the pairs;
- per_subject.{md,csv,tex}: accuracy per subject for each row, subjects absent from the training data flagged;
- figures/*.png (png) and index.html (html: every table and figure in one file), and README.md, which says what
  each file holds, how the numbers are computed, and which runs were skipped and why.

Without a finished run there is nothing to report: one line saying what to run, exit 2, and nothing written.
Reads run directories (medminds_hpc/finished.py) and never writes into them. Deterministic: the same runs give byte-identical files (no
timestamps; an exact bootstrap, no random sampling; PNGs without metadata). Light: never imports torch,
transformers, peft, datasets or pandas; pyarrow (with numpy) only to read predictions.parquet, matplotlib only when
figures are asked for (png, html), and then in worker processes drawing while this one reads (figures.Drawing).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from medminds_hpc import documents, figures, fileio, paper, paths, runs, significance
from medminds_hpc.documents import Column, Table
from medminds_hpc.errors import UserError
from medminds_hpc.finished import Answers, AnswerReader, Finished, Skipped, collect
from medminds_hpc.tables import plain_duration

FORMATS = ("md", "csv", "tex", "html", "png")
TABLE_FORMATS = {"md": documents.markdown, "csv": documents.csv_text, "tex": documents.latex}
RECENT_RUN_FIGURES = 20  # per-run figures (confusion matrix, curves, routing) for this many most recent runs
FIGURES_DIR = "figures"
DATASET_ORDER = ("micro", "mini", "mega")
# where an experiment sits in the study, for the order of rows (then alphabetical)
STUDY_ORDER = ("expert-", "baseline-nextword", "baseline-classifier-", "merge-", "ensemble-", "moe-")
CHANCE = 0.25


# rows: experiment x dataset x model (x parameter variant) -----------------------------------------------------
@dataclass
class Group:
    experiment: str
    dataset: str
    model: str
    params_key: str
    members: list[Finished] = field(default_factory=list)
    variant: str = ""

    @property
    def label(self) -> str:
        return self.experiment + (f" [{self.variant}]" if self.variant else "") + (" †" if self.on_validation else "")

    @property
    def long_label(self) -> str:
        return f"{self.label} ({self.dataset}, {self.model or '?'})"

    @property
    def on_validation(self) -> bool:
        """Its best epoch was chosen on the validation set it is scored on (the paper's protocol, optimistic); a run
        from before `selection` existed did so when it kept its best epoch."""
        params = [m.run.data.get("params") or {} for m in self.members]
        return any(p.get("selection", "validation" if p.get("keep") == "best" else None) == "validation" for p in params)

    def by_seed(self) -> dict[Any, Finished]:
        """The newest run of each seed."""
        out: dict[Any, Finished] = {}
        for m in sorted(self.members, key=lambda m: m.recency):
            out[m.identity.get("seed")] = m
        return out


def _params(run: runs.Run) -> dict[str, Any]:
    return {k: v for k, v in (run.data.get("params") or {}).items() if k != "seed"}


def group_runs(finished: list[Finished]) -> list[Group]:
    """Runs of the same experiment, dataset, model and parameters (seeds aside) form one row, in study order."""
    groups: dict[tuple[str, str, str, str], Group] = {}
    for f in finished:
        ident = f.identity
        key = (ident["experiment"], ident["dataset"], ident.get("model") or "",
               json.dumps(_params(f.run), sort_keys=True, default=str))
        groups.setdefault(key, Group(*key)).members.append(f)
    siblings: dict[tuple[str, str, str], list[Group]] = defaultdict(list)
    for g in groups.values():
        siblings[(g.experiment, g.dataset, g.model)].append(g)
    for same in siblings.values():
        if len(same) > 1:
            params = [json.loads(g.params_key) for g in same]
            differ = sorted({k for p in params for k in p if any(q.get(k) != p.get(k) for q in params)})
            for g, p in zip(same, params):
                g.variant = ", ".join(f"{k}={json.dumps(p.get(k), separators=(',', ':'))}" for k in differ)
    return sorted(groups.values(), key=lambda g: (_dataset_rank(g.dataset), _study_rank(g.experiment), g.experiment,
                                                  g.model, g.variant))


def _dataset_rank(dataset: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


def _study_rank(experiment: str) -> int:
    return next((i for i, prefix in enumerate(STUDY_ORDER) if experiment.startswith(prefix)), len(STUDY_ORDER))


# the summary ----------------------------------------------------------------------------------------------------
def percent(value: Any) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def interval_text(value: Any) -> str:
    return "" if not value else f"[{100 * value[0]:.2f}, {100 * value[1]:.2f}]"


def _sd_text(value: Any) -> str:
    return "" if value is None else f"± {100 * value:.2f}"


def _f3(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def _hours(value: Any) -> str:
    return "" if value is None else f"{value:.2f}"


def _duration(value: Any) -> str:
    return "" if value is None else plain_duration(round(value))


def gpu_hours(f: Finished) -> float | None:
    """(train_seconds + eval_seconds) x the GPUs its Slurm job asked for; None when unknown (a local run, or no
    resources recorded). Model loading and queueing are not counted."""
    d = f.run.data
    resources = d.get("resources")
    if d.get("executor") != "slurm" or not isinstance(resources, dict):
        return None
    gpus = 0 if resources.get("gpu") in (None, "none") else int(resources.get("gpus") or 0)
    return (f.metrics["train_seconds"] + f.metrics["eval_seconds"]) * gpus / 3600.0


def wall_seconds(f: Finished) -> float:
    """From the first attempt's start to the end (requeues and their waits included) when run.json has both;
    else the stage's own training + evaluation time."""
    d = f.run.data
    attempts = d.get("attempts") or []
    start = _when(attempts[0].get("started_at")) if attempts and isinstance(attempts[0], dict) else None
    end = _when(d.get("finished_at"))
    if start is not None and end is not None and end >= start:
        return (end - start).total_seconds()
    return float(f.metrics["train_seconds"] + f.metrics["eval_seconds"])


def _when(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


@dataclass
class Line:
    """One summary row's numbers (fractions 0-1)."""

    group: Group | None
    label: str
    dataset: str
    model: str
    kind: str  # run | reference | paper
    accuracy: float | None = None
    interval: tuple[float, float] | None = None
    interval_kind: str = ""
    sd: float | None = None
    macro_f1: float | None = None
    n: Any = None
    seeds: str = ""
    runs: int = 0
    gpu_hours: float | None = None
    wall: float | None = None
    paper: paper.PaperResult | None = None

    @property
    def versus_paper(self) -> str:
        """Where the paper's number falls: above/below our interval, or within it."""
        if self.paper is None or self.paper.accuracy is None or self.accuracy is None or self.kind != "run":
            return ""
        diff = 100 * (self.accuracy - self.paper.accuracy)
        lo, hi = self.interval or (self.accuracy, self.accuracy)
        where = "above" if lo > self.paper.accuracy else "below" if hi < self.paper.accuracy else "within"
        return f"{diff:+.2f} ({where})"


def summarize(group: Group, published: dict[str, paper.PaperResult]) -> Line:
    members = sorted(group.members, key=lambda m: m.recency)
    accuracies = [m.metrics["accuracy"] for m in members]
    mean, sd, spread = significance.seed_interval(accuracies)
    if len(members) == 1:
        ci = members[0].metrics.get("accuracy_ci95")
        interval, kind = (tuple(ci) if isinstance(ci, list) and len(ci) == 2 else None), "Wilson, over questions"
    else:
        interval, kind = spread, f"t, over {len(members)} runs"
    f1s = [m.metrics["macro_f1"] for m in members if isinstance(m.metrics.get("macro_f1"), (int, float))]
    ns = sorted({m.metrics["n"] for m in members})
    hours = [h for h in map(gpu_hours, members) if h is not None]
    seeds = sorted({str(m.identity.get("seed")) for m in members if m.identity.get("seed") is not None}, key=_seed_order)
    return Line(group, group.label, group.dataset, group.model, "run", accuracy=mean, interval=interval,
                interval_kind=kind, sd=sd, macro_f1=sum(f1s) / len(f1s) if f1s else None,
                n=ns[0] if len(ns) == 1 else f"{ns[0]}-{ns[-1]}", seeds=",".join(seeds), runs=len(members),
                gpu_hours=sum(hours) if hours else None, wall=sum(map(wall_seconds, members)) / len(members),
                paper=published.get(group.experiment))


def _seed_order(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def references(groups: list[Group], published: list[paper.PaperResult]) -> list[Line]:
    """Chance and the majority letter per dataset, then the paper's rows that no run of ours reproduces."""
    out = []
    for dataset in sorted({g.dataset for g in groups}, key=_dataset_rank):
        out.append(Line(None, "chance (1 of 4)", dataset, "", "reference", CHANCE))
        shares = Counter(json.dumps(m.metrics.get("gold_share"), sort_keys=True)
                         for g in groups if g.dataset == dataset for m in g.members if isinstance(m.metrics.get("gold_share"), dict))
        if shares:
            share = json.loads(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
            letter = max(sorted(share), key=lambda k: share[k])
            out.append(Line(None, f"always {letter} (the validation set's most common answer)", dataset, "", "reference",
                            float(share[letter])))
    ran = {g.experiment for g in groups}
    for p in published:
        if not p.experiment or p.experiment not in ran:
            label = f"paper: {p.method}" + (f" ({p.experiment}: not run here)" if p.experiment else "")
            out.append(Line(None, label, "", "", "paper", paper=p))
    return out


SUMMARY_COLUMNS = [
    Column("row", "row"), Column("dataset", "dataset"), Column("model", "model"),
    Column("runs", "runs"), Column("seeds", "seeds"),
    Column("accuracy %", "accuracy", percent),
    Column("95% interval", "interval", interval_text, in_csv=False),
    Column("", "accuracy_ci95_low", shown=False), Column("", "accuracy_ci95_high", shown=False),
    Column("interval", "interval_kind"),
    Column("sd", "sd_over_runs", _sd_text),
    Column("macro-F1", "macro_f1", _f3), Column("n", "n"),
    Column("GPU-h", "gpu_hours", _hours), Column("wall", "wall_seconds", _duration),
    Column("paper %", "paper_accuracy", lambda v: "" if v is None else ("none" if v == "none" else percent(v))),
    Column("paper table", "paper_table"), Column("ours - paper", "versus_paper"),
    Column("", "kind", shown=False),
]


def summary_table(lines: list[Line]) -> Table:
    rows = []
    for line in lines:
        p = line.paper
        paper_value: Any = None if p is None else ("none" if p.accuracy is None else p.accuracy)
        rows.append([line.label, line.dataset, line.model, line.runs or None, line.seeds, line.accuracy,
                     line.interval, line.interval[0] if line.interval else None, line.interval[1] if line.interval else None,
                     line.interval_kind, line.sd, line.macro_f1, line.n, line.gpu_hours, line.wall, paper_value,
                     p.table if p else "", line.versus_paper, line.kind])
    notes = ["accuracy: on the dataset's MedMCQA validation split. One run: its accuracy and Wilson 95% interval over "
             "questions. Several runs (seeds): their mean, sd, and the 95% t-interval of the mean over runs.",
             "GPU-h: (training + evaluation seconds) x GPUs the Slurm job asked for, summed over the row's runs "
             "(blank: local runs, or no resources recorded); wall: mean per run, first start to finish.",
             "ours - paper: percentage points; above/below: the paper's number lies below/above our whole interval."]
    if any(line.group is not None and line.group.on_validation for line in lines):
        notes.append("†: best epoch chosen on the validation set it is scored on (the paper's protocol; optimistic).")
    nones = [line.paper for line in lines if line.paper is not None and line.paper.accuracy is None and line.paper.note]
    for p in {p.method: p for p in nones}.values():
        notes.append(f"paper 'none' for {p.method}: {p.note}.")
    return Table("summary", "Summary: MedMCQA validation accuracy beside the paper", SUMMARY_COLUMNS, rows, notes)


# significance ----------------------------------------------------------------------------------------------------
@dataclass
class Pair:
    a: Group
    b: Group
    pairs: int  # matched runs (by seed)
    n: int  # questions
    accuracy_a: float
    accuracy_b: float
    only_a: int  # questions A gets right more often than B (one pair of runs: A right, B wrong)
    only_b: int
    p: float
    interval: tuple[float, float]
    p_holm: float = 1.0

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b

    @property
    def verdict(self) -> str:
        if self.p_holm < 0.05:
            return "A better" if self.difference > 0 else "B better"
        return "no significant difference"


def _matched(a: Group, b: Group, answers: Callable[[Finished], Answers | None]) -> tuple[list[tuple[Answers, Answers]], bool]:
    """Runs of A and B paired by seed (when they share seeds; else each row's newest run), on the same questions;
    and whether some pair had predictions on both sides (then an empty list means: other questions)."""
    sa, sb = a.by_seed(), b.by_seed()
    common = sorted(set(sa) & set(sb), key=lambda s: _seed_order(str(s)))
    candidates = [(sa[s], sb[s]) for s in common] or [(max(a.members, key=lambda m: m.recency),
                                                        max(b.members, key=lambda m: m.recency))]
    out, compared = [], False
    for ra, rb in candidates:
        x, y = answers(ra), answers(rb)
        if x is not None and y is not None:
            compared = True
            if x.key == y.key:
                out.append((x, y))
    return out, compared


def compare(a: Group, b: Group, matched: list[tuple[Answers, Answers]]) -> Pair:
    """McNemar's exact test on each question's difference summed over the matched runs (one pair: the usual
    table), and the bootstrap interval of the mean difference; A is the more accurate of the two."""
    import numpy as np

    k, n = len(matched), len(matched[0][0].correct)
    diff = (np.stack([x.correct for x, _ in matched]).sum(axis=0, dtype=np.int64)
            - np.stack([y.correct for _, y in matched]).sum(axis=0, dtype=np.int64))
    acc_a = float(np.mean([x.accuracy for x, _ in matched]))
    acc_b = float(np.mean([y.accuracy for _, y in matched]))
    if acc_b > acc_a:
        a, b, acc_a, acc_b, diff = b, a, acc_b, acc_a, -diff
    lo, hi = significance.paired_bootstrap(diff)
    only_a, only_b = int((diff > 0).sum()), int((diff < 0).sum())
    return Pair(a, b, k, n, acc_a, acc_b, only_a, only_b, significance.mcnemar_exact(only_a, only_b), (lo / k, hi / k))


def pairs(groups: list[Group], answers: Callable[[Finished], Answers | None]) -> tuple[list[Pair], int]:
    """Every pair of rows on the same dataset and questions; and how many pairs had no common questions."""
    out, unmatched = [], 0
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if a.dataset != b.dataset:
                continue
            matched, compared = _matched(a, b, answers)
            if matched:
                out.append(compare(a, b, matched))
            elif compared:
                unmatched += 1
    for p, adjusted in zip(out, significance.holm([p.p for p in out])):
        p.p_holm = adjusted
    return out, unmatched


def _p_text(value: Any) -> str:
    return "" if value is None else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")


def _signed_points(value: Any) -> str:
    return "" if value is None else f"{100 * value:+.2f}"


def _signed_interval(value: Any) -> str:
    return "" if not value else f"[{100 * value[0]:+.2f}, {100 * value[1]:+.2f}]"


SIGNIFICANCE_COLUMNS = [
    Column("dataset", "dataset"), Column("A", "a"), Column("B", "b"), Column("run pairs", "run_pairs"),
    Column("questions", "questions"), Column("A %", "accuracy_a", percent), Column("B %", "accuracy_b", percent),
    Column("A - B", "difference", _signed_points),
    Column("bootstrap 95%", "interval", _signed_interval, in_csv=False),
    Column("", "difference_ci95_low", shown=False), Column("", "difference_ci95_high", shown=False),
    Column("only A right", "only_a"), Column("only B right", "only_b"),
    Column("McNemar p", "p_mcnemar", _p_text), Column("Holm p", "p_holm", _p_text), Column("verdict", "verdict"),
]


def significance_table(found: list[Pair], unmatched: int, skipped_answers: dict[str, str]) -> Table:
    rows = [[p.a.dataset, f"{p.a.label} ({p.a.model})", f"{p.b.label} ({p.b.model})", p.pairs, p.n, p.accuracy_a,
             p.accuracy_b, p.difference, p.interval, p.interval[0], p.interval[1], p.only_a, p.only_b, p.p, p.p_holm,
             p.verdict] for p in found]
    notes = ["Pairs of rows scored on the same questions; A is the more accurate. With several seeds, runs are paired by "
             "seed and each question's differences summed: 'only A right' counts questions A gets right more often.",
             "McNemar p: exact two-sided test on those counts. Holm p: adjusted over all pairs here; the verdict uses it "
             "(0.05).",
             "bootstrap 95%: percentile interval of the accuracy difference when the questions are resampled, from the "
             "bootstrap distribution computed exactly (as if with infinitely many resamples: no seed, no sampling error)."]
    if unmatched:
        notes.append(f"{unmatched} pair(s) of rows on the same dataset were scored on different questions and are not compared.")
    if skipped_answers:
        notes.append(f"left out for want of predictions: {', '.join(f'{r} ({why})' for r, why in sorted(skipped_answers.items()))}.")
    return Table("significance", "Paired significance: which differences are real", SIGNIFICANCE_COLUMNS, rows, notes)


# per subject -----------------------------------------------------------------------------------------------------
def training_subjects(run: runs.Run, cache: dict[Path, set[str] | None]) -> set[str] | None:
    """Subjects of the MedMCQA training split the run's prepared data holds (its data card), or None unknown."""
    prepare = (run.data.get("needs") or {}).get("prepare")
    if prepare:
        candidates = [paths.prepared_dir(prepare) / "card.json", paths.runs_dir() / prepare / "card.json"]
    else:
        candidates = [paths.data_dir() / str(run.data.get("dataset", "")) / "card.json"]
    for card in candidates:
        if card not in cache:
            cache[card] = _card_subjects(card)
        if cache[card] is not None:
            return cache[card]
    return None


def _card_subjects(card: Path) -> set[str] | None:
    try:
        subjects = fileio.read_json(card)["splits"]["medmcqa_train"]["subjects"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(s) for s, count in subjects.items() if count} if isinstance(subjects, dict) else None


@dataclass
class SubjectGrid:
    groups: list[Group]
    subjects: list[str]
    values: list[list[float | None]]  # pooled accuracy per group and subject
    counts: list[list[int]]
    flagged: set[tuple[int, int]]  # (group, subject) where the subject is absent from the group's training data


def subject_grid(groups: list[Group]) -> SubjectGrid:
    subjects = sorted({s for g in groups for m in g.members for s in m.metrics["per_subject"]})
    cards: dict[Path, set[str] | None] = {}
    values, counts, flagged = [], [], set()
    for i, g in enumerate(groups):
        known = [training_subjects(m.run, cards) for m in g.members]
        row, row_n = [], []
        for j, s in enumerate(subjects):
            cells = [m.metrics["per_subject"].get(s) for m in g.members]
            cells = [c for c in cells if isinstance(c, dict) and isinstance(c.get("n"), int) and c["n"] > 0]
            n = sum(c["n"] for c in cells)
            correct = sum(c.get("correct", round(c.get("accuracy", 0) * c["n"])) for c in cells)
            row.append(correct / n if n else None)
            row_n.append(n)
            if n and any(k is not None and s not in k for k in known):
                flagged.add((i, j))
        values.append(row)
        counts.append(row_n)
    return SubjectGrid(groups, subjects, values, counts, flagged)


def per_subject_table(grid: SubjectGrid) -> Table:
    columns = [Column("row", "row"), Column("dataset", "dataset"), Column("model", "model")]
    columns += [Column(s, s, lambda v: "" if v is None else f"{100 * v[0]:.1f}{'*' if v[1] else ''}", in_csv=False)
                for s in grid.subjects]
    columns += [Column("", s, shown=False) for s in grid.subjects]
    columns.append(Column("", "absent_from_training", shown=False))
    rows = []
    for i, g in enumerate(grid.groups):
        shown = [None if v is None else (v, (i, j) in grid.flagged) for j, v in enumerate(grid.values[i])]
        absent = [grid.subjects[j] for j in range(len(grid.subjects)) if (i, j) in grid.flagged]
        rows.append([g.label, g.dataset, g.model, *shown, *grid.values[i], absent])
    notes = ["Accuracy (%) per subject, pooled over the row's runs; blank: no validation question of that subject."]
    if grid.flagged:
        notes.append("*: the subject is absent from the MedMCQA training split the row's runs were trained with "
                     "(their prepared data's card.json).")
    return Table("per_subject", "Accuracy per subject", columns, rows, notes)


# figures ---------------------------------------------------------------------------------------------------------
@dataclass
class Figure:
    name: str  # file name under figures/
    caption: str
    png: bytes


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


Planned = tuple[str, str, figures.Job]  # a figure to draw: file name, caption, what to draw


def plan_figures(lines: list[Line], grid: SubjectGrid, recent: list[Finished]) -> tuple[list[Planned], list[str]]:
    """The study's figures then each recent run's; and a note per run whose data cannot be drawn."""
    per_run, problems = run_figures(recent)
    return study_figures(lines, grid) + per_run, problems


def drawn(planned: list[Planned], drawing: figures.Drawing) -> list[Figure]:
    return [Figure(name, caption, png) for (name, caption, _), png in zip(planned, drawing.pngs())]


def study_figures(lines: list[Line], grid: SubjectGrid) -> list[Planned]:
    """Accuracy beside the paper's, and per subject."""
    shown = [line for line in lines if line.kind in ("run", "paper")]
    rows = [(f"paper: {line.paper.method}" if line.kind == "paper" and line.paper else f"{line.label} ({line.dataset}, {line.model})",
             line.accuracy, line.interval, line.paper.accuracy if line.paper else None) for line in shown]
    refs = {(line.label.split(" (")[0] + ("" if line.accuracy == CHANCE else f" ({line.dataset})")): line.accuracy
            for line in lines if line.kind == "reference" and line.accuracy is not None}  # chance: one line
    out: list[Planned] = [("accuracy.png", "Accuracy with 95% intervals beside the paper's numbers",
                           ("accuracy", (rows, list(refs.items()), "MedMCQA validation accuracy")))]
    if grid.subjects and grid.groups:
        labels = [f"{g.label} ({g.dataset}, {g.model})" for g in grid.groups]
        out.append(("per_subject.png", "Accuracy per subject (*: subject absent from training)",
                    ("heatmap", (labels, grid.subjects, grid.values, grid.flagged, "accuracy per subject (%)"))))
    return out


def run_figures(recent: list[Finished]) -> tuple[list[Planned], list[str]]:
    """Per run, what to draw (file name, caption, job): its confusion matrix, loss and accuracy per epoch, routing
    (mixtures); and a note per run whose data cannot be drawn."""
    out: list[Planned] = []
    problems = []
    for f in recent:
        name = _safe_name(f.id)
        matrix = f.metrics.get("confusion_matrix")
        if isinstance(matrix, list) and len(matrix) == 4 and all(isinstance(r, list) and len(r) == 4 for r in matrix):
            out.append((f"confusion-{name}.png", f"Confusion matrix of {f.id}", ("confusion", (matrix, f.id))))
        else:
            problems.append(f"{f.id}: confusion_matrix is not 4 x 4; not drawn")
        epochs = [e for e in f.metrics.get("epochs") or [] if isinstance(e, dict)]
        logged = fileio.read_jsonl(f.run.dir / runs.METRICS_LOG)
        steps = [s for s in logged if not s.get("eval")]
        if not epochs:
            epochs = [s for s in logged if s.get("eval")]
        if epochs or any("loss" in s for s in steps):
            out.append((f"curves-{name}.png", f"Loss and accuracy per epoch of {f.id}", ("curves", (steps, epochs, f.id))))
        if "routing" in f.metrics:
            try:
                shares, experts = figures.parse_routing(f.metrics["routing"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append(f"{f.id}: routing statistics not drawn ({e})")
            else:
                out.append((f"routing-{name}.png", f"Routing of {f.id}: share sent to each expert, layer x epoch",
                            ("routing", (shares, experts, f.id))))
    return out, problems


# the whole report -------------------------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    formats: tuple[str, ...]
    written: list[str]
    finished: list[Finished]
    skipped: list[Skipped]
    summary: Table
    lines: list[Line]


def parse_formats(text: str | None) -> tuple[str, ...]:
    """`md,csv,tex,html,png` (any of them, comma-separated) -> the formats in a fixed order."""
    if text is None:
        return FORMATS
    asked = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in asked if t not in FORMATS]
    if unknown or not asked:
        what = f"unknown format {unknown[0]!r}" if unknown else "no format given"
        raise UserError(f"--format: {what}; valid: {', '.join(FORMATS)} (comma-separated, e.g. --format md,csv)")
    return tuple(f for f in FORMATS if f in asked)


def default_out() -> Path:
    return paths.home() / "results"


def check_out(out: Path | str | None, probe: bool = True) -> Path:
    """The folder to write into, once known to be usable (a directory, or one that can be made, writable, outside
    every run directory); nothing is created here. `probe`: try writing (a file removed at once, which still
    touches the folder's mtime); without it, only what can be seen without writing."""
    where = Path(out).expanduser().absolute() if out is not None else default_out()
    what = f"--out {where}" if out is not None else f"the default output folder {where} ($MEDMINDS_HOME/results)"
    runs_root = paths.runs_dir().resolve()
    real = where.resolve()
    if real == runs_root or runs_root in real.parents:
        raise UserError(f"{what} is inside {runs_root}, where runs live and reports never write; give --out another folder")
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {'is' if existing == where else f'cannot be created: {existing} is'} a file, not a "
                        "directory; give --out a directory (it is created when missing)")
    if not probe:
        return where
    try:
        fd, probe = tempfile.mkstemp(prefix=".medminds-probe-", dir=existing)
    except OSError as e:
        raise UserError(f"{what} {'is' if existing == where else f'cannot be created: {existing} is'} not writable "
                        f"({e.strerror}); give --out a folder you can write") from None
    os.close(fd)
    os.unlink(probe)
    return where


def build(formats: tuple[str, ...], collected: tuple[list[Finished], list[Skipped]] | None = None) -> tuple[dict[str, bytes], Report]:
    """Every output file's bytes (relative path -> content), computed before anything is written. The figures
    are drawn in other processes while this one reads the predictions and tests the pairs. `collected`: the
    runs (finished.collect()) when the caller has read them already."""
    published = paper.load()
    finished, skipped = collected if collected is not None else collect()
    groups = group_runs(finished)
    lines = [summarize(g, paper.by_experiment(published)) for g in groups] + references(groups, published)
    summary = summary_table(lines)
    grid = subject_grid(groups)
    drawing_asked = "png" in formats or "html" in formats
    recent = sorted(finished, key=lambda f: f.recency, reverse=True)[:RECENT_RUN_FIGURES] if drawing_asked else []
    planned, figure_notes = plan_figures(lines, grid, recent) if drawing_asked else ([], [])
    with figures.Drawing([job for _, _, job in planned]) as drawing:
        tables = [summary, significance_table(*tested_pairs(groups)), per_subject_table(grid)]
        figs = drawn(planned, drawing)

    files: dict[str, bytes] = {}
    for fmt in formats:
        if fmt in TABLE_FORMATS:
            for t in tables:
                files[f"{t.name}.{fmt}"] = TABLE_FORMATS[fmt](t).encode()
    if "png" in formats:
        for fig in figs:
            files[f"{FIGURES_DIR}/{fig.name}"] = fig.png
    context = _Context(finished, skipped, recent, figure_notes, formats)
    if "html" in formats:
        files["index.html"] = _index_html(tables, figs, context).encode()
    files["README.md"] = _readme(files, context).encode()
    report = Report(Path(), formats, sorted(files), finished, skipped, summary, lines)
    return files, report


def tested_pairs(groups: list[Group]) -> tuple[list[Pair], int, dict[str, str]]:
    """The pairs of rows tested, how many were on other questions, and the runs without usable predictions (why)."""
    cache: dict[str, Answers | None] = {}
    no_answers: dict[str, str] = {}
    read_answers = AnswerReader()

    def answers(f: Finished) -> Answers | None:
        if f.id not in cache:
            got = read_answers(f.run.dir)
            cache[f.id] = got if isinstance(got, Answers) else None
            if isinstance(got, str):
                no_answers[f.id] = got
        return cache[f.id]

    found, unmatched = pairs(groups, answers)
    return found, unmatched, no_answers


@dataclass
class _Context:
    finished: list[Finished]
    skipped: list[Skipped]
    recent: list[Finished]
    figure_notes: list[str]
    formats: tuple[str, ...]

    def about(self) -> str:
        return (f"{len(self.finished)} finished run(s) reported, {len(self.skipped)} skipped, from $MEDMINDS_HOME/runs."
                + (f" Per-run figures: the {len(self.recent)} most recent of them." if self.recent else ""))


def _index_html(tables: list[Table], figs: list[Figure], context: _Context) -> str:
    sections = [documents.html_table(t) for t in tables]
    sections.append("<h2 id=\"figures\">Figures</h2>")
    sections += [documents.html_image(f.png, f.caption) for f in figs]
    if context.figure_notes:
        sections.append("<ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in context.figure_notes) + "</ul>")
    sections.append(documents.html_table(skipped_table(context.skipped)))
    return documents.html_page("medminds report", sections, context.about())


def skipped_table(skipped: list[Skipped]) -> Table:
    return Table("skipped", "Runs skipped", [Column("run", "run"), Column("why", "reason")],
                 [[s.run, s.reason] for s in sorted(skipped, key=lambda s: s.run)])


README_FILES = {
    "summary": "one row per experiment x dataset x model: accuracy and its 95% interval, macro-F1, n, GPU-hours, "
               "wall time, the paper's number beside it; reference rows (chance, majority letter, the paper's other rows)",
    "significance": "pairs of rows on the same questions: McNemar's exact test and a paired bootstrap interval",
    "per_subject": "accuracy per subject for each row; * marks subjects absent from its training data",
}


def _readme(files: dict[str, bytes], context: _Context) -> str:
    out = ["# medminds report", "", "Written by `medminds report` from every finished run's `metrics.json` (and "
           "`predictions.parquet` for the significance tests); run it again to refresh. " + context.about(), "",
           "## Files", ""]
    for stem, what in README_FILES.items():
        have = [name for name in sorted(files) if name.startswith(stem + ".")]
        if have:
            out.append(f"- {', '.join(f'`{n}`' for n in have)}: {what}.")
    if "index.html" in files:
        out.append("- `index.html`: every table and figure on one page (images embedded; open the file directly).")
    figs = [n for n in sorted(files) if n.startswith(FIGURES_DIR + "/")]
    if figs:
        out.append(f"- `{FIGURES_DIR}/`: {len(figs)} PNG figures: accuracy.png (ours with intervals beside the paper's), "
                   "per_subject.png, and per run confusion-RUN.png, curves-RUN.png (loss and accuracy per epoch) and "
                   "routing-RUN.png (mixtures: share sent to each expert, layer x epoch).")
    out += ["", "## How the numbers are computed", "",
            "- Accuracy is on the dataset's MedMCQA validation split (unlabelled questions excluded). One run: its "
            "Wilson 95% interval over questions. Several runs of a row (seeds, or repeats): mean, sd and the 95% "
            "t-interval of the mean over runs.",
            "- A row is one experiment, dataset, model and parameter set; rows of the same experiment that differ in "
            "other parameters say how in brackets. † marks rows whose best epoch was chosen on the validation set.",
            "- GPU-hours: (training + evaluation seconds from metrics.json) x the GPUs the run's Slurm job asked for "
            "(run.json resources), summed over the row's runs; model loading and queueing are not included; blank for "
            "local runs. Wall time: mean per run, from the first attempt's start to the end (requeues included), else "
            "training + evaluation time.",
            "- Significance: for two rows on the same questions, runs paired by seed; McNemar's exact test on the "
            "questions one gets right more often than the other, Holm-adjusted over all pairs; bootstrap: "
            "the percentile interval of the accuracy difference with the questions resampled, from the bootstrap "
            "distribution computed exactly (no seed, no sampling error).",
            "- Paper numbers: `results/paper.csv` in the repository (Tables 2 and 3 of the paper).", "",
            "## Runs skipped", ""]
    if context.skipped:
        out += [f"- `{s.run}`: {s.reason}" for s in sorted(context.skipped, key=lambda s: s.run)]
    else:
        out.append("None.")
    if context.figure_notes:
        out += ["", "## Figures not drawn", ""] + [f"- {n}" for n in context.figure_notes]
    return "\n".join(out) + "\n"


NO_RUNS_HINT = ("run experiments first, e.g. `medminds submit expert-task --dataset micro` (`medminds list` shows "
                "them) or `medminds demo` for the whole study in miniature here, then `medminds report` again")


def no_finished_runs(skipped: list[Skipped], home_exists: bool = True) -> UserError:
    """A report of no run at all is a request that cannot be met: one line saying why and what to run."""
    if not home_exists:
        return UserError(f"no finished runs yet: {paths.home_name(paths.home())} does not exist; nothing was written; "
                         f"{NO_RUNS_HINT} (or, if your runs are elsewhere, set MEDMINDS_HOME to the folder that holds them)")
    others = ""
    if skipped:
        first = sorted(skipped, key=lambda s: s.run)[0]
        others = f" ({len(skipped)} other run(s) there, none usable: e.g. {first.run}: {first.reason}; `medminds status` shows them)"
    return UserError(f"no finished runs yet in {paths.runs_dir()}{others}; nothing was written; {NO_RUNS_HINT}")


def write_report(out: Path | str | None = None, formats: str | None = None) -> Report:
    """Check the options and the runs, compute every file, then write them (each atomically; figures/ swapped in
    whole). Without a finished run there is nothing to report: a UserError, and nothing is written."""
    chosen = parse_formats(formats)
    if paths.existing_home() is None:
        raise no_finished_runs([], home_exists=False)
    check_out(out, probe=False)
    collected = collect()
    if not collected[0]:
        raise no_finished_runs(collected[1])
    where = check_out(out)  # its probe touches the folder's mtime: only once there is something to write
    files, report = build(chosen, collected)
    drawn = {name.split("/", 1)[1]: data for name, data in files.items() if name.startswith(FIGURES_DIR + "/")}
    where.mkdir(parents=True, exist_ok=True)
    if "png" in chosen:
        fileio.replace_dir(where / FIGURES_DIR, lambda tmp: _write_all(tmp, drawn))
    _write_all(where, {name: data for name, data in files.items() if not name.startswith(FIGURES_DIR + "/")})
    report.out = where
    return report


def _write_all(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in sorted(files.items()):
        fileio.atomic_write_bytes(folder / name, data)


def terminal_summary(report: Report, width: int = 200) -> str:
    """What `medminds report` prints: the summary's main columns, the skipped runs, and where the files went."""
    from medminds_hpc.tables import wrapped_table

    rows = [[line.label, line.dataset, line.model, percent(line.accuracy), interval_text(line.interval),
             ("none" if line.paper and line.paper.accuracy is None else percent(line.paper.accuracy)) if line.paper else "",
             line.versus_paper] for line in report.lines]
    found = f"{len(report.finished)} finished run(s) in {paths.runs_dir()}"
    out = [found,
           wrapped_table(("row", "dataset", "model", "accuracy %", "95% interval", "paper %", "ours - paper"), rows, width)]
    if report.skipped:
        out.append(f"skipped {len(report.skipped)} run(s):")
        out += [f"  {s.run}: {s.reason}" for s in sorted(report.skipped, key=lambda s: s.run)]
    out.append(f"wrote {len(report.written)} file(s) to {report.out}: {', '.join(_short(report.written))}")
    return "\n".join(out)


def _short(names: Iterable[str]) -> list[str]:
    """File names, the figures folder counted rather than listed."""
    names = list(names)
    figs = [n for n in names if n.startswith(FIGURES_DIR + "/")]
    return [n for n in names if not n.startswith(FIGURES_DIR + "/")] + ([f"{FIGURES_DIR}/ ({len(figs)} PNG)"] if figs else [])
