"""The command line as a user meets it: exit codes, one-line errors, nothing written on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, counter_job, quiet, run_cli, submit_options, write_job

GOLDEN = Path(__file__).parent / "golden"


def assert_user_error(proc, *needles, home=None):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    # rich may wrap a long line on a narrow terminal; the message itself is one line
    assert proc.stderr.lstrip().startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in text, (n, text)
    if home is not None:
        assert not (Path(home) / "runs").exists() or not any((Path(home) / "runs").iterdir())


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "expert-task", "--cluster", "generic"], ["status"], ["status", "--json"],
                                  ["submit", "doctor", "-d", "micro", "--cluster", "dev", "--dry-run"], ["report", "--format", "md,csv,tex"]])
def test_cli_never_imports_heavy_libraries(args, medminds_home):
    code = (
        "import sys, runpy; sys.argv = ['medminds', *sys.argv[1:]]\n"
        "from medminds_hpc import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch','transformers','peft','trl','datasets','bitsandbytes','unsloth','pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "MEDMINDS_HOME": str(medminds_home)})
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_list_json_has_every_experiment():
    proc = run_cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["moe-linear"]["stage"] == "moe" and by_name["moe-linear"]["needs"] == ["prepare", "expert-task", "expert-domain"]
    assert {"name", "stage", "needs"} <= set(rows[0])


def test_list_names_every_experiment_whole_in_80_columns():
    from medminds_hpc import experiments

    proc = run_cli("list", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    firsts = {line.split()[0] for line in lines if line.strip()}
    for name in experiments.available():
        assert name in firsts, (name, proc.stdout)
    assert "…" not in proc.stdout and max(len(line) for line in lines) <= 80
    assert "medminds list NAME" in proc.stdout.replace("\n", " ")


def test_list_shows_resources_per_size_when_wide():
    proc = run_cli("list", "--cluster", "generic", env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("expert-task ")]
    assert "1xa40 gpu 01:00:00" in row and "1xh100 gpu 2-00:00:00" in row


def test_list_one_experiment_shows_parameters_defaults_help_and_resources():
    proc = run_cli("list", "moe-topk", "--cluster", "generic", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def row(name: str) -> list[str]:
        (line,) = [line for line in lines if line.startswith(name + " ")]
        return line.split()

    # the stage default, its domain, then the paper's value
    assert row("learning_rate")[:6] == ["learning_rate", "0.0002", ">", "0,", "finite", "0.001"]
    assert row("optimizer")[:5] == ["optimizer", "adamw", "adamw", "|", "adam"]
    assert row("seed")[:4] == ["seed", "3407", "[0,", "seed"]  # the same as the default: no second value, the help follows
    assert row("top_k")[:3] == ["top_k", "1", "[1,"]
    assert row("mega")[:5] == ["mega", "1xh100", "80", "GB", "gpu"]
    # at a width where nothing wraps: each parameter's help and domain whole
    text = run_cli("list", "moe-topk", "--cluster", "generic", env={"COLUMNS": "400"}).stdout
    assert "experts per token for the top-k router" in text and "linear | topk | mlp" in text
    assert "batch_size, grad_accum: batch_size must be a multiple of grad_accum" in text
    assert "gpus (>= 0), nodes (>= 1)" in text and "mem (N[K|M|G|T]" in text  # the resources' domains too
    assert "passes over the training split" in text  # a shared field the stage redeclares keeps its help
    assert max(len(line) for line in lines) <= 80
    moe = run_cli("list", "moe-linear", env={"COLUMNS": "80"}).stdout
    (epochs,) = [line for line in moe.splitlines() if line.startswith("epochs ")]
    assert epochs.split()[:2] == ["epochs", "10"] and "mega: 1" in epochs


def test_list_one_experiment_json():
    proc = run_cli("list", "moe-topk", "--json", "--cluster", "dev")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    params = {p["name"]: p for p in d["parameters"]}
    assert params["learning_rate"]["default"] == 2e-4 and params["learning_rate"]["value"] == 1e-3 and params["learning_rate"]["differs"]
    assert params["router"]["choices"] == ["linear", "topk", "mlp"] and params["router"]["help"]
    assert d["resources"]["micro"]["gpu"] == "v100" and d["resources"]["micro"]["gpu_memory_gb"] == 32
    assert d["needs"] == ["prepare", "expert-task", "expert-domain"] and d["cluster"] == "dev"


def test_list_bad_input(medminds_home):
    assert_user_error(run_cli("list", "expert-tsk"), "unknown experiment 'expert-tsk'", "expert-task")
    assert_user_error(run_cli("list", "--cluster", "nosuch"), "unknown cluster profile 'nosuch'", "dev, generic, unity")


def test_dry_run_needs_no_slurm(medminds_home, tmp_path):
    """sbatch and srun off PATH (a laptop): the profile's sbatch script is printed all the same."""
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    for executor in ([], ["--executor", "slurm"]):
        p = run_cli("submit", "expert-task", "--dataset", "mega", "--dry-run", "--cluster", "unity", *executor, env={"PATH": str(no_slurm)})
        assert p.returncode == 0, p.stderr
        assert "#SBATCH --constraint=a100" in p.stdout and "#SBATCH --partition=gpu-preempt" in p.stdout and "srun" in p.stdout
    assert not (medminds_home / "runs").exists()


def test_unknown_experiment(medminds_home):
    assert_user_error(run_cli("submit", "expert-tsk", "-d", "micro", "--executor", "local"), "unknown experiment 'expert-tsk'", "expert-task", home=medminds_home)


def test_unknown_dataset(medminds_home):
    assert_user_error(run_cli("submit", "doctor", "-d", "huge", "--executor", "local"), "unknown dataset size 'huge'", "micro, mini, mega", home=medminds_home)


def test_unknown_gpu_and_partition(medminds_home):
    p = run_cli("submit", "doctor", "-d", "micro", "--cluster", "dev", "--executor", "local", "-o", "resources.gpu=h100")
    assert_user_error(p, "unknown GPU type 'h100'", "a100, rtx8000, v100", home=medminds_home)
    p = run_cli("submit", "doctor", "-d", "micro", "--cluster", "dev", "--executor", "local", "-o", "resources.partition=long")
    assert_user_error(p, "unknown partition 'long'", "gpu, gpu-preempt", home=medminds_home)
    p = run_cli("submit", "doctor", "-d", "micro", "--cluster", "dev", "--executor", "local", "-o", "resources.gpu=a100", "-o", "resources.gpus=3")
    assert_user_error(p, "3 a100 GPUs on one node is impossible", home=medminds_home)


def test_malformed_toml(jobs_dir, medminds_home):
    path = write_job(jobs_dir, "broken", 'stage = "doctor"\nneeds = [\n')
    assert_user_error(run_cli("submit", "broken", "-d", "micro", "--executor", "local"), str(path), "malformed TOML", "line", home=medminds_home)


def test_unknown_and_illtyped_override(medminds_home):
    assert_user_error(run_cli("submit", "doctor", "-d", "micro", "--executor", "local", "-o", "expect_gpus=a100"), "-o expect_gpus: unknown key", home=medminds_home)
    assert_user_error(run_cli("submit", "doctor", "-d", "micro", "--executor", "local", "-o", "check_hub=maybe"), "-o check_hub: expected true or false", home=medminds_home)


def test_slurm_executor_without_sbatch(medminds_home, tmp_path):
    p = run_cli("submit", "doctor", "-d", "micro", "--executor", "slurm", env={"PATH": str(tmp_path)})
    assert_user_error(p, "--executor slurm: sbatch is not on PATH", home=medminds_home)


def test_unknown_executor(medminds_home):
    assert_user_error(run_cli("submit", "doctor", "-d", "micro", "--executor", "pbs"), "unknown executor 'pbs'", home=medminds_home)


def test_unimplemented_stage(medminds_home, jobs_dir):
    write_job(jobs_dir, "unbuilt", 'stage = "tests.stages.unbuilt"\n')
    assert_user_error(run_cli("submit", "unbuilt", "-d", "micro", "--executor", "local", env={"MEDMINDS_JOBS": str(jobs_dir)}),
                      "stage 'tests.stages.unbuilt' has a config but no run function yet", home=medminds_home)


def test_run_that_matches_nothing():
    for cmd in (["logs", "nothing-here"], ["cancel", "nothing-here"], ["status", "nothing-here"]):
        assert_user_error(run_cli(*cmd), "no run matches 'nothing-here'")


def test_unreadable_run_directory(medminds_home):
    bad = medminds_home / "runs" / "exp-micro-deadbeef"
    bad.mkdir(parents=True)
    (bad / "run.json").write_text("{oops")
    assert_user_error(run_cli("status", "exp-micro-deadbeef"), str(bad / "run.json"), "unreadable run record")
    assert_user_error(run_cli("status"), "unreadable run record")
    assert_user_error(run_cli("logs", "exp-micro-deadbeef"), "unreadable run record")


@pytest.mark.slow
def test_submit_status_logs_cancel_end_to_end_local(jobs_dir, medminds_home):
    write_job(jobs_dir, "count", counter_job(steps=3))
    p = run_cli("submit", "count", "-d", "micro", "--executor", "local", "--cluster", "dev")
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.split(":")[0].strip()
    st = json.loads(run_cli("status", "--json").stdout)
    assert [(r["run"], r["state"], r["experiment"], r["dataset"]) for r in st] == [(run_id, "COMPLETED", "count", "micro")]
    assert run_cli("logs", run_id).returncode == 0
    c = run_cli("cancel", run_id)
    assert c.returncode == 0 and "nothing to cancel" in c.stdout


def normalise(text: str, home: Path) -> str:
    return text.replace(str(home), "$MEDMINDS_HOME").replace(sys.executable, "$PYTHON")


@pytest.mark.parametrize("cluster", ["dev", "unity"])
def test_golden_sbatch_script(cluster, medminds_home):
    """The generated script, byte for byte (regenerate with MEDMINDS_REGEN_GOLDEN=1 after a deliberate change)."""
    import os

    p = run_cli("submit", "doctor", "-d", "micro", "--cluster", cluster, "--dry-run", "--executor", "debug", env={"COLUMNS": "300"})
    assert p.returncode == 0, p.stderr
    got = normalise(p.stdout, medminds_home)
    golden = GOLDEN / f"doctor-micro-{cluster}.sbatch"
    if os.environ.get("MEDMINDS_REGEN_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text()


def test_dangerous_characters_never_reach_a_shell_unquoted(tmp_path, monkeypatch, jobs_dir):
    home = tmp_path / "my home 'quoted' \"dq\" ;$(touch PWNED)`id`"
    home.mkdir()
    write_job(jobs_dir, "count", counter_job(steps=2))
    env = {"MEDMINDS_HOME": str(home)}
    evil = "x'; touch PWNED2; echo '$(id)"
    p = run_cli("submit", "count", "-d", "micro", "--cluster", "dev", "--dry-run", "--executor", "debug", "-o", f"marker={evil}", env=env)
    assert p.returncode == 0, p.stderr
    script = p.stdout[p.stdout.index("#!/bin/bash"):]
    import shlex
    # every line that carries the path carries it as one shell word
    for line in script.splitlines():
        if str(home) in line or "PWNED" in line:
            assert shlex.quote(str(home) + "/runs") in line or "'" in line, line
    assert evil not in script  # overrides live in run.json, never in the script
    p = run_cli("submit", "count", "-d", "micro", "--cluster", "dev", "--executor", "local", "-o", f"marker={evil}", env=env)
    assert p.returncode == 0, p.stderr
    assert not list(Path(ROOT).glob("PWNED*")) and not list(home.glob("PWNED*")) and not list(tmp_path.glob("PWNED*"))
    run_json = next((home / "runs").glob("count-*/run.json"))
    assert json.loads(run_json.read_text())["params"]["marker"] == evil


def assert_nothing_prepared(home: Path) -> None:
    """No prepared folder (data/<prepare run id>/ or data/<size>/), only lock files at most."""
    data = home / "data"
    assert not data.exists() or not [d.name for d in data.iterdir() if d.is_dir()]


def test_prepare_bad_input(medminds_home, tmp_path):
    assert_user_error(run_cli("prepare", "-d", "micro", "--source", str(tmp_path / "missing")), "neither 'hub', 'synthetic' nor an existing file")
    assert_user_error(run_cli("prepare", "-d", "micro", "--split", "random"), "split: expected one of 'first', 'stratified'")
    assert_user_error(run_cli("prepare", "-d", "giant", "--source", "synthetic"), "unknown dataset size 'giant'")
    assert_user_error(run_cli("prepare", "-d", "micro", "--source", "synthetic", "--cop-base", "3"), "cop_base: expected a value in [0, 1], got 3")
    bad = tmp_path / "medmcqa.jsonl"
    bad.write_text('{"id": "q1", "question": "", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1, "subject_name": "Anatomy", "choice_type": "single"}\n')
    p = run_cli("prepare", "-d", "micro", "--source", str(bad), "--cop-base", "1")
    assert_user_error(p, str(bad), "q1", "question")
    assert_nothing_prepared(medminds_home)


def test_prepare_from_the_hub_offline_says_what_to_do_instead(medminds_home):
    empty_cache = str(medminds_home / "hf")  # a dataset cached on this machine would be read, not refused
    p = run_cli("prepare", "-d", "micro", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": empty_cache, "HF_DATASETS_CACHE": empty_cache})
    assert_user_error(p, "openlifescienceai/medmcqa", "Hugging Face Hub", "--source /path/to/data", "-o prepare.source=synthetic")
    assert_nothing_prepared(medminds_home)


def test_prepare_prints_the_card_and_fills_the_folder_its_prepare_run_uses(medminds_home):
    from medminds_hpc import submit

    p = run_cli("prepare", "-d", "micro", "--source", "synthetic", env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    (folder,) = [d for d in (medminds_home / "data").iterdir() if d.is_dir()]
    assert folder.name.startswith("prepare-micro-") and (folder / "card.json").exists() and "medmcqa_train" in p.stdout
    written = (folder / "medmcqa_train.parquet").stat().st_mtime_ns
    (planned,) = submit.submit("prepare", submit_options(executor="debug", overrides=["source=synthetic"]), say=quiet)
    assert planned.run_id == folder.name
    assert (folder / "medmcqa_train.parquet").stat().st_mtime_ns == written  # found up to date, not rebuilt
