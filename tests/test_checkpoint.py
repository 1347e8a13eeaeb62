import torch

from medminds_hpc.training.checkpoint import CheckpointStore


def test_save_latest_and_keep_k(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep=2)
    for step in (10, 20, 30):
        store.save(step, {"w": torch.full((3,), float(step)), "step": step})
    assert [c.step for c in store.all()] == [30, 20]
    latest = store.latest()
    assert latest.step == 30 and torch.equal(latest.load()["w"], torch.full((3,), 30.0))


def test_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep=3)
    store.save(1, {"w": torch.ones(1000)})
    newest = store.save(2, {"w": torch.zeros(1000)})
    state = newest.dir / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a copy cut short mid-write
    assert store.latest().step == 1
    (store.root / "step-00000001" / "manifest.json").unlink()  # no manifest: not committed
    assert store.latest() is None


def test_stray_temp_directory_is_ignored(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    store.save(5, {"x": 1})
    (store.root / ".tmp-step-00000009-123").mkdir()
    (store.root / ".tmp-step-00000009-123" / "state.pt").write_bytes(b"garbage")
    assert store.latest().step == 5


def test_a_skipped_checkpoint_is_named_in_the_log_with_the_reason(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "ck", keep=3)
    store.save(1, {"w": torch.ones(10)})
    newest = store.save(2, {"w": torch.zeros(1000)})
    (newest.dir / "state.pt").write_bytes((newest.dir / "state.pt").read_bytes()[:100])
    with caplog.at_level("WARNING", logger="medminds_hpc.training.checkpoint"):
        assert store.latest().step == 1
    (record,) = caplog.records
    assert str(newest.dir) in record.getMessage() and "state.pt has 100 bytes" in record.getMessage()
