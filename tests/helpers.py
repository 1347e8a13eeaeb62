"""Helpers shared by the tests (no tests here): paths, option builders, test experiments, stage contexts,
tiny experts, and waiting on the dev Slurm cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

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
