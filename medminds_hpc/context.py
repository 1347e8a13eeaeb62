"""What a stage sees of its run: its record, upstream runs, data folder, progress, and the stop-and-save protocol.

A stage checkpoints in one of two ways (see the stage contract in `medminds_hpc/stages/__init__.py`):
- through the shared training engine (`training.engine.train(ctx, plan)`), which saves the Trainer's trainable
  state into `ctx.checkpoints` and honours `ctx.stop_requested()` at every step boundary by itself; or
- a loop without a Trainer (feature extraction, scoring with state worth keeping) calls `ctx.resume()` once,
  then `ctx.step_done(step, state_fn)` after every unit of work: it saves when a save is due (every N steps or
  M minutes) or when the job was asked to stop (preemption, approaching time-out), and in the latter case
  raises StopRequested after saving, so the job requeues and resumes from that step.

In a job of several tasks (DDP ranks: `rank` of `world_size`), every rank runs the stage; only rank 0 writes
(`is_rank_zero` guards every write made through the context), and the stop flag is agreed across ranks so that all
of them save and stop at the same step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medminds_hpc import distributed, fileio, paths, runs
from medminds_hpc.training.checkpoint import Checkpoint, CheckpointStore


class StopRequested(Exception):
    """Raised after the state is saved because the job must stop now (it will be requeued)."""


@dataclass
class StageContext:
    run: runs.Run
    shard: int = 0
    num_shards: int = 1
    stop_requested: Callable[[], bool] = lambda: False
    progress_every_s: float = 10.0
    checkpoint_every_steps: int = 200
    checkpoint_every_minutes: float = 20.0
    keep_checkpoints: int = 2
    is_rank_zero: bool = True
    rank: int = 0
    world_size: int = 1
    _last_progress: float = field(default=0.0, init=False)
    _last_save: float = field(default_factory=time.monotonic, init=False)
    _last_save_step: int = field(default=0, init=False)
    _pending: dict[str, Any] | None = field(default=None, init=False)

    @property
    def run_dir(self) -> Path:
        return self.run.dir

    @property
    def record(self) -> dict[str, Any]:
        return self.run.data

    @property
    def dataset(self) -> str:
        return self.record["dataset"]

    @property
    def model(self) -> str | None:
        return self.record.get("model")

    def need(self, experiment: str) -> runs.Run:
        """The finished upstream run this run depends on."""
        run_id = self.record.get("needs", {}).get(experiment)
        if run_id is None:
            raise KeyError(f"run {self.run.id} does not depend on {experiment!r}; it needs {sorted(self.record.get('needs', {}))}")
        return runs.load(self.run_dir.parent / run_id)

    def data_dir(self) -> Path | None:
        """The folder of the prepare run this run needs (None: no such need, the default data/<size>)."""
        if "prepare" not in self.record.get("needs", {}):
            return None
        return paths.prepared_dir(self.need("prepare").id)

    # checkpoints ---------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> CheckpointStore:
        sub = f"shard-{self.shard}" if self.num_shards > 1 else ""
        return CheckpointStore(self.run.checkpoint_dir / sub, keep=self.keep_checkpoints)

    def resume(self) -> Checkpoint | None:
        """The newest valid checkpoint on disk (never what a requeued pickle remembered)."""
        return self.checkpoints.latest()

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
        if self.is_rank_zero:
            self.checkpoints.save(step, state, meta)
        self.saved(step)

    def saved(self, step: int) -> None:
        """Note a save made elsewhere (the Trainer's), for the every-N-minutes rule."""
        self._last_save, self._last_save_step = time.monotonic(), step

    def save_due_by_time(self) -> bool:
        return time.monotonic() - self._last_save >= self.checkpoint_every_minutes * 60

    def record_best(self, metric: str, value: float) -> None:
        if self.is_rank_zero:
            self.run.update(lambda d: d.update(best={"metric": metric, "value": value}))

    def record_headline(self, metrics: dict[str, Any], epoch: float) -> None:
        """Keep the last validated value of the run's headline metric in run.json, for `medminds status`."""
        name = self.record.get("headline_metric") or "accuracy"
        value = metrics.get(name)
        if self.is_rank_zero and isinstance(value, (int, float)) and not isinstance(value, bool):
            self.run.update(lambda d: d.update(headline={"metric": name, "value": value, "epoch": epoch}))

    def step_done(self, step: int, state: Callable[[], dict[str, Any]], total: int | None = None, **metrics: Any) -> None:
        """Call after every optimizer step: saves when due or asked to stop; raises StopRequested then."""
        stop, late = distributed.any_rank(self.stop_requested(), self.save_due_by_time())
        due = step - self._last_save_step >= self.checkpoint_every_steps or late
        if stop or due:
            self.save(step, state())
        self.progress(step, total, **metrics)
        if stop:
            self.progress(step, total, force=True, **metrics)
            raise StopRequested(f"stopped at step {step} after saving")

    # progress and metrics ------------------------------------------------------------------------------
    def progress(self, step: int, total: int | None = None, force: bool = False, **metrics: Any) -> None:
        """Record progress in run.json (throttled) so `medminds status` can show it."""
        if metrics:
            self.log({"step": step, **metrics})
        self._pending = {"step": step, "total": total, "at": runs.now(), **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
        t = time.monotonic()
        if force or t - self._last_progress >= self.progress_every_s:
            self._last_progress = t
            self.flush_progress()

    def flush_progress(self) -> None:
        """Write the latest progress to run.json now (the job calls this when the stage returns)."""
        info, self._pending = self._pending, None
        if info is None:
            return

        def change(d: dict[str, Any]) -> None:
            d.setdefault("progress", {})[str(self.shard)] = info

        if self.is_rank_zero:
            self.run.update(change)

    def log(self, record: dict[str, Any]) -> None:
        if self.is_rank_zero:
            fileio.append_jsonl(self.run_dir / runs.METRICS_LOG, {"time": time.time(), "shard": self.shard, **record})

    def write_metrics(self, evaluation: dict[str, Any], *, train_seconds: float, eval_seconds: float) -> None:
        """metrics.json: evaluation results only, with the run's identity (medminds_hpc/results.py)."""
        from medminds_hpc import results

        if self.is_rank_zero:
            results.write(self.run, evaluation, train_seconds=train_seconds, eval_seconds=eval_seconds)

    def write_json(self, name: str, obj: Any) -> None:
        """A stage's own report file in the run directory (e.g. card.json, doctor.json), written atomically."""
        if name == "metrics.json":
            raise ValueError("metrics.json holds evaluation results only: use write_metrics")
        if self.is_rank_zero:
            fileio.atomic_write_json(self.run_dir / name, obj)
