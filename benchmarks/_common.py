"""What several benchmarks share: a throw-away $MEDMINDS_HOME, the real data when ../shared/data has it, random experts.

    from _common import bench_home, question_rows, random_expert   # from a script in benchmarks/
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = SHARED_DATA / "medmcqa" / "dev-sample.jsonl"
TOKENIZER = SHARED_DATA / "tokenizers" / "mistral-7b-v0.1"


@contextlib.contextmanager
def bench_home() -> Iterator[None]:
    """Runs and tiny models go to a temporary $MEDMINDS_HOME, deleted on exit, unless one is set (child processes
    inherit it); tiny models get the real Mistral tokenizer when ../shared/data has it. Enter before anything
    reads either variable."""
    if TOKENIZER.exists():
        os.environ.setdefault("MEDMINDS_TOKENIZER", str(TOKENIZER))
    if "MEDMINDS_HOME" in os.environ:
        yield
        return
    home = tempfile.mkdtemp(prefix="medminds-bench-")
    os.environ["MEDMINDS_HOME"] = home
    try:
        yield
    finally:
        shutil.rmtree(home, ignore_errors=True)


def question_rows(n: int, split: str = "validation") -> tuple[list[dict[str, Any]], str]:
    """(n canonical MedMCQA rows, where they come from): the real sample, repeated under new ids when n exceeds its
    970 questions (prompts of real lengths matter for timing, not their novelty), else seeded synthetic rows."""
    if not SAMPLE.exists():
        from medminds_hpc.data.synthetic import medmcqa_rows

        return medmcqa_rows(n, seed=0, split=split), "synthetic"
    from medminds_hpc.data.medmcqa import load_medmcqa

    sample = load_medmcqa(SAMPLE, splits=("validation",), show_progress=False)["validation"].to_list()
    rows = [dict(sample[i % len(sample)]) for i in range(n)]
    for i, row in enumerate(rows):
        if i >= len(sample):
            row["id"] = f"{row['id']}-copy{i // len(sample)}"
    source = "real MedMCQA" if n <= len(sample) else f"real MedMCQA ({len(sample)} repeated under new ids)"
    return rows, source


def random_expert(name: str, model: str, seed: int):
    """A finished expert-<name> run holding a random LoRA of `model` (what the expert stage leaves)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medminds_hpc import artifacts, runs
    from medminds_hpc.modeling.loading import load_model

    run = runs.create(f"expert-{name}-bench-{seed:08d}", {"experiment": f"expert-{name}", "dataset": "micro", "model": model})
    base, _ = load_model(model)
    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    lora.save_pretrained(str(artifacts.path(run, artifacts.ADAPTER)))
    run.update(lambda d: d.update(state=runs.COMPLETED))
    return run


def dir_bytes(directory: Path) -> int:
    """Bytes of the files directly in `directory` (a feature cache: shards and manifest)."""
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def cache_size_text(size: int, questions: int, hidden: int, vocab: int) -> str:
    """Two lines: the cache's MB per 1,000 questions beside rows x hidden x 4 bytes x 2 experts, what one expert's full
    logits would take, and the same cache for Mistral-7B (hidden 4,096)."""
    return (f"cache: {size / questions * 1000 / 1e6:.3f} MB per 1,000 questions (rows x hidden x 4 x 2 experts = "
            f"{hidden * 4 * 2 * 1000 / 1e6:.3f} MB; one expert's full logits would be {vocab * 4 * 1000 / 1e6:.1f} MB)\n"
            f"Mistral-7B (hidden 4096): {4096 * 4 * 2 * 1000 / 1e6:.1f} MB per 1,000 questions for the two experts")
