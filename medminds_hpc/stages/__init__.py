"""The stage contract and the registry that finds every stage by name.

A stage is a config dataclass plus a run function (`Stage` below), registered in STAGES:

    @dataclass
    class Config(TrainOptions):                  # every field typed, with a default and metadata=doc("why")
        method: Literal["a", "b"] = field(default="a", metadata=doc("..."))

    def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
        ...                                      # scalars returned here are kept in run.json ("results")

The job (`job.StageJob`) builds `cfg` from the run's resolved params, calls `run` once per attempt, and marks the
run COMPLETED when it returns. What a stage must do:
- read its inputs through the context: `ctx.data_dir()` (the prepared data of its `prepare` run),
  `ctx.need("expert-task")` (a finished upstream run), `artifacts.path(run, artifacts.ADAPTER)` (its files);
- write evaluation results once, at the end, with `ctx.write_metrics(...)` (metrics.json, schema in
  `medminds_hpc/results.py`) and predictions with `training.metrics.write_predictions`; its own reports with
  `ctx.write_json(name, ...)`; its artifacts whole, with `fileio.replace_dir`;
- survive preemption, in one of two ways:
  1. training through the shared engine, `training.engine.train(ctx, TrainPlan(...))`: checkpoints of the
     trainable state, the stop flag, per-epoch validation and the best weights are handled there; or
  2. a loop without a Trainer: `ckpt = ctx.resume()` once, then `ctx.step_done(step, state_fn)` after each unit
     of work; it saves when due or when the job must stop, and then raises StopRequested (the job requeues);
  work that holds no state worth saving (scoring a split) may simply restart, checking `ctx.stop_requested()`;
- import torch & co. only inside `run`: the CLI imports stage modules for their Config classes.

A stage may also be named by a dotted module path ("mypkg.mystage") holding `Config` and `run`, which is how
tests and users add their own stages without editing this file.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping, Protocol, TypeVar

from medminds_hpc.errors import StageNotImplemented, UserError

if TYPE_CHECKING:
    from medminds_hpc.context import StageContext

ConfigT = TypeVar("ConfigT", contravariant=True)


class Stage(Protocol[ConfigT]):
    """A stage's run function: one attempt of one run (called again, from the newest checkpoint, after a requeue)."""

    def __call__(self, ctx: "StageContext", cfg: ConfigT) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class StageInfo:
    name: str
    module: str
    summary: str
    config: str = "Config"
    run: str = "run"
    uses_model: bool = True
    trains: bool = False  # its module's planned_training(cfg, rows per prepared file) -> (file, rows trained on)

    def load_module(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_class(self) -> type:
        return getattr(self.load_module(), self.config)

    @property
    def headline(self) -> str:
        """The metric `medminds status` shows for the stage's runs: its module's HEADLINE, else accuracy."""
        return getattr(self.load_module(), "HEADLINE", "accuracy")

    def planned_training(self, cfg: Any, rows: Mapping[str, int]) -> tuple[str, int] | None:
        """The prepared file a training stage trains on and how many of its rows, from the rows per file."""
        return self.load_module().planned_training(cfg, rows) if self.trains else None

    @property
    def implemented(self) -> bool:
        return callable(getattr(self.load_module(), self.run, None))

    def run_function(self) -> Stage[Any]:
        fn = getattr(self.load_module(), self.run, None)
        if not callable(fn):
            raise StageNotImplemented(
                f"stage {self.name!r} has a config but no run function yet, so it cannot be submitted; "
                f"stages that run: {', '.join(s.name for s in STAGES.values() if s.implemented)}"
            )
        return fn


STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in [
        StageInfo("doctor", "medminds_hpc.stages.doctor", "report what a job sees on a node: GPU, CUDA, libraries, disk, Hub", uses_model=False),
        StageInfo("prepare", "medminds_hpc.stages.prepare", "read, validate and split MedMCQA, ARC and medical-instruct data", uses_model=False),
        StageInfo("expert", "medminds_hpc.stages.expert", "LoRA SFT of one expert (task: ARC, domain: medical instruct)", trains=True),
        StageInfo("baseline-nextword", "medminds_hpc.stages.baseline", "score ' A'..' D' at the answer position", config="NextWordConfig", run="run_nextword"),
        StageInfo("baseline-classifier", "medminds_hpc.stages.baseline", "4-way head + LoRA on a base or expert", config="ClassifierConfig", run="run_classifier", trains=True),
        StageInfo("features", "medminds_hpc.stages.features", "cache both frozen experts' last-token states on MedMCQA (a job array over shards)"),
        StageInfo("ensemble", "medminds_hpc.stages.ensemble", "heads over the two experts' last-token outputs", trains=True),
        StageInfo("merge", "medminds_hpc.stages.merge", "merge the two experts' LoRA adapters into one (linear, TIES, DARE) and score ' A'..' D'"),
        StageInfo("moe", "medminds_hpc.stages.moe", "a router before every decoder layer mixes the two experts", trains=True),
    ]
}


def get_stage(name: str) -> StageInfo:
    if name in STAGES:
        return STAGES[name]
    if "." in name:  # a user's or a test's own stage module, importable from the current directory
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"stage module {name!r} cannot be imported: {e}") from None
        if not hasattr(module, "Config"):
            raise UserError(f"stage module {name!r} has no Config dataclass")
        return StageInfo(name, name, (module.__doc__ or "").strip().split("\n")[0], uses_model=getattr(module, "USES_MODEL", False))
    raise UserError(f"unknown stage {name!r}; valid stages: {', '.join(STAGES)} (or a module path like mypkg.mystage)")
