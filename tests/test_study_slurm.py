"""`medminds submit all` on the real dev cluster: the whole study's graph (tiny model, a few rows per stage)
finishes every job in dependency order and `report` writes every file; a second call submits nothing; seeds go
as one job array per experiment, each task logging into its own run, downstream arrays after upstream ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from medminds_hpc import control, experiments, report, runs, study
from tests.helpers import SHARED_DATA, quiet, require_shared_data, wait_until_ended, write_medmcqa_source

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("study") / "home"
    home.mkdir()
    return home


@pytest.fixture(autouse=True)
def medminds_home(medminds_home, module_home, monkeypatch) -> Path:
    """One $MEDMINDS_HOME for the module (the seeded graph reuses the first one's prepare run); one torch thread
    per job, as its one allocated CPU gives it on a cluster that binds cores."""
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return module_home


@pytest.fixture(scope="module")
def source(module_home) -> Path:
    """A small prepare source: 240 + 60 synthetic MedMCQA rows (so the stages over all of MedMCQA take seconds)
    beside the real ARC and medical-instruct samples the experts train on."""
    require_shared_data(SHARED_DATA / "arc", SHARED_DATA / "medical_instruct")
    folder = write_medmcqa_source(module_home.parent / "source", 240, 60)
    for name in ("arc", "medical_instruct"):
        (folder / name).symlink_to(SHARED_DATA / name, target_is_directory=True)
    return folder


@pytest.fixture
def options(source):
    """What every submission here uses: the tiny model, one epoch over at most 64 rows (2 to 4 steps: one of warm-up),
    validation on all 60."""
    def make(**kw) -> study.StudyOptions:
        overrides = [f"prepare.source={source}", "epochs=1", "max_train_rows=64", "eval_rows=60", "warmup_steps=1"]
        return study.StudyOptions("micro", cluster="dev", executor="slurm", model="tiny", overrides=overrides, **kw)
    return make


def test_the_whole_study_finishes_on_slurm_and_the_report_writes_every_file(options):
    said: list[str] = []
    nodes = study.run_study(options(), say=said.append)
    planned = [p for n in nodes for p in n.runs]
    count = len(experiments.available()) - 1  # every experiment but doctor
    assert len(planned) == len(nodes) == count and all(p.job_ids for p in planned)
    by_name = {p.name: p for p in planned}
    ensemble = runs.get(by_name["ensemble-late-fusion"].run_id)
    assert sorted(ensemble.data["submissions"][0]["dependencies"]) == sorted(
        by_name[n].job_ids[0] for n in ("prepare", "expert-task", "expert-domain", "features"))
    assert said[0].startswith(f"study on micro: {count} experiments, {count} runs ({count} submitted, 0 reused) [slurm, cluster dev]")
    for p in planned:
        wait_until_ended(p.run_id, timeout=600)
    written = report.write_report()
    names = {f.relative_to(written.out).as_posix() for f in written.out.rglob("*") if f.is_file()}
    for stem in ("summary", "significance", "per_subject"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= names
    assert {"index.html", "README.md"} <= names and any(n.startswith("figures/") and n.endswith(".png") for n in names)
    assert len(written.finished) == count - 2 and len(written.skipped) == 2  # prepare and features evaluate nothing
    again = study.run_study(options(), say=quiet)
    assert all(p.action == "done" and not p.jobs for n in again for p in n.runs)


def test_seeds_go_as_one_job_array_per_experiment_after_the_upstream_array(options):
    nodes = {n.name: n for n in study.run_study(options(seeds=2, only=["baseline-classifier-task"]), say=quiet)}
    assert list(nodes) == ["prepare", "expert-task", "baseline-classifier-task"]
    assert nodes["prepare"].runs[0].action == "done"  # the first test's, reused
    experts, heads = nodes["expert-task"].runs, nodes["baseline-classifier-task"].runs
    array = experts[0].job_ids[0].split("_")[0]
    assert [p.job_ids for p in experts] == [[f"{array}_0"], [f"{array}_1"]]
    assert heads[1].job_ids[0].split("_")[0] == heads[0].job_ids[0].split("_")[0] != array
    assert runs.get(heads[0].run_id).data["submissions"][0]["dependencies"] == [array]
    for seed, p in [*enumerate(experts), *enumerate(heads)]:
        run = wait_until_ended(p.run_id, timeout=600)
        assert run.data["params"]["seed"] == seed
        assert control.log_files(run), run.id  # each task's log in its own run's logs/
    assert runs.get(heads[1].run_id).data["needs"]["expert-task"] == experts[1].run_id
