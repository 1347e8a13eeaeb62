"""A checkpointing test stage: a seeded random walk whose final value proves exact resume.

Each step draws from an RNG whose state is checkpointed, so a resumed run only ends with the same value as an
uninterrupted one if it restarts exactly where it saved (same step, same RNG state).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Config:
    steps: int = 20
    sleep_s: float = 0.0
    seed: int = 0
    fail: bool = False
    checkpoint_every_steps: int = 1000
    checkpoint_every_minutes: float = 60.0
    keep_checkpoints: int = 2
    marker: str = ""
    log_steps: bool = False  # every step into metrics.jsonl, so steps done twice across attempts can be counted


def run(ctx: Any, cfg: Config) -> dict[str, Any]:
    if cfg.fail:
        raise RuntimeError("this stage was told to fail")
    ckpt = ctx.resume()
    if ckpt is not None:
        state = ckpt.load()
        step, value, rng = state["step"], state["value"], random.Random()
        rng.setstate(state["rng"])
    else:
        step, value, rng = 0, 0, random.Random(cfg.seed)
    first_step = step
    while step < cfg.steps:
        time.sleep(cfg.sleep_s)
        value = (value * 31 + rng.randrange(1000)) % 1_000_003
        step += 1
        logged = {"value": value} if cfg.log_steps else {}
        ctx.step_done(step, lambda: {"step": step, "value": value, "rng": rng.getstate()}, total=cfg.steps, **logged)
    return {"value": value, "steps": step, "resumed_from": first_step, "shard": ctx.shard}  # kept in run.json


def expected_value(steps: int, seed: int = 0) -> int:
    rng, value = random.Random(seed), 0
    for _ in range(steps):
        value = (value * 31 + rng.randrange(1000)) % 1_000_003
    return value
