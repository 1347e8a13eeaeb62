"""The stage registry: every stage is a config dataclass plus a run function, found here by name.

Stage modules import torch & co. only inside their run functions, so the CLI can validate configs without
them. A stage may also be named by a dotted module path ("mypkg.mystage") holding `Config` and `run`, which is
how tests and users add their own stages without editing this file.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from medminds_hpc.errors import StageNotImplemented, UserError


@dataclass(frozen=True)
class StageInfo:
    name: str
    module: str
    summary: str
    config: str = "Config"
    run: str = "run"
    uses_model: bool = True
    planned_in: str = ""  # where an unbuilt stage will come from, for the error message

    def load_module(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_class(self) -> type:
        return getattr(self.load_module(), self.config)

    @property
    def headline(self) -> str:
        """The metric `medminds status` shows for the stage's runs: its module's HEADLINE, else accuracy."""
        return getattr(self.load_module(), "HEADLINE", "accuracy")

    @property
    def implemented(self) -> bool:
        return callable(getattr(self.load_module(), self.run, None))

    def run_function(self) -> Callable[..., Any]:
        fn = getattr(self.load_module(), self.run, None)
        if not callable(fn):
            raise StageNotImplemented(
                f"stage {self.name!r} is not implemented yet{f' ({self.planned_in})' if self.planned_in else ''}; "
                f"implemented stages: {', '.join(s.name for s in STAGES.values() if s.implemented)}"
            )
        return fn


STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in [
        StageInfo("doctor", "medminds_hpc.stages.doctor", "report what a job sees on a node: GPU, CUDA, libraries, disk, Hub", uses_model=False),
        StageInfo("prepare", "medminds_hpc.stages.prepare", "read, validate and split MedMCQA, ARC and medical-instruct data", uses_model=False, planned_in="issue 3: data"),
        StageInfo("expert", "medminds_hpc.stages.expert", "LoRA SFT of one expert (task: ARC, domain: medical instruct)", planned_in="issue 4: training"),
        StageInfo("baseline-nextword", "medminds_hpc.stages.baseline", "score ' A'..' D' at the answer position", config="NextWordConfig", run="run_nextword", planned_in="issue 4: training"),
        StageInfo("baseline-classifier", "medminds_hpc.stages.baseline", "4-way head + LoRA on a base or expert", config="ClassifierConfig", run="run_classifier", planned_in="issue 4: training"),
        StageInfo("ensemble", "medminds_hpc.stages.ensemble", "heads over the two experts' last-token outputs", planned_in="a later issue: ensembles"),
        StageInfo("moe", "medminds_hpc.stages.moe", "a router before every decoder layer mixes the two experts", planned_in="a later issue: mixture of experts"),
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
