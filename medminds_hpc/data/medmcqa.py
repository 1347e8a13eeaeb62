"""MedMCQA into the canonical MCQ schema, from the Hub, the original release files, or canonical files.

The answer field `cop` has two conventions and the loader never guesses between them:
  * Hugging Face `openlifescienceai/medmcqa`: 0-3 (test split -1, unlabelled);
  * the original release (train.json / dev.json, one JSON object per line): 1-4.
Per input file, a `cop` of 0 means 0-based and a `cop` of 4 means 1-based; a file whose values all lie in 1-3
is ambiguous and needs `cop_base` (0 or 1). The convention seen is reported per input.

    from medminds_hpc.data.medmcqa import load_medmcqa
    data = load_medmcqa("../shared/data/medmcqa/dev-sample.jsonl", splits=("validation",))
    data["validation"][0]["answer"], data.report["conventions"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from medminds_hpc.data import readers, schema, validate
from medminds_hpc.data.readers import Record
from medminds_hpc.data.validate import BadRows, IdRegistry, Problem
from medminds_hpc.errors import UserError

HUB_REPO = "openlifescienceai/medmcqa"
OPTION_FIELDS: tuple[str, ...] = ("opa", "opb", "opc", "opd")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
HUB_CONVENTION = "0-based (cop 0-3, Hugging Face convention)"
RELEASE_CONVENTION = "1-based (cop 1-4, original release convention)"
CANONICAL_CONVENTION = "canonical (answer 0-3)"
RELEASE_COLUMNS: tuple[str, ...] = ("id", "question", *OPTION_FIELDS, "cop", "subject_name", "choice_type")
CANONICAL_COLUMNS: tuple[str, ...] = ("id", "question", "options", "answer", "subject", "choice_type")
LAYOUTS: dict[str, tuple[str, ...]] = {"the original release or Hugging Face layout": RELEASE_COLUMNS,
                                       "the canonical layout `prepare` writes": CANONICAL_COLUMNS}
COP_HINT = "pass --cop-base 0 (Hugging Face, cop 0-3) or --cop-base 1 (original release, cop 1-4), or -o cop_base=0|1"


def load_medmcqa(
    source: str | Path | Sequence[str | Path] = "hub",
    *,
    splits: Sequence[str] = ("train", "validation"),
    cop_base: int | None = None,
    bad_rows: str = "strict",
    seed: int = 0,
    synthetic_rows: dict[str, int] | None = None,
    show_progress: bool | None = None,
    skip_flag: str = validate.SUBMIT_SKIP_FLAG,
) -> schema.Loaded:
    """Load, validate and canonicalise MedMCQA.

    source: "hub", "synthetic", a file, a folder (its `medmcqa/` subfolder when there is one), or a list of them.
    splits: which splits to return; local files get their split from their name (dev-sample.jsonl -> validation).
    cop_base: 0 or 1 to state the `cop` convention (required when a file is ambiguous).
    bad_rows: "strict" raises one UserError listing the problems; "skip" drops bad rows and counts them.
    synthetic_rows: rows per split for source="synthetic" (default 2,000 train / 500 validation).
    skip_flag: how the command that runs this spells bad_rows=skip, for the strict error.
    """
    policy = validate.check_policy(bad_rows)
    if cop_base not in (None, 0, 1):
        raise UserError(f"cop_base={cop_base!r} is not a MedMCQA convention; {COP_HINT}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UserError(f"unknown MedMCQA split(s) {unknown}; valid: {', '.join(SPLITS)}")
    bad = BadRows("MedMCQA", policy, skip_flag)
    ids = IdRegistry()
    report: dict[str, Any] = {"source": readers.describe(source), "inputs": [], "conventions": {}, "notes": []}
    groups: list[tuple[str, str | None, Iterable[Record], int | None, str | None]] = []  # label, split, records, base, convention

    if source == "hub":
        if cop_base == 1:
            raise UserError(f"cop_base=1 contradicts {HUB_REPO}, whose cop is 0-3; drop cop_base for the Hub")
        for split in splits:
            records, info = readers.hub_records(HUB_REPO, split)
            report["inputs"].append(info)
            groups.append((info["path"], split, records, 0, HUB_CONVENTION))
    elif source == "synthetic":
        from medminds_hpc.data import synthetic

        sizes = synthetic_rows or {"train": 2000, "validation": 500}
        for split in splits:
            rows = synthetic.medmcqa_rows(sizes.get(split, 0), seed=seed, split=split)
            label = f"synthetic:medmcqa[{split}]"
            report["inputs"].append({"path": label, "sha256": synthetic.fingerprint(sizes.get(split, 0), seed, split), "rows": len(rows)})
            groups.append((label, split, (Record(label, i, "row", r, split) for i, r in enumerate(rows, 1)), None, None))
    else:
        paths = readers.resolve_local(source if isinstance(source, (list, tuple)) else Path(source), "medmcqa")
        if not paths:
            raise UserError(f"{readers.describe(source)}: no MedMCQA files found (looked for {', '.join(readers.FILE_SUFFIXES)} files "
                            f"or save_to_disk folders, in it or its medmcqa/ subfolder)")
        for path in paths:
            split = readers.split_of(path.name)
            if split is None and not readers.is_saved_dataset(path):
                split = "train"
                report["notes"].append(f"{path.name}: no split in its name (train/dev/validation/test): read as train")
            if split is not None and split not in splits:
                report["notes"].append(f"{path.name}: {split} split not requested: ignored")
                continue
            report["inputs"].append({"path": str(path.resolve())})
            groups.append((str(path), split, readers.read_file(path, show_progress), None, None))

    out: dict[str, dict[str, list[Any]]] = {s: schema.empty_columns("mcq") for s in splits}
    read: dict[str, int] = {s: 0 for s in splits}
    with readers.paused_gc():
        for label, split, records, known_base, known_convention in groups:
            for rec_split, rows, convention in _convert(records, split, known_base, known_convention, cop_base, ids, bad, label):
                if convention:
                    report["conventions"][label] = convention
                if rec_split not in out:  # a save_to_disk DatasetDict can hold splits nobody asked for
                    continue
                read[rec_split] += len(rows)
                for row in rows:
                    if row is not None:
                        for c, v in row.items():
                            out[rec_split][c].append(v)
    report["dropped"] = bad.finish()
    report["read"] = read
    report["kept"] = {s: len(out[s]["id"]) for s in splits}
    return schema.Loaded({s: schema.to_dataset(out[s], "mcq") for s in splits}, report)


def _convert(records: Iterable[Record], split: str | None, known_base: int | None, known_convention: str | None,
             cop_base: int | None, ids: IdRegistry, bad: BadRows, label: str):
    """Yield (split, rows-or-None-for-dropped, convention) per split found in one input."""
    pending: dict[str | None, list[tuple[str, list[Problem], dict[str, Any] | None, Any]]] = {}
    canonical: dict[str | None, bool] = {}
    columns: dict[str | None, set[str]] = {}  # every column any row of the split has
    first: dict[str | None, tuple[str, list[str]]] = {}  # the split's file and its first row's columns, in order
    for rec in records:
        key = rec.split if rec.split is not None else split
        if rec.data is not None:
            columns.setdefault(key, set()).update(rec.data)
            if key not in first:
                first[key] = (rec.file, list(rec.data))
        is_canonical = rec.data is not None and "options" in rec.data and "opa" not in rec.data
        canonical[key] = canonical.get(key, True) and (is_canonical or rec.data is None)
        pending.setdefault(key, []).append(canonical_row(rec) if is_canonical else _parse(rec))
    for rec_split, items in pending.items():
        labelled = rec_split != "test"
        if rec_split in first:
            _check_columns(first[rec_split], columns[rec_split], canonical[rec_split], labelled)
        if known_convention is not None:
            base, convention = known_base, known_convention
        elif canonical[rec_split]:
            base, convention = 0, CANONICAL_CONVENTION
        else:
            base, convention = _detect(items, cop_base, label, labelled)
        rows: list[dict[str, Any] | None] = []
        for where, problems, row, cop in items:
            if not problems and row is not None:
                problems = _answer(row, cop, base, convention, where, labelled) or ids.check(row["id"], where)
            rows.append(row if bad.row(problems) else None)
        yield rec_split, rows, convention


def _check_columns(first: tuple[str, list[str]], columns: set[str], canonical: bool, labelled: bool) -> None:
    """A file none of whose rows has a MedMCQA column is the wrong file: one line, not a problem per row."""
    needed = [c for c in (CANONICAL_COLUMNS if canonical else RELEASE_COLUMNS) if labelled or c not in ("cop", "answer")]
    missing = validate.absent(columns, needed)
    if missing:
        file, ordered = first
        raise validate.columns_error(file, "MedMCQA", ordered + sorted(columns - set(ordered)), missing, LAYOUTS)


def _parse(rec: Record) -> tuple[str, list[Problem], dict[str, Any] | None, Any]:
    """Structural checks of one raw row; returns (where, problems, canonical row without answer, raw cop)."""
    if rec.data is None:
        where = rec.where()
        return where, [Problem(where, "(whole row)", "a JSON object", rec.error, validate.BAD_JSON)], None, None
    d = rec.data
    raw_id = d.get("id")
    where = rec.where(raw_id)
    problems = _id_problems(d, where)
    problems += validate.require_text(d, "question", where)
    for f in OPTION_FIELDS:
        if f not in d or d[f] is None:
            problems.append(validate.missing(where, f, "an option text (a string)"))
        elif not isinstance(d[f], str):
            problems.append(Problem(where, f, "an option text (a string)", d[f], validate.NOT_STRING))
    problems += validate.require_text(d, "subject_name", where)
    problems += _choice_type_problems(d.get("choice_type"), where)
    topic = d.get("topic_name")
    row = {"id": str(raw_id), "question": d.get("question"), "options": [d.get(f) for f in OPTION_FIELDS],
           "answer": None, "subject": d.get("subject_name"), "topic": topic if isinstance(topic, str) else "",
           "choice_type": d.get("choice_type")}
    return where, problems, row, d.get("cop", _ABSENT)


def canonical_row(rec: Record) -> tuple[str, list[Problem], dict[str, Any] | None, Any]:
    """A row already in the canonical schema (a prepared parquet, synthetic rows): checked, not converted."""
    d = rec.data or {}
    where = rec.where(d.get("id"))
    problems = _id_problems(d, where)
    problems += validate.require_text(d, "question", where)
    options = d.get("options")
    if options is None:
        problems.append(validate.missing(where, "options", "a list of 4 option strings"))
    elif not isinstance(options, (list, tuple)) or len(options) != schema.NUM_OPTIONS:
        problems.append(Problem(where, "options", "a list of 4 option strings", options, validate.BAD_VALUE))
    else:
        for i, o in enumerate(options):
            if not isinstance(o, str):
                problems.append(Problem(where, f"options[{i}]", "an option text (a string)", o, validate.NOT_STRING))
    problems += validate.require_text(d, "subject", where)
    problems += _choice_type_problems(d.get("choice_type"), where)
    topic = d.get("topic")
    row = {"id": str(d.get("id")), "question": d.get("question"), "options": list(options) if isinstance(options, (list, tuple)) else options,
           "answer": None, "subject": d.get("subject"), "topic": topic if isinstance(topic, str) else "",
           "choice_type": d.get("choice_type")}
    return where, problems, row, d.get("answer", _ABSENT)


_ABSENT = object()


def _id_problems(d: dict[str, Any], where: str) -> list[Problem]:
    raw = d.get("id")
    if raw is None:
        return [validate.missing(where, "id", "a non-empty id")]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw).strip() == "":
        return [Problem(where, "id", "a non-empty string id", raw, f"{validate.WRONG_TYPE} 'id'")]
    return []


def _choice_type_problems(value: Any, where: str) -> list[Problem]:
    if value is None:
        return [validate.missing(where, "choice_type", "'single' or 'multi'")]
    if value not in schema.CHOICE_TYPES:
        return [Problem(where, "choice_type", "'single' or 'multi'", value, validate.BAD_VALUE)]
    return []


def _detect(items: list[tuple[str, list[Problem], dict[str, Any] | None, Any]], cop_base: int | None, label: str,
            labelled: bool) -> tuple[int | None, str]:
    """The `cop` convention of one input: from cop_base when given, else from the values; never a guess."""
    if cop_base is not None:
        return cop_base, f"{RELEASE_CONVENTION if cop_base else HUB_CONVENTION}: given by cop_base={cop_base}"
    if not labelled:
        return None, "unlabelled (test split)"
    values = {validate.as_int(cop) for _, problems, _, cop in items if not problems and cop is not _ABSENT}
    values &= {0, 1, 2, 3, 4}
    if 0 in values and 4 in values:
        raise UserError(f"{label}: cop takes both 0 and 4, so it follows neither the Hugging Face 0-3 nor the original "
                        f"1-4 convention; fix the file, or {COP_HINT} (rows outside that range are then reported)")
    if 0 in values:
        return 0, f"{HUB_CONVENTION}: detected (cop=0 present)"
    if 4 in values:
        return 1, f"{RELEASE_CONVENTION}: detected (cop=4 present)"
    if values:
        raise UserError(f"{label}: every cop value is within 1-3, so its convention is ambiguous (0-based like the Hub, "
                        f"or 1-based like the original release); {COP_HINT}")
    return None, "no valid cop values"


def _answer(row: dict[str, Any], cop: Any, base: int | None, convention: str, where: str, labelled: bool) -> list[Problem]:
    """Set row['answer'] (0-3, or -1 unlabelled) from the raw cop; a problem when it is out of range."""
    field = "answer" if convention == CANONICAL_CONVENTION else "cop"
    if not labelled and (cop is _ABSENT or cop is None or validate.as_int(cop) == schema.UNLABELLED):
        row["answer"] = schema.UNLABELLED
        return []
    if cop is _ABSENT or cop is None:
        return [validate.missing(where, field, "the correct option's number")]
    value = validate.as_int(cop)
    if value is None:
        return [Problem(where, field, "an integer option number", cop, f"{validate.WRONG_TYPE} {field!r}")]
    base = 0 if base is None else base
    answer = value - base
    if not 0 <= answer < schema.NUM_OPTIONS:
        return [Problem(where, field, f"an integer {base}-{base + 3} (convention: {convention})", cop, validate.OUT_OF_RANGE)]
    row["answer"] = answer
    return []


def release_row(row: dict[str, Any], cop_base: int = 1) -> dict[str, Any]:
    """A canonical row back in the release/Hub field layout (cop_base 1: original release, 0: Hub); for tests and demos."""
    out = {"id": row["id"], "question": row["question"], "exp": None, "cop": row["answer"] + cop_base if row["answer"] >= 0 else -1,
           "subject_name": row["subject"], "topic_name": row["topic"] or None, "choice_type": row["choice_type"]}
    out.update(zip(OPTION_FIELDS, row["options"]))
    return out
