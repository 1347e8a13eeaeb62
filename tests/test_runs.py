import json
import os
import socket
import subprocess
import threading
import time

import pytest

from medminds_hpc import fileio, runs
from medminds_hpc.errors import UserError


def make(run_id, **extra):
    return runs.create(run_id, {"experiment": run_id.rsplit("-", 2)[0], "dataset": "micro", **extra})


def test_run_id_is_derived_from_what_the_run_computes():
    a = runs.make_run_id("expert-task", "micro", {"lr": 1, "needs": {}})
    assert a == runs.make_run_id("expert-task", "micro", {"needs": {}, "lr": 1})
    assert a != runs.make_run_id("expert-task", "micro", {"lr": 2, "needs": {}})
    assert a.startswith("expert-task-micro-") and len(a.rsplit("-", 1)[1]) == 8
    assert runs.make_run_id("a b;$(x)'", "micro", {}).startswith("a_b_x-micro-")


def test_create_load_update_atomic(medminds_home):
    run = make("exp-micro-00000001", params={"x": 1})
    assert run.dir == medminds_home / "runs" / "exp-micro-00000001"
    assert runs.load(run.dir).data["params"] == {"x": 1}
    run.update(lambda d: d.update(state=runs.RUNNING))
    assert runs.load(run.dir).state == runs.RUNNING
    assert not list(run.dir.glob(".run.json.*"))  # no temp files left


def test_concurrent_updates_lose_nothing():
    run = make("exp-micro-00000002")

    def bump():
        for _ in range(25):
            runs.load(run.dir).update(lambda d: d.__setitem__("n", d.get("n", 0) + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert runs.load(run.dir).data["n"] == 100


def test_find_exact_prefix_name_and_errors():
    a = make("expert-task-micro-aaaa1111")
    make("expert-task-micro-bbbb2222")
    make("expert-domain-micro-cccc3333")
    assert runs.find("expert-task-micro-aaaa1111").id == a.id
    assert runs.find("expert-domain").id == "expert-domain-micro-cccc3333"
    newest = runs.find("expert-task-micro")  # experiment-dataset: the newest of that pair
    assert newest.id in {"expert-task-micro-aaaa1111", "expert-task-micro-bbbb2222"}
    with pytest.raises(UserError, match="ambiguous"):
        runs.find("expert")
    with pytest.raises(UserError, match="no run matches 'moe'"):
        runs.find("moe")
    with pytest.raises(UserError, match="invalid run id"):
        runs.find("../etc")


def test_unreadable_run_directory_is_a_clear_error(medminds_home):
    run = make("exp-micro-0000dead")
    run.path.write_text("{ not json")
    with pytest.raises(UserError) as e:
        runs.find("exp-micro-0000dead")
    assert str(run.path) in str(e.value) and "line 1" in str(e.value)
    good, problems = runs.list_runs()
    assert good == [] and len(problems) == 1


def test_replace_dir_swaps_whole_and_recovers_from_a_kill(tmp_path):
    from medminds_hpc import fileio

    tmp_path = tmp_path / "swap"
    tmp_path.mkdir()
    target = tmp_path / "out"
    fileio.replace_dir(target, lambda d: (d / "a").write_text("1"))
    fileio.replace_dir(target, lambda d: (d / "b").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with pytest.raises(RuntimeError):
        fileio.replace_dir(target, lambda d: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert sorted(p.name for p in target.iterdir()) == ["b"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    # a kill between the two renames of a swap: the old version lies aside, the new one is a stray temp folder
    (tmp_path / ".out.old-1-1").mkdir()
    target.rename(tmp_path / ".out.old-1-2")
    (tmp_path / ".out.tmp-1-3").mkdir()
    fileio.recover_swap(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "b").read_text() == "2"


# the submission lock: O_EXCL lock files naming their holder ------------------------------------------------------
def test_exclusive_lock_lets_one_holder_in_at_a_time(tmp_path):
    counter, lock = tmp_path / "n", tmp_path / "x.lock"
    counter.write_text("0")
    inside = []

    def bump():
        for _ in range(10):
            with fileio.exclusive(lock, poll_s=0.001):
                inside.append(1)
                assert len(inside) == 1  # nobody else in here
                n = int(counter.read_text())
                time.sleep(0.001)
                counter.write_text(str(n + 1))
                inside.pop()

    threads = [threading.Thread(target=bump) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert counter.read_text() == "40" and not lock.exists()


def write_lock(path, **holder):
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "created": time.time(), "token": "t", **holder}))


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "x.lock"
    write_lock(lock, pid=dead.pid)
    started = time.monotonic()
    with fileio.exclusive(lock, wait_s=5):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 1 and not lock.exists()


def test_lock_held_elsewhere_is_waited_for_then_reported_and_an_old_one_taken_over(tmp_path):
    lock = tmp_path / "x.lock"
    write_lock(lock, host="login2", pid=4242)  # a live holder on another host: cannot be asked, only waited for
    with pytest.raises(UserError, match=r"x\.lock is held by pid 4242 on login2; wait for that command to finish"):
        with fileio.exclusive(lock, wait_s=0.3):
            pass
    assert json.loads(lock.read_text())["host"] == "login2"  # left alone
    write_lock(lock, host="login2", pid=4242, created=time.time() - 600)  # older than any submission takes
    with fileio.exclusive(lock, stale_after_s=300, wait_s=1):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()


def test_a_holder_whose_lock_was_taken_over_does_not_remove_the_new_one(tmp_path):
    lock = tmp_path / "x.lock"
    with fileio.exclusive(lock):
        write_lock(lock, token="someone-else")  # taken over as stale while we were slow
    assert json.loads(lock.read_text())["token"] == "someone-else"


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_CPUS_PER_TASK": "3"}, 3),
    ({"SLURM_CPUS_PER_TASK": "3", "OMP_NUM_THREADS": "1"}, None),  # the user's setting wins
    ({}, None),
    ({"SLURM_CPUS_PER_TASK": "x"}, None),
])
def test_a_job_uses_as_many_threads_as_slurm_allocated_cpus(env, expected, monkeypatch):
    import os

    import torch

    from medminds_hpc.job import use_allocated_cpus

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = torch.get_num_threads()
    try:
        assert use_allocated_cpus() == expected
        if expected is not None:
            assert torch.get_num_threads() == expected and os.environ["OMP_NUM_THREADS"] == str(expected)
    finally:
        torch.set_num_threads(before)


def test_listing_again_parses_only_the_run_records_that_changed():
    a = runs.create("a-micro-00000001", {"experiment": "a", "dataset": "micro"})
    runs.create("b-micro-00000002", {"experiment": "b", "dataset": "micro"})
    memo: dict = {}
    first, _ = runs.list_runs(memo)
    a.update(lambda d: d.update(state=runs.RUNNING))
    second, _ = runs.list_runs(memo)
    assert second[1] is first[1]  # unchanged: the same object, not parsed again
    assert second[0] is not first[0] and second[0].state == runs.RUNNING
    assert [r.id for r in runs.list_runs()[0]] == ["a-micro-00000001", "b-micro-00000002"]
