import re
from pathlib import Path

import pytest

from medminds_hpc import clusters, config, experiments, paths, submit
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
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 3 and all(line.startswith(f"{bad}: ") for line in lines), lines
    assert any("signal_delay_s" in line for line in lines) and any("[gpus.a100] partitions: no partition 'elsewhere'" in line for line in lines)
    assert f"{bad}: [sizes.huge]: unknown dataset size; valid sizes: micro, mini, mega" in lines


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
        ({"min_gpu_memory_gb": 100}, {}, "min_gpu_memory_gb = 100: no GPU type on cluster dev has 100 GB"),
        ({"min_gpu_memory_gb": 40}, {"gpu": "v100"}, "gpu = 'v100', min_gpu_memory_gb = 40: GPU type 'v100' has 32 GB but the job needs 40 GB; GPU types with enough: rtx8000, a100"),
        ({"min_gpu_memory_gb": 40, "gpu": "none"}, {}, "min_gpu_memory_gb = 40 asks for a GPU but gpu = 'none'"),
        ({"min_gpu_memory_gb": 40, "gpus": 3}, {}, "min_gpu_memory_gb = 40: no GPU type on cluster dev has 40 GB for 3 GPU(s) on a node"),
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
    cpu = dev.resolve({"gpu": "none"})
    assert (cpu.slurm_parameters()["nodes"], cpu.slurm_parameters()["ntasks_per_node"], cpu.world_size) == (1, 1, 1)


@pytest.mark.parametrize("layer,needle", [
    ({"gpu": "none", "nodes": 2}, "nodes = 2 asks for a multi-node job but it has no GPU"),
    ({"gpu": "a100", "nodes": 0}, "test: nodes: expected"),
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


# every field's domain is declared (config.doc) and checked when a profile or a job's resources are read ------------
def profile_file(tmp_path, text: str = OTHER_PROFILE, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_field_declares_its_help_and_the_numbers_their_domain():
    for cls in (clusters.Partition, clusters.GpuType, clusters.Resources, clusters.ClusterProfile):
        helps = config.field_help(cls)
        assert all(helps.values()), (cls, helps)
        for name, tp in config.field_types(cls).items():
            if tp in (int, int | None) or name in ("mem", "cpu_job_mem", "time", "max_time"):
                assert config.describe_domain(cls, name), (cls, name)
    assert "N[K|M|G|T]" in config.describe_domain(clusters.Resources, "mem")
    assert "Slurm time" in config.describe_domain(clusters.Partition, "max_time")
    assert config.describe_domain(clusters.GpuType, "per_node") == ">= 1"


@pytest.mark.parametrize("table,key,value", [
    ("[partitions.gpu]", "max_time", '"soon"'),
    ("[partitions.gpu]", "max_time", '"0"'),
    ("[gpus.a100]", "per_node", "0"),
    ("[gpus.a100]", "memory_gb", "-1"),
    ("[gpus.a100]", "cpus", "0"),
    ("[gpus.a100]", "mem", '"32 GB"'),
    ("[gpus.a100]", "gres", '""'),
    ("[gpus.a100]", "gres", '"a100:2"'),
    ("[sizes.micro]", "time", '"1h"'),
    ("[sizes.micro]", "gpus", "-1"),
    ("[sizes.micro]", "nodes", "0"),
    ("[sizes.micro]", "cpus", "0"),
    ("[sizes.micro]", "mem", '"lots"'),
    ("[sizes.micro]", "min_gpu_memory_gb", "-8"),
    ("[sizes.micro]", "partition", '""'),
    ("", "signal_delay_s", "-1"),
    ("", "max_requeues", "-1"),
    ("", "cpu_job_cpus", "0"),
    ("", "cpu_job_mem", '"8GiB"'),
    ("", "name", '""'),
    ("", "max_requeues", str(2**31)),
])
def test_a_value_outside_its_domain_is_refused_naming_file_table_and_key(tmp_path, table, key, value):
    path = profile_file(tmp_path, with_key(OTHER_PROFILE, table, key, value))
    with pytest.raises(UserError) as e:
        clusters.load_profile(str(path))
    prefix = f"{path}: {table + ': ' if table else ''}{key}: "
    assert str(e.value).startswith(prefix) and "\n" not in str(e.value), str(e.value)


def with_key(text: str, table: str, key: str, value: str) -> str:
    """`text` with `key = value` in `table` ("" for the top level), in place of the key's line there if it has one."""
    out, current, done = [], "", False
    for line in text.splitlines():
        if line.startswith("["):
            if current == table and not done:
                out.append(f"{key} = {value}")
                done = True
            current = line
        if current == table and line.startswith(f"{key} ="):
            continue
        out.append(line)
    if not done:
        out.append(f"{key} = {value}") if table else out.insert(0, f"{key} = {value}")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("layer,needle", [
    ({"gpu": "a100", "mem": "16 GB"}, "test: mem: expected N[K|M|G|T]"),
    ({"gpu": "a100", "cpus": 0}, "test: cpus: expected"),
    ({"gpu": "a100", "time": "later"}, "test: time: expected a Slurm time like 01:00:00"),
    ({"gpu": "a100", "gpus": -2}, "test: gpus: expected"),
    ({"gpu": "", "time": "01:00:00"}, "test: gpu: expected something"),
    ({"min_gpu_memory_gb": -1}, "test: min_gpu_memory_gb: expected"),
])
def test_a_jobs_resources_outside_their_domain_are_refused(layer, needle):
    with pytest.raises(UserError) as e:
        clusters.load_profile("dev").resolve(layer, where="test")
    assert str(e.value).startswith(needle) and "\n" not in str(e.value), str(e.value)


def test_every_problem_of_a_jobs_resources_is_one_line():
    with pytest.raises(UserError) as e:
        clusters.load_profile("dev").resolve({"min_gpu_memory_gb": -1, "cpus": 0, "mem": "1 TB"}, where="test")
    lines = str(e.value).splitlines()
    assert lines[0] == "3 problems:" and [line.split(": ")[:2] for line in lines[1:]] == [
        ["test", "min_gpu_memory_gb"], ["test", "cpus"], ["test", "mem"]], lines
    assert lines[3].endswith("got '1 TB'")
    with pytest.raises(UserError) as e:  # the time is not compared with a partition that does not exist
        clusters.load_profile("dev").resolve({"gpu": "a100", "gpus": 3, "time": "3-00:00:00", "partition": "nope"}, where="test")
    assert str(e.value).splitlines() == ["2 problems:", "test: unknown partition 'nope' on cluster dev; valid partitions: gpu, gpu-preempt",
                                         "test: gpus = 3: 3 a100 GPUs on one node is impossible on cluster dev: a node has at most 2"]


# a value the profile would drop is refused, not ignored -------------------------------------------------------------
@pytest.mark.parametrize("layer,needle", [
    ({"gpu": "none", "gpus": 2}, "gpus = 2 asks for GPUs but gpu = 'none' makes a CPU job"),
    ({"gpu": "none", "gpus": 1}, "gpus = 1 asks for GPUs but gpu = 'none' makes a CPU job"),
    ({"gpus": 2}, "gpus = 2 asks for GPUs but naming no GPU type (gpu) and no min_gpu_memory_gb makes a CPU job"),
    ({"gpu": "none", "min_gpu_memory_gb": 16}, "min_gpu_memory_gb = 16 asks for a GPU but gpu = 'none'"),
    ({"gpu": "none", "nodes": 2}, "nodes = 2 asks for a multi-node job but it has no GPU"),
])
def test_gpu_settings_of_a_cpu_job_are_refused_not_dropped(layer, needle):
    with pytest.raises(UserError) as e:
        clusters.load_profile("dev").resolve(layer, where="test")
    assert str(e.value).startswith("test: ") and needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_cpu_job_may_say_it_has_no_gpus():
    res = clusters.load_profile("dev").resolve({"gpu": "none", "gpus": 0})
    assert (res.gpu, res.gpus, res.gres, res.world_size) == (None, 0, None, 1)


def test_gpus_asked_of_a_size_the_profile_runs_on_cpu_are_refused_naming_the_profiles_table(tmp_path):
    path = profile_file(tmp_path, OTHER_PROFILE.replace('[sizes.micro]\ngpu = "a100"', '[sizes.micro]\ngpu = "none"'))
    profile = clusters.load_profile(str(path))
    with pytest.raises(UserError) as e:
        clusters.job_resources(profile, "micro", {"gpus": 2}, where="experiment x on cluster x (micro)")
    assert str(e.value) == (f"experiment x on cluster x (micro): gpus = 2 asks for GPUs but gpu = 'none' ([sizes.micro] of {path}) "
                            f"makes a CPU job; drop gpus, or ask for a GPU with gpu = TYPE or min_gpu_memory_gb = N")
    assert clusters.job_resources(profile, "micro", {"gpus": 2, "min_gpu_memory_gb": 16}).gpus == 2  # a need asks for a GPU


def test_a_jobs_own_cpu_choice_sets_aside_what_the_size_gives_gpu_jobs(tmp_path):
    path = profile_file(tmp_path, OTHER_PROFILE.replace('[sizes.mega]\ngpu = "h100"', '[sizes.mega]\ngpu = "h100"\ngpus = 4\nnodes = 2'))
    profile = clusters.load_profile(str(path))
    assert clusters.job_resources(profile, "mega", {}).world_size == 8
    cpu = clusters.job_resources(profile, "mega", {"gpu": "none", "time": "04:00:00"})
    assert (cpu.gpu, cpu.gpus, cpu.nodes, cpu.partition) == (None, 0, 1, "cpu")
    with pytest.raises(UserError, match="gpus = 4 asks for GPUs but gpu = 'none' makes a CPU job"):
        clusters.job_resources(profile, "mega", {"gpu": "none", "gpus": 4, "time": "04:00:00"})


def test_the_profiles_size_defaults_are_the_keys_its_table_sets():
    dev = clusters.load_profile("dev")
    assert dev.size_defaults("micro") == {"gpu": "v100", "time": "01:00:00"}


def test_a_node_feature_a_gres_profile_would_not_use_is_refused(tmp_path):
    path = profile_file(tmp_path, OTHER_PROFILE.replace('[gpus.a100]\ngres = "a100"', '[gpus.a100]\ngres = "a100"\nconstraint = "a100-80"'))
    with pytest.raises(UserError) as e:
        clusters.load_profile(str(path))
    assert str(e.value).startswith(f"{path}: [gpus.a100]: constraint = 'a100-80' would go unused: gpu_request = 'gres'")
    assert clusters.load_profile(str(profile_file(tmp_path, 'gpu_request = "constraint"\n' + path.read_text(), "y.toml")))


def test_a_profile_cannot_set_its_own_path(tmp_path):
    with pytest.raises(UserError, match="unknown key 'path'"):
        clusters.load_profile(str(profile_file(tmp_path, 'path = "/elsewhere.toml"\n' + OTHER_PROFILE)))


# a size the profile has no table for is refused, not turned into a CPU job ----------------------------------------
def without_size(size: str) -> str:
    return re.sub(rf"\[sizes\.{size}\]\n(?:[^\[].*\n)*", "", OTHER_PROFILE)


def test_a_size_without_a_table_is_refused_naming_the_file_and_the_table_to_add(tmp_path):
    path = profile_file(tmp_path, without_size("mini"))
    profile = clusters.load_profile(str(path))
    assert set(profile.sizes) == {"micro", "mega"}
    with pytest.raises(UserError) as e:
        clusters.job_resources(profile, "mini", {"time": "04:00:00"}, where="experiment x on cluster x (mini)")
    assert str(e.value) == (f"experiment x on cluster x (mini): {path}: no [sizes.mini] table: add one saying which GPU type "
                            f'(or gpu = "none") a mini job gets')


def test_a_size_without_a_table_runs_what_the_job_itself_says(tmp_path):
    profile = clusters.load_profile(str(profile_file(tmp_path, without_size("mini"))))
    assert clusters.job_resources(profile, "mini", {"gpu": "none"}).gpu is None
    assert clusters.job_resources(profile, "mini", {}, {"gpu": "none"}).gpu is None
    assert clusters.job_resources(profile, "mini", {"min_gpu_memory_gb": 60}).gpu == "h100"
    assert clusters.job_resources(profile, "mini", {}, {"gpu": "a100"}).gpu == "a100"


def test_list_shows_a_size_without_a_table_as_refused(tmp_path):
    from medminds_hpc import listing

    profile = clusters.load_profile(str(profile_file(tmp_path, without_size("mega"))))
    res = listing.resources_by_size(experiments.load("expert-task"), profile)
    assert res["micro"].gpu == "a100" and res["mega"].startswith("refused: ") and "no [sizes.mega] table" in res["mega"]
    assert listing.resources_by_size(experiments.load("prepare"), profile)["mega"].gpu is None  # it says gpu = "none"


# a profile is checked whole when it is read: every problem once, each line naming the file and the table ----------
def load_problems(path: Path) -> list[str]:
    with pytest.raises(UserError) as e:
        clusters.load_profile(str(path))
    lines = str(e.value).splitlines()
    lines = lines[1:] if len(lines) > 1 else lines
    assert all(line.startswith(f"{path}: ") for line in lines) and len(set(lines)) == len(lines), lines
    return [line[len(f"{path}: "):] for line in lines]


def test_an_empty_profile_says_what_is_missing_once(tmp_path):
    problems = load_problems(profile_file(tmp_path, ""))
    assert [p.split(":")[0] for p in problems] == ["no [partitions.NAME] tables", "no [gpus.NAME] tables"], problems


def test_a_kind_of_table_that_is_not_tables_is_one_line(tmp_path):
    tables = OTHER_PROFILE.index("[partitions.")
    top, rest = OTHER_PROFILE[:tables], OTHER_PROFILE[tables:]
    gpus_and_sizes = rest[rest.index("[gpus."):]
    assert load_problems(profile_file(tmp_path, top + "partitions = 3\n" + gpus_and_sizes, "p.toml")) == [
        "partitions: expected [partitions.NAME] tables, got 3; add one per Slurm partition jobs use, "
        "e.g. [partitions.gpu] with max_time = \"2-00:00:00\" (sinfo -o '%P %l')"]
    sizes = rest.index("[sizes.")
    problems = load_problems(profile_file(tmp_path, top + "sizes = 'big'\n" + rest[:sizes], "s.toml"))
    assert len(problems) == 1 and problems[0].startswith("sizes: expected [sizes.NAME] tables, got 'big'"), problems


def test_a_named_table_that_is_not_a_table_is_one_line(tmp_path):
    text = OTHER_PROFILE.replace('[partitions.cpu]\nmax_time = "1-00:00:00"\n', "") + "[partitions]\ncpu = 3\n"
    text = text.replace('[partitions.gpu]\nmax_time = "2-00:00:00"\n', "")
    text = text.replace("[partitions]\ncpu = 3\n", '[partitions]\ncpu = 3\ngpu = { max_time = "2-00:00:00" }\n')
    assert load_problems(profile_file(tmp_path, text)) == ["[partitions.cpu]: expected a table of keys, got 3"]


def test_a_missing_default_partition_is_said_once_with_everything_naming_it(tmp_path):
    text = OTHER_PROFILE.replace('cpu_partition = "cpu"', 'cpu_partition = "gpu"').replace(
        '[gpus.a100]\ngres = "a100"', '[gpus.a100]\ngres = "a100"\npartitions = ["gpu"]').replace(
        '[partitions.gpu]\nmax_time = "2-00:00:00"\n', "")
    assert load_problems(profile_file(tmp_path, text)) == [
        "default_partition, cpu_partition, [gpus.a100] partitions: no partition 'gpu' in this profile; its partitions: cpu; "
        "add [partitions.gpu] or name one of those"]
    unset = OTHER_PROFILE.replace('default_partition = "gpu"\n', "")
    assert load_problems(profile_file(tmp_path, unset, "unset.toml")) == [
        "default_partition (not set: its default): no partition 'gpu-preempt' in this profile; its partitions: cpu, gpu; "
        "add [partitions.gpu-preempt] or name one of those"]


def test_a_broken_table_is_not_said_again_where_it_is_named(tmp_path):
    text = OTHER_PROFILE.replace('[gpus.h100]\ngres = "h100"\nper_node = 8', '[gpus.h100]\nper_node = 0')
    problems = load_problems(profile_file(tmp_path, text))
    assert len(problems) == 2 and all(p.startswith("[gpus.h100]: ") for p in problems), problems
    assert {p.split(": ")[1] for p in problems} == {"per_node", "gres"} and "gres: missing: type name in --gres" in problems[1]


@pytest.mark.parametrize("size_table,expected", [
    ('[sizes.mini]\ngpu = "h200"', '[sizes.mini]: gpu: unknown GPU type \'h200\'; valid GPU types: a100, h100'),
    ('[sizes.mini]\ngpu = "a100"\ngpus = 5', "[sizes.mini]: gpus = 5: 5 a100 GPUs on one node is impossible on cluster x: a node has at most 4"),
    ('[sizes.mini]\ngpu = "a100"\npartition = "long"', "[sizes.mini]: unknown partition 'long' on cluster x; valid partitions: cpu, gpu"),
    ('[sizes.mini]\ngpu = "none"\ngpus = 2', "[sizes.mini]: gpus = 2 asks for GPUs but gpu = 'none' makes a CPU job"),
    ('[sizes.mini]\nmin_gpu_memory_gb = 100', "[sizes.mini]: min_gpu_memory_gb = 100: no GPU type on cluster x has 100 GB"),
    ('[sizes.mini]\nnodes = 1', '[sizes.mini]: no gpu: say which GPU type a mini job gets (gpu = one of a100, h100), '
                                           'or gpu = "none" for CPU jobs'),
])
def test_a_sizes_table_is_checked_against_the_profile_when_read(tmp_path, size_table, expected):
    text = OTHER_PROFILE.replace('[sizes.mini]\ngpu = "a100"', size_table)
    problems = load_problems(profile_file(tmp_path, text))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_sizes_time_beyond_its_partitions_limit_names_the_table(tmp_path):
    text = OTHER_PROFILE.replace('[sizes.mini]\ngpu = "a100"\ntime = "12:00:00"', '[sizes.mini]\ngpu = "none"\ntime = "2-00:00:00"')
    assert load_problems(profile_file(tmp_path, text)) == ["[sizes.mini]: time = 2-00:00:00: exceeds partition 'cpu''s limit of 1-00:00:00"]


def test_a_sizes_table_of_no_size_names_the_table(tmp_path):
    problems = load_problems(profile_file(tmp_path, OTHER_PROFILE + '[sizes.huge]\ngpu = "h100"\n'))
    assert problems == ["[sizes.huge]: unknown dataset size; valid sizes: micro, mini, mega"]


def test_a_profile_with_many_problems_reports_each_once(tmp_path):
    text = ('default_partition = "gpu"\ncpu_partition = "gpu"\nsignal_delay_s = -5\ncpu_job_mem = "lots"\n'
            '[partitions.gpu]\nmax_time = "forever"\n[gpus.a100]\ngres = "a100"\nper_node = 0\n'
            '[gpus.v100]\ngres = "v100"\npartitions = ["long"]\n[sizes.micro]\ngpu = "a100"\n[sizes.mini]\ngpu = "t4"\n'
            '[sizes.giant]\ngpu = "v100"\n')
    problems = load_problems(profile_file(tmp_path, text))
    assert [p.split(": ")[0] + (": " + p.split(": ")[1] if p.startswith("[sizes.") else "") for p in problems] == [
        "signal_delay_s", "cpu_job_mem", "[partitions.gpu]", "[gpus.a100]", "[sizes.giant]: unknown dataset size; valid sizes",
        "[gpus.v100] partitions", "[sizes.mini]: gpu"], problems  # [sizes.micro] names the broken a100: not said again


# a profile file that cannot be read is one line ---------------------------------------------------------------------
@pytest.mark.parametrize("data,needle", [
    (bytes(range(256)), "not UTF-8 text: a NUL byte at line 1"),
    ('description = "Unity cluster, caf\u00e9"\n'.encode("latin-1"), "not UTF-8 text: byte 0xe9 at line 1"),
    (b'description = "x"\n\xff\xfe\n', "not UTF-8 text: byte 0xff at line 2"),
])
def test_a_profile_that_is_not_utf8_text_is_one_line(tmp_path, data, needle):
    path = tmp_path / "bin.toml"
    path.write_bytes(data)
    for read in (lambda: paths.read_toml(path), lambda: clusters.load_profile(str(path))):
        with pytest.raises(UserError) as e:
            read()
        assert str(e.value).startswith(f"{path}: {needle}") and "\n" not in str(e.value)


def test_a_profile_path_that_cannot_be_read_is_one_line(tmp_path):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(UserError) as e:
        clusters.load_profile(str(folder))
    assert str(e.value).startswith(f"{folder}: cannot read: ") and "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot read: "):
        paths.read_toml(tmp_path / "nothing.toml")


def test_a_utf8_byte_order_mark_is_still_utf8(tmp_path):
    path = profile_file(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert clusters.load_profile(str(path)).description == "a cluster with A100s and H100s only"


def test_the_cli_says_a_binary_profile_in_one_line(tmp_path):
    from tests.helpers import run_cli

    path = tmp_path / "bin.toml"
    path.write_bytes(bytes(range(256)))
    r = run_cli("list", "--cluster", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not UTF-8 text" in " ".join(r.stderr.split())
