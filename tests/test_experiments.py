import pytest

from medminds_hpc import experiments
from medminds_hpc.errors import UserError
from tests.helpers import counter_job, write_job

PAPER_EXPERIMENTS = {
    "expert-task", "expert-domain", "baseline-nextword", "baseline-classifier-mistral", "baseline-classifier-domain",
    "baseline-classifier-task", "baseline-classifier-biomistral", "ensemble-weighted", "ensemble-transformer",
    "ensemble-late-fusion", "moe-linear", "moe-topk",
}


def test_every_paper_experiment_is_shipped():
    assert PAPER_EXPERIMENTS <= set(experiments.available())


@pytest.mark.parametrize("name", experiments.available())
def test_every_shipped_experiment_parses_and_resolves(name):
    exp = experiments.load(name)
    for size in ("micro", "mini", "mega"):
        r = experiments.resolve(exp, size)
        assert isinstance(r.config, exp.stage_info.config_class()) and r.dataset == size


def test_paper_hyperparameters():
    task = experiments.resolve(experiments.load("expert-task"), "mini")
    assert (task.config.lora_r, task.config.lora_alpha, task.config.learning_rate, task.config.batch_size, task.config.epochs) == (16, 16, 2e-4, 16, 3.0)
    domain = experiments.resolve(experiments.load("expert-domain"), "mini").config
    assert domain.data == "medical-instruct" and domain.epochs == 1.0
    clf = experiments.resolve(experiments.load("baseline-classifier-task"), "mini").config
    assert (clf.lora_r, clf.lora_alpha, clf.lora_dropout, clf.learning_rate, clf.batch_size, clf.adapter) == (16, 8, 0.05, 1e-4, 32, "task")
    moe_mini = experiments.resolve(experiments.load("moe-linear"), "mini").config
    moe_mega = experiments.resolve(experiments.load("moe-linear"), "mega").config
    assert (moe_mini.epochs, moe_mega.epochs, moe_mini.max_length) == (10.0, 1.0, 128)
    topk = experiments.resolve(experiments.load("moe-topk"), "mini").config
    assert (topk.router, topk.top_k, topk.learning_rate, topk.batch_size, topk.max_length, topk.epochs) == ("topk", 1, 1e-3, 8, 300, 8.0)
    assert experiments.load("moe-linear").needs == ["prepare", "expert-task", "expert-domain"]
    assert experiments.resolve(experiments.load("baseline-classifier-biomistral"), "micro").model == "biomistral-7b"


def test_unknown_experiment_lists_valid():
    with pytest.raises(UserError) as e:
        experiments.load("expert-tsk")
    assert "valid experiments:" in str(e.value) and "expert-task" in str(e.value)


def test_unknown_dataset_size():
    with pytest.raises(UserError, match="unknown dataset size 'huge'; valid sizes: micro, mini, mega"):
        experiments.resolve(experiments.load("expert-task"), "huge")


def test_bad_file_reports_every_problem_with_file_and_key(jobs_dir):
    path = write_job(jobs_dir, "bad", 'stage = "expert"\ncolour = "red"\nneeds = ["nothing"]\n[params]\nlora_r = "sixteen"\ndata = "pubmed"\nlearnin_rate = 1\n[resources.micro]\ngpu = 3\n[resources.giant]\n')
    with pytest.raises(UserError) as e:
        experiments.load("bad")
    msg = str(e.value)
    assert msg.startswith(str(path))
    for needle in ["unknown key 'colour'", "unknown experiment(s) nothing", "lora_r: expected an integer", "data: expected one of 'arc', 'medical-instruct'",
                   "unknown key 'learnin_rate' (did you mean 'learning_rate'?)", "[resources.micro] gpu", "[resources.giant]: unknown dataset size"]:
        assert needle in msg, needle
    assert "\n" not in msg


def test_malformed_toml_names_file_and_line(jobs_dir):
    path = write_job(jobs_dir, "broken", 'stage = "expert"\n[params\n')
    with pytest.raises(UserError) as e:
        experiments.load("broken")
    assert str(path) in str(e.value) and "line 2" in str(e.value)


def test_unknown_stage(jobs_dir):
    write_job(jobs_dir, "x", 'stage = "magic"\n')
    with pytest.raises(UserError, match="unknown stage 'magic'; valid stages: doctor, prepare"):
        experiments.load("x")


def test_overrides_are_typed():
    r = experiments.resolve(experiments.load("expert-task"), "micro", overrides=["learning_rate=1e-5", "epochs=2", "loss_on=all", "resources.time=02:00:00"])
    assert r.config.learning_rate == 1e-5 and r.config.epochs == 2.0 and r.config.loss_on == "all"
    assert r.resource_overrides == {"time": "02:00:00"}


@pytest.mark.parametrize(
    "override,needle",
    [
        ("learning_rate=fast", "-o learning_rate: expected a number, got 'fast'"),
        ("lora_rank=8", "-o lora_rank: unknown key 'lora_rank'"),
        ("loss_on=some", "-o loss_on: expected one of 'answer', 'all'"),
        ("resources.gpus=two", "-o resources.gpus: expected an integer"),
        ("resources.colour=red", "unknown key 'colour'"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_overrides(override, needle):
    with pytest.raises(UserError) as e:
        experiments.resolve(experiments.load("expert-task"), "micro", overrides=[override])
    assert needle in str(e.value)


def test_override_values_are_data_not_code(jobs_dir):
    write_job(jobs_dir, "count", counter_job())
    evil = "a b'c\";$(touch /tmp/pwned)`id`"
    r = experiments.resolve(experiments.load("count"), "micro", overrides=[f"marker={evil}"])
    assert r.config.marker == evil
