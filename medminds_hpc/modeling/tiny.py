"""Tiny Mistral-architecture models for tests and benchmarks: built with a seeded init on first use and cached.

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


TINY = TinyConfig()
TINY_4LAYER = TinyConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512)


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
    return model.to(torch.float32).eval()


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
