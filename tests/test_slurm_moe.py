"""The mixture of experts on the real dev cluster: a moe-linear run stopped by USR2 and a moe-topk run preempted by
a higher-priority partition's job both requeue, resume from their checkpoint mid-training, and end with the
metrics, per-epoch records, routing statistics, predictions and routers of an uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from medminds_hpc import artifacts, runs, submit
from medminds_hpc.training import engine
from tests.helpers import (assert_was_preempted, make_expert, preempt_victim_node, quiet, rerun_in_process,
                           slurm_options, wait_for_attempt, wait_until_ended, write_medmcqa_source)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN, VALIDATION = 64, 24  # moe-linear: 4 steps an epoch (batch 16); moe-topk: 8 (batch 8)
SHORT = ("epochs=2", "checkpoint_every_steps=3")


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("moe-slurm") / "home"
    home.mkdir()
    return home


@pytest.fixture(autouse=True)
def medminds_home(medminds_home, module_home, monkeypatch) -> Path:
    """One $MEDMINDS_HOME for the module: both tests use the same finished experts and prepared data. Each job
    gets one torch thread, as its one allocated CPU gives it on a cluster that binds cores (and as the in-process
    reference runs, so both sum in the same order)."""
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return module_home


@pytest.fixture(scope="module")
def source(module_home) -> Path:
    return write_medmcqa_source(module_home.parent / "source", TRAIN, VALIDATION)


def options(source: Path, *overrides: str) -> submit.SubmitOptions:
    return slurm_options(model="tiny", overrides=[f"prepare.source={source}", *SHORT, *overrides])


@pytest.fixture(scope="module")
def experts(module_home, source) -> dict[str, runs.Run]:
    """Two finished tiny experts at the ids both mixtures plan for them (the experts do not depend on the mixture)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_JOBS", raising=False)
        planned = {p.name: p.run_id for p in submit.plan("moe-linear", options(source))}
        return {name: make_expert(name, seed=seed, run_id=planned[f"expert-{name}"])
                for name, seed in (("task", 1), ("domain", 2))}


def submitted(name: str, opts: submit.SubmitOptions) -> submit.PlannedRun:
    """The mixture's planned run; the experts are finished already, so only it (and maybe prepare) is submitted."""
    planned = {p.name: p for p in submit.submit(name, opts, say=quiet)}
    assert planned["expert-task"].action == "done" and planned["expert-domain"].action == "done"
    assert planned[name].action == "new"
    return planned[name]


def usr2(job_id: str) -> None:
    """Slurm's preemption warning, as the job receives it before a requeue."""
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)


def assert_ends_like(run: runs.Run, reference: runs.Run) -> None:
    """`run` requeued, resumed mid-training, and ended exactly as the uninterrupted `reference`: accuracy, per-epoch
    records, routing statistics (per epoch and on validation), predictions, and the saved routers and head."""
    import pyarrow.parquet as pq

    assert run.data["requeues"] >= 1 and len(run.data["attempts"]) >= 2
    got, want = run.metrics(), reference.metrics()
    assert 0 < min(run.data["resumed_from_steps"]) < got["steps"]  # resumed mid-training, not restarted
    assert "resumed_from_steps" not in reference.data
    assert [e["epoch"] for e in want["epochs"]] == [1.0, 2.0] and len(want["routing"]["epochs"]) == 2
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_subject", "predicted_share", "epochs", "steps",
                "best", "routing"):
        assert got[key] == want[key], key
    assert pq.read_table(run.dir / "predictions.parquet").equals(pq.read_table(reference.dir / "predictions.parquet"))
    routers = [artifacts.path(r, artifacts.ROUTER) / engine.TRAINABLE_FILE for r in (run, reference)]
    assert routers[0].read_bytes() == routers[1].read_bytes()


def test_moe_linear_stopped_by_usr2_ends_like_an_uninterrupted_run(experts, source, one_torch_thread):
    """USR2 once the moe-linear job has started (it lands while the job loads the model): the job checkpoints after
    its next step, inside the first epoch, and requeues; the requeued job resumes there, the interrupted epoch's
    routing sums included, and ends as an uninterrupted run of its config."""
    p = submitted("moe-linear", options(source))
    usr2(wait_for_attempt(p.run_id, timeout=300).job_ids[0])  # it saves at its next step and requeues
    reference = rerun_in_process(runs.get(p.run_id), f"{p.run_id}-uninterrupted")  # while the job waits to restart
    run = wait_until_ended(p.run_id, timeout=400)
    assert run.metrics()["method"] == "moe-linear"
    assert_ends_like(run, reference)


def test_moe_topk_preempted_by_its_partition_ends_like_an_uninterrupted_run(experts, source, one_torch_thread):
    """The moe-topk job holds an a100 on gpu-preempt; a gpu-partition job for both a100s preempts it (Slurm signals
    it, it saves after its next step, and it is requeued). It resumes from that checkpoint, the router noise's RNG
    and the overflowing questions' rerouting included, and ends as an uninterrupted run of its config."""
    p = submitted("moe-topk", options(source, "resources.gpu=a100"))
    wait_for_attempt(p.run_id, timeout=300)
    hog = preempt_victim_node(5)
    reference = rerun_in_process(runs.get(p.run_id), f"{p.run_id}-uninterrupted")
    run = wait_until_ended(p.run_id, timeout=400)
    assert run.metrics()["method"] == "moe-topk"
    assert any(layer["rerouted"] > 0 for e in run.metrics()["routing"]["epochs"] for layer in e["layers"])  # overflow
    assert_was_preempted(p, hog)
    assert_ends_like(run, reference)
