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
from tests.helpers import ROOT, assert_user_error, run_cli, tree_snapshot, without_root_override
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
    # only a validation file: scored whole, in order; nothing to train on
    assert card["splits"]["medmcqa_validation"]["rows"] == 970 and "medmcqa_train" not in card["splits"]
    assert card["rows"]["medmcqa_train"] == 0 and any("no training rows" in w for w in card["warnings"])
    assert card["splits"]["arc_train"]["rows"] == 1168 and card["arc"]["dropped"] == {"fewer than 4 options": 4}
    assert card["splits"]["instruct_train"]["sources"] == {"medquad": 1429, "mistral-instruct": 571}
    assert {i["path"] for i in card["inputs"]} >= {str((SHARED / "medmcqa" / "dev-sample.jsonl").resolve())}
    assert all(len(i["sha256"]) == 64 for i in card["inputs"])
    raw = [json.loads(line)["id"] for line in (SHARED / "medmcqa" / "dev-sample.jsonl").read_text().splitlines()]
    assert prep.load_prepared("micro", "medmcqa_validation")["id"] == raw
    assert prep.prepared_rows(tmp_path / "home" / "data" / "micro")["medmcqa_train"] == 0
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
    with pytest.raises(UserError, match=f"cannot write the prepared data to {out}: disk full \\(simulated\\)"):
        prep.prepare("micro", source=str(src), seed=7, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".micro.tmp")] == []
    # an invalid source fails before touching anything as well
    (src / "medmcqa" / "dev.json").write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match="dev.json: not MedMCQA data"):
        prep.prepare("micro", source=str(src), **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_failed_first_write_leaves_no_folder_and_no_lock(tmp_path, monkeypatch):
    src = _source(tmp_path)
    home = tmp_path / "fresh" / "home"
    monkeypatch.setenv("MEDMINDS_HOME", str(home))

    def failing(ds, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(prep, "_write_parquet", failing)
    with pytest.raises(UserError, match="No space left on device; free space or fix the permissions there"):
        prep.prepare("micro", source=str(src), **QUIET)
    assert not (tmp_path / "fresh").exists()  # home, data/ and the lock file: all gone again


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
    with pytest.raises(UserError, match="arc_train.parquet does not exist: the preparation in .* did not write it "
                                        r"\(ARC: no arc/ folder in .*add an arc/ folder of ARC files"):
        prep.data_file("micro", "arc_train")
    with pytest.raises(UserError, match="mini/medmcqa_train.parquet does not exist; run `medminds prepare --dataset mini`"):
        prep.data_file("mini", "medmcqa_train")


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


# every failure: one line, exit 2, and the home exactly as it was -----------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple]:
    """tree_snapshot without the folder's own mtime: `medminds` checks that a home is writable by making and
    removing a probe file in it."""
    return tree_snapshot(folder, root_mtime=False)


def _lived_in(home: Path) -> Path:
    """A home that already holds a preparation and a run, as a user's would."""
    (home / "data" / "prepare-micro-0000aaaa").mkdir(parents=True)
    (home / "data" / "prepare-micro-0000aaaa" / "card.json").write_text("{}\n")
    (home / "data" / ".prepare-micro-0000aaaa.lock").touch()
    (home / "runs" / "prepare-micro-0000aaaa").mkdir(parents=True)
    return home


def _break_source(src: Path, case: str) -> str:
    """Damage a good source (_source) in one way; returns what its one-line error must say."""
    med = src / "medmcqa"
    if case == "corrupt parquet":
        (med / "more_train.parquet").write_bytes(b"PAR1 cut short")
        return f"{med / 'more_train.parquet'}: cannot be read as a Parquet file"
    if case == "empty CSV":
        (med / "more_train.csv").write_text("")
        return f"{med / 'more_train.csv'}: cannot be read as a CSV file"
    if case == "unclosed CSV quote":
        (med / "more_train.csv").write_text('id,question\n"q1,never closed\n')
        return f"{med / 'more_train.csv'}: cannot be read as a CSV file (ParserError"
    if case == "truncated JSON array":
        (med / "train.json").write_text('[{"id": "q1", "question": "Which?"},')
        return f"{med / 'train.json'}: not valid JSON (line 1"
    if case == "binary JSON":
        (med / "train.json").write_bytes(bytes(range(128, 256)) * 8)
        return f"{med / 'train.json'}: cannot be read as a JSON file (UnicodeDecodeError"
    if case == "JSON lines without an object":
        (med / "train.json").write_text("PK\x03\x04 zipped, not JSON\n[1, 2]\n")
        return f"{med / 'train.json'}: no line holds a JSON object (line 1: not valid JSON"
    if case == "wrong columns":
        (med / "train.json").unlink()
        (med / "train.csv").write_text("text,label\n" + "".join(f"question {i},{i % 4}\n" for i in range(300)))
        return f"{med / 'train.csv'}: not MedMCQA data"
    if case == "bad rows":
        rows = (med / "dev.json").read_text().splitlines()
        rows[2] = json.dumps({**json.loads(rows[2]), "cop": 9})
        (med / "dev.json").write_text("\n".join(rows) + "\n")
        return f"{med / 'dev.json'} line 3"
    if case == "bad ARC label":
        (src / "arc").mkdir()
        items = [{"id": f"a{i}", "question": "Which?", "choices": {"text": list("wxyz"), "label": list("ABCD")}, "answerKey": "B"}
                 for i in range(5)]
        items[1]["answerKey"] = "E"
        (src / "arc" / "arc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
        return f"{src / 'arc' / 'arc.jsonl'} line 2 (id 'a1'): answerKey 'E' is not one of the row's labels A, B, C, D"
    if case == "instruct with wrong columns":
        (src / "medical_instruct").mkdir()
        (src / "medical_instruct" / "short.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(9)))
        return f"{src / 'medical_instruct' / 'short.jsonl'}: not medical instruct data"
    if case == "corrupt save_to_disk folder":
        (src / "medical_instruct" / "saved").mkdir(parents=True)
        (src / "medical_instruct" / "saved" / "state.json").write_text("{cut")
        return f"{src / 'medical_instruct' / 'saved'}: cannot be read as a datasets.save_to_disk folder"
    raise AssertionError(case)


BAD_FILES = ["corrupt parquet", "empty CSV", "unclosed CSV quote", "truncated JSON array", "binary JSON",
             "JSON lines without an object", "wrong columns", "instruct with wrong columns", "corrupt save_to_disk folder"]
BAD_ROWS = ["bad rows", "bad ARC label"]  # under bad_rows=skip these are dropped and counted instead


@pytest.mark.parametrize("case,policy", [(c, "strict") for c in BAD_FILES + BAD_ROWS] + [(c, "skip") for c in BAD_FILES])
def test_bad_input_is_one_line_and_leaves_the_home_as_it_was(tmp_path, case, policy):
    home = _lived_in(tmp_path / "home")
    src = _source(tmp_path)
    needle = _break_source(src, case)
    before = snapshot(home)
    with pytest.raises(UserError) as e:
        prep.prepare("micro", source=str(src), bad_rows=policy, instruct_sources=("mistral-instruct",), **QUIET)
    message = str(e.value)
    assert "\n" not in message and needle in message, message
    assert snapshot(home) == before


def test_wrong_columns_name_the_columns_not_the_rows(tmp_path):
    src = _source(tmp_path)
    _break_source(src, "wrong columns")
    with pytest.raises(UserError) as e:
        prep.prepare("micro", source=str(src), **QUIET)
    message = str(e.value)
    assert message == (f"{src / 'medmcqa' / 'train.csv'}: not MedMCQA data: no row has id, question, opa, opb, opc, opd, "
                       "cop, subject_name, choice_type; its columns are text, label; expected id, question, opa, opb, opc, "
                       "opd, cop, subject_name, choice_type (the original release or Hugging Face layout); or id, question, "
                       "options, answer, subject, choice_type (the canonical layout `prepare` writes)")


PREPARE = ("prepare", "-d", "micro")


@pytest.mark.parametrize("case", ["corrupt parquet", "wrong columns", "bad rows"])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    src = _source(tmp_path)
    needle = _break_source(src, case)
    fresh, lived_in = tmp_path / "fresh-home", _lived_in(tmp_path / "home")
    for home in (fresh, lived_in):
        before = snapshot(home)
        proc = run_cli(*PREPARE, "--source", str(src), env={"MEDMINDS_HOME": str(home)})
        assert_user_error(proc, needle)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert snapshot(home) == before
        if case == "bad rows":  # the flag of the command that ran
            assert "fix them, or pass --bad-rows skip to drop" in proc.stderr and "-o bad_rows" not in proc.stderr


def _home_case(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """(MEDMINDS_HOME, the folder to snapshot, what the error says) for one unusable home."""
    if case == "a file":
        home = tmp_path / "home-file"
        home.write_text("not a folder")
        return home, home, f"MEDMINDS_HOME={home} is not a directory"
    if case == "under a file":
        (tmp_path / "plain-file").write_text("not a folder")
        return tmp_path / "plain-file" / "home", tmp_path / "plain-file", "cannot be created: "
    home = _lived_in(tmp_path / "home")
    if case == "read-only":
        home.chmod(0o555)
        return home, home, f"MEDMINDS_HOME={home} is not writable"
    if case == "data is a file":
        (tmp_path / "home2").mkdir()
        (tmp_path / "home2" / "data").write_text("not a folder")
        return tmp_path / "home2", tmp_path / "home2", "cannot write the prepared data to"
    (home / "data").chmod(0o555)  # "read-only data": the home passes its check, the data folder refuses the lock file
    return home, home, f"cannot write the prepared data to {home / 'data'}/prepare-micro-"


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "read-only data", "data is a file"])
def test_cli_unusable_home_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    src = _source(tmp_path)
    home, watched, needle = _home_case(tmp_path, case)
    before = snapshot(watched)
    # root writes through permissions: the child drops that power, so read-only really is
    as_user = {"preexec_fn": without_root_override} if os.geteuid() == 0 and "read-only" in case else {}
    try:
        proc = run_cli(*PREPARE, "--source", str(src), env={"MEDMINDS_HOME": str(home)}, **as_user)
        after = snapshot(watched)
    finally:
        for folder in (home, home / "data"):
            if folder.is_dir():
                folder.chmod(0o755)
    assert_user_error(proc, needle)
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert after == before


def test_the_bad_rows_hint_of_the_stage_names_the_submit_option(medminds_home, tmp_path):
    from medminds_hpc import runs
    from medminds_hpc.context import StageContext
    from medminds_hpc.stages.prepare import Config, run

    src = _source(tmp_path)
    _break_source(src, "bad rows")
    ctx = StageContext(run=runs.create("prepare-micro-00000001", {"experiment": "prepare", "dataset": "micro"}))
    with pytest.raises(UserError) as e:
        run(ctx, Config(source=str(src)))
    assert "fix them, or pass -o bad_rows=skip (-o prepare.bad_rows=skip when submitting" in str(e.value)
    assert "--bad-rows" not in str(e.value)


# a source with validation rows only --------------------------------------------------------------------------------
def _validation_only(tmp_path: Path, n: int) -> Path:
    from medminds_hpc.data import synthetic

    folder = tmp_path / "val-only" / "medmcqa"
    folder.mkdir(parents=True)
    (folder / "dev.json").write_text("".join(json.dumps(release_row(r)) + "\n" for r in synthetic.medmcqa_rows(n, split="validation")))
    return folder.parent


def test_a_validation_only_source_is_scored_whole_and_has_no_training_rows(tmp_path):
    src = _validation_only(tmp_path, 700)  # more than micro's 500: all of them all the same
    card = prep.prepare("micro", source=str(src), **QUIET)
    out = tmp_path / "home" / "data" / "micro"
    raw = [json.loads(line)["id"] for line in (src / "medmcqa" / "dev.json").read_text().splitlines()]
    assert prep.load_prepared("micro", "medmcqa_validation")["id"] == raw  # every question, in the file's order
    assert not (out / "medmcqa_train.parquet").exists() and "medmcqa_train.parquet" not in card["files"]
    assert card["rows"] == {"medmcqa_train": 0, "medmcqa_validation": 700, "arc_train": 0, "instruct_train": 0}
    assert card["splits"]["medmcqa_validation"]["asked"] == "all"
    assert prep.prepared_rows(out)["medmcqa_train"] == 0
    hint = f"add a train file (e.g. train.json, in the format of dev.json) to {src / 'medmcqa'} and prepare again"
    assert prep.training_hint(out) == hint
    with pytest.raises(UserError, match=f"medmcqa_train.parquet does not exist: the preparation in {out} did not write it"):
        prep.data_file("micro", "medmcqa_train")
    assert prep.medmcqa_splits(str(src)) == {"validation"}
    # a single validation file: its folder must become the source
    single = prep.prepare("micro", source=str(src / "medmcqa" / "dev.json"), out_dir=tmp_path / "single", **QUIET)
    assert single["rows"]["medmcqa_validation"] == 700
    assert single["training_hint"] == (f"put a train file (e.g. train.json, in the format of dev.json) in {src / 'medmcqa'} "
                                       f"and give that folder as the source instead of the single file")


def test_training_rows_of_other_preparations(tmp_path):
    assert prep.prepared_rows(tmp_path / "nothing-yet") is None  # not prepared yet
    assert prep.training_hint(tmp_path / "nothing-yet") == prep.TRAIN_HINT
    src = _source(tmp_path, 60, 20)
    prep.prepare("micro", source=str(src), **QUIET)
    out = tmp_path / "home" / "data" / "micro"
    assert prep.prepared_rows(out) == {"medmcqa_train": 60, "medmcqa_validation": 20, "arc_train": 0, "instruct_train": 0}
    assert prep.medmcqa_splits(str(src)) == {"train", "validation"} and prep.medmcqa_splits("hub") == {"train", "validation"}
    old = tmp_path / "old"  # a card written before the row counts were recorded
    old.mkdir()
    (old / "card.json").write_text(json.dumps({"splits": {"medmcqa_train": {"rows": 2000}}}))
    assert prep.prepared_rows(old) == {"medmcqa_train": 2000}
