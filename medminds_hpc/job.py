"""The in-job entry point: StageJob runs one stage of one run and survives preemption and time-outs.

submitit pickles `StageJob(run_dir)` and nothing else: every requeued start reads run.json and the newest
valid checkpoint from disk, so a stale pickle cannot roll a run back. On USR2 (Slurm's preemption or
time-out warning) the signal handler only sets a flag; the stage saves at its next step boundary, then the
job requeues itself. Doing the save inside the handler hangs intermittently (locks held by the interrupted
code), so it is never done there.

A job of several tasks (one per GPU) is one torch.distributed process group (medminds_hpc/distributed.py):
every rank runs the stage, only rank 0 writes run.json and requeues on a stop, the others just leave. A rank
that dies alone makes the survivors' next collective fail; that is a fault like a preemption: the job requeues
(counted in `requeues`, up to max_requeues) and resumes from the newest checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from medminds_hpc import compat, config, distributed, runs
from medminds_hpc.context import StageContext, StopRequested
from medminds_hpc.stages import get_stage
from medminds_hpc.training import checkpoint

log = logging.getLogger("medminds.job")


def _job_env() -> Any | None:
    try:
        return submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (direct call, debug executor)
        return None


def use_allocated_cpus() -> int | None:
    """Limit torch's CPU threads to the CPUs Slurm allocated (unless OMP_NUM_THREADS says otherwise).

    A cluster that does not pin jobs to their CPUs would otherwise let a 1-CPU job start one thread per core of
    the node, slowing it and its neighbours many times over."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if "OMP_NUM_THREADS" in os.environ or not allocated.isdigit() or int(allocated) < 1:
        return None
    os.environ["OMP_NUM_THREADS"] = allocated
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(allocated))
    return int(allocated)


class StageJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str | Path, shard: int = 0) -> None:
        self.run_dir = str(run_dir)
        self.shard = shard
        self._stop_signal: int | None = None

    # submitit calls this (inside its own USR2 handler) only if USR2 arrives before __call__ installs ours.
    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(StageJob(self.run_dir, self.shard))

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum  # nothing else: see the module docstring

    def __call__(self) -> dict[str, Any] | None:
        self._stop_signal = None
        use_allocated_cpus()
        env = _job_env()
        if env is not None:
            signal.signal(compat.usr_signal(env), self._on_signal)
        ranks = distributed.export_env() if env is not None and env.num_tasks > 1 else distributed.Ranks()
        run = runs.load(self.run_dir)
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        job_id = job_id or (env.job_id if env is not None else None)
        if ranks.is_zero:
            runs.record_attempt(run, job_id, self.shard)
        while True:
            try:
                return self._run_stage(run, env, ranks)
            except StopRequested as stop:
                log.warning("%s", stop)
                if env is None or env.__class__.__name__ == "DebugJobEnvironment":
                    self._stop_signal = None  # in-process: resume at once from the checkpoint just written
                    continue
                if not ranks.is_zero:
                    sys.exit(0)  # rank 0 requeues the whole job; a failing exit here could end the step before it does
                self._requeue_and_exit(run, env)
            except BaseException as e:
                lost = ranks.distributed and distributed.peer_lost(e)
                echo = lost and self._failed_elsewhere(run)  # the rank that failed recorded why; keep its reason
                if lost and not echo and env is not None:
                    log.error("rank %d of %d lost a peer (%s); requeuing the job", ranks.rank, ranks.world_size, e)
                    self._requeue_and_exit(run, env, fault=f"{job_id}:{os.environ.get('SLURM_RESTART_COUNT', '0')}")
                if not isinstance(e, SystemExit) and not echo:
                    message = (checkpoint.failure_reason(e, run.checkpoint_dir) or f"{type(e).__name__}: {e}") + (f" (rank {ranks.rank} of {ranks.world_size})" if ranks.distributed else "")
                    run.update(lambda d: d.update(state=runs.FAILED, error=message, traceback=traceback.format_exc()[-4000:]))
                raise
            finally:
                distributed.shutdown()

    @staticmethod
    def _failed_elsewhere(run: runs.Run) -> bool:
        """Another rank recorded a real error before dying: the collective's error is its echo, not a fault."""
        return run.reload().state == runs.FAILED

    def _run_stage(self, run: runs.Run, env: Any | None, ranks: distributed.Ranks) -> dict[str, Any] | None:
        record = run.reload().data
        stage = get_stage(record["stage"])
        cfg = config.build(stage.config_class(), record.get("params", {}), f"{run.path} params")
        fn = stage.run_function()
        ctx = StageContext(
            run=run,
            shard=self.shard,
            num_shards=int(record.get("shards", 1)),
            stop_requested=lambda: self._stop_signal is not None,
            checkpoint_every_steps=getattr(cfg, "checkpoint_every_steps", 200),
            checkpoint_every_minutes=getattr(cfg, "checkpoint_every_minutes", 20.0),
            keep_checkpoints=getattr(cfg, "keep_checkpoints", 2),
            is_rank_zero=ranks.is_zero,
            rank=ranks.rank,
            world_size=ranks.world_size,
        )
        started = time.time()
        try:
            result = fn(ctx, cfg)
        finally:
            ctx.flush_progress()
        elapsed = time.time() - started

        def finish(d: dict[str, Any]) -> None:
            done = sorted(set(d.get("shards_done", [])) | {self.shard})
            d["shards_done"] = done
            if len(done) >= int(d.get("shards", 1)):
                d["state"] = runs.COMPLETED
                d["finished_at"] = runs.now()
            d.setdefault("stage_seconds", {})[str(self.shard)] = round(elapsed, 3)
            if isinstance(result, dict):
                d.setdefault("results", {})[str(self.shard)] = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}

        if ranks.is_zero:
            run.update(finish)
        return result

    def _requeue_and_exit(self, run: runs.Run, env: Any, fault: str | None = None) -> None:
        """Requeue this job (it resumes from the checkpoint just saved), or fail when requeued too often.
        `fault`: the start of the job that lost a rank; counted once however many surviving ranks report it."""
        run.reload()
        limit = int(run.data.get("resources", {}).get("max_requeues", 20))
        if run.data.get("requeues", 0) >= limit:
            message = f"requeued {limit} times (preemptions + time-outs + lost ranks); giving up. Raise max_requeues in the cluster profile to allow more."
            run.update(lambda d: d.update(state=runs.FAILED, error=message))
            raise RuntimeError(message)

        def mark(d: dict[str, Any]) -> None:
            if fault is not None:
                if fault in d.get("lost_rank_faults", []):
                    return
                d.setdefault("lost_rank_faults", []).append(fault)
            d["state"] = runs.REQUEUED
            d["requeues"] = d.get("requeues", 0) + 1

        run.update(mark)
        # A fresh pickle: the requeued start reads everything else from disk.
        paths = env.paths
        delayed = submitit.helpers.DelayedSubmission.load(paths.submitted_pickle)
        fresh = self.checkpoint()
        fresh.set_timeout(*compat.delayed_timeout(delayed))
        with compat.temporary_save_path(paths.submitted_pickle) as tmp:
            fresh.dump(tmp)
        try:
            compat.requeue(env, limit - run.data["requeues"])  # local executor: exits with its requeue code
        except subprocess.CalledProcessError as e:
            # Under partition preemption Slurm requeues the job itself and may refuse a second requeue.
            log.warning("scontrol requeue failed (%s); relying on Slurm's own requeue of preempted jobs", e)
        sys.stdout.flush()
        sys.exit(-1)
