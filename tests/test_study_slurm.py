"""`medminds submit all` on the real dev cluster: the whole study's graph (tiny model, the demo's small overrides)
finishes every job in dependency order and `report` writes every file; a second call submits nothing; seeds go
as one job array per experiment, each task logging into its own run, downstream arrays after upstream ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from medminds_hpc import control, demo, report, runs, study
from tests.helpers import quiet, wait_until_ended

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


def options(**kw) -> study.StudyOptions:
    return study.StudyOptions("micro", cluster="dev", executor="slurm", model="tiny", overrides=list(demo.OVERRIDES), **kw)


def test_the_whole_study_finishes_on_slurm_and_the_report_writes_every_file(module_home):
    said: list[str] = []
    nodes = study.run_study(options(), say=said.append)
    planned = [p for n in nodes for p in n.runs]
    assert len(planned) == len(nodes) == 17 and all(p.job_ids for p in planned)
    by_name = {p.name: p for p in planned}
    ensemble = runs.get(by_name["ensemble-late-fusion"].run_id)
    assert ensemble.data["submissions"][0]["dependencies"] == [by_name["features"].job_ids[0]]  # the others are implied
    assert said[0].startswith("study on micro: 17 experiments, 17 runs (17 submitted, 0 reused) [slurm, cluster dev]")
    for p in planned:
        wait_until_ended(p.run_id, timeout=600)
    written = report.write_report()
    names = {f.relative_to(written.out).as_posix() for f in written.out.rglob("*") if f.is_file()}
    for stem in ("summary", "significance", "per_subject"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= names
    assert {"index.html", "README.md"} <= names and any(n.startswith("figures/") and n.endswith(".png") for n in names)
    assert len(written.finished) == 17
    again = study.run_study(options(), say=quiet)
    assert all(p.action == "done" and not p.jobs for n in again for p in n.runs)


def test_seeds_go_as_one_job_array_per_experiment_after_the_upstream_array():
    nodes = {n.name: n for n in study.run_study(options(seeds=2, only=["baseline-classifier-task"]), say=quiet)}
    assert list(nodes) == ["prepare", "expert-task", "baseline-classifier-task"]
    assert nodes["prepare"].runs[0].action == "done"  # the first test's, reused
    experts, heads = nodes["expert-task"].runs, nodes["baseline-classifier-task"].runs
    array = experts[0].job_ids[0].split("_")[0]
    assert [p.job_ids for p in experts] == [[f"{array}_0"], [f"{array}_1"]]
    assert heads[1].job_ids[0].split("_")[0] == heads[0].job_ids[0].split("_")[0] != array
    assert runs.get(heads[0].run_id).data["submissions"][0]["dependencies"] == [array]
    for p in experts + heads:
        run = wait_until_ended(p.run_id, timeout=600)
        assert run.data["params"]["seed"] == experts.index(p) if p in experts else heads.index(p)
        assert control.log_files(run), run.id  # each task's log in its own run's logs/
    assert runs.get(heads[1].run_id).data["needs"]["expert-task"] == experts[1].run_id
