"""`medminds list` building blocks: tables that fit a terminal without cutting a name, and parameter rows."""

from medminds_hpc import clusters, experiments, listing
from medminds_hpc.tables import table_width, wrapped_table


def test_names_stay_whole_and_other_columns_wrap_at_spaces():
    rows = [["a-very-long-experiment-name", "one two three four five six"], ["short", "x"]]
    text = wrapped_table(["experiment", "needs"], rows, width=40)
    lines = text.splitlines()
    assert lines[2].startswith("a-very-long-experiment-name  one two")
    assert all(len(line) <= 40 for line in lines) and "four five six" in " ".join(text.split())
    assert lines[-1].split() == ["short", "x"]


def test_a_too_narrow_terminal_still_keeps_names_and_words_whole():
    rows = [["baseline-classifier-biomistral", "prepare, expert-domain"]]
    text = wrapped_table(["experiment", "needs"], rows, width=20)
    assert "baseline-classifier-biomistral" in text and "expert-domain" in text
    assert table_width(["experiment", "needs"], rows) == len("baseline-classifier-biomistral") + 2 + len("expert-domain")


def test_parameters_carry_the_stage_default_the_files_value_and_help():
    params = {p["name"]: p for p in listing.parameters(experiments.load("moe-linear"))}
    epochs = params["epochs"]
    assert epochs["by_size"] == {"mega": 1.0} and epochs["help"] == "passes over the training split"
    assert params["router"]["in_file"] and not params["router"]["differs"] and params["router"]["choices"] == ["linear", "topk", "mlp"]
    assert params["report_to"]["value"] == "none" and not params["report_to"]["in_file"]


def test_refused_sizes_are_shown_not_raised(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text('default_partition = "gpu"\ncpu_partition = "gpu"\n[partitions.gpu]\nmax_time = "02:00:00"\n'
                    '[gpus.t4]\ngres = "t4"\nmemory_gb = 16\n[sizes.micro]\ngpu = "t4"\ntime = "01:00:00"\n[sizes.mini]\ngpu = "t4"\n')
    res = listing.resources_by_size(experiments.load("baseline-nextword"), clusters.load_profile(str(path)))
    assert isinstance(res["micro"], clusters.JobResources) and res["micro"].gpu == "t4" and res["micro"].gpu_memory_gb == 16
    assert res["mini"] == "refused: time = 04:00:00: exceeds partition 'gpu''s limit of 02:00:00"
