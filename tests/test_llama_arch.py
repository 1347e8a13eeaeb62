"""The stages on a base that is not Mistral: a tiny random-init LlamaForCausalLM (tied embeddings, like SmolLM2)
with two freshly initialised adapters. The architecture facts come from the model, LoRA adapts its projections,
and every combining stage's construction (the ensemble heads over the two adapters' states, the mixed decoder
layers of the mixture of experts, the letter-initialised classifier) works on it; a family with other layer and
projection names (GPT-2) is read from its own model, and what cannot be found is a one-line error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medminds_hpc.data import prompts
from medminds_hpc.errors import UserError
from medminds_hpc.modeling import arch, ensemble_heads, features, moe
from medminds_hpc.modeling import tokenizer as tokenizers
from medminds_hpc.modeling.heads import LastTokenClassifier
from medminds_hpc.modeling.lora import add_lora
from medminds_hpc.modeling.moe_spec import MoESpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = ("task", "domain")


@pytest.fixture(scope="module")
def tok():
    return tokenizers.load_tokenizer_from(tokenizers.BUILTIN)


def tiny_llama(tok) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def two_adapters(tok):
    """The tiny Llama with adapters "task" and "domain" (random non-zero B, so each visibly changes the model)."""
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(tok)
    torch.manual_seed(1)
    lm = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=list(arch.lora_targets(base)),
                                         init_lora_weights=False), adapter_name="task")
    torch.manual_seed(2)
    lm.add_adapter("domain", LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                        init_lora_weights=False))
    for p in lm.parameters():
        p.requires_grad = False
    return lm.eval()


def batch(tok, n: int = 3):
    rows = [{"question": f"Which organ number {i} filters blood?", "options": ["Liver", "Kidney", "Heart", "Lung"], "answer": 1}
            for i in range(n)]
    enc = prompts.encode_prompts(tok, [prompts.mcq_prompt(r) for r in rows], max_length=96, padding_side="right")
    return [prompts.mcq_prompt(r) for r in rows], enc["input_ids"], enc["attention_mask"]


def test_architecture_facts_come_from_the_llama_model(tok):
    lm = tiny_llama(tok)
    assert arch.decoder_layer_class(lm) == {"LlamaDecoderLayer"}
    assert arch.decoder_layers(lm) is lm.model.layers
    assert arch.decoder_of(lm) is lm.model
    assert arch.lora_targets(lm) == arch.STANDARD_PROJECTIONS


def test_add_lora_adapts_every_projection_of_every_llama_layer(tok):
    from peft.tuners.lora import LoraLayer

    model = add_lora(tiny_llama(tok), r=4, alpha=8, dropout=0.0, seed=0)
    wrapped = {name.split(".layers.")[1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    expected = {f"{i}.{part}.{proj}" for i in range(2) for part, projs in
                (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
                for proj in projs}
    assert wrapped == expected
    assert arch.lora_targets(model) == arch.STANDARD_PROJECTIONS  # read through the peft wrappers too


def test_ensemble_heads_build_over_two_llama_adapters(tok):
    texts, _, _ = batch(tok)
    lm = two_adapters(tok)
    states = features.hidden_states(lm, tok, texts, names=NAMES, batch_size=2, max_length=96)
    assert states["task"].shape == (3, 64) and not torch.allclose(torch.from_numpy(states["task"]), torch.from_numpy(states["domain"]))
    weight = lm.get_base_model().get_output_embeddings().weight  # tied to the input embeddings
    letters = prompts.letter_token_ids(tok)
    task, domain = torch.from_numpy(states["task"]), torch.from_numpy(states["domain"])
    for method in ensemble_heads.METHODS:
        head = ensemble_heads.build_head(method, "letters", weight, letters, seed=0)
        logits = head(task, domain)
        assert logits.shape == (3, 4) and torch.isfinite(logits).all()
        torch.nn.functional.cross_entropy(logits, torch.ones(3, dtype=torch.long)).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), method


@pytest.mark.parametrize("mix", ["outputs", "deltas"])
def test_mixed_decoder_layers_on_llama(tok, mix):
    """Forced to one expert, the mixture is exactly base + that adapter; routed, every router learns."""
    _, ids, mask = batch(tok)
    lm = two_adapters(tok)
    expected = {}
    for name in NAMES:
        lm.base_model.set_adapter(name)
        with torch.no_grad():
            expected[name] = lm(input_ids=ids, attention_mask=mask).logits
    mixture = moe.install(lm, MoESpec(hard=False, mix=mix, granularity="token"), names=NAMES, seed=0)
    assert all(isinstance(layer, moe.MixedDecoderLayer) for layer in arch.decoder_layers(lm))
    for name in NAMES:
        with torch.no_grad(), mixture.forced(name):
            got = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert torch.allclose(got, expected[name], atol=1e-5), name
    model = moe.MoEClassifier(lm, mixture, head_init="letters", letter_ids=prompts.letter_token_ids(tok))
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixture.router_parameters())
    with mixture.plain_layers():
        assert not any(isinstance(layer, moe.MixedDecoderLayer) for layer in arch.decoder_layers(lm))


def test_letter_head_on_llama_starts_at_the_next_word_letters(tok):
    lm = tiny_llama(tok)
    _, ids, mask = batch(tok)
    letters = prompts.letter_token_ids(tok)
    clf = LastTokenClassifier(lm, "letters", letters, seed=0).eval()
    with torch.no_grad():
        got = clf(input_ids=ids, attention_mask=mask)["logits"]
        full = lm(input_ids=ids, attention_mask=mask).logits
    last = mask.sum(1) - 1
    assert torch.allclose(got, full[torch.arange(3), last][:, letters], atol=1e-4)


def test_another_family_is_read_from_its_own_model(tok):
    """GPT-2 keeps its decoder under .transformer, its layers in .h and its projections as Conv1D."""
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    assert arch.decoder_of(lm) is lm.transformer
    assert arch.decoder_layers(lm) is lm.transformer.h
    assert arch.lora_targets(lm) == ("c_attn", "c_proj", "c_fc")


def test_a_model_without_a_decoder_stack_is_a_user_error():
    with pytest.raises(UserError, match=r"Sequential has no decoder stack under \.model"):
        arch.decoder_of(nn.Sequential(nn.Linear(2, 2)))


def test_a_decoder_without_a_layer_list_is_a_user_error(tok):
    lm = tiny_llama(tok)
    lm.model.extra = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # a second list of the layer count
    lm._no_split_modules = ["SomethingElse"]
    with pytest.raises(UserError, match="cannot tell which module list of LlamaModel holds the decoder layers"):
        arch.decoder_layers(lm)


def test_decoder_layers_returning_a_tuple_are_refused_by_mix_outputs(tok, monkeypatch):
    """Older layer classes return (hidden_states, ...): summing such outputs cannot work, and the error says so."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    plain = LlamaDecoderLayer.forward
    monkeypatch.setattr(LlamaDecoderLayer, "forward", lambda self, *a, **k: (plain(self, *a, **k),))
    _, ids, mask = batch(tok)
    lm = two_adapters(tok)
    moe.install(lm, MoESpec(hard=False, mix="outputs", granularity="token"), names=NAMES, seed=0)
    with pytest.raises(UserError, match=r"decoder layer LlamaDecoderLayer returns a tuple, not the hidden-states tensor.*"
                                        r"use mix='deltas'"):
        lm(input_ids=ids, attention_mask=mask, use_cache=False)
