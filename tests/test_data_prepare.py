"""prepare(): outputs and card, the real ../shared/data layout, idempotence, atomicity, and the `prepare` stage."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medminds_hpc.data import prepare as prep
from medminds_hpc.data.card import card_table
from medminds_hpc.data.medmcqa import release_row
from medminds_hpc.errors import UserError
from tests.helpers import ROOT
from tests.helpers import SHARED_DATA as SHARED

needs_shared = pytest.mark.skipif(not (SHARED / "medmcqa").exists(), reason=f"real data absent ({SHARED}); it ships with CI's ../shared/data")
QUIET = {"say": lambda message: None}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMINDS_HOME", str(tmp_path / "home"))


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_synthetic_micro_outputs_and_card(tmp_path):
    card = prep.prepare("micro", source="synthetic", **QUIET)
    out = tmp_path / "home" / "data" / "micro"
    assert sorted(p.name for p in out.iterdir()) == ["arc_train.parquet", "card.json", "instruct_train.parquet",
                                                     "medmcqa_train.parquet", "medmcqa_validation.parquet"]
    assert json.loads((out / "card.json").read_text())["key"] == card["key"]
    train = prep.load_prepared("micro", "medmcqa_train")
    assert len(train) == 2000 and train.column_names == ["id", "question", "options", "answer", "subject", "topic", "choice_type"]
    assert prep.load_prepared("micro", "instruct_train").column_names == ["id", "instruction", "input", "output", "source"]
    assert card["splits"]["medmcqa_train"]["label_share"] == {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    assert len(card["splits"]["medmcqa_train"]["subjects"]) == 21
    assert card["files"]["medmcqa_train.parquet"]["rows"] == 2000 and len(card["files"]["medmcqa_train.parquet"]["sha256"]) == 64
    assert card["options"]["split"] == "stratified" and card["up_to_date"] is False


@needs_shared
def test_real_data_folder(tmp_path):
    card = prep.prepare("micro", source=str(SHARED), instruct_sources=("mistral-instruct", "medquad"), **QUIET)
    conv = card["medmcqa"]["conventions"]
    assert list(conv.values())[0].startswith("1-based")
    assert card["splits"]["medmcqa_train"]["rows"] + card["splits"]["medmcqa_validation"]["rows"] == 970
    assert any("no train split" in n for n in card["notes"]) and any("the source has 970" in w for w in card["warnings"])
    assert card["splits"]["arc_train"]["rows"] == 1168 and card["arc"]["dropped"] == {"fewer than 4 options": 4}
    assert card["splits"]["instruct_train"]["sources"] == {"medquad": 1429, "mistral-instruct": 571}
    assert {i["path"] for i in card["inputs"]} >= {str((SHARED / "medmcqa" / "dev-sample.jsonl").resolve())}
    assert all(len(i["sha256"]) == 64 for i in card["inputs"])
    train = prep.load_prepared("micro", "medmcqa_train")
    val = prep.load_prepared("micro", "medmcqa_validation")
    assert not set(train["id"]) & set(val["id"])
    # rendering works and mentions the convention
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(card_table(card))
    text = console.export_text()
    assert "medmcqa_train.parquet" in text and "1-based" in text


def _source(tmp_path: Path, n_train: int = 60, n_val: int = 20) -> Path:
    """A small local source in the original release format (train.json + dev.json)."""
    from medminds_hpc.data import synthetic

    folder = tmp_path / "src" / "medmcqa"
    folder.mkdir(parents=True)
    for name, split, n in (("train.json", "train", n_train), ("dev.json", "validation", n_val)):
        (folder / name).write_text("".join(json.dumps(release_row(r)) + "\n" for r in synthetic.medmcqa_rows(n, split=split)))
    return folder.parent


def test_first_split_is_the_first_rows(tmp_path):
    src = _source(tmp_path, 2500, 600)
    prep.prepare("micro", source=str(src), split="first", **QUIET)
    raw = [json.loads(line) for line in (src / "medmcqa" / "train.json").read_text().splitlines()]
    assert prep.load_prepared("micro", "medmcqa_train")["id"] == [r["id"] for r in raw[:2000]]
    assert len(prep.load_prepared("micro", "medmcqa_validation")) == 500


def test_stratified_split_keeps_every_subject(tmp_path):
    src = _source(tmp_path, 2500, 600)
    prep.prepare("micro", source=str(src), **QUIET)
    raw = [json.loads(line) for line in (src / "medmcqa" / "train.json").read_text().splitlines()]
    train = prep.load_prepared("micro", "medmcqa_train")
    assert len(train) == 2000 and set(train["subject"]) == {r["subject_name"] for r in raw}


def test_idempotent_nothing_rewritten(tmp_path):
    src = _source(tmp_path)
    first = prep.prepare("micro", source=str(src), **QUIET)
    out = tmp_path / "home" / "data" / "micro"
    before = mtimes(out)
    again = prep.prepare("micro", source=str(src), **QUIET)
    assert again["up_to_date"] is True and again["key"] == first["key"] and mtimes(out) == before
    # another option or a changed input rebuilds
    assert prep.prepare("micro", source=str(src), seed=1, **QUIET)["up_to_date"] is False
    with open(src / "medmcqa" / "dev.json", "a") as f:
        f.write(json.dumps(release_row({"id": "extra", "question": "q?", "options": ["a", "b", "c", "d"], "answer": 3,
                                        "subject": "Dental", "topic": "", "choice_type": "single"})) + "\n")
    rebuilt = prep.prepare("micro", source=str(src), seed=1, **QUIET)
    assert rebuilt["up_to_date"] is False and rebuilt["splits"]["medmcqa_validation"]["rows"] == 21


def test_failure_midway_leaves_previous_output(tmp_path, monkeypatch):
    src = _source(tmp_path)
    prep.prepare("micro", source=str(src), **QUIET)
    out = tmp_path / "home" / "data" / "micro"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = prep._write_parquet
    calls = []

    def failing(ds, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_write(ds, path)

    monkeypatch.setattr(prep, "_write_parquet", failing)
    with pytest.raises(OSError, match="simulated"):
        prep.prepare("micro", source=str(src), seed=7, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".micro.tmp")] == []
    # an invalid source fails before touching anything as well
    (src / "medmcqa" / "dev.json").write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match="dev.json line 1"):
        prep.prepare("micro", source=str(src), **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    src = _source(tmp_path)
    prep.prepare("micro", source=str(src), **QUIET)
    out = tmp_path / "home" / "data" / "micro"
    os.rename(out, out.parent / ".micro.old-123-456")  # as if killed right after moving the old output aside
    assert prep.prepare("micro", source=str(src), **QUIET)["up_to_date"] is True
    assert (out / "card.json").exists() and not list(out.parent.glob(".micro.old-*"))


def test_single_file_source_is_medmcqa_only(tmp_path):
    src = _source(tmp_path)
    card = prep.prepare("micro", source=str(src / "medmcqa" / "train.json"), **QUIET)
    assert set(card["files"]) == {"medmcqa_train.parquet", "medmcqa_validation.parquet"}
    assert any("arc_train.parquet not written" in w for w in card["warnings"])
    with pytest.raises(UserError, match="arc_train.parquet does not exist.*medminds prepare --dataset micro"):
        prep.data_file("micro", "arc_train")


def test_bad_arguments():
    with pytest.raises(UserError, match="micro, mini, mega"):
        prep.prepare("tiny", source="synthetic", **QUIET)
    with pytest.raises(UserError, match="neither 'hub', 'synthetic'"):
        prep.prepare("micro", source="/nonexistent/data", **QUIET)
    with pytest.raises(UserError, match="cop_base=2"):
        prep.prepare("micro", source="synthetic", cop_base=2, **QUIET)
    with pytest.raises(UserError, match="strict .* or skip"):
        prep.prepare("micro", source="synthetic", bad_rows="ignore", **QUIET)


def test_stage_run_writes_card_into_metrics(medminds_home):
    from medminds_hpc import runs
    from medminds_hpc.context import StageContext
    from medminds_hpc.stages.prepare import Config, run

    ctx = StageContext(run=runs.create("prepare-micro-00000001", {"experiment": "prepare", "dataset": "micro"}))
    result = run(ctx, Config(source="synthetic"))
    assert result["rows_medmcqa_train"] == 2000 and result["up_to_date"] is False
    assert json.loads((ctx.run_dir / "card.json").read_text())["splits"]["medmcqa_validation"]["rows"] == 500
    assert ctx.run.metrics() is None  # metrics.json holds evaluation results only
    assert (medminds_home / "data" / "prepare-micro-00000001" / "medmcqa_train.parquet").exists()
    assert run(ctx, Config(source="synthetic"))["up_to_date"] is True


def test_stage_module_import_is_light():
    code = ("import sys, medminds_hpc.stages.prepare, medminds_hpc.data.prepare, medminds_hpc.data.prompts; "
            "heavy = [m for m in ('datasets', 'pyarrow', 'pandas', 'torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_each_preparation_has_its_own_folder_and_a_stage_reads_the_one_it_needs(medminds_home):
    from medminds_hpc import runs, submit
    from medminds_hpc.context import StageContext
    from tests.helpers import quiet, submit_options

    ids = []
    for seed in (0, 1):
        (p,) = submit.submit("prepare", submit_options(executor="debug", overrides=["source=synthetic", f"seed={seed}"]), say=quiet)
        ids.append(p.run_id)
    folders = [medminds_home / "data" / i for i in ids]
    assert ids[0] != ids[1] and all((f / "card.json").exists() for f in folders)
    assert [prep.read_card("micro", f)["options"]["seed"] for f in folders] == [0, 1]  # the second did not overwrite the first
    run = runs.create("stage-micro-00000001", {"experiment": "stage", "dataset": "micro", "needs": {"prepare": ids[0]}})
    assert StageContext(run=run).data_dir() == folders[0]
    assert StageContext(run=runs.create("stage-micro-00000002", {"experiment": "stage", "dataset": "micro"})).data_dir() is None


# a local source's identity is its content, checked when the run is planned ----------------------------------------
def test_missing_local_source_is_refused_at_submit(medminds_home, tmp_path):
    from medminds_hpc import submit
    from tests.helpers import quiet, submit_options

    missing = tmp_path / "no-such-folder"
    with pytest.raises(UserError, match=f"experiment prepare: source: {missing} is neither 'hub', 'synthetic' nor an existing"):
        submit.submit("expert-task", submit_options(model="tiny", wait=False, overrides=[f"prepare.source={missing}"]), say=quiet)
    assert not (medminds_home / "runs").exists() and not (medminds_home / "data").exists()


def planned_ids(source: Path) -> dict[str, str]:
    from medminds_hpc import submit
    from tests.helpers import submit_options

    return {p.name: p.run_id for p in submit.plan("expert-task", submit_options(model="tiny", overrides=[f"prepare.source={source}"]))}


@needs_shared
def test_changed_local_source_is_a_new_prepare_run_and_medminds_prepare_agrees(medminds_home, tmp_path):
    from medminds_hpc import config
    from medminds_hpc.stages import prepare as stage

    src = tmp_path / "src"
    (src / "medmcqa").mkdir(parents=True)
    (src / "medmcqa" / "dev.jsonl").write_bytes((SHARED / "medmcqa" / "dev-sample.jsonl").read_bytes())

    def cli_id() -> str:  # the folder `medminds prepare --source src` fills
        return stage.run_id_for("micro", config.build(stage.Config, {"source": str(src)}, "medminds prepare"))

    first = planned_ids(src)
    assert first["prepare"] == cli_id()
    (src / "arc").mkdir()
    (src / "arc" / "arc.jsonl").write_bytes((SHARED / "arc" / "arc_challenge_test.jsonl").read_bytes())
    added = planned_ids(src)
    assert added["prepare"] != first["prepare"] and added["expert-task"] != first["expert-task"]
    assert added["prepare"] == cli_id()
    (src / "medmcqa" / "dev.jsonl").write_bytes((SHARED / "medmcqa" / "dev-sample.jsonl").read_bytes()[:-200])
    replaced = planned_ids(src)
    assert replaced["prepare"] not in (first["prepare"], added["prepare"]) and replaced["prepare"] == cli_id()
    (src / "NOTES.md").write_text("not an input")
    assert planned_ids(src) == replaced  # only what prepare reads counts


def test_a_job_whose_source_changed_after_planning_stops_and_says_so(tmp_path):
    from medminds_hpc import config
    from medminds_hpc.stages.prepare import Config

    row = {"id": "q1", "question": "Which?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1, "subject_name": "Anatomy"}
    src = tmp_path / "medmcqa.jsonl"
    src.write_text(json.dumps(row) + "\n")
    planned = dataclasses.asdict(Config(source=str(src)))
    assert len(planned["source_fingerprint"]) == 16 and Config(source="synthetic").source_fingerprint == ""
    assert config.build(Config, planned, "run.json params").source_fingerprint == planned["source_fingerprint"]
    src.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "q2"}) + "\n")  # replaced: same name, new content
    with pytest.raises(UserError, match=f"source: the files in {src} changed after this run was planned.*submit again"):
        config.build(Config, planned, "run.json params")
