"""Medical instruction data (the domain expert's SFT data) into the canonical schema id, instruction, input, output, source.

Sources, by name:
  mistral-instruct  Shekswess/medical_mistral_instruct_dataset (the paper's); locally medical_instruct/ (a save_to_disk
                    folder is preferred over a JSON-lines copy of the same rows)
  wikidoc           medalpaca/medical_meadow_wikidoc; locally medical_instruct/*wikidoc*
  medquad           MedQuAD question-answer pairs (Hub: keivalya/MedQuad-MedicalQnADataset); locally medquad/
The stored `prompt` column is ignored: it holds a literal backslash-n and literal "<s>"/"</s>" text; prompts are
rebuilt from the columns by `prompts.instruct_parts`. MedQuAD qids repeat (one XML document, several focuses), so
ids are `<source>-<row number>`, unique and stable for the same input.

    from medminds_hpc.data.instruct import load_instruct
    data = load_instruct("../shared/data", sources=("mistral-instruct", "medquad"))
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, get_args

from medminds_hpc.data import readers, schema, validate
from medminds_hpc.data.readers import Record
from medminds_hpc.data.validate import BadRows, Problem
from medminds_hpc.errors import UserError

MEDICAL_INSTRUCTION = "Answer the question truthfully, you are a medical professional."
Source = Literal["mistral-instruct", "wikidoc", "medquad"]
HUB: dict[Source, str] = {
    "mistral-instruct": "Shekswess/medical_mistral_instruct_dataset",
    "wikidoc": "medalpaca/medical_meadow_wikidoc",
    "medquad": "keivalya/MedQuad-MedicalQnADataset",
}
SOURCES: tuple[str, ...] = get_args(Source)
LOCAL_SUBDIR: dict[str, str] = {"mistral-instruct": "medical_instruct", "wikidoc": "medical_instruct", "medquad": "medquad"}
LAYOUTS: dict[str, tuple[str, ...]] = {
    "Shekswess mistral-instruct or medalpaca wikidoc": ("instruction", "input", "output"),
    "MedQuAD": ("question|Question", "answer|Answer"),
    "the canonical layout `prepare` writes": schema.INSTRUCT_COLUMNS,
}


def check_sources(sources: Sequence[str]) -> list[str]:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise UserError(f"unknown instruct source(s) {unknown or '(none given)'}; valid: {', '.join(SOURCES)} (e.g. -o instruct=mistral-instruct,medquad)")
    return list(dict.fromkeys(sources))


def local_inputs(directory: Path, name: str) -> tuple[list[Path], list[str]]:
    """The inputs of source `name` under a data folder, and notes on files ignored."""
    folder = directory / LOCAL_SUBDIR[name]
    if not folder.is_dir():
        return [], []
    found = [p for p in readers.data_inputs(folder) if ("wikidoc" in p.name.lower()) == (name == "wikidoc")]
    saved = [p for p in found if readers.is_saved_dataset(p)]
    if saved and len(saved) < len(found):
        ignored = [p.name for p in found if p not in saved]
        return saved, [f"{name}: read the save_to_disk folder(s) {', '.join(p.name for p in saved)}; ignored {', '.join(ignored)} (same data, other format)"]
    return found, []


def load_instruct(
    source: str | Path | Sequence[str | Path] = "hub",
    *,
    sources: Sequence[str] = ("mistral-instruct",),
    bad_rows: str = "strict",
    seed: int = 0,
    synthetic_rows: int = 2000,
    show_progress: bool | None = None,
    skip_flag: str = validate.SUBMIT_SKIP_FLAG,
) -> schema.Loaded:
    """Every instruct row of the chosen `sources`, pooled into one "train" split.

    source: "hub", "synthetic", a data folder (medical_instruct/ and medquad/ subfolders), a file or save_to_disk
    folder (its form is read from its columns), or a list of those.
    """
    bad = BadRows("medical instruct", validate.check_policy(bad_rows), skip_flag)
    report: dict[str, Any] = {"source": readers.describe(source), "inputs": [], "notes": [], "rows_by_source": {}}
    inputs: list[tuple[str, Iterable[Record]]] = []
    if source == "hub":
        for name in check_sources(sources):
            records, info = readers.hub_records(HUB[name], "train")
            report["inputs"].append(info)
            inputs.append((name, records))
    elif source == "synthetic":
        from medminds_hpc.data import synthetic

        rows = synthetic.instruct_rows(synthetic_rows, seed=seed)
        report["inputs"].append({"path": "synthetic:instruct", "sha256": synthetic.fingerprint(synthetic_rows, seed, "instruct"), "rows": len(rows)})
        inputs.append(("synthetic", (Record("synthetic:instruct", i, "row", r) for i, r in enumerate(rows, 1))))
    else:
        items = source if isinstance(source, (list, tuple)) else [source]
        for item in items:
            path = Path(item).expanduser()
            if path.is_dir() and not readers.is_saved_dataset(path):
                for name in check_sources(sources):
                    paths, notes = local_inputs(path, name)
                    report["notes"] += notes
                    for p in paths:
                        report["inputs"].append({"path": str(p.resolve())})
                        inputs.append((name, readers.read_file(p, show_progress)))
            elif path.exists():
                name = "wikidoc" if "wikidoc" in path.name.lower() else ("medquad" if "medquad" in path.name.lower() else "mistral-instruct")
                report["inputs"].append({"path": str(path.resolve())})
                inputs.append((name, readers.read_file(path, show_progress)))
            else:
                raise UserError(f"source {str(item)!r} is neither 'hub', 'synthetic' nor an existing file or folder")
        if not inputs:
            raise UserError(f"{readers.describe(source)}: no medical instruct data found for {', '.join(sources)} "
                            f"(looked in medical_instruct/ and medquad/)")

    cols = schema.empty_columns("instruct")
    read = 0
    with readers.paused_gc():
        for name, records in inputs:
            number = 0
            columns: set[str] = set()
            first: tuple[str, list[str]] | None = None  # the input's file and its first row's columns, in order
            for rec in records:
                read += 1
                number += 1
                if rec.data is not None:
                    columns.update(rec.data)
                    first = first or (rec.file, list(rec.data))
                row = _row(rec, name, number, bad)
                if row is not None:
                    report["rows_by_source"][row["source"]] = report["rows_by_source"].get(row["source"], 0) + 1
                    for c, v in row.items():
                        cols[c].append(v)
            if first is not None:
                _check_columns(first, columns)
    # ids are <source>-<n>; two inputs of one source (e.g. two files) must not collide
    seen: dict[str, int] = {}
    for i, id_ in enumerate(cols["id"]):
        k = seen.get(id_, 0)
        seen[id_] = k + 1
        if k:
            cols["id"][i] = f"{id_}.{k + 1}"
    report["dropped"] = bad.finish()
    report["read"] = {"train": read}
    report["kept"] = {"train": len(cols["id"])}
    return schema.Loaded({"train": schema.to_dataset(cols, "instruct")}, report)


def _check_columns(first: tuple[str, list[str]], columns: set[str]) -> None:
    """A file none of whose rows has the columns of its form is the wrong file: one line, not a problem per row.
    The form is told as `_row` tells it, from the columns."""
    if {"id", "instruction", "source"} <= columns:
        needed = LAYOUTS["the canonical layout `prepare` writes"]
    elif columns & {"instruction", "output"}:
        needed = LAYOUTS["Shekswess mistral-instruct or medalpaca wikidoc"]
    else:
        needed = LAYOUTS["MedQuAD"]
    missing = validate.absent(columns, needed)
    if missing:
        file, ordered = first
        raise validate.columns_error(file, "medical instruct", ordered + sorted(columns - set(ordered)), missing, LAYOUTS)


def _tidy(text: str) -> str:
    """MedQuAD answers keep the XML's indentation: collapse a newline plus indentation to one newline."""
    return re.sub(r"[ \t]*\n[ \t\r\n]*", "\n", text).strip()


def _row(rec: Record, name: str, number: int, bad: BadRows) -> dict[str, Any] | None:
    if rec.data is None:
        bad.row([Problem(rec.where(), "(whole row)", "a JSON object", rec.error, validate.BAD_JSON)])
        return None
    d = rec.data
    if "id" in d and "instruction" in d and "source" in d:  # already canonical (synthetic, a prepared parquet)
        where = rec.where(d.get("id"))
        problems = validate.require_text(d, "instruction", where) + validate.require_text(d, "input", where, allow_empty=True)
        problems += validate.require_text(d, "output", where) + validate.require_text(d, "source", where)
        return dict((c, d[c]) for c in schema.INSTRUCT_COLUMNS) if bad.row(problems) else None
    if "instruction" in d or "output" in d:  # Shekswess mistral-instruct, wikidoc (the `prompt` column is ignored)
        where = rec.where()
        problems = validate.require_text(d, "instruction", where, allow_empty=True)
        problems += validate.require_text(d, "input", where) + validate.require_text(d, "output", where)
        if not bad.row(problems):
            return None
        instruction = d["instruction"].strip() or MEDICAL_INSTRUCTION
        return {"id": f"{name}-{number:06d}", "instruction": instruction, "input": d["input"].strip(),
                "output": d["output"].strip(), "source": name}
    # MedQuAD pairs: question/answer (local) or Question/Answer (Hub)
    q_key = "question" if "question" in d else "Question"
    a_key = "answer" if "answer" in d else "Answer"
    where = rec.where(d.get("qid"))
    problems = validate.require_text(d, q_key, where) + validate.require_text(d, a_key, where)
    if not bad.row(problems):
        return None
    return {"id": f"{name}-{number:06d}", "instruction": MEDICAL_INSTRUCTION, "input": _tidy(d[q_key]),
            "output": _tidy(d[a_key]), "source": name}
