import threading

import pytest

from medminds_hpc import runs
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
