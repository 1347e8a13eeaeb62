"""`medminds submit all`: the study's graph per size, seeds fanned out per experiment with shared upstreams once,
`--only`/`--skip`, overrides routed to the stages that take them, bad input, and the graph run in order here."""

from __future__ import annotations

import pytest

from medminds_hpc import experiments, runs, study
from medminds_hpc.errors import UserError
from tests.helpers import assert_user_error, counter_job, quiet, run_cli, write_job

STUDY = sorted(n for n in experiments.available() if n != "doctor")
NOT_SEEDED = {"prepare", "baseline-nextword"}  # prepare: one split for all; nextword: no seed, needs only prepare


def plan(**kw) -> dict[str, study.Node]:
    kw.setdefault("cluster", "unity")
    return {n.name: n for n in study.plan(study.StudyOptions(**kw))}


@pytest.mark.parametrize("size", ["micro", "mini", "mega"])
def test_the_graph_holds_every_experiment_once_and_each_seed_uses_its_own_upstreams(size):
    nodes = plan(dataset=size, seeds=3)
    assert sorted(nodes) == STUDY
    ids = [p.run_id for n in nodes.values() for p in n.runs]
    assert len(ids) == len(set(ids)) == 2 + 3 * (len(STUDY) - 2)
    for name, node in nodes.items():
        if name in NOT_SEEDED:
            assert len(node.runs) == 1, name
            continue
        assert node.seeds == [0, 1, 2], name
        for seed, p in zip(node.seeds, node.runs):
            if "seed" in p.resolved.params:  # features has none: it fans out because the experts do
                assert p.resolved.params["seed"] == seed, name
            assert p.run_id.startswith(f"{name}-{size}-")
            for need, upstream in p.needs.items():
                assert upstream == nodes[need].run_for(seed).run_id, (name, seed, need)
    assert {p.needs["prepare"] for n in nodes.values() for p in n.runs if "prepare" in p.needs} == {nodes["prepare"].runs[0].run_id}
    ensemble = nodes["ensemble-late-fusion"]
    assert (ensemble.parent, ensemble.after) == ("features", [])
    assert set(nodes["features"].runs[1].needs.values()) >= {nodes["expert-task"].runs[1].run_id, nodes["expert-domain"].runs[1].run_id}


def test_without_seeds_each_experiment_is_one_run_with_its_configured_seed():
    nodes = plan(dataset="micro")
    assert all(len(n.runs) == 1 and n.seeds == [None] for n in nodes.values())
    assert nodes["expert-task"].runs[0].resolved.params["seed"] == 3407


def test_the_dry_run_prints_the_tree_with_arrays_and_writes_nothing(medminds_home, tmp_path):
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    proc = run_cli("submit", "all", "-d", "micro", "--seeds", "2", "--dry-run", "--cluster", "unity", "--executor", "slurm",
                   env={"PATH": str(no_slurm)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"study on micro: {len(STUDY)} experiments, {2 + 2 * (len(STUDY) - 2)} runs (32 to submit, 0 reused) [slurm, cluster unity]"
    assert lines[1].startswith("prepare ") and lines[1].endswith("would submit  [cpu cpu-preempt 00:30:00]")
    expert = next(line for line in lines if "── expert-task " in line or "─ expert-task " in line)
    assert expert.endswith("2 seeds, one job array  [1xv100 gpu-preempt 01:00:00]"), expert
    seeded = [line for line in lines if "seed 1  " in line]
    assert len(seeded) == len(STUDY) - 2 and all(line.endswith("would submit") for line in seeded)
    named = [word for line in lines[1:] for word in line.split() if word.count("-micro-")]
    assert len(named) == len(set(named)) == 32
    assert list(medminds_home.iterdir()) == []


def test_only_brings_what_its_experiments_need_and_skip_leaves_experiments_out():
    nodes = plan(dataset="micro", only=["ensemble-*"])
    assert list(nodes) == ["prepare", "expert-domain", "expert-task", "features", "ensemble-late-fusion",
                           "ensemble-transformer", "ensemble-weighted"]
    assert [n for n, node in nodes.items() if node.target] == ["ensemble-late-fusion", "ensemble-transformer", "ensemble-weighted"]
    nodes = plan(dataset="micro", skip=["moe-*", "merge-*", "ensemble-t*"])
    assert sorted(nodes) == [n for n in STUDY if not n.startswith(("moe-", "merge-", "ensemble-transformer"))]
    nodes = plan(dataset="micro", only=["ensemble-*", "baseline-nextword"], skip=["ensemble-weighted"])
    assert sorted(n for n, node in nodes.items() if node.target) == ["baseline-nextword", "ensemble-late-fusion", "ensemble-transformer"]


def test_an_override_reaches_every_stage_that_has_the_parameter_and_a_named_one_only_its_experiment():
    nodes = plan(dataset="micro", overrides=["epochs=2", "prepare.source=synthetic", "expert-task.learning_rate=0.01"])
    epochs = {n: node.runs[0].resolved.params.get("epochs") for n, node in nodes.items()}
    assert {n for n, e in epochs.items() if e is not None} == {n for n in STUDY if n.startswith(("expert-", "baseline-classifier", "ensemble-", "moe-"))}
    assert {e for e in epochs.values() if e is not None} == {2.0}
    assert nodes["prepare"].runs[0].resolved.params["source"] == "synthetic"
    assert nodes["expert-task"].runs[0].resolved.params["learning_rate"] == 0.01
    assert nodes["expert-domain"].runs[0].resolved.params["learning_rate"] == 2e-4


@pytest.mark.parametrize("kw,message", [
    ({"skip": ["nope"]}, "--skip 'nope' matches no experiment"),
    ({"only": ["moe-*"], "skip": ["moe-*"]}, "leave no experiment"),
    ({"seeds": -1}, "--seeds -1: expected a positive number of seeds"),
    ({"dataset": "huge"}, "unknown dataset size 'huge'; valid sizes: micro, mini, mega"),
    ({"overrides": ["epoch=1"]}, "-o 'epoch=1': no experiment of this study has a parameter 'epoch'"),
    ({"overrides": ["moe-linear.epochs=x"]}, "experiment moe-linear: -o epochs: expected a number, got 'x'"),
    ({"overrides": ["doctor.x=1"]}, "-o 'doctor.x=1': doctor is not part of this study"),
])
def test_bad_input_is_refused_before_anything_is_written(medminds_home, kw, message):
    kw = {"dataset": "micro", "executor": "local", "model": "tiny", **kw}
    with pytest.raises(UserError) as e:
        study.run_study(study.StudyOptions(**kw), say=quiet)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(medminds_home.iterdir()) == []


@pytest.mark.parametrize("args,needles", [
    (["--only", "ensemble-x*"], ["--only 'ensemble-x*' matches no experiment", "ensemble-late-fusion"]),
    (["--seeds", "0"], ["--seeds 0: expected a positive number of seeds"]),
    (["--force"], ["--force goes with one experiment"]),
])
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(medminds_home, args, needles):
    assert_user_error(run_cli("submit", "all", "-d", "micro", "--executor", "local", *args), *needles)
    assert list(medminds_home.iterdir()) == []


def test_seeds_only_and_skip_belong_to_submit_all(medminds_home):
    assert_user_error(run_cli("submit", "expert-task", "-d", "micro", "--seeds", "2", "--dry-run"), "go with `medminds submit all`")


def test_without_a_scheduler_the_graph_runs_in_order_and_a_second_call_reuses_every_run(jobs_dir):
    write_job(jobs_dir, "prepare", counter_job(steps=2))
    write_job(jobs_dir, "left", counter_job(steps=3, needs='["prepare"]'))
    write_job(jobs_dir, "right", counter_job(steps=4, needs='["prepare"]'))
    write_job(jobs_dir, "both", counter_job(steps=5, needs='["prepare", "left", "right"]'))
    said: list[str] = []
    opts = study.StudyOptions("micro", seeds=2, cluster="dev", executor="debug")
    nodes = {n.name: n for n in study.run_study(opts, say=said.append)}
    finished = [line.split()[1] for line in said if line.startswith("done")]
    assert finished == ["prepare", "left", "left", "right", "right", "both", "both"]
    for seed, p in zip([0, 1], nodes["both"].runs):
        run = runs.get(p.run_id)
        assert run.state == runs.COMPLETED and run.data["params"]["seed"] == seed
        assert run.data["needs"] == {"prepare": nodes["prepare"].runs[0].run_id, "left": nodes["left"].runs[seed].run_id,
                                     "right": nodes["right"].runs[seed].run_id}
    again = study.run_study(opts, say=quiet)
    assert all(p.action == "done" and not p.jobs for n in again for p in n.runs)
