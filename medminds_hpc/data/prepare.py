"""Prepare one dataset size: read, validate and split every source into one folder.

The `prepare` stage gives each preparation its own folder, $MEDMINDS_HOME/data/<prepare run id>/ (see
stages/prepare.py); without `out_dir` the folder is $MEDMINDS_HOME/data/<size>/.

Output (canonical schemas, see schema.py), all written together or not at all:
    medmcqa_train.parquet        id, question, options[4], answer 0-3, subject, topic, choice_type
    medmcqa_validation.parquet   same columns (the evaluation split: MedMCQA test labels are hidden)
    arc_train.parquet            same columns, subject "arc" (the task expert's SFT data)
    instruct_train.parquet       id, instruction, input, output, source (the domain expert's SFT data)
    card.json                    source, options, input sha256s, the `cop` convention seen, rows read / kept /
                                 dropped and why, rows per subject, label balance, warnings, output sha256s
A second call with the same inputs (sha256) and options rewrites nothing. A new result is built in a temporary
folder and renamed into place, so a failure at any point leaves the previous output as it was.

    python -c "from medminds_hpc.data.prepare import prepare; prepare('micro', source='synthetic')"
    python -c "from medminds_hpc.data.prepare import prepare; prepare('micro', source='../shared/data')"
"""

from __future__ import annotations

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
CARD_FORMAT = 2  # 2: all of ARC (every config and split), counted per part
OUTPUTS: dict[str, str] = {
    "medmcqa_train": "medmcqa_train.parquet",
    "medmcqa_validation": "medmcqa_validation.parquet",
    "arc_train": "arc_train.parquet",
    "instruct_train": "instruct_train.parquet",
}
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
        card = output_dir(dataset_size, out_dir) / CARD
        why = f" ({card} says: {'; '.join(fileio.read_json(card).get('warnings', [])) or 'it was not produced'})" if card.exists() else ""
        raise UserError(f"{path} does not exist{why}; run `medminds prepare --dataset {dataset_size}` "
                        f"(or submit the `prepare` experiment) first")
    return path


def load_prepared(dataset_size: str, name: str, out_dir: str | Path | None = None) -> "datasets.Dataset":
    """A prepared split as a `datasets.Dataset` (what training and evaluation stages read)."""
    import datasets

    return datasets.Dataset.from_parquet(str(data_file(dataset_size, name, out_dir)))


def read_card(dataset_size: str, out_dir: str | Path | None = None) -> dict[str, Any] | None:
    path = output_dir(dataset_size, out_dir) / CARD
    return fileio.read_json(path) if path.exists() else None


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
    inputs = [readers.fingerprint(p) for kind_paths in plan.values() for p in kind_paths]
    key = _key(options, inputs)

    target.parent.mkdir(parents=True, exist_ok=True)
    with fileio.locked(target.parent / f".{target.name}"):
        fileio.recover_swap(target)
        old = _read_json(target / CARD)
        if not force and old is not None and old.get("key") == key and _outputs_intact(target, old):
            say(f"{target} is up to date (same inputs and options); nothing rewritten")
            return {**old, "up_to_date": True}
        started = time.monotonic()
        built: dict[str, Any] = {}

        def build(tmp: Path) -> None:
            card = built["card"] = _build(spec, kind, source, plan, method, seed, cop_base, bad_rows, names, show_progress, say, tmp)
            if kind == "local":
                card["inputs"] = inputs
            else:
                card["inputs"] = [i for part in ("medmcqa", "arc", "instruct") for i in card.get(part, {}).get("inputs", [])]
            if kind == "hub":
                card["notes"].append("Hub data is not downloaded again while the options are unchanged; pass force=True to refresh it")
            card.update({"format": CARD_FORMAT, "key": key, "options": options, "source": source, "dataset_size": dataset_size,
                         "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 3)})
            _write_card(tmp / CARD, card)

        fileio.replace_dir(target, build)
        card = built["card"]
    for w in card["warnings"]:
        say(f"warning: {w}")
    say(f"prepared {target}: " + ", ".join(f"{k} {v['rows']:,}" for k, v in card["files"].items()))
    return {**card, "up_to_date": False}


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
           say: Callable[[str], None], tmp: Path) -> dict[str, Any]:
    """Load, select and write the parquet files into `tmp`; returns the card (without key and options)."""
    warnings: list[str] = []
    notes: list[str] = []
    card: dict[str, Any] = {"warnings": warnings, "notes": notes, "files": {}, "splits": {}}

    # MedMCQA
    say(f"reading MedMCQA from {source}")
    if kind == "synthetic":
        sizes = {s: (n if n is not None else OFFICIAL_SIZES[s]) for s, n in (("train", spec.train), ("validation", spec.validation))}
        mcq = medmcqa.load_medmcqa("synthetic", seed=seed, synthetic_rows=sizes, bad_rows=bad_rows)
    else:
        mcq = medmcqa.load_medmcqa(plan["medmcqa"] if kind == "local" else "hub", cop_base=cop_base,
                                   bad_rows=bad_rows, show_progress=show_progress)
    card["medmcqa"] = mcq.report
    notes += [f"MedMCQA: {n}" for n in mcq.report["notes"]]
    train_pool, val_pool = mcq["train"], mcq["validation"]
    if len(train_pool) and len(val_pool):
        train_ix = splits.select(schema.column(train_pool, "subject"), spec.train, method, seed)
        val_ix = splits.select(schema.column(val_pool, "subject"), spec.validation, method, seed)
        warnings += splits.shortfall("MedMCQA train", spec.train, len(train_pool))
        warnings += splits.shortfall("MedMCQA validation", spec.validation, len(val_pool))
        train, validation = _take(train_pool, train_ix), _take(val_pool, val_ix)
        pools = {"train": train_pool, "validation": val_pool}
    elif len(train_pool) or len(val_pool):
        have, missing = ("train", "validation") if len(train_pool) else ("validation", "train")
        pool = train_pool if len(train_pool) else val_pool
        train_ix, val_ix, more = splits.carve(schema.column(pool, "subject"), spec.train, spec.validation, method, seed, "MedMCQA")
        warnings += more
        notes.append(f"MedMCQA: the source has no {missing} split: train ({len(train_ix):,}) and validation "
                     f"({len(val_ix):,}) were both taken from its {have} rows ({len(pool):,}), without overlap")
        train, validation = _take(pool, train_ix), _take(pool, val_ix)
        pools = {"train": pool, "validation": pool}
    else:
        raise UserError(f"{source}: no valid MedMCQA train or validation rows (read {mcq.report['read']}, dropped {mcq.report['dropped']})")
    for name, chosen in (("train", train), ("validation", validation)):
        lost = sorted(set(schema.column(pools[name], "subject")) - set(schema.column(chosen, "subject")))
        if lost:
            warnings.append(f"MedMCQA {name}: no rows of {', '.join(lost)} (too few in the source for one per subject"
                            f"{' in both splits' if pools['train'] is pools['validation'] else ''}"
                            f"{'; split=first does not stratify' if method == 'first' else ''})")

    # ARC
    arc_ds = None
    if kind == "local" and not plan["arc"]:
        warnings.append(f"ARC: no arc/ folder in {source}: arc_train.parquet not written (the task expert needs it)")
    else:
        say("reading ARC")
        loaded = arc.load_arc(Path(source) / "arc" if kind == "local" else kind, seed=seed, bad_rows=bad_rows,
                              synthetic_rows=spec.arc or arc.PAPER_QUESTIONS, show_progress=show_progress)
        card["arc"] = loaded.report
        notes += [f"ARC: {n}" for n in loaded.report["notes"]]
        pool = loaded["train"]
        warnings += splits.shortfall("ARC", spec.arc, len(pool))
        arc_ds = _take(pool, splits.select([i.split("_")[0] for i in schema.column(pool, "id")], spec.arc, method, seed))

    # medical instruct
    ins_ds = None
    if kind == "local" and not plan["instruct"]:
        warnings.append(f"instruct: no {', '.join(names)} data in {source} (medical_instruct/, medquad/): "
                        f"instruct_train.parquet not written (the domain expert needs it)")
    else:
        say("reading medical instruct data")
        loaded = instruct.load_instruct(Path(source) if kind == "local" else kind, sources=names, bad_rows=bad_rows,
                                        seed=seed, synthetic_rows=spec.instruct or 26_400, show_progress=show_progress)
        card["instruct"] = loaded.report
        notes += [f"instruct: {n}" for n in loaded.report["notes"]]
        pool = loaded["train"]
        warnings += splits.shortfall("instruct", spec.instruct, len(pool))
        ins_ds = _take(pool, splits.select(schema.column(pool, "source"), spec.instruct, method, seed))

    # the parquet files, into the temporary folder
    outputs: list[tuple[str, Any]] = [("medmcqa_train", train), ("medmcqa_validation", validation)]
    if arc_ds is not None:
        outputs.append(("arc_train", arc_ds))
    if ins_ds is not None:
        outputs.append(("instruct_train", ins_ds))
    card["splits"] = {"medmcqa_train": _mcq_summary(train, spec.train), "medmcqa_validation": _mcq_summary(validation, spec.validation)}
    if arc_ds is not None:
        card["splits"]["arc_train"] = _mcq_summary(arc_ds, spec.arc)
    if ins_ds is not None:
        card["splits"]["instruct_train"] = {"rows": len(ins_ds), "asked": spec.instruct if spec.instruct is not None else "all",
                                            "sources": splits.counts(schema.column(ins_ds, "source"))}
    for name, ds in outputs:
        path = tmp / OUTPUTS[name]
        _write_parquet(ds, path)
        card["files"][OUTPUTS[name]] = _file_info(path, len(ds))
    return card
