"""The feature cache of two frozen experts: extraction throughput and size on disk per 1,000 questions.

    .venv/bin/python benchmarks/feature_cache.py                      # tiny-4layer, 400 real MedMCQA questions
    .venv/bin/python benchmarks/feature_cache.py --model tiny --questions 970 --threads 2

Two experts with random LoRAs (r 16, all seven projections) on one base, the real Mistral tokenizer when
../shared/data has it (else the built-in one), the real MedMCQA sample (else synthetic rows). Prints questions/s
of a whole extraction (both experts, tokenisation and atomic shard writes included), a resumed call that finds
every shard valid, and the cache's bytes per 1,000 questions beside rows x hidden x 4 x 2 and what one expert's
full-vocabulary logits would take.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_home, cache_size_text, dir_bytes, question_rows, random_expert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4layer", help="registered model name (tiny-4layer, tiny, ...)")
    ap.add_argument("--questions", type=int, default=400, help="how many questions (the real sample's 970 repeat)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rows-per-shard", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--template", default="paper", choices=["paper", "harness"])
    with bench_home():
        measure(ap.parse_args())


def measure(args: argparse.Namespace) -> None:
    import torch

    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.heads import decoder_of

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, source = question_rows(args.questions)
    experts = {"task": random_expert("task", args.model, 1), "domain": random_expert("domain", args.model, 2)}
    model, tok = features.load_experts(experts)
    hidden = int(decoder_of(model).config.hidden_size)
    spec = features.cache_spec(experts, rows, split="validation", template=args.template, rows_per_shard=args.rows_per_shard)
    features.hidden_states(model, tok, ["Question: warm-up\nAnswer:"], batch_size=1)  # allocator, kernels

    out = Path(tempfile.mkdtemp(prefix="medminds-features-"))
    t0 = time.perf_counter()
    features.extract(out, spec, rows, model, tok, batch_size=args.batch_size)
    t_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = features.extract(out, spec, rows, model, tok, batch_size=args.batch_size)
    t_check = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = features.load(out, spec)
    t_load = time.perf_counter() - t0
    size = dir_bytes(out)
    assert loaded is not None and not again
    shutil.rmtree(out)

    n = len(rows)
    print(f"model {args.model} (hidden {hidden}, vocabulary {len(tok)}) on {next(model.parameters()).device}, "
          f"{torch.get_num_threads()} threads; {n} {source} questions, {args.template} prompt, batch {args.batch_size}, "
          f"{spec.num_shards} shards of {args.rows_per_shard}")
    print(f"extraction, both experts: {n / t_extract:8.1f} questions/s ({t_extract:.2f} s)")
    print(f"resumed call, all valid:  {t_check:.3f} s (nothing recomputed); load: {t_load:.3f} s")
    print(cache_size_text(size, n, hidden, len(tok)))


if __name__ == "__main__":
    main()
