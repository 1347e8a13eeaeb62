import pytest

from medminds_hpc import clusters
from medminds_hpc.errors import UserError


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


def test_unknown_profile_lists_valid(monkeypatch):
    with pytest.raises(UserError, match="valid profiles: dev, unity"):
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
