"""Raw records from files or the Hub, each carrying where it came from (file and line) for error messages.

Formats: JSON lines (.jsonl, and .json files holding one object per line, as the original MedMCQA release does),
a JSON array (.json starting with '['), CSV (every cell read as text), Parquet, and `datasets.save_to_disk`
folders. The split of a file is read from its name (train / dev|val|valid|validation / test).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from medminds_hpc import fileio
from medminds_hpc.errors import UserError

FILE_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet")
SPLIT_WORDS: dict[str, str] = {"train": "train", "dev": "validation", "val": "validation", "valid": "validation",
                               "validation": "validation", "test": "test"}
HUB_HINT = ("on a compute node without internet, run `medminds prepare` on the login node first (it caches the Hub "
            "data), or read local files (`medminds prepare --source /path/to/data`, or `-o prepare.source=/path/to/data` "
            "with `medminds submit`), or use synthetic data (`--source synthetic`, `-o prepare.source=synthetic`) for a demo")


@dataclass(frozen=True)
class Record:
    """One raw row; `data` is None when the line could not be parsed (then `error` says why)."""

    file: str
    index: int  # 1-based
    unit: str  # "line" (JSON lines), "row" (CSV, Parquet, Arrow, Hub) or "item" (JSON array)
    data: dict[str, Any] | None
    split: str | None = None
    error: str = ""

    def where(self, id_: Any = None) -> str:
        ident = f" (id {id_!r})" if isinstance(id_, (str, int)) and id_ != "" else ""
        return f"{self.file} {self.unit} {self.index}{ident}"


def split_of(name: str) -> str | None:
    """'dev-sample.jsonl' -> 'validation', 'train.json' -> 'train', 'arc_challenge_test.jsonl' -> 'test'."""
    for word in re.split(r"[^a-z0-9]+", Path(name).name.lower()):
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
    return None


def is_saved_dataset(path: Path) -> bool:
    """A `datasets.save_to_disk` folder (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def data_inputs(directory: Path) -> list[Path]:
    """The data files and save_to_disk folders directly inside `directory`, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if (p.is_file() and p.suffix.lower() in FILE_SUFFIXES and not p.name.startswith("."))
                  or is_saved_dataset(p))


# fingerprints ---------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    return fileio.sha256_file(path)


def fingerprint(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, or of every file of a folder (relative names included), for the data card."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": path.stat().st_size}
    h = hashlib.sha256()
    total = 0
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0" + file_sha256(p).encode())
        total += p.stat().st_size
    return {"path": str(path.resolve()), "sha256": h.hexdigest(), "bytes": total}


# progress -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def progress(description: str, total: float | None, enabled: bool | None = None) -> Iterator[Callable[[float], None]]:
    """A rich progress bar (only on a terminal: job logs stay clean); yields `advance(amount)`."""
    if enabled is None:
        enabled = sys.stdout.isatty()
    if not enabled:
        yield lambda amount: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount: bar.advance(task, amount)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while bulk-parsing rows: the rows hold no cycles, and its repeated full
    passes over hundreds of thousands of new dicts cost a third of the load time at mega size."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# readers --------------------------------------------------------------------------------------------------
# what a damaged or mislabelled file raises from pyarrow, pandas, json or datasets (pyarrow's own errors subclass these)
UNREADABLE: tuple[type[BaseException], ...] = (OSError, ValueError, TypeError, KeyError, NotImplementedError)
KINDS: dict[str, str] = {".csv": "CSV", ".parquet": "Parquet", ".json": "JSON", ".jsonl": "JSON lines"}


def read_file(path: Path, show_progress: bool | None = None) -> Iterator[Record]:
    """Every record of one file or save_to_disk folder, in order; a file that cannot be read at all is one
    UserError naming it (a bad line of JSON lines is a bad row instead, see validate.py)."""
    path = Path(path)
    if is_saved_dataset(path):
        kind = "a datasets.save_to_disk folder"
        records = _read_saved(path)
    elif not path.exists():
        raise UserError(f"{path}: no such file or folder")
    else:
        suffix = path.suffix.lower()
        if suffix not in KINDS:
            raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(FILE_SUFFIXES)} "
                            f"or a datasets.save_to_disk folder")
        kind = f"a {KINDS[suffix]} file"
        records = _read_by_suffix(path, suffix, show_progress)
    try:
        yield from records
    except UNREADABLE as e:
        raise unreadable(path, kind, e) from None


def unreadable(path: Path, kind: str, error: BaseException) -> UserError:
    """One line for a file the libraries refuse: what it should be, their reason, and what to do."""
    reason = (str(error).strip().splitlines() or [""])[0]
    reason = reason.split(f"'{path}': ", 1)[-1].replace(str(path), path.name)  # the path is said already
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return UserError(f"{path}: cannot be read as {kind} ({type(error).__name__}: {reason or 'no details'}); "
                     f"re-download or re-export it, or move it out of {path.parent}")


def _read_by_suffix(path: Path, suffix: str, show_progress: bool | None) -> Iterator[Record]:
    split = split_of(path.name)
    if suffix == ".csv":
        yield from _read_csv(path, split)
    elif suffix == ".parquet":
        yield from _read_parquet(path, split)
    elif suffix == ".json" and _first_char(path) == "[":
        yield from _read_json_array(path, split)
    else:
        yield from _read_json_lines(path, split, show_progress)


def _first_char(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def _read_json_lines(path: Path, split: str | None, show_progress: bool | None) -> Iterator[Record]:
    name = str(path)
    first_bad: Record | None = None
    good = False
    with open(path, "rb") as f, progress(f"reading {path.name}", path.stat().st_size, show_progress) as advance:
        for number, raw in enumerate(f, start=1):
            advance(len(raw))
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                rec = Record(name, number, "line", None, split, f"not valid JSON ({e})")
            else:
                rec = (Record(name, number, "line", data, split) if isinstance(data, dict) else
                       Record(name, number, "line", None, split, f"a JSON object per line, got {type(data).__name__}"))
            good = good or rec.data is not None
            first_bad = first_bad or (rec if rec.data is None else None)
            yield rec
    if first_bad is not None and not good:  # not one object: a damaged or mislabelled file, not a few bad rows
        raise UserError(f"{path}: no line holds a JSON object (line {first_bad.index}: {first_bad.error}); expected JSON "
                        f"lines (one object per line) or a JSON array of objects; re-download or re-export it, or move "
                        f"it out of {path.parent}")


def _read_json_array(path: Path, split: str | None) -> Iterator[Record]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); expected JSON lines or a JSON array of objects; "
                        f"re-download or re-export it, or move it out of {path.parent}") from None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON array of objects or one JSON object per line, got a {type(items).__name__}")
    for number, data in enumerate(items, start=1):
        if isinstance(data, dict):
            yield Record(str(path), number, "item", data, split)
        else:
            yield Record(str(path), number, "item", None, split, f"a JSON object, got {type(data).__name__}")


def _read_csv(path: Path, split: str | None) -> Iterator[Record]:
    import pandas as pd

    # every cell as text: a numeric-looking option ("5") must stay a string; empty cells stay "" (not NaN)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    for number, data in enumerate(frame.to_dict(orient="records"), start=1):
        yield Record(str(path), number, "row", data, split)


def _read_parquet(path: Path, split: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for number, data in enumerate(table.to_pylist(), start=1):
        yield Record(str(path), number, "row", data, split)


def _read_saved(path: Path) -> Iterator[Record]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(split_of(path.name), loaded)]
    for split, ds in parts:
        label = f"{path}[{split}]" if isinstance(loaded, datasets.DatasetDict) else str(path)
        yield from _dataset_records(ds, label, SPLIT_WORDS.get(str(split), split))


def _dataset_records(ds: Any, label: str, split: str | None) -> Iterator[Record]:
    number = 0
    for batch in ds.iter(batch_size=10_000):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            number += 1
            yield Record(label, number, "row", dict(zip(keys, values)), split)


def hub_records(repo: str, split: str, config: str | None = None, revision: str | None = None) -> tuple[Iterator[Record], dict[str, Any]]:
    """Records of one Hub split, plus its fingerprint for the card; a Hub failure becomes an actionable UserError."""
    import datasets

    try:
        ds = datasets.load_dataset(repo, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - network, auth, offline mode: all become one clear message
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot load {repo}{f' ({config})' if config else ''} split {split!r} from the Hugging Face Hub: "
                        f"{type(e).__name__}: {first}; {HUB_HINT}") from None
    label = f"hub:{repo}{f'/{config}' if config else ''}[{split}]"
    info = {"path": label, "sha256": getattr(ds, "_fingerprint", ""), "rows": len(ds), "revision": revision or "main"}
    return _dataset_records(ds, label, SPLIT_WORDS.get(split, split)), info


def describe(source: Any) -> str:
    """A source for messages and the card: 'hub', 'synthetic', a path, or paths joined by ', '."""
    if isinstance(source, (list, tuple)):
        return ", ".join(str(p) for p in source)
    return str(source)


def resolve_local(source: str | Path | list[Path] | tuple[Path, ...], subdir: str) -> list[Path]:
    """The inputs of one kind of data under a local source.

    A file is itself; a save_to_disk folder is itself; a folder with a `subdir` (medmcqa/, arc/, ...) gives the data
    files in that subfolder; any other folder gives its own data files. A list is resolved item by item.
    """
    if isinstance(source, (list, tuple)):
        return [p for item in source for p in resolve_local(item, subdir)]
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"source {str(source)!r} is neither 'hub', 'synthetic' nor an existing file or folder")
    if path.is_file() or is_saved_dataset(path):
        return [path]
    if (path / subdir).is_dir():
        return data_inputs(path / subdir)
    return data_inputs(path)
