"""Merging two experts' LoRA adapters: seconds per method, and scoring with one merged adapter vs each expert.

    .venv/bin/python benchmarks/merge.py                      # tiny-4layer, 400 questions
    .venv/bin/python benchmarks/merge.py --model tiny --questions 970 --threads 2

Two random experts (r 16, all seven projections; `_common.random_expert`) on one base. Prints the seconds
`add_weighted_adapter` takes for linear, ties and dare-ties (the merge is redone from scratch for each), and
questions/s of letter scoring with the merged adapter beside the task expert's alone: a merge costs one adapter at
inference, like a single expert.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4layer", help="registered model name (tiny-4layer, tiny, ...)")
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    os.environ.setdefault("MEDMINDS_HOME", tempfile.mkdtemp(prefix="medminds-bench-"))

    import torch
    from _common import random_expert

    from medminds_hpc.data.synthetic import medmcqa_rows
    from medminds_hpc.modeling.adapters import set_active_adapter
    from medminds_hpc.modeling.features import load_experts
    from medminds_hpc.modeling.scoring import letter_logprobs
    from medminds_hpc.stages.merge import MERGED, Config, merge_adapters

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = medmcqa_rows(args.questions, seed=0, split="validation")
    experts = {"task": random_expert("task", args.model, 1), "domain": random_expert("domain", args.model, 2)}
    model, tok = load_experts(experts)
    print(f"model {args.model}, {len(rows)} questions, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    for method in ("linear", "ties", "dare-ties"):
        started = time.perf_counter()
        merge_adapters(model, Config(method=method, weights=[1.0, 1.0]), ["task", "domain"])  # type: ignore[arg-type]
        print(f"merge {method:<9} {time.perf_counter() - started:8.3f} s")
        model.delete_adapter(MERGED)
    merge_adapters(model, Config(method="ties", weights=[1.0, 1.0]), ["task", "domain"])
    for adapter in ("task", MERGED):
        set_active_adapter(model, adapter)
        letter_logprobs(model, tok, rows[: args.batch_size], "paper", batch_size=args.batch_size, max_length=512)  # warm-up
        started = time.perf_counter()
        letter_logprobs(model, tok, rows, "paper", batch_size=args.batch_size, max_length=512)
        print(f"scoring with {adapter:<7} {len(rows) / (time.perf_counter() - started):8.1f} questions/s")


if __name__ == "__main__":
    main()
