"""`medminds report` on real run directories written by the stages' own functions: which runs it reports and
which it skips, the numbers in each table (checked by hand), the paper beside ours, figures, determinism, and bad
input (one line, exit 2, nothing written)."""

import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from medminds_hpc import figures, paper, paths, report, runs
from medminds_hpc.errors import UserError
from tests.helpers import ROOT, assert_user_error, finished_run, run_cli, tree_snapshot, without_root_override

TABLES = "md,csv,tex"


def rows_of(out: Path, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / f"{name}.csv").read_text())))


def run_rows(out: Path) -> dict[str, dict]:
    return {r["row"]: r for r in rows_of(out, "summary") if r["kind"] == "run"}


def answers(n_right: int, n: int) -> tuple[list[int], list[int]]:
    """(predicted, gold) with the first n_right of n questions right; gold cycles A-D."""
    gold = [i % 4 for i in range(n)]
    return [g if i < n_right else (g + 1) % 4 for i, g in enumerate(gold)], gold


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


# which runs ------------------------------------------------------------------------------------------------------
def test_no_finished_runs_is_one_line_saying_what_to_run_and_nothing_is_written(medminds_home, tmp_path):
    before = tree_snapshot(tmp_path)
    proc = run_cli("report")
    assert_user_error(proc, f"no finished runs yet in {medminds_home / 'runs'}; nothing was written",
                      "`medminds submit expert-task --dataset micro`", "`medminds demo`")
    assert proc.stdout == ""
    with pytest.raises(UserError, match="no finished runs yet"):
        report.write_report(tmp_path / "out", TABLES)
    assert tree_snapshot(tmp_path) == before  # no results/, no --out folder, nothing touched
    # runs that are not finished are named, not reported
    failed = runs.create("moe-linear-micro-00000002", {"experiment": "moe-linear", "dataset": "micro"})
    failed.update(lambda d: d.update(state=runs.FAILED, error="RuntimeError: boom"))
    before = tree_snapshot(tmp_path)
    assert_user_error(run_cli("report", "--out", str(tmp_path / "out")), "no finished runs yet",
                      f"1 other run(s) there, none usable: e.g. {failed.id}: failed (RuntimeError: boom)", "medminds demo")
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("home", ["file", "under-a-file", "missing"])
def test_a_home_that_is_a_file_or_missing_is_one_line_and_nothing_is_written(tmp_path, home):
    taken = tmp_path / "home-file"
    taken.write_text("not a folder")
    where = {"file": taken, "under-a-file": taken / "below", "missing": tmp_path / "not-yet" / "home"}[home]
    needles = ([f"MEDMINDS_HOME={where} does not exist", "nothing was written", "medminds demo"] if home == "missing"
               else [f"MEDMINDS_HOME={where}", f"{taken} is a file, not a directory"])
    before = tree_snapshot(tmp_path)
    for args in ([], ["--out", str(tmp_path / "out")]):
        proc = run_cli("report", *args, env={"MEDMINDS_HOME": str(where)})
        assert_user_error(proc, *needles)
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # one line (rich may wrap it)
    assert tree_snapshot(tmp_path) == before


def test_mixed_runs_only_finished_ones_are_reported_the_rest_listed_with_why(tmp_path):
    predicted, gold = answers(6, 10)
    done_run = finished_run("baseline-classifier-mistral", predicted, gold)
    running = runs.create("ensemble-weighted-micro-00000001", {"experiment": "ensemble-weighted", "dataset": "micro"})
    running.update(lambda d: d.update(state=runs.RUNNING))
    failed = runs.create("moe-linear-micro-00000002", {"experiment": "moe-linear", "dataset": "micro"})
    failed.update(lambda d: d.update(state=runs.FAILED, error="RuntimeError: CUDA out of memory\nmore"))
    cancelled = runs.create("moe-topk-micro-00000003", {"experiment": "moe-topk", "dataset": "micro"})
    cancelled.update(lambda d: d.update(state=runs.CANCELLED))
    prepared = runs.create("prepare-micro-00000004", {"experiment": "prepare", "stage": "prepare", "dataset": "micro"})
    prepared.update(lambda d: d.update(state=runs.COMPLETED))

    done = report.write_report(tmp_path / "out", TABLES)
    assert [f.id for f in done.finished] == [done_run.id]
    assert list(run_rows(done.out)) == ["baseline-classifier-mistral"]
    why = {s.run: s.reason for s in done.skipped}
    assert why == {
        running.id: "not finished (run.json says RUNNING)",
        failed.id: f"failed (RuntimeError: CUDA out of memory); see `medminds logs {failed.id}`",
        cancelled.id: "cancelled; submit it again to resume it",
        prepared.id: "not an evaluation (stage prepare writes card.json, not metrics.json)",
    }
    readme = (done.out / "README.md").read_text()
    assert all(f"- `{run_id}`: {reason}" in readme for run_id, reason in why.items())


def test_malformed_runs_are_skipped_with_what_is_wrong_and_what_to_do(medminds_home, tmp_path):
    predicted, gold = answers(6, 10)
    good = finished_run("baseline-classifier-mistral", predicted, gold)
    not_json = finished_run("ensemble-weighted", predicted, gold)
    (not_json.dir / "metrics.json").write_text('{"accuracy": 0.5,')
    off_schema = finished_run("ensemble-transformer", predicted, gold)
    record = json.loads((off_schema.dir / "metrics.json").read_text())
    del record["confusion_matrix"]
    (off_schema.dir / "metrics.json").write_text(json.dumps(record))
    copied = finished_run("ensemble-late-fusion", predicted, gold)
    (copied.dir / "metrics.json").write_bytes((good.dir / "metrics.json").read_bytes())
    lost = finished_run("moe-linear", predicted, gold)
    (lost.dir / "metrics.json").unlink()
    broken = medminds_home / "runs" / "moe-topk-micro-0000dead"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    damaged = finished_run("baseline-classifier-task", predicted, gold)
    (damaged.dir / "predictions.parquet").write_bytes(b"PAR1 not really")

    done = report.write_report(tmp_path / "out", TABLES)
    assert sorted(f.id for f in done.finished) == sorted([good.id, damaged.id])
    why = {s.run: s.reason for s in done.skipped}
    assert why[not_json.id] == "metrics.json is not valid JSON (line 1); submit it again with --force"
    assert why[off_schema.id] == "metrics.json does not fit the schema (missing 'confusion_matrix'); submit it again with --force"
    assert why[copied.id] == f"metrics.json belongs to run {good.id} (copied from another run?); submit it again with --force"
    assert why[lost.id] == "finished without metrics.json; submit it again with --force to evaluate it"
    assert why["moe-topk-micro-0000dead"].endswith("unreadable run record (invalid JSON at line 1); fix or delete that run directory")
    # a run without readable predictions is still in the summary, but left out of the paired tests, saying why
    assert set(run_rows(done.out)) == {"baseline-classifier-mistral", "baseline-classifier-task"}
    assert rows_of(done.out, "significance") == []
    assert f"{damaged.id} (predictions.parquet cannot be read" in (done.out / "significance.md").read_text()


def test_report_never_writes_into_run_directories(medminds_home, tmp_path):
    predicted, gold = answers(6, 10)
    for experiment in ("baseline-classifier-mistral", "moe-linear"):
        finished_run(experiment, predicted, gold, extra={"epochs": [{"epoch": 1.0, "accuracy": 0.5}]})
    before = tree_state(medminds_home / "runs")
    report.write_report(None, TABLES)
    assert tree_state(medminds_home / "runs") == before
    assert (medminds_home / "results" / "summary.md").exists()  # the default: $MEDMINDS_HOME/results


# the numbers -------------------------------------------------------------------------------------------------------
def test_summary_puts_the_papers_number_beside_ours(tmp_path):
    predicted, gold = answers(60, 100)
    finished_run("baseline-classifier-mistral", predicted, gold)
    predicted, gold = answers(27, 100)
    finished_run("ensemble-late-fusion", predicted, gold)
    out = report.write_report(tmp_path / "out", TABLES).out
    rows = run_rows(out)
    mistral = rows["baseline-classifier-mistral"]
    assert (mistral["accuracy"], mistral["paper_accuracy"], mistral["paper_table"]) == ("0.6", "0.2603", "Table 2")
    assert mistral["versus_paper"] == "+33.97 (above)" and mistral["interval_kind"] == "Wilson, over questions"
    assert rows["ensemble-late-fusion"]["versus_paper"] == "-2.30 (within)"
    md = (out / "summary.md").read_text()
    assert "| baseline-classifier-mistral | micro | tiny | 1 | 0 | 60.00 | [50.20, 69.06] |" in md
    assert "| 26.03 | Table 2 | +33.97 (above) |" in md
    papers = {r["row"]: r for r in rows_of(out, "summary") if r["kind"] == "paper"}
    assert papers["paper: BioMistral 7B SLERP"]["paper_accuracy"] == "0.457"
    assert papers["paper: Mistral-7B next-word (baseline-nextword: not run here)"]["paper_accuracy"] == "none"
    assert "baseline-classifier-mistral" not in " ".join(papers)  # run here: beside ours, not repeated
    tex = (out / "summary.tex").read_text()
    assert "\\toprule" in tex and "baseline-classifier-mistral & micro & tiny" in tex and "60.00" in tex


def test_several_seeds_give_mean_sd_and_a_t_interval_by_hand(tmp_path):
    for seed, right in enumerate((5, 6, 7)):
        finished_run("moe-linear", *answers(right, 10), seed=seed)
    row = run_rows(report.write_report(tmp_path / "out", TABLES).out)["moe-linear"]
    half = 4.3027 * 0.1 / 3 ** 0.5
    assert (row["runs"], row["seeds"], row["interval_kind"]) == ("3", "0,1,2", "t, over 3 runs")
    assert float(row["accuracy"]) == pytest.approx(0.6) and float(row["sd_over_runs"]) == pytest.approx(0.1, abs=1e-6)
    assert float(row["accuracy_ci95_low"]) == pytest.approx(0.6 - half, abs=1e-6)
    assert float(row["accuracy_ci95_high"]) == pytest.approx(0.6 + half, abs=1e-6)


def test_reference_rows_chance_and_the_majority_letter(tmp_path):
    gold = [0] * 4 + [1, 2, 3] * 2  # A is 4 of 10
    finished_run("baseline-nextword", gold, gold)
    refs = {r["row"]: r for r in rows_of(report.write_report(tmp_path / "out", TABLES).out, "summary") if r["kind"] == "reference"}
    assert refs["chance (1 of 4)"]["accuracy"] == "0.25"
    assert refs["always A (the validation set's most common answer)"]["accuracy"] == "0.4"


def test_rows_split_by_parameters_and_selection_on_validation_is_marked(tmp_path):
    finished_run("ensemble-weighted", *answers(5, 10), params={"learning_rate": 1e-4})
    finished_run("ensemble-weighted", *answers(7, 10), params={"learning_rate": 1e-3, "selection": "validation"})
    out = report.write_report(tmp_path / "out", TABLES).out
    labels = set(run_rows(out))
    assert labels == {'ensemble-weighted [learning_rate=0.0001, selection=null]',
                      'ensemble-weighted [learning_rate=0.001, selection="validation"] †'}
    assert "†: best epoch chosen on the validation set" in (out / "summary.md").read_text()


def test_gpu_hours_from_slurm_resources_and_wall_time_from_attempts(tmp_path):
    run = finished_run("moe-linear", *answers(5, 10), train_seconds=3000, eval_seconds=600,
                       record={"executor": "slurm", "resources": {"gpu": "a100", "gpus": 2}})
    run.update(lambda d: d.update(attempts=[{"started_at": "2026-01-01T10:00:00+00:00"}, {"started_at": "2026-01-01T11:00:00+00:00"}],
                                  finished_at="2026-01-01T12:30:00+00:00"))
    finished_run("moe-topk", *answers(5, 10), train_seconds=100, eval_seconds=20)  # local: no GPU-hours
    rows = run_rows(report.write_report(tmp_path / "out", TABLES).out)
    assert (rows["moe-linear"]["gpu_hours"], rows["moe-linear"]["wall_seconds"]) == ("2.0", "9000.0")
    assert (rows["moe-topk"]["gpu_hours"], rows["moe-topk"]["wall_seconds"]) == ("", "120.0")


def test_significance_of_two_experiments_on_the_same_questions_by_hand(tmp_path):
    """20 questions: both right on 3, only MoE on 10, only late fusion on 2, neither on 5."""
    gold = [i % 4 for i in range(20)]
    wrong = [(g + 1) % 4 for g in gold]
    moe = [gold[i] if i < 13 else wrong[i] for i in range(20)]
    fusion = [gold[i] if i < 3 or 13 <= i < 15 else wrong[i] for i in range(20)]
    finished_run("ensemble-late-fusion", fusion, gold)
    finished_run("moe-linear", moe, gold)
    finished_run("moe-topk", moe, gold, ids=[f"other{i}" for i in range(20)])  # other questions: not paired
    out = report.write_report(tmp_path / "out", TABLES).out
    (row,) = rows_of(out, "significance")
    assert (row["a"], row["b"], row["run_pairs"], row["questions"]) == ("moe-linear (tiny)", "ensemble-late-fusion (tiny)", "1", "20")
    assert (row["accuracy_a"], row["accuracy_b"], row["difference"]) == ("0.65", "0.25", "0.4")
    assert (row["only_a"], row["only_b"]) == ("10", "2")
    assert float(row["p_mcnemar"]) == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12, abs=1e-6)
    assert row["p_holm"] == row["p_mcnemar"] and row["verdict"] == "A better"
    assert float(row["difference_ci95_low"]) < 0.4 < float(row["difference_ci95_high"])
    assert "2 pair(s) of rows on the same dataset were scored on different questions" in (out / "significance.md").read_text()


def test_seeds_are_paired_by_seed_and_differences_summed_per_question(tmp_path):
    gold = [i % 4 for i in range(8)]
    wrong = [(g + 1) % 4 for g in gold]
    for seed, (a_right, b_right) in enumerate([({0, 1, 2}, {0}), ({0, 1}, {1, 3})]):
        finished_run("moe-linear", [g if i in a_right else wrong[i] for i, g in enumerate(gold)], gold, seed=seed)
        finished_run("moe-topk", [g if i in b_right else wrong[i] for i, g in enumerate(gold)], gold, seed=seed)
    (row,) = rows_of(report.write_report(tmp_path / "out", TABLES).out, "significance")
    # per question, (A - B) summed over seeds: q0 0 + 1, q1 1 + 0, q2 1 + 0, q3 0 - 1, the others 0
    assert (row["a"], row["run_pairs"], row["only_a"], row["only_b"]) == ("moe-linear (tiny)", "2", "3", "1")
    assert float(row["difference"]) == pytest.approx(5 / 16 - 3 / 16)
    assert float(row["p_mcnemar"]) == pytest.approx(2 * (1 + 4) / 2 ** 4)


def test_per_subject_table_flags_subjects_absent_from_training(medminds_home, tmp_path):
    prepare_id = "prepare-micro-0000cafe"
    card = paths.prepared_dir(prepare_id) / "card.json"
    card.parent.mkdir(parents=True)
    card.write_text(json.dumps({"splits": {"medmcqa_train": {"subjects": {"Anatomy": 900, "Dental": 700}}}}))
    subjects = ["Anatomy", "Dental", "Psychiatry", "Psychiatry"]
    finished_run("moe-linear", [0, 1, 0, 3], [0, 1, 2, 3], subjects=subjects, record={"needs": {"prepare": prepare_id}})
    finished_run("moe-topk", [0, 1, 0, 3], [0, 1, 2, 3], subjects=subjects)  # no card known: nothing flagged
    out = report.write_report(tmp_path / "out", TABLES).out
    md = (out / "per_subject.md").read_text()
    assert "| row | dataset | model | Anatomy | Dental | Psychiatry |" in md
    assert "| moe-linear | micro | tiny | 100.0 | 100.0 | 50.0* |" in md
    assert "| moe-topk | micro | tiny | 100.0 | 100.0 | 50.0 |" in md
    rows = {r["row"]: r for r in rows_of(out, "per_subject")}
    assert (rows["moe-linear"]["Psychiatry"], rows["moe-linear"]["absent_from_training"]) == ("0.5", "Psychiatry")
    assert rows["moe-topk"]["absent_from_training"] == ""


def test_routing_statistics_in_every_accepted_shape():
    layer_epoch = [[[0.6, 0.4], [0.5, 0.5]], [[0.1, 0.9], [0.2, 0.8]]]
    by_epoch = {"experts": ["task", "domain"],
                "epochs": [{"epoch": 1, "layers": [[0.6, 0.4], [0.1, 0.9]]}, {"epoch": 2, "layers": [[0.5, 0.5], [0.2, 0.8]]}]}
    keyed = {"1": {"2": [0.2, 0.8], "1": [0.1, 0.9]}, "0": {"1": [0.6, 0.4], "2": [0.5, 0.5]}}
    assert figures.parse_routing(layer_epoch) == (layer_epoch, ["expert 0", "expert 1"])
    assert figures.parse_routing({"experts": ["task", "domain"], "layers": layer_epoch}) == (layer_epoch, ["task", "domain"])
    assert figures.parse_routing(by_epoch) == (layer_epoch, ["task", "domain"])
    assert figures.parse_routing(keyed)[0] == layer_epoch
    for bad in ([], [[[0.5, "x"]]], [[[0.5, 0.5]], [[0.5]]], {"epochs": []}):
        with pytest.raises(ValueError):
            figures.parse_routing(bad)


# the paper's numbers ----------------------------------------------------------------------------------------------
def test_the_paper_csv_is_one_file_shipped_with_the_package():
    assert (ROOT / "medminds_hpc" / "paper.csv").resolve() == (ROOT / "results" / "paper.csv").resolve()
    assert paper.source().read_bytes() == (ROOT / "results" / "paper.csv").read_bytes()
    published = {(r.table, r.experiment or r.method): r.accuracy for r in paper.load()}
    assert published == {
        ("Table 2", "baseline-nextword"): None, ("Table 2", "baseline-classifier-mistral"): 0.2603,
        ("Table 2", "baseline-classifier-domain"): 0.2593, ("Table 2", "baseline-classifier-task"): 0.2469,
        ("Table 2", "baseline-classifier-biomistral"): 0.3165, ("Table 2", "BioMistral 7B SLERP"): 0.457,
        ("Table 3", "moe-linear"): 0.2909, ("Table 3", "moe-topk"): 0.2888, ("Table 3", "ensemble-weighted"): 0.2455,
        ("Table 3", "ensemble-late-fusion"): 0.293, ("Table 3", "ensemble-transformer"): 0.2874,
    }
    from medminds_hpc import experiments

    assert {r.experiment for r in paper.load() if r.experiment} <= set(experiments.available())


@pytest.mark.parametrize("text, message", [
    ("table,experiment,method,accuracy\n", "header is 'table,experiment,method,accuracy'"),
    ("table,experiment,method,accuracy,note\nTable 2,x,y,26.03\n", "row 2: expected 5 fields"),
    ("table,experiment,method,accuracy,note\nTable 2,x,y,high,\n", "row 2, field 'accuracy': 'high' is not a percentage"),
    ("table,experiment,method,accuracy,note\nTable 2,x,y,260,\n", "row 2, field 'accuracy': '260'"),
    ("table,experiment,method,accuracy,note\nTable 2,x,y,1,\nTable 3,x,z,2,\n", "experiment 'x' appears in more than one row"),
])
def test_a_malformed_paper_csv_names_row_and_field(tmp_path, text, message):
    path = tmp_path / "paper.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        paper.load(path)


@pytest.mark.slow
def test_a_built_wheel_carries_the_papers_numbers(tmp_path):
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "medminds_hpc", "results"):
        subprocess.run(["cp", "-a", str(ROOT / name), str(src / name)], check=True)  # -a: the link stays a link
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert zipfile.ZipFile(wheel).read("medminds_hpc/paper.csv") == (ROOT / "results" / "paper.csv").read_bytes()


# bad input: one line, exit 2, nothing written ------------------------------------------------------------------------
def test_unknown_format(medminds_home, tmp_path):
    proc = run_cli("report", "--out", str(tmp_path / "out"), "--format", "md,pdf")
    assert_user_error(proc, "--format: unknown format 'pdf'; valid: md, csv, tex, html, png")
    assert_user_error(run_cli("report", "--format", " , "), "--format: no format given")
    assert not (tmp_path / "out").exists() and not (medminds_home / "results").exists()
    assert report.parse_formats("PNG, md") == ("md", "png") and report.parse_formats(None) == report.FORMATS


def test_out_that_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    assert_user_error(run_cli("report", "--out", str(target)), f"--out {target} is a file, not a directory")
    assert_user_error(run_cli("report", "--out", str(target / "below")), f"cannot be created: {target} is a file")
    assert target.read_text() == "mine"


def test_out_that_is_not_writable(tmp_path):
    finished_run("moe-linear", *answers(5, 10))
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        as_user = {"preexec_fn": without_root_override} if os.geteuid() == 0 else {}
        assert_user_error(run_cli("report", "--out", str(locked), **as_user), f"--out {locked} is not writable")
        assert_user_error(run_cli("report", "--out", str(locked / "new"), **as_user), f"cannot be created: {locked} is not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_out_inside_the_runs_folder(medminds_home):
    run = finished_run("moe-linear", *answers(5, 10))
    before = tree_state(medminds_home / "runs")
    assert_user_error(run_cli("report", "--out", str(run.dir / "report")), "is inside", "where runs live and reports never write")
    assert tree_state(medminds_home / "runs") == before


def test_cli_report_prints_the_summary_and_where_it_wrote(medminds_home):
    finished_run("baseline-classifier-mistral", *answers(6, 10))
    proc = run_cli("report", "--format", TABLES)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"1 finished run(s) in {medminds_home / 'runs'}"
    assert any(line.split()[:5] == ["baseline-classifier-mistral", "micro", "tiny", "60.00", "[31.27,"] for line in lines)
    assert lines[-1].startswith(f"wrote 10 file(s) to {medminds_home / 'results'}: README.md, per_subject.csv")


LIGHT_CHECK = (
    "import sys\nfrom medminds_hpc import cli\n"
    "try:\n    cli.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    "print('LOADED', sorted(m for m in {mods} if m in sys.modules), file=sys.stderr)\n"
)


def loaded_by_report(home: Path, *args: str, check: tuple[str, ...]) -> str:
    code = LIGHT_CHECK.format(mods=repr(check))
    proc = subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "MEDMINDS_HOME": str(home), "COLUMNS": "200"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "unsloth", "pandas")


def test_tables_without_predictions_import_nothing_heavy(medminds_home):
    finished_run("moe-linear", *answers(5, 10), predictions=False)
    assert loaded_by_report(medminds_home, "--format", TABLES, check=HEAVY + ("numpy", "pyarrow", "matplotlib")) == "LOADED []"


# figures, the page, determinism -------------------------------------------------------------------------------------------
def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def study(seeds: int = 2) -> None:
    """A small study: three experiments with seeds, per-epoch curves, a step log, routing (one shape right, one not)."""
    import random

    rng = random.Random(0)
    gold = [rng.randrange(4) for _ in range(120)]
    subjects = [("Anatomy", "Dental", "Psychiatry")[i % 3] for i in range(120)]
    epochs = [{"epoch": 1.0, "accuracy": 0.4, "eval_loss": 1.3}, {"epoch": 2.0, "accuracy": 0.5, "eval_loss": 1.2}]
    for experiment, skill, extra in (("baseline-classifier-mistral", 0.3, {}),
                                     ("ensemble-late-fusion", 0.6, {"epochs": epochs}),
                                     ("moe-linear", 0.7, {"epochs": epochs, "routing": [[[0.6, 0.4], [0.7, 0.3]], [[0.2, 0.8], [0.1, 0.9]]]}),
                                     ("moe-topk", 0.5, {"routing": {"layers": "oops"}})):
        for seed in range(seeds):
            predicted = [g if rng.random() < skill else rng.randrange(4) for g in gold]
            run = finished_run(experiment, predicted, gold, seed=seed, subjects=subjects, extra=extra)
            for step in range(1, 5):
                with open(run.dir / runs.METRICS_LOG, "a") as f:
                    f.write(json.dumps({"step": step, "epoch": step / 2, "loss": 1.5 - step / 10}) + "\n")


@pytest.mark.slow
def test_figures_page_and_two_reports_byte_identical(medminds_home, tmp_path):
    study()
    first = report.write_report(tmp_path / "one")
    # again in another process, with other string hashing: nothing may depend on set or dict order
    proc = run_cli("report", "--out", str(tmp_path / "two"), env={"PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, proc.stderr
    one, two = tree_state(first.out), tree_state(tmp_path / "two")
    assert {k: v[1] for k, v in one.items()} == {k: v[1] for k, v in two.items()}
    names = sorted(p.name for p in (first.out / "figures").iterdir())
    moe = [f.id for f in first.finished if f.identity["experiment"] == "moe-linear"]
    assert "accuracy.png" in names and "per_subject.png" in names
    assert len([n for n in names if n.startswith("confusion-")]) == 8
    assert {f"routing-{i}.png" for i in moe} <= set(names) and len([n for n in names if n.startswith("routing-")]) == 2
    assert len([n for n in names if n.startswith("curves-")]) == 8  # every run has a step log
    for name in names:
        data = (first.out / "figures" / name).read_bytes()
        chunks = png_chunks(data)
        width, height = struct.unpack(">II", chunks[0][1][:8])
        assert chunks[0][0] == b"IHDR" and 150 <= width <= 2500 and 150 <= height <= 2500, (name, width, height)
        assert 2_000 < len(data) < 500_000, (name, len(data))
        assert not {k for k, _ in chunks} & {b"tEXt", b"iTXt", b"zTXt", b"tIME"}, name  # no software or date stamp
    page = (first.out / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(names)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    for tag in ("table", "tr", "figure", "ul", "h2"):
        assert page.count(f"<{tag}>") + page.count(f"<{tag} ") == page.count(f"</{tag}>") > 0, tag
    assert "Per-run figures: the 8 most recent of them." in page
    for title in ("Summary: MedMCQA validation accuracy beside the paper", "Paired significance", "Accuracy per subject", "Runs skipped"):
        assert title in page
    readme = (first.out / "README.md").read_text()
    assert "## Figures not drawn" in readme and "routing statistics not drawn" in readme


def test_a_figure_redrawn_on_its_template_is_the_figure_drawn_afresh(monkeypatch):
    steps = [{"epoch": s / 4, "loss": 1.5 - s / 10} for s in range(1, 9)]
    epochs = [{"epoch": 1.0, "accuracy": 0.4, "eval_loss": 1.3}, {"epoch": 2.0, "accuracy": 0.5, "eval_loss": 1.2}]
    shares = [[[0.6, 0.4], [0.7, 0.3]], [[0.2, 0.8], [0.1, 0.9]]]
    monkeypatch.setattr(figures, "_TEMPLATES", {})

    def run_a() -> tuple[bytes, bytes, bytes]:
        return (figures.confusion([[5, 1, 0, 0], [0, 6, 1, 0], [2, 0, 4, 0], [0, 0, 0, 7]], "run a"),
                figures.curves(steps, epochs, "run a"), figures.routing(shares, ["task", "domain"], "run a"))

    fresh = run_a()
    figures.confusion([[0, 0, 0, 9]] * 4, "a much longer title of run b")
    figures.curves([{"epoch": 9.0, "loss": 40.0}], [{"epoch": 9.0, "accuracy": 1.0, "eval_loss": 30.0}], "run b")
    figures.routing([[[1.0, 0.0], [0.0, 1.0]]] * 2, ["x", "y"], "run b")
    assert run_a() == fresh and fresh[0] != figures.confusion([[0, 0, 0, 9]] * 4, "run a")


@pytest.mark.slow
def test_figures_drawn_by_workers_are_the_bytes_drawn_here_and_a_failure_says_so(monkeypatch):
    monkeypatch.setattr(figures, "_cpus", lambda: 2)
    monkeypatch.setattr(figures, "POOL_FROM", 2)
    jobs = [("confusion", ([[i, 1, 2, 3]] * 4, f"run {i}")) for i in range(3)]
    with figures.Drawing(jobs) as drawing:
        assert drawing.workers == 2
        assert drawing.pngs() == [figures.confusion(*args) for _, args in jobs]
    with figures.Drawing([("pie", ()), jobs[0]]) as drawing, pytest.raises(RuntimeError, match="no figure kind 'pie'"):
        drawing.pngs()


# the page opened in a real browser (Debian's chromium, headless) -----------------------------------------------------
PROBE = """<script>
var probe = {errors: []};
window.addEventListener("error", function (e) {
  probe.errors.push(e.target && e.target.tagName ? e.target.tagName.toLowerCase() : String(e.message));
}, true);
window.addEventListener("load", function () {
  var images = Array.from(document.images), tables = Array.from(document.querySelectorAll("table"));
  probe.images = images.length;
  probe.decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }).length;
  probe.tables = tables.map(function (t) { return [t.rows.length, Math.round(t.getBoundingClientRect().height)]; });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""
# a PNG cut short after its signature: the browser must fail to decode it, so the probe is seen to catch a bad image
BROKEN_IMAGE = '<img alt="control" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==">'


def chromium() -> str:
    """The browser's path; a skip without it, except in CI (CI=true), where .ci/run installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed: CI installs it in .ci/run (apt-get install chromium)")
    pytest.skip("chromium is not installed; `apt-get install chromium` to check the page in a real browser")


@pytest.mark.slow
def test_the_page_renders_tables_and_every_image_in_a_real_browser(medminds_home, tmp_path):
    browser = chromium()
    study(seeds=1)
    out = report.write_report(tmp_path / "out", "html,csv").out
    page = (out / "index.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1).replace("</body>", BROKEN_IMAGE + "\n</body>", 1))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout)
    assert proc.returncode == 0 and found, (proc.returncode, proc.stderr[-2000:])
    seen = json.loads(html.unescape(found.group(1)))
    figures_on_page = page.count("<img ")
    assert figures_on_page == 2 + 4 + 4 + 1  # accuracy, per subject; per run: confusion, curves; one routing
    assert seen["images"] == figures_on_page + 1 and seen["decoded"] == figures_on_page, seen
    assert seen["errors"] == ["img"], seen  # the control's, nothing else: no script or resource error on the page
    assert [rows for rows, _ in seen["tables"]] == [len(rows_of(out, t)) + 1 for t in ("summary", "significance", "per_subject")]
    assert all(height > 20 * rows for rows, height in seen["tables"]), seen
    assert "Uncaught" not in proc.stderr


@pytest.mark.slow
def test_figures_of_the_most_recent_runs_only(medminds_home, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RECENT_RUN_FIGURES", 3)
    study(seeds=1)
    done = report.write_report(tmp_path / "out", "png")
    newest = sorted(done.finished, key=lambda f: f.recency)[-3:]
    assert sorted(p.name for p in (done.out / "figures").glob("confusion-*")) == sorted(f"confusion-{f.id}.png" for f in newest)
    assert sorted(p.name for p in done.out.iterdir()) == ["README.md", "figures"]


@pytest.mark.slow
def test_the_whole_report_imports_no_training_library(medminds_home):
    study(seeds=1)
    assert loaded_by_report(medminds_home, check=HEAVY) == "LOADED []"


def test_the_same_questions_in_another_order_are_paired_and_repeated_ids_are_not(tmp_path):
    predicted, gold = answers(6, 8)
    ids = [f"q{i}" for i in range(8)]
    first = finished_run("moe-linear", predicted, gold, ids=ids)
    finished_run("moe-topk", predicted[::-1], gold[::-1], ids=ids[::-1])  # same answers, file in reverse order
    repeated = finished_run("ensemble-weighted", predicted, gold, ids=ids[:7] + ids[:1])
    out = report.write_report(tmp_path / "out", TABLES).out
    (row,) = rows_of(out, "significance")
    assert {row["a"], row["b"]} == {"moe-linear (tiny)", "moe-topk (tiny)"} and (row["only_a"], row["only_b"]) == ("0", "0")
    assert float(row["p_mcnemar"]) == 1.0 and row["verdict"] == "no significant difference"
    assert f"{repeated.id} (predictions.parquet repeats question ids)" in (out / "significance.md").read_text()
    assert first.id not in (out / "significance.md").read_text() and "different questions" not in (out / "significance.md").read_text()
