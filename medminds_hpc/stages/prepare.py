"""Read, validate and split the three data sources into $MEDMINDS_HOME/data/<size>/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medminds_hpc.training.options import doc


@dataclass
class Config:
    source: str = field(default="hub", metadata=doc("hub (on clusters), synthetic (offline demo), or a path to local files"))
    split: Literal["first", "stratified"] = field(default="stratified", metadata=doc("first N rows (the paper) or sampled by subject"))
    seed: int = field(default=0, metadata=doc("seed for stratified sampling and ARC option choice"))
    cop_base: int | None = field(default=None, metadata=doc("0 or 1: MedMCQA answer convention when a file is ambiguous"))
    bad_rows: Literal["strict", "skip"] = field(default="strict", metadata=doc("fail on invalid rows, or drop and count them"))
