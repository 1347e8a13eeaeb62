"""Helpers shared by the baseline tests (no tests here): synthetic prepared data, stage contexts, expert runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medminds_hpc import runs
from medminds_hpc.context import StageContext
from tests.helpers_data import MEDMCQA_SAMPLE


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


def make_expert(name: str, seed: int, model: str = "tiny", targets: tuple[str, ...] = ("q_proj", "v_proj", "up_proj")) -> runs.Run:
    """A finished expert-<name> run holding artifacts/adapter: a LoRA of `model` with random, non-zero B (so it
    visibly changes the model), saved the way the expert stage saves its adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medminds_hpc.modeling.loading import load_model

    run = runs.create(f"expert-{name}-micro-{seed:08d}", {"experiment": f"expert-{name}", "dataset": "micro", "model": model})
    base, _ = load_model(model)
    torch.manual_seed(seed)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=list(targets), init_lora_weights=False))
    lora.save_pretrained(str(run.artifacts_dir / "adapter"))
    run.update(lambda d: d.update(state=runs.COMPLETED))
    return run
