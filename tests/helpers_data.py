"""Helpers shared by the data, modeling and baseline tests (no tests here): paths into ../shared/data, small writers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SHARED_DATA

MEDMCQA_SAMPLE = SHARED_DATA / "medmcqa" / "dev-sample.jsonl"
MISTRAL_TOKENIZER = SHARED_DATA / "tokenizers" / "mistral-7b-v0.1"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
