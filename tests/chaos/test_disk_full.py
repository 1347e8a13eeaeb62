"""A checkpoint folder that fills up during a save (a real tmpfs, so the kernel says ENOSPC): the save fails with
one line naming the step, the folder and what to do, leaves nothing half-written that a resume could pick up, the
previous checkpoint stays valid, run.json stays whole, and once space is freed saving goes on."""

from __future__ import annotations

import pytest

from medminds_hpc import fileio, runs
from medminds_hpc.training import checkpoint
from medminds_hpc.training.checkpoint import CheckpointStore, SaveFailed
from tests.helpers import fill_up, small_filesystem

pytestmark = pytest.mark.chaos


@pytest.fixture
def full_store(tmp_path):
    """A store on a 256 KiB tmpfs holding a valid checkpoint at step 1, then filled to the last byte."""
    with small_filesystem(tmp_path / "fs") as fs:
        store = CheckpointStore(fs / "checkpoints")
        store.save(1, {"step": 1, "w": list(range(100))})
        yield store, fill_up(fs)


def test_a_save_on_a_full_disk_fails_with_one_line_and_keeps_the_previous_checkpoint(full_store):
    store, filler = full_store
    with pytest.raises(SaveFailed) as failed:
        store.save(2, {"step": 2, "w": list(range(5000))})
    message = str(failed.value)
    assert "\n" not in message and message.startswith("no space left on device while saving checkpoint step 2 in ")
    assert str(store.root) in message and "free space there and resubmit: it continues from step 1" in message
    assert sorted(p.name for p in store.root.iterdir()) == ["step-00000001"]  # nothing half-written stays
    assert store.latest().step == 1 and store.problem(store.latest()) is None
    filler.unlink()
    store.save(2, {"step": 2})
    assert store.latest().step == 2 and store.latest().load() == {"step": 2}


def test_a_trainer_save_that_filled_the_disk_is_named_and_its_half_removed(full_store):
    """The Trainer writes into the staging folder with torch.save(path), whose error is only a short write."""
    import torch

    store, filler = full_store
    half = store.root / checkpoint.TRAINER_STAGING / "checkpoint-3"
    half.mkdir(parents=True)
    with pytest.raises(RuntimeError) as failed:
        torch.save({"optimizer": torch.zeros(100_000)}, str(half / "optimizer.pt"))
    reason = checkpoint.failure_reason(failed.value, store.root)
    assert reason is not None and reason.startswith("no space left on device while saving checkpoint step 3 in ")
    assert not (store.root / checkpoint.TRAINER_STAGING).exists() and store.latest().step == 1
    filler.unlink()
    assert checkpoint.failure_reason(RuntimeError("CUDA error: device-side assert"), store.root) is None


def test_a_full_disk_outside_a_checkpoint_save_is_one_line_too(full_store):
    store, _ = full_store
    with pytest.raises(OSError) as failed:
        fileio.atomic_write_json(store.root.parent / "metrics.json", {"pad": "x" * 100_000})
    reason = checkpoint.failure_reason(failed.value, store.root)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("no space left on device while the run wrote its files (OSError: [Errno 28] No space left on device")
    assert reason.endswith(f"free space under {store.root.parent} and resubmit: it continues from step 1")


def test_run_json_stays_whole_when_its_update_finds_no_space(tmp_path, monkeypatch):
    with small_filesystem(tmp_path / "fs") as fs:
        monkeypatch.setenv("MEDMINDS_HOME", str(fs))
        run = runs.create("count-micro-00000000", {"experiment": "count", "dataset": "micro"})
        before = run.path.read_bytes()
        fill_up(fs)
        with pytest.raises(OSError):
            run.update(lambda d: d.update(pad="x" * 100_000))
        assert run.path.read_bytes() == before and "pad" not in fileio.read_json(run.path)
        assert not [p.name for p in run.dir.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


@pytest.mark.slurm
@pytest.mark.timeout(400)
def test_a_job_whose_disk_fills_fails_with_one_line_and_continues_once_space_is_freed(jobs_dir):
    import random

    from tests.helpers import chaos_disk_full, counter_reference

    seed = random.randrange(10**6)  # which checkpoint (5, 10 or 15) is the last one with room
    outcome = chaos_disk_full(jobs_dir, random.Random(seed), counter_reference)
    said = f"seed {seed}: {outcome}"
    assert all(outcome.checks.values()), said
    assert outcome.equal == outcome.runs == 1 and outcome.lost == 0, said
    assert len(outcome.redone) == 1 and 0 < outcome.redone[0] <= outcome.interval, said  # those after the kept checkpoint
