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
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = SHARED_DATA / "medmcqa" / "dev-sample.jsonl"
TOKENIZER = SHARED_DATA / "tokenizers" / "mistral-7b-v0.1"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4layer", help="registered model name (tiny-4layer, tiny, ...)")
    ap.add_argument("--questions", type=int, default=400, help="how many questions (the real sample has 970)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rows-per-shard", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--template", default="paper", choices=["paper", "harness"])
    args = ap.parse_args()
    os.environ.setdefault("MEDMINDS_HOME", tempfile.mkdtemp(prefix="medminds-bench-"))  # runs and tiny models go there
    if TOKENIZER.exists():
        os.environ.setdefault("MEDMINDS_TOKENIZER", str(TOKENIZER))

    import torch

    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.heads import decoder_of

    if args.threads:
        torch.set_num_threads(args.threads)
    if SAMPLE.exists():
        from medminds_hpc.data.medmcqa import load_medmcqa

        rows = load_medmcqa(SAMPLE, splits=("validation",), show_progress=False)["validation"].to_list()[: args.questions]
        source = "real MedMCQA"
    else:
        from medminds_hpc.data.synthetic import medmcqa_rows

        rows, source = medmcqa_rows(args.questions, seed=0, split="validation"), "synthetic"
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
    size = sum(p.stat().st_size for p in out.iterdir())
    assert loaded is not None and not again
    shutil.rmtree(out)

    n = len(rows)
    per_k = size / n * 1000
    print(f"model {args.model} (hidden {hidden}, vocabulary {len(tok)}) on {next(model.parameters()).device}, "
          f"{torch.get_num_threads()} threads; {n} {source} questions, {args.template} prompt, batch {args.batch_size}, "
          f"{spec.num_shards} shards of {args.rows_per_shard}")
    print(f"extraction, both experts: {n / t_extract:8.1f} questions/s ({t_extract:.2f} s)")
    print(f"resumed call, all valid:  {t_check:.3f} s (nothing recomputed); load: {t_load:.3f} s")
    print(f"cache: {per_k / 1e6:.3f} MB per 1,000 questions (rows x hidden x 4 x 2 experts = {hidden * 4 * 2 * 1000 / 1e6:.3f} MB; "
          f"one expert's full logits would be {len(tok) * 4 * 1000 / 1e6:.1f} MB)")
    print(f"Mistral-7B (hidden 4096): {4096 * 4 * 2 * 1000 / 1e6:.1f} MB per 1,000 questions for the two experts")


if __name__ == "__main__":
    main()
