"""Prepare one dataset size: read, validate and split every source into one folder.

The `prepare` stage gives each preparation its own folder, $MEDMINDS_HOME/data/<prepare run id>/ (see
stages/prepare.py); without `out_dir` the folder is $MEDMINDS_HOME/data/<size>/.

Output (canonical schemas, see schema.py), all written together or not at all:
    medmcqa_train.parquet        id, question, options[4], answer 0-3, subject, topic, choice_type
    medmcqa_validation.parquet   same columns (the evaluation split: MedMCQA test labels are hidden)
                                 (a source with validation rows only: all of them in order, and no medmcqa_train)
    arc_train.parquet            same columns, subject "arc" (the task expert's SFT data)
    instruct_train.parquet       id, instruction, input, output, source (the domain expert's SFT data)
    card.json                    source, options, input sha256s, the `cop` convention seen, rows read / kept /
                                 dropped and why, rows per subject, label balance, warnings, output sha256s,
                                 rows per output (0: not written)
A second call with the same inputs (sha256) and options rewrites nothing. Every input is read and validated before
anything is created; the result is built in a temporary folder and renamed into place, so a failure at any point
leaves the previous output (or the absence of one) as it was.

    python -c "from medminds_hpc.data.prepare import prepare; prepare('micro', source='synthetic')"
    python -c "from medminds_hpc.data.prepare import prepare; prepare('micro', source='../shared/data')"
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from medminds_hpc import fileio, paths
from medminds_hpc.data import arc, instruct, medmcqa, readers, schema, splits, synthetic, validate
from medminds_hpc.errors import UserError

if TYPE_CHECKING:
    import datasets

CARD = "card.json"
CARD_FORMAT = 3  # 2: all of ARC (every config and split), counted per part; 3: a validation-only source is scored whole
OUTPUTS: dict[str, str] = {
    "medmcqa_train": "medmcqa_train.parquet",
    "medmcqa_validation": "medmcqa_validation.parquet",
    "arc_train": "arc_train.parquet",
    "instruct_train": "instruct_train.parquet",
}
# for a card that does not say where its train file should go (cards say it since format 3)
TRAIN_HINT = "add a MedMCQA train file (e.g. train.json) beside the validation file and prepare again"
# what the Hub holds in full (the synthetic source imitates these sizes for mega)
OFFICIAL_SIZES = {"train": 182_822, "validation": 4_183}


def output_dir(dataset_size: str, out_dir: str | Path | None = None) -> Path:
    """Where a size's files go: `out_dir` when given, else $MEDMINDS_HOME/data/<size>."""
    splits.size_spec(dataset_size)
    return Path(out_dir).absolute() if out_dir is not None else paths.data_dir() / dataset_size


def data_file(dataset_size: str, name: str, out_dir: str | Path | None = None) -> Path:
    """The prepared file `name` (a key of OUTPUTS) of a size; a UserError saying how to make it when absent."""
    if name not in OUTPUTS:
        raise UserError(f"unknown prepared file {name!r}; valid: {', '.join(OUTPUTS)}")
    path = output_dir(dataset_size, out_dir) / OUTPUTS[name]
    if not path.exists():
        card = _read_json(path.parent / CARD)
        if card is not None:
            why = [w for w in card.get("warnings", []) if OUTPUTS[name] in w] or ["it was not produced"]
            raise UserError(f"{path} does not exist: the preparation in {path.parent} did not write it ({'; '.join(why)})")
        raise UserError(f"{path} does not exist; run `medminds prepare --dataset {dataset_size}` "
                        f"(or submit the `prepare` experiment) first")
    return path


def load_prepared(dataset_size: str, name: str, out_dir: str | Path | None = None) -> "datasets.Dataset":
    """A prepared split as a `datasets.Dataset` (what training and evaluation stages read)."""
    import datasets

    return datasets.Dataset.from_parquet(str(data_file(dataset_size, name, out_dir)))


def read_card(dataset_size: str, out_dir: str | Path | None = None) -> dict[str, Any] | None:
    path = output_dir(dataset_size, out_dir) / CARD
    return fileio.read_json(path) if path.exists() else None


def prepared_rows(data_dir: str | Path) -> dict[str, int] | None:
    """Rows per output of a prepared folder (0: not written), from its card.json; None while it holds no readable
    card (not prepared yet). A validation-only source has medmcqa_train 0: stages that train on it are refused."""
    card = _read_json(Path(data_dir) / CARD)
    if card is None:
        return None
    # a card from before format 3 wrote every output, its rows in "splits"
    rows = card.get("rows") or {name: info.get("rows", 0) for name, info in card.get("splits", {}).items()}
    return {name: int(n) for name, n in rows.items()}


def training_hint(data_dir: str | Path) -> str:
    """How to give a preparation MedMCQA training rows: its card's own words (where the train file must go), else
    the general ones."""
    return (_read_json(Path(data_dir) / CARD) or {}).get("training_hint") or TRAIN_HINT


def medmcqa_splits(source: str) -> set[str]:
    """The MedMCQA splits a source holds, told from file names alone (nothing is read), as `prepare` would read
    them: so a submission can refuse training on a validation-only source before its prepare job has run."""
    if source in ("hub", "synthetic"):
        return {"train", "validation"}
    root = Path(source).expanduser().absolute()
    if not root.exists():
        raise UserError(f"source {source!r} is neither 'hub', 'synthetic' nor an existing file or folder")
    found: set[str] = set()
    for path in _local_plan(root, [])["medmcqa"]:
        if readers.is_saved_dataset(path) and (path / "dataset_dict.json").is_file():
            saved = _read_json(path / "dataset_dict.json") or {}
            found |= {readers.SPLIT_WORDS.get(str(s), str(s)) for s in saved.get("splits", [])}
        elif readers.is_saved_dataset(path):
            found |= {s for s in (readers.split_of(path.name),) if s is not None}
        else:
            found.add(readers.split_of(path.name) or "train")  # the loader reads an unnamed file as train
    return found


# inputs ---------------------------------------------------------------------------------------------------
def _local_plan(root: Path, instruct_sources: Sequence[str]) -> dict[str, list[Path]]:
    """Which local inputs feed each output. A single file (or a folder without the medmcqa/ arc/
    medical_instruct/ medquad/ layout) is MedMCQA only."""
    if root.is_file() or readers.is_saved_dataset(root):
        return {"medmcqa": [root], "arc": [], "instruct": []}
    plan = {"medmcqa": readers.resolve_local(root, "medmcqa"),
            "arc": arc.local_inputs(root / "arc")[0] if (root / "arc").is_dir() else [],  # the loader notes copies ignored
            "instruct": []}
    for name in instruct_sources:
        plan["instruct"] += instruct.local_inputs(root, name)[0]  # the loader notes which copy it read
    return plan


def source_fingerprint(source: str, instruct_sources: Sequence[str]) -> str:
    """What a local source holds, cheaply (no file is read): the relative path, size and modification time of every
    file `prepare` would read from it. The prepare stage makes it part of its run's identity, so changed or added
    files make a new run with its own folder, while runs finished on the old files keep theirs. "" for hub and
    synthetic sources."""
    if source in ("hub", "synthetic"):
        return ""
    root = Path(source).expanduser().absolute()
    if not root.exists():
        raise UserError(f"source {source!r} is neither 'hub', 'synthetic' nor an existing file or folder")
    base = root if root.is_dir() else root.parent
    h = hashlib.sha256()
    for part, inputs in sorted(_local_plan(root, instruct.check_sources(list(instruct_sources))).items()):
        for path in inputs:
            for f in [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()):
                st = f.stat()
                h.update(f"{part}\0{f.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _key(options: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    blob = json.dumps({"options": options, "inputs": [(i["path"], i.get("sha256", "")) for i in inputs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# summaries for the card -------------------------------------------------------------------------------------
def _mcq_summary(ds: "datasets.Dataset", asked: int | None) -> dict[str, Any]:
    answers = schema.column(ds, "answer")
    n = len(answers)
    seen = Counter(answers)
    labels = {letter: seen.get(i, 0) for i, letter in enumerate(schema.LETTERS)}
    return {
        "rows": n,
        "asked": asked if asked is not None else "all",
        "labels": labels,
        "label_share": {k: round(v / n, 4) if n else 0.0 for k, v in labels.items()},
        "subjects": splits.counts(schema.column(ds, "subject")),
        "choice_types": splits.counts(schema.column(ds, "choice_type")),
    }


def _take(ds: "datasets.Dataset", indices: list[int]) -> "datasets.Dataset":
    """ds.select(indices) without datasets hashing the index list (~1 s at 200k rows); all rows: ds itself."""
    if indices == list(range(len(ds))):
        return ds
    return ds.select(indices, new_fingerprint=uuid.uuid4().hex)


def _file_info(path: Path, rows: int) -> dict[str, Any]:
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": readers.file_sha256(path)}


def _write_parquet(ds: "datasets.Dataset", path: Path) -> None:
    """One output file (a separate function so a test can make it fail half-way)."""
    import pyarrow.parquet as pq

    pq.write_table(ds.with_format("arrow")[:], path)  # honours select()'s indices, without a progress bar


# the entry point -------------------------------------------------------------------------------------------------
def prepare(
    dataset_size: str,
    source: str = "hub",
    split: str = "stratified",
    seed: int = 0,
    cop_base: int | None = None,
    bad_rows: str = "strict",
    out_dir: str | Path | None = None,
    say: Callable[[str], None] = print,
    *,
    instruct_sources: Sequence[str] = ("mistral-instruct",),
    force: bool = False,
    show_progress: bool | None = None,
    skip_flag: str = validate.SUBMIT_SKIP_FLAG,
) -> dict[str, Any]:
    """Read, validate and split MedMCQA, ARC and medical instruct for one size; return the data card.

    dataset_size: micro | mini | mega (rows per split: see splits.SIZES).
    source: "hub" (on clusters), "synthetic" (offline demo), or a path: a folder laid out like ../shared/data
        (medmcqa/, arc/, medical_instruct/, medquad/) or a single MedMCQA file / folder of MedMCQA files.
    split: "stratified" (seeded, every subject kept) or "first" (first N rows, as the paper).
    cop_base: 0 or 1, MedMCQA's answer convention; needed only when a file is ambiguous (all cop within 1-3).
    bad_rows: "strict" fails listing the invalid rows; "skip" drops and counts them in the card.
    out_dir: the folder receiving the files (default $MEDMINDS_HOME/data/<size>).
    instruct_sources: which instruct datasets feed the domain expert (mistral-instruct, wikidoc, medquad).
    force: rebuild even when the card says the output is up to date (e.g. to refresh Hub data).
    skip_flag: how the command that runs this spells bad_rows=skip (validate.CLI_SKIP_FLAG for `medminds prepare`).
    """
    spec = splits.size_spec(dataset_size)
    method = splits.check_method(split)
    validate.check_policy(bad_rows)
    if cop_base not in (None, 0, 1):
        raise UserError(f"cop_base={cop_base!r} is not a MedMCQA convention; {medmcqa.COP_HINT}")
    names = instruct.check_sources(list(instruct_sources))
    target = output_dir(dataset_size, out_dir)

    kind = source if source in ("hub", "synthetic") else "local"
    plan: dict[str, list[Path]] = {}
    if kind == "local":
        root = Path(source).expanduser().absolute()
        if not root.exists():
            raise UserError(f"source {source!r} is neither 'hub', 'synthetic' nor an existing file or folder")
        source = str(root)
        plan = _local_plan(root, names)
        if not plan["medmcqa"]:
            raise UserError(f"{root}: no MedMCQA data found (expected a medmcqa/ folder, or .jsonl/.json/.csv/.parquet "
                            f"files such as train.json and dev.json)")
    options = {"format": CARD_FORMAT, "dataset_size": dataset_size, "source": source, "split": method, "seed": seed,
               "cop_base": cop_base, "bad_rows": bad_rows, "instruct_sources": names,
               "generator": synthetic.GENERATOR_VERSION if kind == "synthetic" else None}
    try:
        inputs = [readers.fingerprint(p) for kind_paths in plan.values() for p in kind_paths]
    except OSError as e:
        raise UserError(f"{e.filename or source}: cannot be read ({e.strerror or e}); make it readable, or move it out "
                        f"of the source") from None
    key = _key(options, inputs)

    old = _read_json(target / CARD)
    if not force and _up_to_date(target, old, key):
        say(f"{target} is up to date (same inputs and options); nothing rewritten")
        return {**(old or {}), "up_to_date": True}
    # everything is read and validated before anything is created: bad input leaves no trace
    started = time.monotonic()
    card, outputs = _build(spec, kind, source, plan, method, seed, cop_base, bad_rows, names, show_progress, say, skip_flag)
    if kind == "local":
        card["inputs"] = inputs
    else:
        card["inputs"] = [i for part in ("medmcqa", "arc", "instruct") for i in card.get(part, {}).get("inputs", [])]
    if kind == "hub":
        card["notes"].append("Hub data is not downloaded again while the options are unchanged; pass force=True to refresh it")
    card.update({"format": CARD_FORMAT, "key": key, "options": options, "source": source, "dataset_size": dataset_size})
    result = _write(target, outputs, card, force, started)
    if result is not None:  # another process wrote the same preparation meanwhile
        say(f"{target} is up to date (same inputs and options); nothing rewritten")
        return {**result, "up_to_date": True}
    for w in card["warnings"]:
        say(f"warning: {w}")
    say(f"prepared {target}: " + ", ".join(f"{k} {v['rows']:,}" for k, v in card["files"].items()))
    return {**card, "up_to_date": False}


def _up_to_date(target: Path, card: dict[str, Any] | None, key: str) -> bool:
    return card is not None and card.get("key") == key and _outputs_intact(target, card)


def _write(target: Path, outputs: list[tuple[str, "datasets.Dataset"]], card: dict[str, Any], force: bool,
           started: float) -> dict[str, Any] | None:
    """Put the outputs and the card in place under the folder's lock; the card already there (and nothing
    written) when it is up to date by now. A folder that cannot be written is one UserError, and folders this
    call made are removed again."""
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    lock = target.parent / f".{target.name}"

    def fill(tmp: Path) -> None:
        for name, ds in outputs:
            path = tmp / OUTPUTS[name]
            _write_parquet(ds, path)
            card["files"][OUTPUTS[name]] = _file_info(path, len(ds))
        card.update({"created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 3)})
        _write_card(tmp / CARD, card)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with fileio.locked(lock):
            fileio.recover_swap(target)
            old = _read_json(target / CARD)
            if not force and _up_to_date(target, old, card["key"]):
                return old
            fileio.replace_dir(target, fill)
    except OSError as e:
        if made:  # the lock file lies in a folder this call made: nobody else waits on it
            with contextlib.suppress(OSError):
                Path(f"{lock}.lock").unlink()
            for folder in made:  # deepest first; rmdir leaves a folder someone filled meanwhile
                with contextlib.suppress(OSError):
                    folder.rmdir()
        where = f"{e.filename}: " if e.filename else ""
        raise UserError(f"cannot write the prepared data to {target}: {where}{e.strerror or e}; free space or fix the "
                        f"permissions there, or {paths.HOME_HINT}") from None
    return None


def _write_card(path: Path, card: dict[str, Any]) -> None:
    """Inside the temporary folder a plain write is atomic enough: the folder is renamed into place afterwards."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return fileio.read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


def _outputs_intact(target: Path, card: dict[str, Any]) -> bool:
    return all((target / name).is_file() and (target / name).stat().st_size == info.get("bytes")
               for name, info in card.get("files", {}).items())


def _build(spec: splits.SizeSpec, kind: str, source: str, plan: dict[str, list[Path]], method: splits.Method, seed: int,
           cop_base: int | None, bad_rows: str, names: list[str], show_progress: bool | None,
           say: Callable[[str], None], skip_flag: str) -> tuple[dict[str, Any], list[tuple[str, "datasets.Dataset"]]]:
    """Load, validate and select, writing nothing; returns the card (without key, options and files) and the
    outputs to write."""
    warnings: list[str] = []
    notes: list[str] = []
    card: dict[str, Any] = {"warnings": warnings, "notes": notes, "files": {}, "splits": {}}

    # MedMCQA
    say(f"reading MedMCQA from {source}")
    if kind == "synthetic":
        sizes = {s: (n if n is not None else OFFICIAL_SIZES[s]) for s, n in (("train", spec.train), ("validation", spec.validation))}
        mcq = medmcqa.load_medmcqa("synthetic", seed=seed, synthetic_rows=sizes, bad_rows=bad_rows, skip_flag=skip_flag)
    else:
        mcq = medmcqa.load_medmcqa(plan["medmcqa"] if kind == "local" else "hub", cop_base=cop_base,
                                   bad_rows=bad_rows, show_progress=show_progress, skip_flag=skip_flag)
    card["medmcqa"] = mcq.report
    notes += [f"MedMCQA: {n}" for n in mcq.report["notes"]]
    train_pool, val_pool = mcq["train"], mcq["validation"]
    train: "datasets.Dataset | None"
    val_asked = spec.validation
    if len(val_pool) and not len(train_pool):  # scored as given: every validation question, in order
        train, validation, val_asked = None, val_pool, None
        pools = {"validation": val_pool}
        card["training_hint"] = _training_hint(source, plan.get("medmcqa", []), mcq.report["read"].get("train", 0))
        warnings.append(f"MedMCQA: no training rows, so medmcqa_train.parquet was not written (stages that train on "
                        f"MedMCQA need it: {card['training_hint']}); medmcqa_validation.parquet holds all "
                        f"{len(val_pool):,} validation questions, in source order")
    elif len(train_pool) and len(val_pool):
        train_ix = splits.select(schema.column(train_pool, "subject"), spec.train, method, seed)
        val_ix = splits.select(schema.column(val_pool, "subject"), spec.validation, method, seed)
        warnings += splits.shortfall("MedMCQA train", spec.train, len(train_pool))
        warnings += splits.shortfall("MedMCQA validation", spec.validation, len(val_pool))
        train, validation = _take(train_pool, train_ix), _take(val_pool, val_ix)
        pools = {"train": train_pool, "validation": val_pool}
    elif len(train_pool):
        pool = train_pool
        train_ix, val_ix, more = splits.carve(schema.column(pool, "subject"), spec.train, spec.validation, method, seed, "MedMCQA")
        warnings += more
        notes.append(f"MedMCQA: the source has no validation split: train ({len(train_ix):,}) and validation "
                     f"({len(val_ix):,}) were both taken from its train rows ({len(pool):,}), without overlap")
        train, validation = _take(pool, train_ix), _take(pool, val_ix)
        pools = {"train": pool, "validation": pool}
    else:
        raise UserError(f"{source}: no valid MedMCQA train or validation rows (read {mcq.report['read']}, dropped {mcq.report['dropped']})")
    for name, chosen in (("train", train), ("validation", validation)):
        if chosen is None:
            continue
        lost = sorted(set(schema.column(pools[name], "subject")) - set(schema.column(chosen, "subject")))
        if lost:
            warnings.append(f"MedMCQA {name}: no rows of {', '.join(lost)} (too few in the source for one per subject"
                            f"{' in both splits' if pools.get('train') is pools['validation'] else ''}"
                            f"{'; split=first does not stratify' if method == 'first' else ''})")

    # ARC
    arc_ds = None
    if kind == "local" and not plan["arc"]:
        warnings.append(f"ARC: no arc/ folder in {source}: arc_train.parquet not written (the task expert needs it: add "
                        f"an arc/ folder of ARC files to a source folder and prepare again)")
    else:
        say("reading ARC")
        loaded = arc.load_arc(Path(source) / "arc" if kind == "local" else kind, seed=seed, bad_rows=bad_rows,
                              synthetic_rows=spec.arc or arc.PAPER_QUESTIONS, show_progress=show_progress, skip_flag=skip_flag)
        card["arc"] = loaded.report
        notes += [f"ARC: {n}" for n in loaded.report["notes"]]
        pool = loaded["train"]
        warnings += splits.shortfall("ARC", spec.arc, len(pool))
        arc_ds = _take(pool, splits.select([i.split("_")[0] for i in schema.column(pool, "id")], spec.arc, method, seed))

    # medical instruct
    ins_ds = None
    if kind == "local" and not plan["instruct"]:
        warnings.append(f"instruct: no {', '.join(names)} data in {source} (medical_instruct/, medquad/): "
                        f"instruct_train.parquet not written (the domain expert needs it: add its files to a source folder "
                        f"and prepare again)")
    else:
        say("reading medical instruct data")
        loaded = instruct.load_instruct(Path(source) if kind == "local" else kind, sources=names, bad_rows=bad_rows,
                                        seed=seed, synthetic_rows=spec.instruct or 26_400, show_progress=show_progress,
                                        skip_flag=skip_flag)
        card["instruct"] = loaded.report
        notes += [f"instruct: {n}" for n in loaded.report["notes"]]
        pool = loaded["train"]
        warnings += splits.shortfall("instruct", spec.instruct, len(pool))
        ins_ds = _take(pool, splits.select(schema.column(pool, "source"), spec.instruct, method, seed))

    # what will be written, and its summary for the card
    outputs: list[tuple[str, Any]] = [("medmcqa_train", train), ("medmcqa_validation", validation),
                                      ("arc_train", arc_ds), ("instruct_train", ins_ds)]
    outputs = [(name, ds) for name, ds in outputs if ds is not None]
    if train is not None:
        card["splits"]["medmcqa_train"] = _mcq_summary(train, spec.train)
    card["splits"]["medmcqa_validation"] = _mcq_summary(validation, val_asked)
    if arc_ds is not None:
        card["splits"]["arc_train"] = _mcq_summary(arc_ds, spec.arc)
    if ins_ds is not None:
        card["splits"]["instruct_train"] = {"rows": len(ins_ds), "asked": spec.instruct if spec.instruct is not None else "all",
                                            "sources": splits.counts(schema.column(ins_ds, "source"))}
    written = dict(outputs)
    card["rows"] = {name: len(written[name]) if name in written else 0 for name in OUTPUTS}
    return card, outputs


def _training_hint(source: str, medmcqa_inputs: list[Path], train_rows_read: int) -> str:
    """How to give a validation-only preparation training rows: where a train file must go for `prepare` to read it."""
    if train_rows_read:
        return (f"all {train_rows_read:,} rows of its train split were dropped as invalid (see the card's dropped "
                f"counts): fix them and prepare again")
    like = f"in the format of {medmcqa_inputs[0].name}" if medmcqa_inputs else "in the format of the validation file"
    if Path(source).is_file():
        return (f"put a train file (e.g. train.json, {like}) in {Path(source).parent} and give that folder as the source "
                f"instead of the single file")
    folders = sorted({str(p.parent) for p in medmcqa_inputs}) or [source]
    return f"add a train file (e.g. train.json, {like}) to {', '.join(folders)} and prepare again"
