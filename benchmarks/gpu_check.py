"""The GPU path of each trainable stage, on a random-init Mistral-7B-sized model: one prepared script for a CUDA node.

    .venv/bin/python benchmarks/gpu_check.py [--layers 32] [--steps 20] [--seq 256] [--batch 4]

For each path — bf16 base + LoRA (autocast), 4-bit (bitsandbytes nf4) base + LoRA (QLoRA), and unsloth when
installed — it builds the model from a MistralConfig (no download), runs LoRA training steps through the same
training engine the stages use, then a one-pass next-word scoring batch, and prints tokens/s and peak GPU memory.
On a machine without CUDA it says so and exits 0 (it is not a CPU test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def mistral_7b_config(layers: int):
    from transformers import MistralConfig

    return MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, sliding_window=None)


def build(path: str, layers: int):
    import torch
    from transformers import BitsAndBytesConfig, MistralForCausalLM

    cfg = mistral_7b_config(layers)
    if path == "bf16":
        with torch.device("cuda"):
            return MistralForCausalLM(cfg).to(torch.bfloat16)
    # 4-bit: save a random bf16 model once, reload it through bitsandbytes (the real loading path)
    tmp = os.path.join(tempfile.gettempdir(), f"medminds-gpu-check-{layers}")
    if not os.path.exists(os.path.join(tmp, "config.json")):
        with torch.device("cuda"):
            MistralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp)
        torch.cuda.empty_cache()
    if path == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(model_name=tmp, load_in_4bit=True, dtype=torch.bfloat16)
        model._medminds_backend = "unsloth"
        return model
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return MistralForCausalLM.from_pretrained(tmp, quantization_config=q, device_map={"": 0})


def check(path: str, args) -> None:
    import torch

    from medminds_hpc import runs
    from medminds_hpc.context import StageContext
    from medminds_hpc.modeling.lora import add_lora
    from medminds_hpc.training import engine
    from medminds_hpc.training.options import TrainOptions

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = add_lora(build(path, args.layers), r=16, alpha=16, dropout=0.0, seed=0)
    load_s = time.perf_counter() - t0
    n = args.batch * args.steps
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (n, args.seq), generator=g)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(args.seq, dtype=torch.long), "labels": ids[i]} for i in range(n)]
    opts = TrainOptions(batch_size=args.batch, max_steps=args.steps, optimizer="adamw_8bit", precision="bf16", warmup_steps=0,
                        checkpoint_every_steps=10 ** 6)
    run = runs.create(f"gpu-check-{path}-micro-00000000", {"experiment": "gpu-check", "dataset": "micro"}, force=True)
    t0 = time.perf_counter()
    engine.train(StageContext(run=run, checkpoint_every_steps=10 ** 6), engine.TrainPlan(model=model, train_dataset=data, options=opts))
    torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        t0 = time.perf_counter()
        model(input_ids=ids[: args.batch * 4].cuda()).logits[:, -1].float().cpu()
        torch.cuda.synchronize()
        infer_s = time.perf_counter() - t0
    print(f"{path:8s} layers={args.layers} load {load_s:6.1f} s | train {args.steps * args.batch * args.seq / train_s:8,.0f} tokens/s "
          f"| score {args.batch * 4 * args.seq / infer_s:9,.0f} tokens/s | peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB",
          flush=True)
    del model
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--paths", default="bf16,4bit,unsloth")
    args = ap.parse_args()
    from medminds_hpc.modeling.gpu import cuda_available, unsloth_available

    if not cuda_available():
        print("no CUDA GPU here: this check runs on a GPU node (e.g. `medminds doctor` first, then this script in a job)")
        return
    os.environ.setdefault("MEDMINDS_HOME", tempfile.mkdtemp(prefix="medminds-gpu-check-"))
    import torch

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    for path in args.paths.split(","):
        if path == "unsloth" and not unsloth_available():
            print("unsloth  not installed (MEDMINDS_LOCK=gpu bash install.sh): skipped")
            continue
        try:
            check(path, args)
        except Exception as e:  # report every path, whatever one of them does
            print(f"{path:8s} FAILED: {type(e).__name__}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
