"""A test stage with a Config and no run function yet: submitting it must be refused before anything is written."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    steps: int = 1
