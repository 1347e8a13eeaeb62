"""The mixture of two LoRA experts on the tiny model: forced routing is exactly base + that adapter, zero LoRA B is
the base, every router gets a gradient (also under gradient checkpointing), predictions do not depend on padding
or batch, capacity overflow goes where documented, and bad settings are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medminds_hpc.errors import UserError
from medminds_hpc.modeling import features, moe, routers
from medminds_hpc.modeling.moe_spec import MoESpec
from tests.helpers import make_expert

DOMAIN_TARGETS = ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj")  # another set than the task expert's
SPECS = {  # a spread of settings: each kind, both mixes, both granularities
    "linear-hard": MoESpec(hard=True, granularity="token"),
    "linear-soft": MoESpec(hard=False, mix="deltas", granularity="token"),
    "topk": MoESpec(router="topk", granularity="sequence"),
    "mlp-deltas": MoESpec(router="mlp", hard=False, mix="deltas", granularity="token", router_hidden=8),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("moe") / "home"


@pytest.fixture(scope="module")
def experts(module_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        return {"task": make_expert("task", seed=1), "domain": make_expert("domain", seed=2, targets=DOMAIN_TARGETS, r=8)}


@pytest.fixture
def home(experts, module_home, monkeypatch) -> Path:
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)
    return module_home


@pytest.fixture(scope="module")
def batch(experts, module_home):
    """A right-padded batch of 5 token rows of different lengths (row 0 the longest)."""
    torch.manual_seed(0)
    ids = torch.randint(5, 400, (5, 14))
    mask = torch.ones_like(ids)
    for row, length in enumerate((14, 9, 5, 12, 3)):
        mask[row, length:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def reference(experts, module_home, batch):
    """LM logits of the base alone and of base + each adapter alone (each on a fresh base, plain peft)."""
    from peft import PeftModel

    from medminds_hpc.modeling.loading import load_model

    ids, mask = batch
    out = {}
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        out["base"] = load_model("tiny")[0].eval()(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for name, run in experts.items():
            alone = PeftModel.from_pretrained(load_model("tiny")[0], str(run.artifacts_dir / "adapter")).eval()
            out[name] = alone(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return out


def mixture(experts, spec: MoESpec, seed: int = 0):
    lm, _ = features.load_experts(experts)
    return lm, moe.install(lm, spec, seed=seed)


def real(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits[mask.bool()]


# equivalence -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", ["outputs", "deltas"])
def test_forced_routing_is_exactly_base_plus_that_adapter(home, experts, batch, reference, mix):
    ids, mask = batch
    lm, mx = mixture(experts, MoESpec(mix=mix, granularity="sequence", hard=False))
    lm.eval()
    for name in ("task", "domain"):
        with mx.forced(name), torch.no_grad():
            logits = lm(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(real(logits, mask), real(reference[name], mask), atol=1e-5, rtol=0)
    assert (real(reference["task"], mask) - real(reference["domain"], mask)).abs().max() > 1e-2  # two distinct experts
    with torch.no_grad():
        mixed = lm(input_ids=ids, attention_mask=mask).logits  # the routers' own soft mix is neither expert
    assert min((real(mixed, mask) - real(reference[n], mask)).abs().max() for n in ("task", "domain")) > 1e-3


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_with_both_lora_b_zero_the_mixture_is_the_base(home, experts, batch, reference, kind):
    ids, mask = batch
    lm, mx = mixture(experts, SPECS[kind])
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if "lora_B" in name:
                param.zero_()
        for mode in ("eval", "train"):  # train: top-k's noise and capacity act
            getattr(lm, mode)()
            logits = lm(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(real(logits, mask), real(reference["base"], mask), atol=1e-5, rtol=0)


# gradients -------------------------------------------------------------------------------------------------------
def classifier_loss(experts, spec: MoESpec, batch, checkpointing: bool = False, **kw):
    """(classifier, loss after one backward pass) on the batch with labels 0..3."""
    ids, mask = batch
    lm, mx = mixture(experts, spec)
    clf = moe.MoEClassifier(lm, mx, seed=0, **kw)
    if checkpointing:
        clf.activation_checkpointing_enable()
    clf.train()
    torch.manual_seed(1)  # the top-k router's noise
    out = clf(input_ids=ids, attention_mask=mask, labels=torch.arange(len(ids)) % 4)
    out["loss"].backward()
    return clf, out["loss"].detach()


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_router_gets_a_gradient(home, experts, batch, kind):
    clf, _ = classifier_loss(experts, SPECS[kind], batch)
    routers_ = clf.mixture.routers()
    assert len(routers_) == 2
    for i, router in enumerate(routers_):
        for name, param in router.named_parameters():
            if name.endswith("weight"):
                assert param.grad is not None and param.grad.abs().sum() > 0, (kind, i, name)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(".router." in n or n.startswith("score.") for n in trainable)  # experts stay frozen


@pytest.mark.parametrize("mix", ["outputs", "deltas"])
def test_gradient_checkpointing_recomputes_the_same_routing(home, experts, batch, mix):
    spec = MoESpec(router="topk", mix=mix, granularity="token", capacity_factor=0.6)  # noise, capacity, both experts
    plain, loss = classifier_loss(experts, spec, batch)
    ckpt, loss_ckpt = classifier_loss(experts, spec, batch, checkpointing=True)
    layers = ckpt.mixture.layers
    assert all(layer.gradient_checkpointing and not layer.layer.gradient_checkpointing for layer in layers)
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for name, param in ckpt.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], atol=1e-6, rtol=1e-5)


def test_train_experts_makes_both_adapters_trainable(home, experts, batch):
    clf, _ = classifier_loss(experts, SPECS["linear-hard"], batch, train_experts=True, balance_coef=0.1)
    lora = [(n, p) for n, p in clf.named_parameters() if "lora_B" in n]
    assert {".task." in n for n, _ in lora} == {True, False}
    assert all(p.requires_grad and p.grad is not None for _, p in lora)
    assert not any(p.requires_grad for n, p in clf.named_parameters() if "lora_" not in n and ".router." not in n
                   and not n.startswith("score."))


def test_the_balance_loss_is_added_with_its_coefficient(home, experts, batch):
    _, without = classifier_loss(experts, SPECS["topk"], batch)
    clf, with_balance = classifier_loss(experts, SPECS["topk"], batch, balance_coef=0.5)
    balance = clf.mixture.balance_loss()
    assert balance is not None and balance > 0.9
    torch.testing.assert_close(with_balance, without + 0.5 * balance.detach(), atol=1e-5, rtol=0)


# padding and batches ---------------------------------------------------------------------------------------------
def encode(tokenizer, texts, side):
    from medminds_hpc.data import prompts

    return prompts.encode_prompts(tokenizer, texts, max_length=256, padding_side=side)


@pytest.mark.parametrize("kind", ["linear-hard", "topk"])
def test_predictions_do_not_depend_on_padding_or_batch(home, experts, kind):
    from medminds_hpc.data import prompts
    from medminds_hpc.data.synthetic import medmcqa_rows

    lm, tok = features.load_experts(experts)
    clf = moe.MoEClassifier(lm, moe.install(lm, SPECS[kind], seed=3), seed=0).eval()
    texts = [prompts.mcq_prompt(r) for r in medmcqa_rows(8, seed=5, split="validation")]
    texts[3] = texts[3] + " " + texts[4]  # one much longer row: the others carry padding
    results = {}
    with torch.no_grad():
        for side in ("left", "right"):
            b = encode(tok, texts, side)
            results[f"8-{side}"] = clf.with_gates(b["input_ids"], b["attention_mask"])
            ones = [clf.with_gates(**{k: v for k, v in encode(tok, [t], side).items() if k != "last_index"}) for t in texts]
            results[f"1-{side}"] = (torch.cat([o[0] for o in ones]), torch.cat([o[1] for o in ones]))
    logits, gates = results["1-right"]
    for key, (other_logits, other_gates) in results.items():
        assert other_logits.argmax(-1).tolist() == logits.argmax(-1).tolist(), key
        torch.testing.assert_close(other_logits, logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(other_gates, gates, atol=1e-5, rtol=0)


def test_sequence_routing_reads_real_tokens_only():
    router = routers.build_router(MoESpec(granularity="sequence"), hidden_size=16, seed=0).eval()
    torch.manual_seed(0)
    states = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    padded = states.clone()
    padded[1, 3:] = 1e4  # whatever sits at the padding
    a, b = router(states, mask), router(padded, mask)
    torch.testing.assert_close(a.gates, b.gates, atol=0, rtol=0)
    alone = router(states[1:, :3], None)
    torch.testing.assert_close(a.gates[1:], alone.gates, atol=1e-6, rtol=0)
    assert a.gates.shape == (2, 1, 2) and a.stats[0] == 2  # one decision per question, two questions counted


# capacity --------------------------------------------------------------------------------------------------------
def test_overflow_goes_to_the_next_choice_then_to_no_expert():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.95, 0.05], [0.55, 0.45], [0.5, 0.5]])
    real = torch.tensor([True] * 6 + [False])  # the last unit is padding
    placed, rerouted = routers.assign(probs, real, k=1, capacity=2)
    # expert 0 keeps the first two units that chose it (0 and 2); of its overflow (3, 4, 5), expert 1 has room for
    # one after unit 1, its own choice: unit 3, the earliest; units 4 and 5 get no expert; padding keeps its top
    # choice, uncounted
    assert placed.tolist() == [[True, False], [False, True], [True, False], [False, True], [False, False],
                               [False, False], [True, False]]
    assert rerouted.tolist() == [False, False, False, True, False, False, False]
    assert routers.expert_capacity(units=6, k=1, num_experts=2, capacity_factor=2 / 3) == 2
    assert torch.equal(routers.assign(probs, real, k=1, capacity=None)[0], torch.nn.functional.one_hot(probs.argmax(-1), 2).bool())
    both, _ = routers.assign(probs, real, k=2, capacity=routers.expert_capacity(6, 2, 2, 1.0))
    assert both.all()  # k = 2 of 2: capacity counts both assignments of each unit


def layer0_inputs(lm, batch):
    """The exact (hidden_states, kwargs) the decoder hands its first layer for `batch`."""
    from medminds_hpc.modeling.heads import decoder_of

    seen = {}
    layer = decoder_of(lm).layers[0]
    handle = layer.register_forward_pre_hook(lambda m, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    with torch.no_grad():
        lm(input_ids=batch[0], attention_mask=batch[1])
    handle.remove()
    return seen["args"][0], seen["kwargs"]


@pytest.mark.parametrize("mix", ["outputs", "deltas"])
def test_capacity_overflow_is_handled_as_documented(home, experts, batch, mix):
    from medminds_hpc import compat

    spec = MoESpec(router="topk", mix=mix, granularity="token", noise=0.0, capacity_factor=0.5)
    lm, mx = mixture(experts, spec)
    layer = mx.layers[0]
    with torch.no_grad():  # every token prefers the task expert
        layer.router.proj.weight.zero_()
        layer.router.proj.bias.copy_(torch.tensor([3.0, 0.0]))
    hidden, kwargs = layer0_inputs(lm, batch)
    lm.train()
    mx.stats.reset()
    captured = {}
    proj = layer.layer.self_attn.q_proj  # a projection both experts adapt
    handle = proj.register_forward_hook(lambda m, args, out: captured.setdefault("q", []).append((args[0], out)))
    routing = layer.router(hidden, mx.state.token_mask)
    out = layer(hidden, **kwargs).detach()  # a training step's pass: its statistics count
    handle.remove()
    units = int(batch[1].sum())
    capacity = routers.expert_capacity(units, 1, 2, 0.5)
    with torch.no_grad():
        assert routing.used() == [0, 1] and layer.router.eval()(hidden, mx.state.token_mask).used() == [0]  # sparse at evaluation
    layer.router.train()
    stats = routers.summarize(0, mx.stats.totals[0].tolist(), mx.names)
    assert stats["units"] == units and stats["share"]["task"] == round(capacity / units, 6)
    assert stats["rerouted"] == stats["share"]["domain"] == round(capacity / units, 6)  # all of the domain's room
    assert stats["unplaced"] == round((units - 2 * capacity) / units, 6) > 0
    gates, unplaced = routing.gates.detach(), routing.unplaced
    real = batch[1].bool()
    to = {"task": real & (gates[..., 0] == 1), "domain": real & (gates[..., 1] == 1), "base": unplaced}
    assert [int(m.sum()) for m in to.values()] == [capacity, capacity, units - 2 * capacity]
    with torch.no_grad():
        for name, where in to.items():
            compat.route_adapter_layers(layer.layer, [] if name == "base" else [name])
            if mix == "outputs":  # each unit gets exactly its expert's layer output, or the base layer's
                expected = layer.layer(hidden, **kwargs)
                torch.testing.assert_close(out[where], expected[where], atol=1e-6, rtol=0)
            else:  # each unit's projection adds its expert's delta only, or none
                x, y = captured["q"][0]
                torch.testing.assert_close(y.detach()[where], proj(x)[where], atol=1e-6, rtol=0)


# statistics ------------------------------------------------------------------------------------------------------
def test_routing_statistics_count_training_batches_only_and_survive_a_round_trip(home, experts, batch):
    clf, _ = classifier_loss(experts, MoESpec(granularity="sequence"), batch)
    stats = clf.mixture.stats
    summary = stats.summary()
    assert [s["units"] for s in summary] == [len(batch[0])] * 2  # questions, once per layer
    for s in summary:
        assert sum(s["share"].values()) == pytest.approx(1.0) and 0 < s["entropy"] <= 0.6932
    with torch.no_grad():
        clf.eval()(input_ids=batch[0], attention_mask=batch[1])
    assert stats.summary() == summary  # evaluation passes are not counted
    copy = routers.RoutingStats(2, clf.mixture.names)
    copy.load(stats.state())
    assert torch.equal(copy.totals, stats.totals)


# bad settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match,declared", [
    ({"top_k": 3}, "top_k: expected 1 to 2 (the number of experts), got 3", "top_k: expected a value in [1, 2], got 3"),
    ({"top_k": 0}, "top_k: expected 1 to 2 (the number of experts), got 0", "top_k: expected a value in [1, 2], got 0"),
    ({"capacity_factor": 0.0}, "capacity_factor: expected a number above 0", "capacity_factor: expected a value in (0, 1000], got 0.0"),
    ({"capacity_factor": -1.0}, "capacity_factor: expected a number above 0", "capacity_factor: expected a value in (0, 1000], got -1.0"),
    ({"router": "gru"}, "router: unknown router 'gru'; valid: linear, topk, mlp", None),
    ({"mix": "sum"}, "mix: unknown mix mode 'sum'; valid: outputs", None),
])
def test_bad_settings_are_one_line_errors(kw, match, declared):
    from medminds_hpc import config
    from medminds_hpc.stages import moe as stage

    with pytest.raises(UserError) as e:
        MoESpec(**kw).check()
    assert match in str(e.value) and "\n" not in str(e.value)
    if declared is not None:  # numbers: the stage's Config refuses them at submission, from its declared domains
        with pytest.raises(UserError) as e:
            config.build(stage.Config, kw, "experiment moe-topk")
        assert str(e.value).startswith("experiment moe-topk: ") and declared in str(e.value) and "\n" not in str(e.value)


def test_a_model_without_both_experts_is_refused(home, experts):
    from peft import PeftModel

    from medminds_hpc.modeling.loading import load_model

    lm = PeftModel.from_pretrained(load_model("tiny")[0], str(experts["task"].artifacts_dir / "adapter"), adapter_name="task")
    with pytest.raises(UserError, match=r"needs the adapters task, domain on one base; missing domain \(attached: task\)"):
        moe.install(lm, MoESpec())
