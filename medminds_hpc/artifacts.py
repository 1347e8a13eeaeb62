"""Names of what a run leaves under `runs/<run>/artifacts/`, so one stage finds another's output by name.

    from medminds_hpc import artifacts
    adapter = artifacts.path(expert_run, artifacts.ADAPTER)     # a LoRA adapter in peft format

Each name is one directory (or file) written whole through `fileio.replace_dir`, so a reader sees the old
version or the new one, never half of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medminds_hpc.runs import Run

ADAPTER = "adapter"  # an expert's LoRA adapter (peft format: adapter_config.json + adapter_model.safetensors)
EXPERT_INFO = "expert.json"  # what an expert was trained on (data, model), beside its adapter
BEST = "best"  # the trainable weights of the best validated epoch (training engine)
CLASSIFIER = "classifier"  # a classifier baseline: its LoRA + head.safetensors + classifier.json
FEATURES = "features"  # cached last-token hidden states of frozen experts
ROUTER = "router"  # the routers of a mixture of experts
MERGED = "merged"  # the two experts' adapters merged into one LoRA adapter (peft format)
ENSEMBLE = "ensemble"  # an ensemble head over the two experts (+ their adapters when they trained with it)

NAMES = (ADAPTER, EXPERT_INFO, BEST, CLASSIFIER, FEATURES, ROUTER, MERGED, ENSEMBLE)


def path(run: "Run", name: str) -> Path:
    """Where artifact `name` of `run` lives (whether or not it has been written yet)."""
    if name not in NAMES:
        raise ValueError(f"unknown artifact {name!r}; known artifacts: {', '.join(NAMES)}")
    return run.artifacts_dir / name
