"""ARC (the task expert's data) into the canonical MCQ schema, with exactly four options per question.

The task expert trains on all of ARC, as the paper did: Easy and Challenge, every split (train, validation and
test: 7,787 questions). Accepted forms: the Hub's `allenai/ai2_arc` (question, choices{text,label}, answerKey;
labels letters or "1"-"4"), the local JSON lines of ../shared/data/arc ({index, id, question, options:[{label,text}],
answer}), the original release ({id, question{stem, choices}, answerKey}) and the canonical schema. A question with
more than 4 options keeps its answer plus 3 others (seeded per id, original order kept); one with fewer than 4 is
dropped and counted. The report counts every part (config and split) read, kept, trimmed and dropped.

    from medminds_hpc.data.arc import load_arc
    data = load_arc("../shared/data")      # every ARC file under it (or under its arc/), pooled into "train"
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from medminds_hpc.data import medmcqa, readers, schema, validate
from medminds_hpc.data.readers import Record
from medminds_hpc.data.validate import BadRows, IdRegistry, Problem
from medminds_hpc.errors import UserError

HUB_REPO = "allenai/ai2_arc"
HUB_CONFIGS: tuple[str, ...] = ("ARC-Challenge", "ARC-Easy")
HUB_SPLITS: tuple[str, ...] = ("train", "validation", "test")
PAPER_QUESTIONS = 7_787  # Easy + Challenge, every split, as the paper counts them
FEWER = "fewer than 4 options"
UNKNOWN_SPLIT = "unsplit"  # a local file whose name says no split
# one copy of the same questions per (folder, name): the original release ships .jsonl and .csv side by side
FORMAT_PREFERENCE: tuple[str, ...] = (".jsonl", ".json", ".parquet", ".csv")
NEEDED: tuple[str, ...] = ("id", "question", "options|choices", "answer|answerKey")
LAYOUTS: dict[str, tuple[str, ...]] = {
    "Hugging Face allenai/ai2_arc": ("id", "question", "choices", "answerKey"),
    "JSON lines with options [{label, text}], or the canonical layout `prepare` writes": ("id", "question", "options", "answer"),
    "the original release": ("id", "question {stem, choices}", "answerKey"),
}


def config_of(path: str | Path) -> str:
    """ "ARC-Challenge" or "ARC-Easy" from a path's folder or file names; "ARC" when they say neither."""
    words = " ".join(Path(path).parts).lower()
    if "challenge" in words:
        return "ARC-Challenge"
    return "ARC-Easy" if "easy" in words else "ARC"


def _walk(folder: Path) -> list[Path]:
    """Data files and save_to_disk folders at any depth under `folder` (a saved dataset is not entered)."""
    found = readers.data_inputs(folder)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and not readers.is_saved_dataset(p)):
        found += _walk(sub)
    return found


def local_inputs(source: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The ARC inputs of a local source, and notes on files ignored.

    A file or save_to_disk folder is itself; a folder gives every ARC file under its arc/ subfolder when it has one,
    else under itself, at any depth (the Hub's ARC-Challenge/ and ARC-Easy/ folders, the original release's
    ARC-V1-Feb2018/...). Of two copies of one file in different formats, the first of FORMAT_PREFERENCE is read.
    """
    if isinstance(source, (list, tuple)):
        paths: list[Path] = []
        notes: list[str] = []
        for item in source:
            more, why = local_inputs(item)
            paths, notes = paths + more, notes + why
        return paths, notes
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"source {str(source)!r} is neither 'hub', 'synthetic' nor an existing file or folder")
    if path.is_file() or readers.is_saved_dataset(path):
        return [path], []
    found = _walk(path / "arc" if (path / "arc").is_dir() else path)
    chosen: dict[tuple[Path, str], Path] = {}
    for p in found:
        key = (p.parent, p.stem if p.is_file() else p.name)
        rank = FORMAT_PREFERENCE.index(p.suffix.lower()) if p.is_file() else -1
        held = chosen.get(key)
        if held is None or rank < (FORMAT_PREFERENCE.index(held.suffix.lower()) if held.is_file() else -1):
            chosen[key] = p
    kept = [p for p in found if p in chosen.values()]
    ignored = [p for p in found if p not in kept]
    notes = [f"read {chosen[(p.parent, p.stem)].name}, ignored {p.name} (same questions, other format)" for p in ignored]
    return kept, notes


def load_arc(
    source: str | Path | Sequence[str | Path] = "hub",
    *,
    hub_splits: Sequence[str] = HUB_SPLITS,
    seed: int = 0,
    bad_rows: str = "strict",
    synthetic_rows: int = 2000,
    show_progress: bool | None = None,
    skip_flag: str = validate.SUBMIT_SKIP_FLAG,
) -> schema.Loaded:
    """Every ARC question of the source, pooled into one "train" split (the task expert's SFT data).

    hub_splits: which Hub splits of both configs to pool (the paper used all three).
    seed: picks the 3 kept distractors of 5-option questions (per question id, so order does not matter).
    """
    bad = BadRows("ARC", validate.check_policy(bad_rows), skip_flag)
    ids = IdRegistry()
    report: dict[str, Any] = {"source": readers.describe(source), "inputs": [], "notes": [], "label_forms": {}}
    inputs: list[tuple[str, Iterable[Record]]] = []  # (config, records)
    if source == "hub":
        for config in HUB_CONFIGS:
            for split in hub_splits:
                records, info = readers.hub_records(HUB_REPO, split, config=config)
                report["inputs"].append(info)
                inputs.append((config, records))
    elif source == "synthetic":
        from medminds_hpc.data import synthetic

        rows = synthetic.arc_rows(synthetic_rows, seed=seed)
        label = "synthetic:arc"
        report["inputs"].append({"path": label, "sha256": synthetic.fingerprint(synthetic_rows, seed, "arc"), "rows": len(rows)})
        inputs.append(("synthetic", (Record(label, i, "row", r, "train") for i, r in enumerate(rows, 1))))
    else:
        paths, report["notes"] = local_inputs(source)
        if not paths:
            raise UserError(f"{readers.describe(source)}: no ARC files found (in it or its arc/ subfolder); "
                            f"expected .jsonl, .json, .parquet or .csv files, or datasets.save_to_disk folders")
        for path in paths:
            report["inputs"].append({"path": str(path.resolve())})
            inputs.append((config_of(path), readers.read_file(path, show_progress)))

    cols = schema.empty_columns("mcq")
    parts: dict[str, dict[str, Counter]] = {}  # config -> split -> counts
    read = 0
    with readers.paused_gc():
        for config, records in inputs:
            columns: set[str] = set()
            first: tuple[str, list[str]] | None = None  # the input's file and its first row's columns, in order
            nested = False  # the original release: choices inside question{stem, choices}
            for rec in records:
                read += 1
                if rec.data is not None:
                    columns.update(rec.data)
                    first = first or (rec.file, list(rec.data))
                    nested = nested or isinstance(rec.data.get("question"), dict)
                part = parts.setdefault(config, {}).setdefault(rec.split or UNKNOWN_SPLIT, Counter())
                row = _row(rec, seed, ids, bad, part, report["label_forms"])
                part["read"] += 1
                if row is not None:
                    part["kept"] += 1
                    for c, v in row.items():
                        cols[c].append(v)
            if first is not None:
                _check_columns(first, columns, nested)
    report["dropped"] = bad.finish()
    report["parts"] = {config: {split: _part_counts(part) for split, part in sorted(by_split.items(), key=lambda kv: _split_order(kv[0]))}
                       for config, by_split in sorted(parts.items())}
    report["trimmed_to_4"] = sum(part["trimmed_to_4"] for by_split in parts.values() for part in by_split.values())
    report["read"] = {"train": read}
    report["kept"] = {"train": len(cols["id"])}
    return schema.Loaded({"train": schema.to_dataset(cols, "mcq")}, report)


def _check_columns(first: tuple[str, list[str]], columns: set[str], nested: bool) -> None:
    """A file none of whose rows has an ARC column is the wrong file: one line, not a problem per row."""
    missing = validate.absent(columns, [n for n in NEEDED if not (nested and n == "options|choices")])
    if missing:
        file, ordered = first
        raise validate.columns_error(file, "ARC", ordered + sorted(columns - set(ordered)), missing, LAYOUTS)


def _split_order(split: str) -> tuple[int, str]:
    return (HUB_SPLITS.index(split) if split in HUB_SPLITS else len(HUB_SPLITS), split)


def _part_counts(part: Counter) -> dict[str, int]:
    """One config/split's counts for the card: read, kept, trimmed to 4 options, dropped (fewer than 4 options, or
    invalid under bad_rows=skip)."""
    counts = {k: part[k] for k in ("read", "kept", "trimmed_to_4", "fewer_than_4")}
    counts["invalid"] = counts["read"] - counts["kept"] - counts["fewer_than_4"]
    return counts


def _normalise(d: dict[str, Any]) -> tuple[Any, Any, Any, Any, str]:
    """(question, labels, texts, answer label, answer field name) from any accepted form."""
    question = d.get("question")
    if isinstance(question, dict):  # original release: question{stem, choices}
        choices = question.get("choices")
        question = question.get("stem")
        pairs = choices if isinstance(choices, list) else None
    elif isinstance(d.get("choices"), dict):  # Hub: choices{text: [...], label: [...]}
        ch = d["choices"]
        texts, labels = ch.get("text"), ch.get("label")
        pairs = [{"label": lab, "text": t} for lab, t in zip(labels, texts)] if isinstance(texts, list) and isinstance(labels, list) else None
    else:  # local: options [{label, text}]
        pairs = d.get("options") if isinstance(d.get("options"), list) else None
    field = "answerKey" if "answerKey" in d else "answer"
    if pairs is None:
        return question, None, None, d.get(field), field
    labels = [p.get("label") if isinstance(p, dict) else None for p in pairs]
    texts = [p.get("text") if isinstance(p, dict) else p for p in pairs]
    return question, labels, texts, d.get(field), field


def _row(rec: Record, seed: int, ids: IdRegistry, bad: BadRows, part: Counter, label_forms: dict[str, int]) -> dict[str, Any] | None:
    """The canonical row of one record, or None (its problems recorded in `bad`; trimmed and fewer-than-4 counted
    in `part`)."""
    if rec.data is None:
        where = rec.where()
        bad.row([Problem(where, "(whole row)", "a JSON object", rec.error, validate.BAD_JSON)])
        return None
    d = rec.data
    if isinstance(d.get("options"), list) and "answer" in d and not isinstance(d.get("answer"), str):
        where, problems, row, answer = medmcqa.canonical_row(rec)  # an already canonical row
        if not problems and row is not None:
            value = validate.as_int(answer)
            if value is None or not 0 <= value < schema.NUM_OPTIONS:
                problems = [Problem(where, "answer", "an integer 0-3", answer, validate.OUT_OF_RANGE)]
            else:
                row["answer"] = value
                problems = ids.check(row["id"], where)
        return row if bad.row(problems) else None

    where = rec.where(d.get("id"))
    problems = medmcqa._id_problems(d, where)
    question, labels, texts, answer, answer_field = _normalise(d)
    if question is None:
        problems.append(validate.missing(where, "question", "a non-empty string"))
    elif not isinstance(question, str) or not question.strip():
        problems.append(Problem(where, "question", "a non-empty string", question, "empty question" if isinstance(question, str) else f"{validate.WRONG_TYPE} 'question'"))
    if texts is None:
        problems.append(validate.missing(where, "options", "a list of {label, text} options"))
    else:
        for i, (lab, text) in enumerate(zip(labels, texts)):
            if not isinstance(text, str):
                problems.append(Problem(where, f"options[{i}].text", "an option text (a string)", text, validate.NOT_STRING))
            if not isinstance(lab, (str, int)) or isinstance(lab, bool):
                problems.append(Problem(where, f"options[{i}].label", "a label like 'A' or '1'", lab, validate.BAD_VALUE))
    if answer is None:
        problems.append(validate.missing(where, answer_field, "the correct option's label"))
    if problems:
        bad.row(problems)
        return None
    labels = [str(lab).strip() for lab in labels]
    key = str(answer).strip()
    if key not in labels:
        bad.row([Problem(where, answer_field, f"one of the option labels {', '.join(labels)}", answer, validate.OUT_OF_RANGE,
                         f"{answer_field} {validate.shown(answer)} is not one of the row's labels {', '.join(labels)}")])
        return None
    dup = ids.check(str(d["id"]), where)
    if dup:
        bad.row(dup)
        return None
    form = "digits" if all(lab.isdigit() for lab in labels) else "letters"
    label_forms[form] = label_forms.get(form, 0) + 1
    if len(texts) < schema.NUM_OPTIONS:
        bad.drop(FEWER)
        part["fewer_than_4"] += 1
        return None
    keep = keep_four(len(texts), labels.index(key), seed, str(d["id"]))
    if len(texts) > schema.NUM_OPTIONS:
        part["trimmed_to_4"] += 1
    return {"id": str(d["id"]), "question": question, "options": [texts[i] for i in keep], "answer": keep.index(labels.index(key)),
            "subject": "arc", "topic": "", "choice_type": "single"}


def keep_four(n_options: int, answer: int, seed: int, key: str) -> list[int]:
    """Indices of the 4 options kept: the answer plus 3 others chosen by (seed, question id), in original order."""
    if n_options <= schema.NUM_OPTIONS:
        return list(range(n_options))
    others = [i for i in range(n_options) if i != answer]
    chosen = random.Random(f"{seed}:{key}").sample(others, schema.NUM_OPTIONS - 1)
    return sorted([answer, *chosen])
