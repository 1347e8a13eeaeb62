from pathlib import Path

import pytest

from medminds_hpc import clusters, experiments, submit
from medminds_hpc.errors import UserError
from tests.helpers import counter_job, submit_options, write_job


@pytest.mark.parametrize("name", clusters.available_profiles())
def test_every_shipped_profile_parses_and_resolves_every_size(name):
    profile = clusters.load_profile(name)
    assert profile.partitions and profile.gpus
    for size in clusters.DATASET_SIZES:
        res = profile.resolve(vars(profile.sizes[size]))
        assert res.gpu in profile.gpus and res.time_min > 0
        params = res.slurm_parameters()
        assert params["partition"] in profile.partitions
        assert ("gres" in params) != ("constraint" in params)


def test_shipped_profiles_cover_unity_partitions():
    unity = clusters.load_profile("unity")
    assert {"gpu", "gpu-preempt"} <= set(unity.partitions)
    assert unity.partitions["gpu-preempt"].preemptible and not unity.partitions["gpu"].preemptible
    assert {"rtx8000", "v100", "a100", "l4"} <= set(unity.gpus)


@pytest.mark.parametrize(
    "text,minutes",
    [("60", 60), ("01:00:00", 60), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160), ("0:00:30", 1), ("10:30", 11), (45, 45)],
)
def test_parse_time(text, minutes):
    assert clusters.parse_time(text) == minutes


@pytest.mark.parametrize("bad", ["abc", "1:2:3:4", "0", "-5", ""])
def test_parse_time_rejects(bad):
    with pytest.raises(ValueError):
        clusters.parse_time(bad)


def test_gres_and_constraint_requests():
    dev = clusters.load_profile("dev").resolve({"gpu": "a100", "gpus": 2})
    assert dev.slurm_parameters()["gres"] == "gpu:a100:2"
    unity = clusters.load_profile("unity").resolve({"gpu": "a100", "gpus": 2})
    assert unity.slurm_parameters()["constraint"] == "a100" and unity.slurm_parameters()["gpus_per_node"] == 2


def test_cpu_job_uses_cpu_partition():
    res = clusters.load_profile("unity").resolve({"gpu": "none", "time": "00:30:00"})
    assert res.gpus == 0 and res.partition == "cpu-preempt" and "gres" not in res.slurm_parameters()


@pytest.mark.parametrize(
    "layer,needle",
    [
        ({"gpu": "a100", "gpus": 3}, "3 a100 GPUs on one node is impossible"),
        ({"gpu": "h100"}, "unknown GPU type 'h100'"),
        ({"gpu": "a100", "partition": "nope"}, "unknown partition 'nope'"),
        ({"gpu": "a100", "time": "3-00:00:00"}, "exceeds partition"),
        ({"gpu": "a100", "gpus": 0}, "gpus must be at least 1"),
        ({"gpu": "a100", "colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_impossible_requests_are_refused(layer, needle):
    with pytest.raises(UserError) as e:
        clusters.load_profile("dev").resolve(layer, where="test")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["none", "None", "null"])
def test_gpu_none_on_the_command_line_makes_a_cpu_job(text):
    (planned,) = [p for p in submit.plan("expert-task", submit_options(overrides=[f"resources.gpu={text}"])) if p.name == "expert-task"]
    assert (planned.resources.gpu, planned.resources.gres, planned.resources.summary()) == (None, None, "cpu gpu-preempt 01:00:00")


def test_unknown_profile_lists_valid(monkeypatch):
    with pytest.raises(UserError, match="valid profiles: dev, generic, unity"):
        clusters.load_profile("nosuch")


def test_malformed_profile_names_file_and_line(tmp_path, monkeypatch):
    bad = tmp_path / "broken.toml"
    bad.write_text('description = "x"\n[partitions.gpu\nmax_time = 1\n')
    with pytest.raises(UserError) as e:
        clusters.load_profile(str(bad))
    assert str(bad) in str(e.value) and "line 2" in str(e.value)


def test_profile_problems_reported_together(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text(
        'default_partition = "gpu"\ncpu_partition = "gpu"\nsignal_delay_s = "soon"\n[partitions.gpu]\nmax_time = "1:00:00"\n'
        '[gpus.a100]\ngres = "a100"\npartitions = ["elsewhere"]\n[sizes.huge]\ngpu = "a100"\n'
    )
    with pytest.raises(UserError) as e:
        clusters.load_profile(str(bad))
    msg = str(e.value)
    assert "signal_delay_s" in msg and "'elsewhere'" in msg and "[sizes.huge]" in msg


# experiments are cluster-neutral: the profile maps sizes and memory needs to its own GPU types ---------------------
OTHER_PROFILE = '''description = "a cluster with A100s and H100s only"
default_partition = "gpu"
cpu_partition = "cpu"
[partitions.gpu]
max_time = "2-00:00:00"
[partitions.cpu]
max_time = "1-00:00:00"
[gpus.a100]
gres = "a100"
per_node = 4
memory_gb = 40
[gpus.h100]
gres = "h100"
per_node = 8
memory_gb = 80
[sizes.micro]
gpu = "a100"
time = "01:00:00"
[sizes.mini]
gpu = "a100"
time = "12:00:00"
[sizes.mega]
gpu = "h100"
time = "2-00:00:00"
'''


def other_profile(tmp_path) -> Path:
    path = tmp_path / "other.toml"
    path.write_text(OTHER_PROFILE)
    return path


@pytest.mark.parametrize("profile_name", clusters.available_profiles())
@pytest.mark.parametrize("name", experiments.available())
def test_every_experiment_resolves_on_every_shipped_profile(name, profile_name):
    exp, profile = experiments.load(name), clusters.load_profile(profile_name)
    for size in clusters.DATASET_SIZES:
        res = clusters.job_resources(profile, size, exp.resources.get(size, {}))
        if res.gpu is not None:
            assert res.gpu in profile.gpus and res.gpu_memory_gb == profile.gpus[res.gpu].memory_gb
        assert res.partition in profile.partitions


def test_shipped_experiments_name_no_cluster_specific_resource():
    for exp in experiments.load_all():
        for size, asked in exp.resources.items():
            assert asked.get("gpu") in (None, "none") and "partition" not in asked, (exp.path, size, asked)


def test_an_experiment_submits_on_a_cluster_with_other_gpu_types(tmp_path):
    said: list[str] = []
    planned = submit.submit("expert-task", submit_options(cluster=str(other_profile(tmp_path)), dry_run=True), say=said.append)
    assert [(p.name, p.resources.gpu) for p in planned] == [("prepare", None), ("expert-task", "a100")]
    assert "#SBATCH --gres=gpu:a100:1" in "\n".join(said)


def test_generic_profile_has_another_shape():
    generic, unity = clusters.load_profile("generic"), clusters.load_profile("unity")
    assert generic.gpu_request == "gres" and unity.gpu_request == "constraint"
    assert not any(p.preemptible for p in generic.partitions.values())
    assert not set(generic.gpus) & set(unity.gpus) and generic.default_partition != unity.default_partition
    res = clusters.job_resources(generic, "mega", {})
    assert res.slurm_parameters()["gres"] == "gpu:h100:1" and not res.preemptible


def test_memory_need_keeps_the_sizes_gpu_when_it_is_big_enough(tmp_path):
    other = clusters.load_profile(str(other_profile(tmp_path)))
    assert clusters.job_resources(other, "micro", {"min_gpu_memory_gb": 40}).gpu == "a100"
    assert clusters.job_resources(other, "micro", {"min_gpu_memory_gb": 41}).gpu == "h100"


def test_memory_need_picks_the_smallest_gpu_with_enough_memory():
    dev = clusters.load_profile("dev")  # v100 32 GB, rtx8000 48 GB, a100 80 GB; micro -> v100
    res = clusters.job_resources(dev, "micro", {"min_gpu_memory_gb": 40})
    assert (res.gpu, res.gpu_memory_gb, res.slurm_parameters()["gres"]) == ("rtx8000", 48, "gpu:rtx8000:1")
    assert clusters.job_resources(dev, "micro", {"min_gpu_memory_gb": 60}).gpu == "a100"
    assert clusters.job_resources(dev, "micro", {}).gpu_memory_gb == 32
    assert clusters.job_resources(dev, "micro", {"gpu": "none"}).gpu_memory_gb is None


def test_memory_need_overrides_a_cpu_size_default(tmp_path):
    path = tmp_path / "cpu-sizes.toml"
    path.write_text(OTHER_PROFILE.replace('[sizes.micro]\ngpu = "a100"', '[sizes.micro]\ngpu = "none"'))
    profile = clusters.load_profile(str(path))
    assert clusters.job_resources(profile, "micro", {}).gpu is None
    assert clusters.job_resources(profile, "micro", {"min_gpu_memory_gb": 16}).gpu == "a100"


@pytest.mark.parametrize(
    "asked,overrides,needle",
    [
        ({"min_gpu_memory_gb": 100}, {}, "no GPU type on cluster dev has 100 GB (min_gpu_memory_gb)"),
        ({"min_gpu_memory_gb": 40}, {"gpu": "v100"}, "GPU type 'v100' has 32 GB but the job needs 40 GB (min_gpu_memory_gb); GPU types with enough: rtx8000, a100"),
        ({"min_gpu_memory_gb": 40, "gpu": "none"}, {}, "min_gpu_memory_gb = 40 asks for a GPU but gpu = 'none'"),
        ({"min_gpu_memory_gb": 40, "gpus": 3}, {}, "no GPU type on cluster dev has 40 GB (min_gpu_memory_gb) for 3 GPU(s) on a node"),
    ],
)
def test_impossible_memory_needs_are_refused(asked, overrides, needle):
    with pytest.raises(UserError) as e:
        clusters.job_resources(clusters.load_profile("dev"), "micro", asked, overrides, where="experiment x on cluster dev (micro)")
    assert str(e.value).startswith("experiment x on cluster dev (micro): ") and needle in str(e.value) and "\n" not in str(e.value)


def test_an_experiment_pinned_to_another_clusters_gpu_says_what_to_write_instead(jobs_dir, tmp_path):
    write_job(jobs_dir, "pinned", counter_job(resources='[resources.micro]\ngpu = "v100"'))
    with pytest.raises(UserError) as e:
        submit.plan("pinned", submit_options(cluster=str(other_profile(tmp_path))))
    msg = str(e.value)
    assert "unknown GPU type 'v100' on cluster other; valid GPU types: a100, h100" in msg
    assert "[resources.micro] names it" in msg and "min_gpu_memory_gb = N" in msg and "\n" not in msg


def test_layers_apply_in_order_profile_then_experiment_then_overrides():
    dev = clusters.load_profile("dev")
    res = clusters.job_resources(dev, "mini", {"time": "02:00:00", "gpus": 2}, {"time": "03:00:00"})
    assert (res.gpu, res.gpus, res.time_min) == ("rtx8000", 2, 180)


def test_list_and_submit_layer_resources_through_one_function(jobs_dir, monkeypatch):
    from medminds_hpc import listing

    write_job(jobs_dir, "count", counter_job(resources='[resources.micro]\nmin_gpu_memory_gb = 40\ntime = "00:20:00"'))
    calls = []
    real = clusters.job_resources
    monkeypatch.setattr(clusters, "job_resources", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    profile = clusters.load_profile("dev")
    (row,) = listing.overview(profile)
    (planned,) = submit.plan("count", submit_options())
    assert calls == ["micro", "mini", "mega", "micro"]
    assert row["resources"]["micro"] == planned.resources.summary() == "1xrtx8000 gpu-preempt 00:20:00"


def test_one_task_per_gpu_and_nodes():
    dev = clusters.load_profile("dev")
    two = dev.resolve({"gpu": "a100", "gpus": 2})
    assert (two.slurm_parameters()["nodes"], two.slurm_parameters()["ntasks_per_node"], two.world_size) == (1, 2, 2)
    spread = dev.resolve({"gpu": "a100", "gpus": 1, "nodes": 2})
    assert (spread.slurm_parameters()["nodes"], spread.slurm_parameters()["ntasks_per_node"], spread.world_size) == (2, 1, 2)
    assert two.slurm_parameters()["srun_args"] == ["--kill-on-bad-exit=0"] and "srun_args" not in dev.resolve({"gpu": "a100"}).slurm_parameters()
    assert spread.summary() == "2 nodes x 1xa100 gpu-preempt 01:00:00" and "nodes" not in two.summary()
    cpu = dev.resolve({"gpu": "none", "gpus": 2})
    assert (cpu.slurm_parameters()["nodes"], cpu.slurm_parameters()["ntasks_per_node"], cpu.world_size) == (1, 1, 1)


@pytest.mark.parametrize("layer,needle", [
    ({"gpu": "none", "nodes": 2}, "nodes = 2 asks for a multi-node job but it has no GPU"),
    ({"gpu": "a100", "nodes": 0}, "nodes must be at least 1"),
])
def test_impossible_node_requests_are_refused(layer, needle):
    with pytest.raises(UserError) as e:
        clusters.load_profile("dev").resolve(layer, where="test")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_list_shows_nodes_when_more_than_one(jobs_dir):
    from medminds_hpc import listing

    write_job(jobs_dir, "wide", counter_job(resources='[resources.micro]\ngpu = "a100"\ngpus = 2\nnodes = 3'))
    text = listing.render_detail(listing.detail("wide", clusters.load_profile("dev")), width=200)
    assert "3 nodes x 2xa100" in text
