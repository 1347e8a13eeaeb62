"""Tiny Mistral-architecture models for tests and benchmarks: built with a seeded init on first use and cached.

`tiny` and `tiny-4layer` are random; `tiny-pretrained` is `tiny` trained on a synthetic multiple-choice table of
its own first (`pretrain`), a base whose adapters can be merged.

The cache lives at $MEDMINDS_HOME/models/<name>-<hash>/ (e.g. tiny-3f2a9c01b7de/), where the hash covers the
architecture, the seed and the tokenizer (the built-in recipe or the bytes of the tokenizer files). The directory
is an ordinary save_pretrained folder (config.json, model.safetensors, tokenizer files) plus medminds.json saying
how it was made, so it also loads as a local model path. It is written under a temporary name and renamed into
place, so a killed or concurrent build never leaves a half-written model behind.

    python -c "from medminds_hpc.modeling.loading import load_model; m, t = load_model('tiny'); print(m.config)"
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medminds_hpc import fileio, paths
from medminds_hpc.modeling import tokenizer as tokenizers

FORMAT_VERSION = 2  # bump when the build below changes what weights a config produces
INFO_FILE = "medminds.json"


@dataclass(frozen=True)
class TinyConfig:
    """A Mistral-architecture shape; the vocabulary comes from the tokenizer."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 1024
    seed: int = 0
    pretrain_steps: int = 0  # > 0: all weights trained this many steps on synthetic.pretraining_rows (see pretrain)


TINY = TinyConfig()
TINY_4LAYER = TinyConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512)
TINY_PRETRAINED = TinyConfig(pretrain_steps=200)
PRETRAIN_BATCH = 32
PRETRAIN_LR = 2e-3


def models_dir() -> Path:
    return paths.home() / "models"


def cache_key(name: str, cfg: TinyConfig, source: str | Path) -> str:
    blob = json.dumps(
        {"v": FORMAT_VERSION, "name": name, "config": dataclasses.asdict(cfg), "tokenizer": tokenizers.source_fingerprint(source)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_dir(name: str, cfg: TinyConfig, source: str | Path) -> Path:
    return models_dir() / f"{name}-{cache_key(name, cfg, source)}"


def mistral_config(cfg: TinyConfig, tokenizer: Any) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # wider than Mistral's 0.02: a random base this small needs expressive random features (and non-uniform
        # logits) for a LoRA on top of it to learn anything in a test's few hundred steps
        initializer_range=0.1,
    )


def build(cfg: TinyConfig, tokenizer: Any) -> Any:
    """A freshly initialised MistralForCausalLM in fp32; the same cfg and vocabulary give the same weights.
    The global RNG is left untouched (fork_rng), so building does not perturb a training run's seed."""
    import torch
    from transformers import MistralForCausalLM

    config = mistral_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MistralForCausalLM(config)
        if cfg.pretrain_steps:
            pretrain(model, tokenizer, cfg.pretrain_steps, cfg.seed)
    return model.to(torch.float32).eval()


def pretrain(model: Any, tokenizer: Any, steps: int, seed: int) -> None:
    """Train all weights of a fresh tiny model on the invented table of `synthetic.pretraining_rows`, in both
    prompt templates, to answer with the letter of the cue's partner.

    Why: a random base has nothing for two adapters to share, so each LoRA expert on it builds its own way from a
    cue to a letter, and merging two such adapters adds two conflicting circuits. Pretrained this way, the base
    already reads a question's cue and answers with a letter (~100% on held-out rows of its table, chance on the two
    kinds' tables), as an instruction-tuned base answers multiple-choice questions; an expert then only adds its
    facts. About 40 s on one CPU thread; the cache keeps the result."""
    import torch

    from medminds_hpc.data import prompts, synthetic

    rows = synthetic.pretraining_rows(steps * PRETRAIN_BATCH, seed)
    letters = torch.tensor(prompts.letter_token_ids(tokenizer))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the answer is read at the last position of every row
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)
    warmup = 10
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (1 - s / steps))
    model.train()
    try:
        for step in range(steps):
            batch = rows[step * PRETRAIN_BATCH:(step + 1) * PRETRAIN_BATCH]
            texts = [prompts.mcq_prompt(r, prompts.TEMPLATES[i % len(prompts.TEMPLATES)]) for i, r in enumerate(batch)]
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            logits = model(**enc).logits[:, -1]
            target = letters[torch.tensor([r["answer"] for r in batch])]
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    finally:
        tokenizer.padding_side = side


def ensure_cached(name: str, cfg: TinyConfig, source: str | Path) -> Path:
    """The cache directory for this tiny model, building and saving it first if it is not there yet."""
    final = cache_dir(name, cfg, source)
    if (final / "config.json").exists():
        return final
    tok = tokenizers.load_tokenizer_from(source)
    model = build(cfg, tok)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {"name": name, "config": dataclasses.asdict(cfg), "tokenizer": str(source),
                "tokenizer_fingerprint": tokenizers.source_fingerprint(source), "format": FORMAT_VERSION}
        fileio.atomic_write_json(tmp / INFO_FILE, info)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache is shared like the rest of $MEDMINDS_HOME
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
            # another process finished the same build first; its copy is identical
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    fileio.fsync_dir(final.parent)
    return final
