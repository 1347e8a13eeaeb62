"""The feature cache and the ensembles on the real dev cluster: one extraction serves every ensemble, a preempted
extraction or ensemble resumes where it stopped and ends exactly as an uninterrupted one, and a job array of
extraction tasks fills one cache that its ensemble waits for whole."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from medminds_hpc import artifacts, fileio, runs, submit
from medminds_hpc.stages import features as features_stage
from tests.helpers import (make_expert, quiet, rerun_in_process, sacct_rows, slurm_options, tree_bytes,
                           wait_for_attempt, wait_until_ended, write_medmcqa_source)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN, VALIDATION = 240, 60  # MedMCQA rows: every stage here reads all of them
ROWS = TRAIN + VALIDATION
REBUILT = "feature cache rebuilt"  # the event an ensemble logs when it had to compute features itself


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("combining") / "home"
    home.mkdir()
    return home


@pytest.fixture(autouse=True)
def medminds_home(medminds_home, module_home, monkeypatch) -> Path:
    """One $MEDMINDS_HOME for the module: its tests share the finished experts and the prepared data, and tell
    their own runs apart by their parameters. Each job gets one torch thread, as its one allocated CPU gives it on
    a cluster that binds cores (this one does not; two threads on the shared 2-core host spin-wait ~10x slower)."""
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return module_home


@pytest.fixture(scope="module")
def source(module_home) -> Path:
    return write_medmcqa_source(module_home.parent / "source", TRAIN, VALIDATION)


def options(source: Path, *overrides: str) -> submit.SubmitOptions:
    return slurm_options(model="tiny", overrides=[f"prepare.source={source}", *overrides])


@pytest.fixture(scope="module")
def experts(module_home, source) -> dict[str, runs.Run]:
    """Two finished tiny experts at the ids every submission of the module plans for them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_JOBS", raising=False)
        planned = {p.name: p.run_id for p in submit.plan("ensemble-late-fusion", options(source))}
        return {name: make_expert(name, seed=seed, run_id=planned[f"expert-{name}"])
                for name, seed in (("task", 1), ("domain", 2))}


def submitted(name: str, opts: submit.SubmitOptions) -> dict[str, submit.PlannedRun]:
    return {p.name: p for p in submit.submit(name, opts, say=quiet)}


def dependencies(run_id: str) -> list[str]:
    return runs.get(run_id).data["submissions"][-1]["dependencies"]


def events(run: runs.Run) -> list[str]:
    return [r.get("event", "") for r in fileio.read_jsonl(run.dir / runs.METRICS_LOG)]


def usr2(job_id: str) -> None:
    """Slurm's preemption warning, as the job receives it before a requeue."""
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)


def cache_of(run: runs.Run) -> dict[str, bytes]:
    """The cache's files (shards, manifests, the LM head) by path, as bytes."""
    return tree_bytes(features_stage.cache_root(run))


def test_one_extraction_serves_all_three_ensembles(experts, source):
    """ensemble-late-fusion runs prepare -> features -> ensemble; the weighted and transformer ensembles submitted
    afterwards train from that same finished features run, which extracted once."""
    opts = options(source, "features.rows_per_shard=20", "epochs=1")
    first = submitted("ensemble-late-fusion", opts)
    assert first["prepare"].action in ("new", "done")  # done when another test of the module prepared first
    assert first["features"].action == "new" and first["ensemble-late-fusion"].action == "new"
    features_job = first["features"].job_ids[0]
    assert features_job in dependencies(first["ensemble-late-fusion"].run_id)
    features_id = first["features"].run_id
    wait_until_ended(features_id, timeout=300)

    later = {name: submitted(name, opts) for name in ("ensemble-weighted", "ensemble-transformer")}
    for name, planned in later.items():
        assert planned["features"].run_id == features_id and planned["features"].action == "done"
        assert dependencies(planned[name].run_id) == []  # everything it needs is finished: it starts at once
    ensembles = {"ensemble-late-fusion": first["ensemble-late-fusion"].run_id, **{n: p[n].run_id for n, p in later.items()}}
    for run_id in ensembles.values():
        wait_until_ended(run_id, timeout=300)

    features = runs.get(features_id)
    assert [a["job_id"] for a in features.data["attempts"]] == [features_job]  # one job, one attempt
    assert features.result()["rows_computed"] == ROWS
    for name, run_id in ensembles.items():
        run = runs.get(run_id)
        metrics = run.metrics()
        assert metrics["method"] == name and metrics["features_run"] == features_id
        assert metrics["n"] == VALIDATION and metrics["train_rows"] + metrics["dev_rows"] == TRAIN  # dev rows judge epochs
        assert REBUILT not in events(run)


def test_preempted_extraction_resumes_at_the_next_shard_and_ends_byte_identical(experts, source, one_torch_thread):
    """USR2 while the features job runs: it stops after its current shard and requeues; the requeued job keeps
    every shard on disk, computes only the rest, and the cache equals an uninterrupted extraction's."""
    (p,) = [q for q in submit.submit("features", options(source, "rows_per_shard=10"), say=quiet) if q.name == "features"]
    usr2(wait_for_attempt(p.run_id, timeout=240).job_ids[0])  # it stops at its next shard boundary and requeues
    reference = rerun_in_process(runs.get(p.run_id), f"{p.run_id}-uninterrupted")  # while the job waits to restart
    run = wait_until_ended(p.run_id, timeout=300)
    assert run.data["requeues"] >= 1 and len(run.data["attempts"]) >= 2

    # the shards the first attempt wrote were kept; the last attempt computed only the others
    resumed_at = datetime.fromisoformat(run.data["attempts"][-1]["started_at"]).timestamp()
    files = sorted(features_stage.cache_root(run).glob("*/shard-*.safetensors"))
    kept = [f for f in files if f.stat().st_mtime < resumed_at]
    assert len(files) == ROWS // 10 and kept
    assert run.result()["rows_computed"] == ROWS - 10 * len(kept)

    assert reference.result()["rows_computed"] == ROWS
    assert cache_of(run) == cache_of(reference)


def test_job_array_fills_one_cache_that_its_ensemble_waits_for(experts, source, one_torch_thread):
    """-o shards=3: three array tasks share the extraction; the ensemble's afterok names the whole array, so it
    starts once every task has ended and finds the cache whole (byte-identical to a one-task extraction). The
    tasks ask for no GPU, so all three can run at once (the dev cluster's v100 node takes two jobs) and write one
    manifest together."""
    planned = submitted("ensemble-weighted", options(source, "features.shards=3", "features.rows_per_shard=20",
                                                     "features.resources.gpu=none", "epochs=1"))
    features, ensemble = planned["features"], planned["ensemble-weighted"]
    array = features.job_ids[0].split("_")[0]
    assert features.job_ids == [f"{array}_{i}" for i in range(3)]
    assert array in dependencies(ensemble.run_id)
    pending_on = subprocess.run(["squeue", "-h", "-j", ensemble.job_ids[0], "-o", "%E"], capture_output=True, text=True).stdout
    assert f"afterok:{array}_*" in pending_on  # Slurm's form for "every task of the array"

    wait_until_ended(ensemble.run_id, timeout=400)
    tasks = sacct_rows(array)
    assert sorted(t["JobID"] for t in tasks) == features.job_ids and {t["State"] for t in tasks} == {"COMPLETED"}
    (started,) = [r["Start"] for r in sacct_rows(ensemble.job_ids[0])]
    assert started >= max(t["End"] for t in tasks)

    run = runs.get(features.run_id)
    assert run.data["shards_done"] == [0, 1, 2]
    computed = [run.result(i)["rows_computed"] for i in range(3)]
    assert all(computed) and sum(computed) == ROWS  # the work was split, each row computed once
    assert REBUILT not in events(runs.get(ensemble.run_id))

    reference = rerun_in_process(run, f"{run.id}-one-task", shards=1)
    assert cache_of(run) == cache_of(reference)


def test_preempted_ensemble_ends_with_the_metrics_of_an_uninterrupted_one(experts, source, one_torch_thread):
    """USR2 while the ensemble job runs: it checkpoints at its next step and requeues; the requeued job resumes
    there and ends with the metrics, predictions and head of an uninterrupted run of the same config."""
    import pyarrow.parquet as pq

    planned = submitted("ensemble-transformer", options(source, "features.rows_per_shard=30", "epochs=2",
                                                        "checkpoint_every_steps=5"))
    p = planned["ensemble-transformer"]
    usr2(wait_for_attempt(p.run_id, timeout=300).job_ids[0])  # it saves at its next step and requeues
    reference = rerun_in_process(runs.get(p.run_id), f"{p.run_id}-uninterrupted")  # while the job waits to restart
    run = wait_until_ended(p.run_id, timeout=300)
    assert run.data["requeues"] >= 1 and len(run.data["attempts"]) >= 2
    assert 0 < min(run.data["resumed_from_steps"]) < run.metrics()["steps"]  # resumed mid-training, not restarted

    assert "resumed_from_steps" not in reference.data
    got, want = run.metrics(), reference.metrics()
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_subject", "predicted_share", "epochs", "steps", "best"):
        assert got[key] == want[key], key
    assert pq.read_table(run.dir / "predictions.parquet").equals(pq.read_table(reference.dir / "predictions.parquet"))
    head = artifacts.path(run, artifacts.ENSEMBLE) / "head.safetensors"
    assert head.read_bytes() == (artifacts.path(reference, artifacts.ENSEMBLE) / "head.safetensors").read_bytes()
