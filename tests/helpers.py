"""Helpers shared by the tests (no tests here): paths, option builders, test experiments, stage contexts,
tiny experts, and waiting on the dev Slurm cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from medminds_hpc import runs, status, submit
from medminds_hpc.context import StageContext

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MEDMCQA_SAMPLE = SHARED_DATA / "medmcqa" / "dev-sample.jsonl"
MISTRAL_TOKENIZER = SHARED_DATA / "tokenizers" / "mistral-7b-v0.1"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# submitting ---------------------------------------------------------------------------------------------------
def submit_options(**kw):
    """SubmitOptions for the dev cluster profile; `executor` defaults to local."""
    from medminds_hpc.submit import SubmitOptions

    kw.setdefault("dataset", "micro")
    kw.setdefault("cluster", "dev")
    kw.setdefault("executor", "local")
    return SubmitOptions(**kw)


def quiet(_message: str) -> None:
    pass


def params_toml(params: Any) -> str:
    """The `key = value` lines of an experiment's [params] table from a dict or a stage config (numbers and
    strings; other values are left to the stage's defaults)."""
    items = params.items() if isinstance(params, dict) else vars(params).items()
    return "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in items if isinstance(v, (int, float, str)) and not isinstance(v, bool))


def write_job(jobs_dir: Path, name: str, text: str) -> Path:
    p = jobs_dir / f"{name}.toml"
    p.write_text(text)
    return p


def counter_job(steps: int = 5, sleep_s: float = 0.0, extra: str = "", needs: str = "[]", resources: str = "") -> str:
    return f'''stage = "tests.stages.counter"
needs = {needs}
{extra}
[params]
steps = {steps}
sleep_s = {sleep_s}
{resources}
'''


def cli(*args: str) -> list[str]:
    """The command line of `medminds ARGS` (this checkout's code, whatever is installed)."""
    return [sys.executable, "-m", "medminds_hpc.cli", *args]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, **popen: Any) -> subprocess.CompletedProcess:
    """Run `python -m medminds_hpc.cli ...` as a user would (new process, real exit code)."""
    return subprocess.run(cli(*args), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          cwd=ROOT, **popen)


def processes_of(run_dir: Path) -> list[int]:
    """Live (not zombie) processes whose command line names the run directory: a local job's controller and task."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if str(run_dir) in proc.joinpath("cmdline").read_bytes().decode(errors="replace") and \
                    proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# stages on tiny models ----------------------------------------------------------------------------------------
def require_shared_data(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"real data not found ({', '.join(missing)}): these tests need ../shared/data beside the project "
                    "(present in CI; on a fresh machine they are skipped)")


def real_medmcqa_rows(n: int | None = None) -> list[dict[str, Any]]:
    """The real MedMCQA validation sample, through the data package's loader (cop 1-4 handled there)."""
    from medminds_hpc.data.medmcqa import load_medmcqa

    require_shared_data(MEDMCQA_SAMPLE)
    rows = load_medmcqa(MEDMCQA_SAMPLE, splits=("validation",), show_progress=False)["validation"].to_list()
    return rows[:n] if n else rows


def prepare_synthetic(size: str = "micro") -> None:
    """Synthetic, learnable MedMCQA (+ ARC, instruct) prepared into this test's $MEDMINDS_HOME."""
    from medminds_hpc.data.prepare import prepare

    prepare(size, source="synthetic", say=lambda _message: None, show_progress=False)


def stage_ctx(run_id: str, *, model: str = "tiny", needs: dict[str, str] | None = None, stop_at: int | None = None,
              checkpoint_every_steps: int = 200) -> StageContext:
    """A StageContext on run `run_id` (created on first use). With stop_at, the stop flag fires once training has
    finished step `stop_at` (as a USR2 would); steps are counted from the engine's progress reports only."""
    run = runs.get(run_id) or runs.create(run_id, {"experiment": run_id.rsplit("-", 2)[0], "dataset": "micro",
                                                   "model": model, "needs": needs or {}})
    ctx = StageContext(run=run, checkpoint_every_steps=checkpoint_every_steps, checkpoint_every_minutes=60)
    if stop_at is None:
        return ctx
    state = {"step": 0, "fired": False}
    report = ctx.progress

    def progress(step: int, total: int | None = None, force: bool = False, **metrics: Any) -> None:
        if "epoch" in metrics:  # the training engine's step report (scoring reports questions, not steps)
            state["step"] = step
        report(step, total, force, **metrics)

    def stop() -> bool:
        if not state["fired"] and state["step"] >= stop_at:
            state["fired"] = True
            return True
        return False

    ctx.progress = progress  # type: ignore[method-assign]
    ctx.stop_requested = stop
    return ctx


def make_expert(name: str, seed: int, model: str = "tiny", targets: tuple[str, ...] = ("q_proj", "v_proj", "up_proj"),
                r: int = 4, run_id: str | None = None) -> runs.Run:
    """A finished expert-<name> run holding artifacts/adapter: a LoRA of `model` with random, non-zero B (so it
    visibly changes the model), saved the way the expert stage saves its adapter. `run_id`: where (e.g. the id
    `submit.plan` gives the expert, so a submission needing it uses it as it is)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medminds_hpc.modeling.loading import load_model

    run = runs.create(run_id or f"expert-{name}-micro-{seed:08d}", {"experiment": f"expert-{name}", "dataset": "micro", "model": model})
    base, _ = load_model(model)
    torch.manual_seed(seed)
    lora = get_peft_model(base, LoraConfig(r=r, lora_alpha=16, target_modules=list(targets), init_lora_weights=False))
    lora.save_pretrained(str(run.artifacts_dir / "adapter"))
    run.update(lambda d: d.update(state=runs.COMPLETED))
    return run


def write_medmcqa_source(folder: Path, train: int, validation: int) -> Path:
    """A local prepare source of synthetic MedMCQA only (medmcqa/train.jsonl, medmcqa/validation.jsonl): the
    learnable synthetic rows, fewer than a dataset size asks, so stages over all of MedMCQA stay quick."""
    from medminds_hpc.data.synthetic import medmcqa_rows

    (folder / "medmcqa").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("validation", validation)):
        write_jsonl(folder / "medmcqa" / f"{split}.jsonl", medmcqa_rows(n, seed=0, split=split))
    return folder


def rerun_in_process(run: runs.Run, run_id: str, **changes: Any) -> runs.Run:
    """A copy of `run`'s record (stage, params, needs; `changes` applied) under `run_id`, run to the end in this
    process through the job's own entry point: the uninterrupted reference for a run a test interrupts."""
    from medminds_hpc.job import StageJob

    keep = ("experiment", "stage", "dataset", "model", "params", "needs", "shards", "headline_metric")
    copy = runs.create(run_id, {**{k: run.data[k] for k in keep if k in run.data}, **changes})
    StageJob(copy.dir)()
    return runs.load(copy.dir)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative path: two trees are byte-identical when these are equal."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def small_expert(data: str = "arc", **kw: Any) -> Any:
    """An expert config small enough to train on the tiny model in seconds."""
    from medminds_hpc.stages import expert

    base = dict(data=data, epochs=2.0, batch_size=16, learning_rate=1e-2, warmup_steps=2, optimizer="adamw",
                max_train_rows=480, holdout_rows=100, eval_rows=100, max_length=256, checkpoint_every_steps=10)
    base.update(kw)
    return expert.Config(**base)


def run_expert(run_id: str, cfg: Any, stop_at: int | None = None) -> dict:
    """Run the expert stage in-process on run `run_id`; with stop_at, the stop flag fires at that step."""
    from medminds_hpc.stages import expert

    run = runs.get(run_id) or runs.create(run_id, {"experiment": "expert-task", "dataset": "micro", "model": "tiny"})
    seen = {"step": 0}
    ctx = StageContext(run=run, checkpoint_every_steps=cfg.checkpoint_every_steps, stop_requested=lambda: stop_at is not None and seen["step"] >= stop_at)
    progress = ctx.progress

    def track(step, total=None, force=False, **m):
        seen["step"] = step
        progress(step, total, force, **m)

    ctx.progress = track
    return expert.run(ctx, cfg)


# the command line ------------------------------------------------------------------------------------------------
def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2 and one `error:` line (rich may wrap it) holding every needle; no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.lstrip().startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    text = " ".join(proc.stderr.split())
    for needle in needles:
        assert needle in text, (needle, text)


def without_root_override() -> None:
    """In the child: drop the capabilities that let root write where permissions say no (before exec)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, from the bounding set: gone after exec
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


# finished runs for the report ------------------------------------------------------------------------------------
def finished_run(experiment: str, predicted: list[int], gold: list[int], *, dataset: str = "micro", model: str = "tiny",
                 seed: int | None = 0, subjects: list[str] | None = None, ids: list[str] | None = None,
                 params: dict[str, Any] | None = None, record: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, predictions: bool = True, train_seconds: float = 3600.0,
                 eval_seconds: float = 360.0) -> runs.Run:
    """A COMPLETED run of `experiment` whose metrics.json and predictions.parquet say it answered `predicted`
    (0-3 per question) to questions with answers `gold`, written through the stages' own functions."""
    import numpy as np

    from medminds_hpc import results
    from medminds_hpc.training import metrics

    ids = ids or [f"q{i:05d}" for i in range(len(gold))]
    subjects = subjects or ["Anatomy"] * len(gold)
    scores = 4.0 * np.eye(4)[predicted] - 2.0
    params = {**(params or {}), **({} if seed is None else {"seed": seed})}
    identity = {"experiment": experiment, "dataset": dataset, "model": model, "params": params}
    run = runs.create(runs.make_run_id(experiment, dataset, identity),
                      {"experiment": experiment, "stage": experiment.split("-")[0], "dataset": dataset, "model": model,
                       "params": params, **(record or {})})
    evaluation = metrics.evaluate_predictions(ids, gold, scores, subjects=subjects)
    if predictions:
        metrics.write_predictions(run.dir, ids, subjects, gold, scores=scores, score_kind="logit")
    results.write(run, {**evaluation, **(extra or {})}, train_seconds=train_seconds, eval_seconds=eval_seconds)
    run.update(lambda d: d.update(state=runs.COMPLETED, finished_at=runs.now()))
    return run


# the dev Slurm cluster ----------------------------------------------------------------------------------------
def slurm_options(**kw):
    kw.setdefault("executor", "slurm")
    return submit_options(**kw)



def state_of(run_id: str) -> status.RunStatus:
    return status.collect([runs.get(run_id)])[0]


def wait_for(run_id: str, states: set[str], timeout: float = 180, also=lambda st: True) -> status.RunStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = state_of(run_id)
        if st.state in states and also(st):
            return st
        time.sleep(0.5)
    log = "\n".join(p.read_text()[-3000:] for p in runs.get(run_id).log_dir.glob("*.out"))
    raise AssertionError(f"{run_id} did not reach {states} in {timeout}s: last {st.state} {st.detail}\n{log}")


def wait_until_ended(run_id: str, timeout: float = 300) -> runs.Run:
    """The run once it is COMPLETED; a FAILED or CANCELLED run fails the test at once with its error."""
    st = wait_for(run_id, {runs.COMPLETED, runs.FAILED, runs.CANCELLED}, timeout=timeout)
    assert st.state == runs.COMPLETED, f"{run_id}: {st.state} {st.detail}"
    return runs.get(run_id)


def wait_for_attempt(run_id: str, count: int = 1, timeout: float = 180) -> runs.Run:
    """The run once its job has started stage attempt number `count` (its USR2 handler is installed by then)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = runs.get(run_id)
        if len(run.data.get("attempts", [])) >= count:
            return run
        time.sleep(0.2)
    raise AssertionError(f"{run_id}: attempt {count} did not start in {timeout}s: {state_of(run_id)}")


def sacct_rows(job_id: str, fields: str = "JobID,State,Start,End") -> list[dict[str, str]]:
    """One dict per job (each array task its own) from sacct: `fields` by name."""
    names = fields.split(",")
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, f"--format={fields}"], capture_output=True, text=True).stdout
    return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-j", job_id, "--format=State"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def settled_sacct(job_id: str, timeout: float = 30) -> list[str]:
    """sacct's states once the job has left RUNNING/COMPLETING (run.json is final before the process exits)."""
    deadline = time.time() + timeout
    while True:
        states = sacct_states(job_id)
        if (states and not {"RUNNING", "COMPLETING", "PENDING"} & set(states[-1:])) or time.time() > deadline:
            return states
        time.sleep(0.5)


def preempt_victim_node(sleep_s: float) -> str:
    """Submit a high-priority `gpu` job for both a100s: Slurm preempts (requeues) the gpu-preempt job there."""
    return subprocess.run(["sbatch", "--parsable", "-p", "gpu", "--gres=gpu:a100:2", "--mem=500M", "-o", "/dev/null", "--wrap", f"sleep {sleep_s}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def assert_was_preempted(run: submit.PlannedRun, hog: str) -> None:
    assert "PREEMPTED" in sacct_states(run.job_ids[0]) or "REQUEUED" in sacct_states(run.job_ids[0])
    assert settled_sacct(hog) == ["COMPLETED"]


def step_reached(run_id: str, at_least: int) -> bool:
    prog = runs.get(run_id).data.get("progress", {}).get("0", {})
    return (prog.get("step") or 0) >= at_least


# GPU memory ---------------------------------------------------------------------------------------------------
def tiny_lora(name: str = "tiny", *, head: str = "lm", dropout: float = 0.0, base: Any = None) -> Any:
    """`name` (built in memory with the built-in tokenizer, or `base` as loaded) + a fresh LoRA r=16 on all seven
    projections; head="classes" puts the 4-way classifier head on it."""
    from medminds_hpc.modeling import tiny, tokenizer
    from medminds_hpc.modeling.heads import LastTokenClassifier
    from medminds_hpc.modeling.loading import REGISTRY
    from medminds_hpc.modeling.lora import add_lora

    if base is None:
        base = tiny.build(REGISTRY[name].tiny, tokenizer.load_tokenizer_from(tokenizer.BUILTIN))
    model = add_lora(base, r=16, alpha=16, dropout=dropout, seed=0)
    return LastTokenClassifier(model, seed=0) if head == "classes" else model


def tiny_loss(model: Any, head: str, batch: int, length: int) -> Any:
    """A loss function of the model on a fixed right-padded batch (the first row half padding), as the stages train."""
    import torch

    config = model.config
    ids = torch.randint(4, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0
    if head == "classes":
        labels = torch.arange(batch) % 4
        return lambda m: m(input_ids=ids, attention_mask=mask, labels=labels)["loss"]
    labels = ids.masked_fill(mask == 0, -100)
    return lambda m: m(input_ids=ids, attention_mask=mask, labels=labels).loss


def shrink_prepared(size: str = "micro", **rows: int) -> None:
    """Keep only the first N rows of prepared splits (e.g. medmcqa_train=96): a stage that reads whole splits then
    runs in seconds."""
    import pyarrow.parquet as pq

    from medminds_hpc.data.prepare import data_file

    for name, n in rows.items():
        path = data_file(size, name)
        pq.write_table(pq.read_table(path).slice(0, n), path)


# one torch thread -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op torch thread, restored afterwards: tiny models step in milliseconds on one, and two threads
    beside other work on a 2-core machine spin-wait many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# a $MEDMINDS_HOME shared by a module --------------------------------------------------------------------------
@contextlib.contextmanager
def shared_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """What conftest's autouse `medminds_home` sets for one test, for a whole module: a module overrides that
    fixture with a module-scoped one yielding this, so runs made once (trained experts) serve several tests."""
    home = tmp_path_factory.mktemp(name) / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        for var in ("MEDMINDS_JOBS", "MEDMINDS_CLUSTER", "MEDMINDS_TOKENIZER"):
            mp.delenv(var, raising=False)
        mp.chdir(ROOT)
        yield home


def job_run(run_id: str, stage: str, params: dict[str, Any], needs: dict[str, str] | None = None, model: str = "tiny") -> runs.Run:
    """A new run `run_id` of dataset micro recording stage `stage` with `params` and `needs`, ready for StageJob."""
    return runs.create(run_id, {"experiment": run_id.rsplit("-", 2)[0], "dataset": "micro", "model": model, "stage": stage,
                                "params": params, "needs": needs or {}})


def run_job(run_id: str, stage: str, params: dict[str, Any], needs: dict[str, str] | None = None, model: str = "tiny") -> runs.Run:
    """Run stage `stage` in this process the way its job runs it (`job.StageJob`: the config built from the run's
    params, the run COMPLETED with its results at the end), on a new run `run_id` of dataset micro; returns the run."""
    from medminds_hpc.job import StageJob

    run = job_run(run_id, stage, params, needs, model)
    StageJob(run.dir)()
    return run.reload()


def run_jobs_side_by_side(*jobs: runs.Run, timeout: float = 600) -> list[runs.Run]:
    """Run the StageJob of each of these runs (made with `job_run`), one process each with one torch thread, all at
    once: independent runs (two experts) then take the time of the slowest on a machine with that many cores, where
    in this process they would take the sum. A job that fails fails the test with its output."""
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from medminds_hpc.job import StageJob; StageJob(sys.argv[1])()"
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in jobs]  # a pipe left unread could fill
        procs = [subprocess.Popen([sys.executable, "-c", code, str(run.dir)], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, text=True) for run, log in zip(jobs, logs)]
        try:
            returncodes = [proc.wait(timeout=timeout) for proc in procs]
        finally:  # a test that timed out leaves no job behind
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for run, returncode, log in zip(jobs, returncodes, logs):
            log.seek(0)
            assert returncode == 0 and run.reload().state == runs.COMPLETED, f"{run.id}:\n{log.read()[-3000:]}"
    return [run.reload() for run in jobs]


def prepare_rows(run_id: str, medmcqa_train: list[dict], medmcqa_validation: list[dict], arc: list[dict] | None = None) -> str:
    """A finished prepare run (the prepare stage, split "first") of a local source holding these canonical MCQ rows
    as medmcqa/train.jsonl, medmcqa/dev.jsonl and, when given, arc/arc.jsonl; returns its id."""
    from medminds_hpc import paths

    source = paths.home() / "sources" / run_id
    for sub, name, rows in (("medmcqa", "train.jsonl", medmcqa_train), ("medmcqa", "dev.jsonl", medmcqa_validation),
                            ("arc", "arc.jsonl", arc)):
        if rows is not None:
            (source / sub).mkdir(parents=True, exist_ok=True)
            write_jsonl(source / sub / name, rows)
    return run_job(run_id, "prepare", {"source": str(source), "split": "first"}).id


def any_gpu_profile(folder: Path) -> Path:
    """The dev cluster's profile asking for GPUs by node feature, with a type `any` that all three nodes have: a job
    of several nodes can only run here with it (each real GPU type of the dev cluster is on one node)."""
    text = (ROOT / "slurm" / "dev.toml").read_text().replace('gpu_request = "gres"', 'gpu_request = "constraint"')
    text += ('\n[gpus.any]\ngres = "gpu"\nconstraint = "a100|v100|rtx8000"\nper_node = 2\nmemory_gb = 32\ncpus = 1\n'
             'mem = "500M"\npartitions = ["gpu", "gpu-preempt"]\n')
    path = Path(folder) / "dev-any.toml"
    path.write_text(text)
    return path


# a small filesystem that fills up -------------------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(mount_point: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount_point` for the block (root only: skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs the tests as root)")
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


def fill_up(directory: Path) -> Path:
    """Write zeros into `directory`/filler until its filesystem has no space left; returns the file (delete it
    to free the space again)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while f.write(b"\0" * 4096):
                pass
    return filler


# chaos scenarios on the dev cluster (tests/chaos and benchmarks/chaos.py) -----------------------------------------
CHAOS_EVERY = 5  # the counter's checkpoint interval in the chaos scenarios, in steps


@dataclasses.dataclass
class ChaosOutcome:
    """What one scenario did and how its run ended, against the uninterrupted reference."""

    scenario: str
    faults: int  # faults injected
    runs: int  # runs that had to finish
    equal: int  # runs that finished with the reference's result (value, or metrics and weights)
    redone: list[int]  # steps done twice per fault (0: resumed exactly where the fault stopped it)
    interval: int  # the checkpoint interval those steps compare with
    lost: int  # steps missing from the runs' results (must be 0)
    seconds: float = 0.0
    checks: dict[str, bool] = dataclasses.field(default_factory=dict)  # the scenario's own assertions, by name
    notes: list[str] = dataclasses.field(default_factory=list)  # where each fault landed, the error recorded


HOOKS = ROOT / "tests" / "hooks"


def slow_save(step: int, seconds: float) -> dict[str, str]:
    """Environment for a job whose first checkpoint of a step >= `step` takes `seconds` longer between writing and
    renaming (tests/hooks/sitecustomize.py), so a fault can be aimed at a save in progress."""
    path = os.environ.get("PYTHONPATH")
    return {"MEDMINDS_TEST_SLOW_SAVE": f"{step}:{seconds}", "PYTHONPATH": f"{HOOKS}{os.pathsep + path if path else ''}"}


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Environment variables for the block (a job submitted inside keeps them across requeues)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def chaos_counter(jobs_dir: Path, name: str, steps: int, sleep_s: float = 0.25, resources: str = "") -> str:
    """A counter experiment logging every step, checkpointing every CHAOS_EVERY steps, with an id no other run on
    the shared cluster has (its job name); returns its name."""
    import uuid

    params = f'marker = "{uuid.uuid4().hex}"\nlog_steps = true\ncheckpoint_every_steps = {CHAOS_EVERY}\n'
    write_job(jobs_dir, name, counter_job(steps=steps, sleep_s=sleep_s, resources=params + resources))
    return name


PREEMPTIBLE_A100S = '[resources.micro]\ngpu = "a100"\ngpus = 1\npartition = "gpu-preempt"'


def step_sequence(run: runs.Run, timed: bool = False) -> list[Any]:
    """The steps a run's attempts did, in order, from metrics.jsonl (the engine's and the counter's per-step
    records; loss and evaluation records left out); timed: (step, time) pairs."""
    from medminds_hpc import fileio

    plain = {"time", "shard", "step", "epoch", "value"}
    records = [r for r in fileio.read_jsonl(run.dir / runs.METRICS_LOG) if "step" in r and not r.get("eval") and set(r) <= plain]
    return [(r["step"], r["time"]) if timed else r["step"] for r in records]


def last_step(run_id: str) -> int:
    """The newest step the run's job has done (metrics.jsonl is appended every step; run.json only every 10 s)."""
    done = step_sequence(runs.get(run_id))
    return done[-1] if done else 0


def steps_redone(run: runs.Run, faults: int) -> list[int]:
    """Steps done twice per fault: where an attempt started at or below the step the previous one reached.
    A fault after which the run went on from the very next step counts 0."""
    redone, last, last_at = [], 0, 0.0
    for step, at in step_sequence(run, timed=True):
        if step < last or (step == last and at - last_at > 1.0):  # a stop logs its step twice, at once
            redone.append(last - step + 1)
        last, last_at = step, at
    return redone + [0] * max(0, faults - len(redone))


def counter_outcome(scenario: str, run_ids: list[str], steps: int, reference: int, faults: int, started: float) -> ChaosOutcome:
    """Wait for every run to end; compare each with the uninterrupted value `reference`."""
    for run_id in run_ids:
        wait_for(run_id, {runs.COMPLETED, runs.FAILED, runs.CANCELLED}, timeout=400)
    ended = [runs.get(run_id) for run_id in run_ids]
    results = [r.result() or {} for r in ended]
    return ChaosOutcome(
        scenario, faults, len(ended),
        equal=sum(r.state == runs.COMPLETED and res.get("value") == reference for r, res in zip(ended, results)),
        redone=[n for r in ended for n in steps_redone(r, faults if len(ended) == 1 else 0)],
        interval=CHAOS_EVERY, lost=sum(steps - int(res.get("steps", 0)) for res in results),
        seconds=round(time.time() - started, 1))


def counter_reference(steps: int) -> int:
    """The uninterrupted counter run's value, run in this process through the job's entry point (sleep_s only
    paces the steps: 0 here)."""
    import uuid

    run = run_job(f"reference-micro-{uuid.uuid4().hex[:8]}", "tests.stages.counter",
                  {"steps": steps, "sleep_s": 0.0, "checkpoint_every_steps": CHAOS_EVERY})
    assert run.state == runs.COMPLETED, run.data.get("error")
    return run.result()["value"]


def preempt_now(run_id: str, hold_s: float = 2) -> str:
    """Take the a100 node from the run's job (partition priority) and wait until the job has stopped for it."""
    before = runs.get(run_id).data.get("requeues", 0)
    hog = preempt_victim_node(hold_s)
    deadline = time.time() + 60
    while runs.get(run_id).data.get("requeues", 0) <= before:
        assert time.time() < deadline, f"{run_id}: not preempted within 60 s by job {hog}"
        time.sleep(0.1)
    return hog


def saving_now(run: runs.Run, at_least: int) -> int | None:
    """The step of a checkpoint (>= at_least) the run is writing now (its staging folder exists, not yet renamed)."""
    import re

    root = run.checkpoint_dir
    staged = [*root.glob(".trainer/checkpoint-*"), *root.glob(".tmp-step-*")] if root.is_dir() else []
    steps = [int(m.group(1)) for p in staged if (m := re.search(r"(?:checkpoint-|tmp-step-)(\d+)", p.name))]
    return next((s for s in sorted(steps) if s >= at_least), None)


def chaos_preemptions(jobs_dir: Path, rng: Any, k: int, reference: Callable[[int], int], aim_at_save: bool = True,
                      save_delay_s: float = 6.0) -> ChaosOutcome:
    """K preemptions of one run at random steps, 15 steps apart at most (Slurm takes ~3 s = ~12 steps to stop the
    job); with aim_at_save the last one while a checkpoint is being written: that save, past every other fault,
    is made slow (slow_save) for longer than the preemption takes to arrive."""
    started = time.time()
    slow = 15 * (k - 1) + 30
    steps = slow + 2 * CHAOS_EVERY
    name = chaos_counter(jobs_dir, f"preempted-{rng.randrange(10**6)}", steps, resources=PREEMPTIBLE_A100S)
    at = [2 + 15 * i + rng.randrange(10) for i in range(k - 1 if aim_at_save else k)]
    with environ(**(slow_save(slow, save_delay_s) if aim_at_save else {})):
        (p,) = submit.submit(name, slurm_options(), say=quiet)
    stops: list[int] = []
    notes: list[str] = []
    for i in range(k):
        wait_for_attempt(p.run_id, i + 1, timeout=240)
        if i < len(at):
            wait_for(p.run_id, {"RUNNING"}, timeout=240, also=lambda st: last_step(p.run_id) >= at[i])
        else:
            deadline = time.time() + 120
            while (saving := saving_now(runs.get(p.run_id), slow)) is None:
                assert time.time() < deadline, f"{p.run_id}: no save of a step >= {slow} seen within 120 s"
                time.sleep(0.02)
        preempt_now(p.run_id)
        stopped = runs.get(p.run_id).data["progress"]["0"]["step"]  # written at the stop, before the requeue
        stops.append(stopped)
        notes.append(f"stopped at step {stopped}" + ("" if i < len(at) else f" (aimed at the save of step {saving})"))
    outcome = counter_outcome("preemptions", [p.run_id], steps, reference(steps), k, started)
    outcome.notes += notes
    if aim_at_save:  # the stop flag came while step N's save ran: seen at the next step boundary, N + 1
        outcome.checks["a preemption landed during a save"] = stops[-1] == saving + 1
    return outcome


def chaos_time_outs(jobs_dir: Path, rng: Any, reference: Callable[[int], int], profiles: Path,
                    signal_delay_s: int = 55) -> ChaosOutcome:
    """A run longer than its 1-minute limit, with USR2 `signal_delay_s` before the limit (a copy of the dev profile
    saying so, in `profiles`). slurmctld looks at time limits every 30 s, so the warning comes 5-35 s into each
    allocation: 65 s of work cannot fit in two, and the run times out at least twice before it finishes."""
    started = time.time()
    profiles.mkdir(parents=True, exist_ok=True)
    dev = (ROOT / "slurm" / "dev.toml").read_text()
    assert "\nsignal_delay_s = 30\n" in dev, "slurm/dev.toml no longer says signal_delay_s = 30"
    (profiles / "dev.toml").write_text(dev.replace("\nsignal_delay_s = 30\n", f"\nsignal_delay_s = {signal_delay_s}\n"))
    steps = 260 + rng.randrange(10)
    name = chaos_counter(jobs_dir, f"timed-{rng.randrange(10**6)}", steps, resources='[resources.micro]\ntime = "00:01:00"')
    with environ(MEDMINDS_PROFILES=str(profiles)):
        (p,) = submit.submit(name, slurm_options(), say=quiet)
    outcome = counter_outcome("time-outs", [p.run_id], steps, reference(steps), 0, started)
    run = runs.get(p.run_id)
    # a warning before the job's handler is installed is requeued by submitit, unrecorded: that start made no attempt
    outcome.faults = max(int(run.data.get("requeues", 0)), len(run.data.get("attempts", [])) - 1)
    outcome.redone += [0] * max(0, outcome.faults - len(outcome.redone))
    outcome.checks["timed out several times"] = outcome.faults >= 2
    outcome.checks["requeued, one job id"] = len(set(run.job_ids)) == 1
    outcome.notes.append(f"{outcome.faults} time-outs in {len(run.data.get('attempts', []))} attempts")
    return outcome


def chaos_disk_full(jobs_dir: Path, rng: Any, reference: Callable[[int], int]) -> ChaosOutcome:
    """The run's checkpoint folder on a small tmpfs that fills up after a random checkpoint: the next save fails,
    the job fails with one line saying so, the checkpoint before stays valid, and the same `submit` after the space
    is freed continues from it."""
    from medminds_hpc.training.checkpoint import CheckpointStore

    started = time.time()
    steps = 30
    name = chaos_counter(jobs_dir, f"filled-{rng.randrange(10**6)}", steps, sleep_s=0.25)
    (p,) = submit.submit(name, slurm_options(), say=quiet)
    run = runs.get(p.run_id)
    assert not run.checkpoint_dir.exists(), "the job saved before the small filesystem could be mounted"
    keep = CHAOS_EVERY * rng.randrange(1, 4)
    with small_filesystem(run.checkpoint_dir):
        deadline = time.time() + 120
        while not (run.checkpoint_dir / f"step-{keep:08d}").is_dir():
            assert time.time() < deadline, f"{run.id}: checkpoint {keep} not written within 120 s"
            time.sleep(0.05)
        filler = fill_up(run.checkpoint_dir)
        st = wait_for(run.id, {runs.FAILED, runs.COMPLETED}, timeout=120)
        error = run.reload().data.get("error", "")
        kept = CheckpointStore(run.checkpoint_dir).latest()
        filler.unlink()
        (again,) = submit.submit(name, slurm_options(), say=quiet)
        outcome = counter_outcome("full disk", [again.run_id], steps, reference(steps), 1, started)
    failed_at = keep + CHAOS_EVERY
    outcome.checks.update({
        "the job failed": st.state == runs.FAILED,
        "with one line naming the step, the folder and what to do": "\n" not in error and error.startswith(
            f"no space left on device while saving checkpoint step {failed_at} in {run.checkpoint_dir}; free space there and resubmit"),
        "status shows it": bool(error) and st.detail == error,
        "the checkpoint before stayed valid": kept is not None and kept.step == keep,
        "resubmitted as the same run": again.run_id == p.run_id,
    })
    outcome.notes.append(error)
    return outcome


def slurm_jobs_named(name: str) -> list[str]:
    """Every job Slurm has by this name: still queued (squeue) or already accounted (sacct)."""
    queued = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.split()
    accounted = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1days", "--name", name, "--format=JobID"],
                               capture_output=True, text=True).stdout.split()
    return sorted({j.split("_")[0] for j in queued + accounted})


def one_job_in_slurm(run: runs.Run, settle_s: float = 20) -> bool:
    """Whether the run recorded one job and Slurm knows exactly that one by the run's name (a job that just ended
    can be missing from squeue before accounting has it: asked again until `settle_s`)."""
    deadline = time.time() + settle_s
    while (named := slurm_jobs_named(run.id)) != run.job_ids and time.time() < deadline:
        time.sleep(0.5)
    return len(run.job_ids) == 1 and named == run.job_ids


def chaos_concurrent_submits(jobs_dir: Path, rng: Any, reference: Callable[[int], int], n: int = 4) -> ChaosOutcome:
    """2N `medminds submit` started at once, in random order: N of one experiment (one run, one job) and one each of
    N other experiments (N runs, one job each)."""
    started = time.time()
    steps = 3
    tag = rng.randrange(10**6)
    same = chaos_counter(jobs_dir, f"same-{tag}", steps, sleep_s=0.0)
    others = [chaos_counter(jobs_dir, f"other{i}-{tag}", steps, sleep_s=0.0) for i in range(n)]
    names = [same] * n + others
    rng.shuffle(names)
    procs = [subprocess.Popen(cli("submit", name, "-d", "micro", "--cluster", "dev", "--executor", "slurm", "--no-wait"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    answers = [(p.communicate(timeout=180), p.returncode) for p in procs]
    made = {name: runs.find(f"{name}-micro") for name in [same, *others]}
    outcome = counter_outcome("concurrent submits", [run.id for run in made.values()], steps, reference(steps), 2 * n, started)
    outcome.redone = []
    outcome.checks.update({
        "every submit answered 0": all(code == 0 for _, code in answers),
        "one run and one job per experiment": all(one_job_in_slurm(run.reload()) for run in made.values()),
        "runs made": len(made) == n + 1 and len(set(r.id for r in made.values())) == n + 1,
    })
    if not outcome.checks["every submit answered 0"]:
        outcome.notes += [err for (_, err), code in answers if code]
    return outcome


CHAOS_EXPERT = dict(epochs=2.0, max_train_rows=160, eval_rows=100, holdout_rows=100, checkpoint_every_steps=CHAOS_EVERY)


def expert_reference() -> runs.Run:
    """The uninterrupted chaos expert (CHAOS_EXPERT on the tiny model, synthetic micro data prepared here), run in
    this process on one torch thread: the job runs on one too, and only then are results bitwise equal."""
    import uuid

    prepare_synthetic()
    run_id = f"expert-task-micro-{uuid.uuid4().hex[:8]}"
    with one_thread():
        run_expert(run_id, small_expert(**CHAOS_EXPERT))
    return runs.get(run_id)


def adapter_sha256(run: runs.Run) -> str:
    from medminds_hpc import fileio

    return fileio.sha256_file(run.artifacts_dir / "adapter" / "adapter_model.safetensors")


CHAOS_CLASSIFIER = dict(adapter="none", lora_dropout=0.0, learning_rate=1e-2, batch_size=8, max_steps=24, max_train_rows=96,
                        eval_rows=24, eval_batch_size=8, max_length=128, checkpoint_every_steps=4, selection="validation")


def classifier_reference() -> runs.Run:
    """The uninterrupted chaos classifier (CHAOS_CLASSIFIER on the tiny model), run in this process on one thread."""
    import uuid

    prepare_synthetic()
    with one_thread():
        return run_job(f"baseline-classifier-micro-{uuid.uuid4().hex[:8]}", "baseline-classifier", dict(CHAOS_CLASSIFIER))


def classifier_files_sha256(run: runs.Run) -> dict[str, str]:
    """sha256 of every saved classifier file (LoRA and head weights) of a run."""
    from medminds_hpc import artifacts, fileio

    folder = artifacts.path(run, artifacts.CLASSIFIER)
    return {str(f.relative_to(folder)): fileio.sha256_file(f) for f in sorted(folder.rglob("*.safetensors"))}


def chaos_classifier_kill(jobs_dir: Path, rng: Any, reference: runs.Run) -> ChaosOutcome:
    """The classifier baseline's worker killed with SIGKILL (no signal, no save) once a random checkpoint exists, then
    the same `submit`: it resumes from its newest checkpoint and ends with the reference's metrics and weights."""
    from medminds_hpc.training.checkpoint import CheckpointStore

    started = time.time()
    cfg = CHAOS_CLASSIFIER
    every = int(cfg["checkpoint_every_steps"])
    name = f"classifier-chaos-{rng.randrange(10**6)}"
    write_job(jobs_dir, name, f'stage = "baseline-classifier"\n[params]\n{params_toml(cfg)}\n')
    with environ(OMP_NUM_THREADS="1"):
        (p,) = submit.submit(name, slurm_options(model="tiny"), say=quiet)
        run = runs.get(p.run_id)
        after = every * rng.randrange(1, int(cfg["max_steps"]) // every - 1)
        deadline = time.time() + 240
        while not any(c.step >= after for c in CheckpointStore(run.checkpoint_dir).all()) or not job_worker_pids(run.reload().job_ids[-1]):
            assert time.time() < deadline, f"{run.id}: no checkpoint at step {after} or later within 240 s"
            assert run.reload().state != runs.COMPLETED, f"{run.id}: finished before it could be killed"
            time.sleep(0.02)
        for pid in job_worker_pids(run.job_ids[-1]):
            os.kill(pid, 9)
        wait_for(run.id, {runs.FAILED, runs.CANCELLED}, timeout=120)
        (p,) = submit.submit(name, slurm_options(model="tiny"), say=quiet)
    wait_for(run.id, {runs.COMPLETED, runs.FAILED, runs.CANCELLED}, timeout=300)
    run.reload()
    timing = {"train_seconds", "eval_seconds", "classifier", "run"}
    got = {k: v for k, v in (run.metrics() or {}).items() if k not in timing}
    want = {k: v for k, v in reference.metrics().items() if k not in timing}
    same = run.state == runs.COMPLETED and got == want and classifier_files_sha256(run) == classifier_files_sha256(reference)
    resumed = run.data.get("resumed_from_steps", [])
    return ChaosOutcome(
        "classifier kill -9 + resubmit", 1, 1, equal=int(same), redone=[], interval=every,
        lost=0 if run.state == runs.COMPLETED else int(cfg["max_steps"]), seconds=round(time.time() - started, 1),
        checks={"resumed from a checkpoint at or after the one seen before the kill": bool(resumed) and min(resumed) >= after,
                "one resubmission": len(set(run.job_ids)) == 2},
        notes=[f"killed after checkpoint {after}, resumed from {resumed}"])


def chaos_expert_preemption(jobs_dir: Path, rng: Any, reference: runs.Run, save_delay_s: float = 6.0) -> ChaosOutcome:
    """The expert on the dev cluster, preempted while it saves the checkpoint at the end of a random epoch (made
    slow), so the stop request is pending through that epoch's evaluation, which runs next: the job validates,
    stops at the next step boundary, and ends with the reference's metrics and adapter bytes."""
    from medminds_hpc import fileio

    started = time.time()
    cfg = small_expert(**CHAOS_EXPERT)
    per_epoch = -(-cfg.max_train_rows // cfg.batch_size)  # no holdout from MedMCQA-free ARC rows beyond max_train_rows
    epoch_end = per_epoch * rng.randrange(1, int(cfg.epochs))
    name = f"expert-chaos-{rng.randrange(10**6)}"  # a run of its own each time (the run id holds the name)
    write_job(jobs_dir, name, 'stage = "expert"\n[params]\n' + params_toml(cfg) + "\n" + PREEMPTIBLE_A100S + "\n")
    with environ(OMP_NUM_THREADS="1", **slow_save(epoch_end, save_delay_s)):
        (p,) = submit.submit(name, slurm_options(model="tiny"), say=quiet)
    deadline = time.time() + 300
    while saving_now(runs.get(p.run_id), epoch_end) != epoch_end:
        assert time.time() < deadline, f"{p.run_id}: the save of step {epoch_end} was not seen within 300 s"
        time.sleep(0.02)
    preempt_now(p.run_id)
    stopped = runs.get(p.run_id).data["progress"]["0"]["step"]
    wait_for(p.run_id, {runs.COMPLETED, runs.FAILED, runs.CANCELLED}, timeout=400)
    run = runs.get(p.run_id)
    got, want = run.metrics() or {}, reference.metrics()
    same = run.state == runs.COMPLETED and all(got.get(k) == want[k] for k in ("accuracy", "task_accuracy", "confusion_matrix", "per_subject", "epochs", "steps"))
    evals = [r["epoch"] for r in fileio.read_jsonl(run.dir / runs.METRICS_LOG) if r.get("eval")]
    return ChaosOutcome(
        "expert preempted at an epoch's end", 1, 1, equal=int(same and adapter_sha256(run) == adapter_sha256(reference)),
        redone=steps_redone(run, 1), interval=cfg.checkpoint_every_steps, lost=0 if run.state == runs.COMPLETED else int(want["steps"]),
        seconds=round(time.time() - started, 1),
        checks={"stopped at the step after the epoch's save and evaluation": stopped == epoch_end + 1,
                "every epoch evaluated once": sorted(evals) == [float(e) for e in range(1, int(cfg.epochs) + 1)],
                "resumed, not restarted": bool(run.data.get("resumed_from_steps")) and min(run.data["resumed_from_steps"]) > 0},
        notes=[f"stopped at step {stopped}, epoch end {epoch_end}"])


def job_worker_pids(job_id: str) -> list[int]:
    """The job's Python processes (the stage, not slurmstepd), by SLURM_JOB_ID in their environment: this cluster's
    nodes share one host, so `scontrol listpids` cannot tell them apart."""
    wanted = f"SLURM_JOB_ID={job_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().startswith("python") and \
                    wanted in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def chaos_kills(jobs_dir: Path, rng: Any, reference: Callable[[int], int], k: int = 2) -> ChaosOutcome:
    """kill -9 of the worker at K random steps, each followed by the same `submit`: every resubmission resumes
    from the newest checkpoint, so at most one checkpoint interval (plus the steps a kill takes to land) is redone."""
    started = time.time()
    steps = 20 + 15 * k
    name = chaos_counter(jobs_dir, f"killed-{rng.randrange(10**6)}", steps)
    (p,) = submit.submit(name, slurm_options(), say=quiet)
    at = [3 + 15 * i + rng.randrange(10) for i in range(k)]
    for i, step in enumerate(at):
        job = runs.get(p.run_id).job_ids[-1]
        wait_for(p.run_id, {"RUNNING"}, timeout=240, also=lambda st: last_step(p.run_id) >= step and bool(job_worker_pids(job)))
        for pid in job_worker_pids(job):
            os.kill(pid, 9)
        wait_for(p.run_id, {runs.FAILED, runs.CANCELLED}, timeout=120)
        (p,) = submit.submit(name, slurm_options(), say=quiet)
    outcome = counter_outcome("kill -9 + resubmit", [p.run_id], steps, reference(steps), k, started)
    outcome.checks["never restarted from step 0"] = 1 not in step_sequence(runs.get(p.run_id))[1:]
    return outcome


def tree_snapshot(root: Path, root_mtime: bool = True) -> dict[str, tuple[str, int, int, int]]:
    """Every path under `root` (and `root` itself) with its kind, size, mode and mtime: equal snapshots before and
    after a command mean it wrote nothing there (no file, no lock, no empty folder, nothing touched). `root_mtime`
    False leaves the root folder's own mtime out (`medminds prepare` checks a home is writable with a probe file)."""
    root = Path(root)
    if not os.path.lexists(root):
        return {}
    out = {}
    for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
        st = p.lstat()
        kind = "dir" if p.is_dir() and not p.is_symlink() else "file" if p.is_file() else "other"
        mtime = st.st_mtime_ns if root_mtime or p != root or kind != "dir" else 0
        out[p.relative_to(root).as_posix() if p != root else "."] = (kind, st.st_size if kind == "file" else 0, st.st_mode, mtime)
    return out
