"""Model registry and loading: tiny models built offline and cached, both tokenizers, local paths, errors,
the bitsandbytes 4-bit path on CPU (with one QLoRA step), and proof that the Hub is never contacted."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from medminds_hpc.errors import UserError
from medminds_hpc.modeling import tiny as tiny_models
from medminds_hpc.modeling import tokenizer as tokenizers
from medminds_hpc.modeling.loading import list_models, load_model, load_tokenizer, resolve_model
from tests.helpers import MISTRAL_TOKENIZER

needs_mistral_tokenizer = pytest.mark.skipif(
    not (MISTRAL_TOKENIZER / "tokenizer.json").exists(),
    reason=f"the real Mistral tokenizer is not at {MISTRAL_TOKENIZER} (../shared/data is absent outside CI); "
    "the built-in tokenizer tests still cover loading",
)
PROMPTS = ["Question: Which nerve supplies the diaphragm? Answer: A", "Answer:"]


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    """No stray $MEDMINDS_TOKENIZER from the developer's shell (conftest keeps the Hub offline)."""
    monkeypatch.delenv(tokenizers.TOKENIZER_ENV, raising=False)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory) -> Path:
    """One model cache for the tests that only need a model (building one is the slow part)."""
    return tmp_path_factory.mktemp("shared-home")


@pytest.fixture
def cached_home(shared_home, monkeypatch) -> Path:
    monkeypatch.setenv("MEDMINDS_HOME", str(shared_home))
    return shared_home


def logits(model, tok, prompts=PROMPTS) -> torch.Tensor:
    batch = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# registry --------------------------------------------------------------------------------------------------


def test_registry_lists_the_models_and_their_sources():
    names = [m.name for m in list_models()]
    assert names == ["mistral-7b-instruct", "biomistral-7b", "tiny", "tiny-4layer", "tiny-pretrained", "smollm2-135m-instruct"]
    paper = resolve_model("mistral-7b-instruct")
    assert paper.kind == "hub" and paper.hub_id == "mistralai/Mistral-7B-Instruct-v0.2"
    assert paper.unsloth_id == "unsloth/mistral-7b-instruct-v0.2-bnb-4bit"
    assert resolve_model("biomistral-7b").hub_id == "BioMistral/BioMistral-7B"
    assert resolve_model("tiny").tiny == tiny_models.TinyConfig(64, 2, 4, 2, 128, 1024)
    assert resolve_model("tiny-4layer").tiny.num_layers == 4 and resolve_model("tiny-4layer").tiny.hidden_size == 256


def test_unknown_names_and_wrong_directories_say_what_works(tmp_path):
    with pytest.raises(UserError) as e:
        resolve_model("mistral-8b")
    msg = str(e.value)
    assert "mistral-7b-instruct" in msg and "biomistral-7b" in msg and "tiny" in msg and "local directory" in msg
    with pytest.raises(UserError, match="huggingface-cli download"):
        load_model("someorg/some-model")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="attach"):
        resolve_model(str(tmp_path / "adapter"))
    with pytest.raises(UserError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="quantize"):
        load_model("tiny", quantize="8bit")
    with pytest.raises(UserError, match="not a tokenizer directory"):
        load_model("tiny", tokenizer=tmp_path)


# tiny models -----------------------------------------------------------------------------------------------


def test_tiny_builds_once_then_loads_from_the_cache(medminds_home, monkeypatch):
    model, tok = load_model("tiny", tokenizer="builtin")
    cached = list((medminds_home / "models").iterdir())
    assert [p.name.startswith("tiny-") for p in cached] == [True]
    files = {p.name for p in cached[0].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "medminds.json"} <= files
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tok) and logits(model, tok).shape[-1] == len(tok)
    assert not model.training and next(model.parameters()).dtype == torch.float32

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the second load must come from the cache, not a new build")

    monkeypatch.setattr(tiny_models, "build", no_rebuild)
    again, tok2 = load_model("tiny")  # no tokenizer configured: the built-in one, same cache entry
    assert same_weights(model, again)
    assert tok2(PROMPTS[0]).input_ids == tok(PROMPTS[0]).input_ids
    assert list((medminds_home / "models").iterdir()) == cached
    assert load_tokenizer("tiny")(PROMPTS[0]).input_ids == tok(PROMPTS[0]).input_ids


def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone(cached_home, tmp_path, monkeypatch):
    tok = tokenizers.load_tokenizer_from(tokenizers.BUILTIN)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_models.build(tiny_models.TINY, tok)
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's RNG
    b = tiny_models.build(tiny_models.TINY, tok)
    assert same_weights(a, b)
    c = tiny_models.build(tiny_models.TinyConfig(seed=1), tok)
    assert not same_weights(a, c)
    # two homes build the same model independently
    m1, _ = load_model("tiny")
    monkeypatch.setenv("MEDMINDS_HOME", str(tmp_path / "elsewhere"))
    m2, _ = load_model("tiny")
    assert same_weights(m1, m2) and same_weights(m1, a)


def test_builtin_tokenizer_looks_like_mistrals():
    tok = tokenizers.load_tokenizer_from(tokenizers.BUILTIN)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 3
    letters = tokenizers.check_letter_tokens(tok)
    assert len(set(letters)) == 4
    ids = tok("Answer:").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert tok("Answer: A").input_ids == ids + [letters[0]]  # appending " A" adds exactly one token
    assert tok.decode(tok("Fever, 38.5 °C").input_ids, skip_special_tokens=True) == "Fever, 38.5 °C"
    again = tokenizers.build_builtin_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


@needs_mistral_tokenizer
def test_tiny_with_the_real_mistral_tokenizer(cached_home, monkeypatch):
    model, tok = load_model("tiny", tokenizer=MISTRAL_TOKENIZER)
    assert len(tok) == 32000 and model.config.vocab_size == 32000
    assert logits(model, tok).shape[-1] == 32000
    assert tokenizers.check_letter_tokens(tok) == [330, 365, 334, 384]
    assert tok.pad_token_id == tok.unk_token_id == 0  # Mistral has no pad token: pad = unk
    assert tok("Answer: A").input_ids == tok("Answer:").input_ids + [330]
    # the environment variable selects it too, and it is a different cache entry from the built-in one
    monkeypatch.setenv(tokenizers.TOKENIZER_ENV, str(MISTRAL_TOKENIZER))
    again, tok2 = load_model("tiny")
    assert same_weights(model, again) and len(tok2) == 32000
    assert len(load_tokenizer("tiny")) == 32000
    builtin, _ = load_model("tiny", tokenizer="builtin")
    assert builtin.config.vocab_size != 32000
    names = sorted(p.name for p in (cached_home / "models").iterdir() if p.name.startswith("tiny-"))
    assert len(names) == 2


def test_a_local_directory_loads_as_a_model(cached_home, tmp_path):
    model, tok = load_model("tiny")
    saved = tmp_path / "my model"  # a space in the path on purpose
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    local, local_tok = load_model(str(saved))
    assert resolve_model(str(saved)).kind == "local"
    assert torch.allclose(logits(model, tok), logits(local, local_tok))
    assert local_tok.pad_token_id == tok.pad_token_id
    # weights only: the tokenizer must then come from elsewhere
    weights_only = tmp_path / "weights-only"
    model.save_pretrained(weights_only)
    with pytest.raises(UserError, match="tokenizer="):
        load_model(str(weights_only))
    m2, t2 = load_model(str(weights_only), tokenizer=saved)
    assert torch.allclose(logits(model, tok), logits(m2, t2))


def test_classification_head_knows_the_pad_token(cached_home):
    model, tok = load_model("tiny", for_classification=True)
    assert model.config.num_labels == 4 and model.config.id2label[0] == "A"
    assert model.config.pad_token_id == tok.pad_token_id
    batch = logits(model, tok)
    alone = logits(model, tok, PROMPTS[1:])
    assert batch.shape == (2, 4)
    assert torch.allclose(batch[1], alone[0], atol=1e-5)  # the short row is read at its last real token


# the Hub ---------------------------------------------------------------------------------------------------


def test_tiny_loads_never_open_a_network_connection(medminds_home, monkeypatch):
    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def is_loopback(address) -> bool:
        host = address[0] if isinstance(address, tuple) else address
        return host is None or not isinstance(host, (str, bytes)) or str(host) in ("localhost", "::1") or str(host).startswith(("127.", "/"))

    def guarded(real):
        def connect(self, address):
            if not is_loopback(address):
                attempts.append(address)
                raise OSError(f"test: network access to {address} is forbidden")
            return real(self, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback((host,)):
            attempts.append(("dns", host))
            raise OSError(f"test: name lookup of {host} is forbidden")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    model, tok = load_model("tiny")  # a fresh home: build, save and reload
    load_model("tiny")
    load_tokenizer("tiny")
    if (MISTRAL_TOKENIZER / "tokenizer.json").exists():
        load_model("tiny", tokenizer=MISTRAL_TOKENIZER)
        load_tokenizer("tiny", tokenizer=MISTRAL_TOKENIZER)
    local = medminds_home / "local"
    model.save_pretrained(local)
    tok.save_pretrained(local)
    load_model(str(local))
    assert attempts == []


# bitsandbytes 4-bit on CPU ---------------------------------------------------------------------------------


def test_4bit_on_cpu_forward_and_one_qlora_step(cached_home):
    bnb = pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model

    start = time.perf_counter()
    model, tok = load_model("tiny", quantize="4bit", device="cpu")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q k v o gate up down in each layer; lm_head stays full precision
    assert quantized[0].weight.dtype == torch.uint8
    reference, _ = load_model("tiny", quantize="none")
    q, full = logits(model, tok), logits(reference, tok)  # an eval forward first: the bnb CPU repacking trap
    assert torch.isfinite(q).all() and q.shape == full.shape
    assert torch.corrcoef(torch.stack([q.flatten(), full.flatten()]))[0, 1] > 0.95  # 4-bit ~ the fp32 model
    loaded_s = time.perf_counter() - start

    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    lora.train()
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    frozen_before = quantized[0].weight.detach().clone()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.0)
    batch = tok(PROMPTS, padding=True, return_tensors="pt")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    loss = lora(**batch, labels=labels).loss
    loss.backward()
    # with B initialised to zero, every lora_B gets a gradient only if it flows through the 4-bit layers
    no_grad = [n for n, p in trainable.items() if "lora_B" in n and not p.grad.abs().sum() > 0]
    assert no_grad == []
    optimizer.step()
    changed = [n for n, p in trainable.items() if not torch.equal(before[n], p)]
    assert {n for n in changed if "lora_B" in n} == {n for n in trainable if "lora_B" in n}
    assert torch.equal(quantized[0].weight, frozen_before)  # the 4-bit base is frozen
    print(f"4-bit CPU: load+forward {loaded_s:.2f}s, QLoRA step {time.perf_counter() - start - loaded_s:.2f}s")


def test_tiny_4layer_and_a_concurrent_build(medminds_home, monkeypatch):
    model, tok = load_model("tiny-4layer")
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (4, 256)
    assert logits(model, tok).shape[-1] == len(tok)

    # another process finishes the same build while ours is still writing: ours yields to it, leaving no temp dir
    real_build = tiny_models.build
    winner: list[Path] = []

    def racing_build(cfg, tokenizer):
        if not winner:
            monkeypatch.setattr(tiny_models, "build", real_build)
            winner.append(tiny_models.ensure_cached("tiny", tiny_models.TINY, tokenizers.BUILTIN))
            monkeypatch.setattr(tiny_models, "build", racing_build)
        return real_build(cfg, tokenizer)

    monkeypatch.setattr(tiny_models, "build", racing_build)
    path = tiny_models.ensure_cached("tiny", tiny_models.TINY, tokenizers.BUILTIN)
    assert winner == [path]
    assert sorted(p.name for p in (medminds_home / "models").iterdir() if p.name.startswith(".")) == []
    assert load_model(str(path))[0].config.hidden_size == 64
