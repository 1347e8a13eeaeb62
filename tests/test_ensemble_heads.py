"""The three ensemble heads over two experts' cached states: shapes, a frozen LM head, the weighted head as one
expert, learning a task that needs both experts, and the factory's errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from medminds_hpc.errors import UserError
from medminds_hpc.modeling.ensemble_heads import METHODS, REDUCES, FoldIntoRows, WeightedHead, build_head

VOCAB, HIDDEN = 500, 64
LETTERS = [11, 23, 37, 41]
COMBOS = list(itertools.product(METHODS, REDUCES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lm_head(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, HIDDEN, generator=g) / HIDDEN**0.5


def states(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method,reduce", COMBOS)
def test_every_head_gives_finite_logits_of_shape_rows_by_4(method: str, reduce: str) -> None:
    head = build_head(method, reduce, lm_head(), LETTERS, seed=0)
    out = head(states(7, 1), states(7, 2))
    assert out.shape == (7, 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method,reduce", COMBOS)
def test_lm_head_is_a_frozen_buffer_and_gradients_reach_only_the_heads_parameters(method: str, reduce: str) -> None:
    weight = lm_head()
    head = build_head(method, reduce, weight, LETTERS, seed=0)
    assert all(p.shape != weight.shape for p in head.parameters())
    assert not any(b.requires_grad for b in head.buffers())
    assert not any(v.shape == weight.shape for v in head.state_dict().values())  # never saved with the head
    frozen = weight if reduce == "learned" else weight[LETTERS]
    loss = torch.nn.functional.cross_entropy(head(states(5, 1), states(5, 2)), torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    torch.optim.Adam(head.parameters(), lr=1e-1).step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    (rows,) = list(head.buffers())
    assert rows.grad is None and torch.equal(rows, frozen)  # the LM head rows the head reads, unchanged


def test_building_a_head_leaves_the_global_rng_alone_and_a_seed_fixes_its_init() -> None:
    before = torch.random.get_rng_state()
    a = build_head("transformer", "learned", lm_head(), LETTERS, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_head("transformer", "learned", lm_head(), LETTERS, seed=3)
    c = build_head("transformer", "learned", lm_head(), LETTERS, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_weighted_head_at_1_0_with_letters_is_the_task_experts_next_word_prediction() -> None:
    weight = lm_head()
    head = build_head("weighted", "letters", weight, LETTERS)
    assert isinstance(head, WeightedHead)
    head.set_expert_weights(1.0, 0.0)
    task, domain = states(50, 1), states(50, 2)
    with torch.no_grad():
        out = head(task, domain)
    assert torch.equal(out, task @ weight[LETTERS].T)
    full = task @ weight.T  # the whole vocab, as the expert's LM head computes it
    torch.testing.assert_close(out, full[:, LETTERS], rtol=1e-5, atol=1e-5)
    assert torch.equal(out.argmax(1), full[:, LETTERS].argmax(1))
    head.set_expert_weights(0.0, 1.0)
    assert torch.equal(head(task, domain).argmax(1), (domain @ weight[LETTERS].T).argmax(1))


@pytest.mark.parametrize("reduce", REDUCES)
def test_late_fusion_has_one_linear_over_both_outputs_and_equals_it_on_the_concatenated_logits(reduce: str) -> None:
    weight = lm_head()
    head = build_head("late-fusion", reduce, weight, LETTERS, seed=0)
    width = VOCAB if reduce == "learned" else len(LETTERS)
    assert sum(p.numel() for p in head.parameters()) == 2 * width * 4 + 4
    frozen = weight if reduce == "learned" else weight[LETTERS]
    task, domain = states(6, 1), states(6, 2)
    bias = head.bias if reduce == "learned" else head.fuse.bias
    with torch.no_grad():
        direct = torch.cat([task @ frozen.T, domain @ frozen.T], dim=1) @ head.linear_weight().T + bias
        torch.testing.assert_close(head(task, domain), direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["weighted", "transformer"])
def test_both_learned_reductions_in_one_fold_equal_each_experts_linear_on_its_logits(method: str) -> None:
    weight = lm_head()
    head = build_head(method, "learned", weight, LETTERS, seed=0)
    task, domain = states(6, 1), states(6, 2)
    reduced = head.reduced(task, domain)
    linears = [head.reductions.linear_weight(e) for e in (0, 1)]
    direct = [(x @ weight.T) @ w.T + b for x, w, b in zip((task, domain), linears, head.reduction_bias)]
    for got, want in zip(reduced, direct):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grads = [torch.autograd.grad(sum(r.square().sum() for r in pair), head.reductions.weight)[0]
             for pair in (reduced, direct)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    # the forward's blocked product and the gradient's layout give the plain products' values on a width they split
    wide = torch.randn(8 * 125, HIDDEN, generator=torch.Generator().manual_seed(5))
    fold_weight = torch.randn(wide.shape[0], 8, requires_grad=True)
    folded = FoldIntoRows.apply(fold_weight, wide)
    torch.testing.assert_close(folded, fold_weight.T @ wide, rtol=1e-5, atol=1e-4)  # entries ~30: fp32 rounding
    upstream = torch.randn(8, HIDDEN)
    (got,) = torch.autograd.grad(folded, fold_weight, upstream)
    torch.testing.assert_close(got, (upstream @ wide.T).T, rtol=1e-5, atol=1e-4)


def test_under_autocast_the_fold_runs_in_its_dtype_on_rows_cast_once() -> None:
    weight = lm_head()
    head = build_head("late-fusion", "learned", weight, LETTERS, seed=0)
    task, domain = states(6, 1), states(6, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(task, domain)
        low = head.outputs._rows_as(torch.bfloat16)
        assert low.dtype == torch.bfloat16 and head.outputs._rows_as(torch.bfloat16) is low  # cast once, then reused
        assert head.outputs.fold(head.reductions.weight.view(VOCAB, 8)).dtype == torch.bfloat16
    assert head.outputs.rows.dtype == torch.float32
    torch.testing.assert_close(out.float(), head(task, domain), rtol=5e-2, atol=5e-2)  # near the fp32 head's
    out.float().square().sum().backward()
    assert head.reductions.weight.grad.dtype == torch.float32 and torch.isfinite(head.reductions.weight.grad).all()


def test_the_transformer_heads_block_computes_what_its_encoder_layer_module_does() -> None:
    from medminds_hpc.modeling.ensemble_heads import encoder_layer

    head = build_head("transformer", "learned", lm_head(), LETTERS, seed=0)
    x = torch.randn(5, 2, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    for mode in (head.train, head.eval):
        mode()
        torch.testing.assert_close(encoder_layer(head.block, x), head.block(x), rtol=1e-6, atol=1e-6)
    head.train()
    got = torch.autograd.grad(encoder_layer(head.block, x).square().sum(), [x, *head.block.parameters()])
    want = torch.autograd.grad(head.block(x).square().sum(), [x, *head.block.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# learning a task that needs both experts ---------------------------------------------------------------------
def synthetic_task(weight: torch.Tensor, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(task states, domain states, labels): for half the rows the task expert's letter logits point strongly at
    the answer and the domain expert's weakly at a wrong letter; for the other half the roles swap. Each expert
    alone is right on about half the rows."""
    g = torch.Generator().manual_seed(seed)
    letters = weight[LETTERS]
    push = torch.linalg.pinv(letters)  # (hidden, 4): a state direction that raises exactly one letter's logit
    labels = torch.arange(rows) % 4
    labels = labels[torch.randperm(rows, generator=g)]
    wrong = (labels + torch.randint(1, 4, (rows,), generator=g)) % 4
    task_knows = torch.rand(rows, generator=g) < 0.5
    strong, weak, noise = 6.0, 3.0, 0.7

    def expert(knows: torch.Tensor) -> torch.Tensor:
        base = noise * torch.randn(rows, HIDDEN, generator=g)
        target = torch.where(knows, labels, wrong)
        scale = torch.where(knows, strong, weak).unsqueeze(1)
        return base + scale * push.T[target]

    return expert(task_knows), expert(~task_knows), labels


def train(head: torch.nn.Module, task: torch.Tensor, domain: torch.Tensor, labels: torch.Tensor, steps: int = 150) -> None:
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(task, domain), labels).backward()
        opt.step()


def accuracy(head: torch.nn.Module, task: torch.Tensor, domain: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (head(task, domain).argmax(1) == labels).float().mean().item()


@pytest.fixture(scope="module")
def task_data() -> dict:
    weight = lm_head()
    train_set, test_set = synthetic_task(weight, 400, seed=1), synthetic_task(weight, 400, seed=2)
    letters = weight[LETTERS]
    single = max(((s @ letters.T).argmax(1) == test_set[2]).float().mean().item() for s in test_set[:2])
    return {"weight": weight, "train": train_set, "test": test_set, "single": single}


# thresholds on held-out accuracy (chance 0.25; each expert alone about 0.5)
LEARN_THRESHOLD = {"late-fusion": 0.85, "transformer": 0.85}
WEIGHTED_MARGIN = 0.2  # two global weights cannot choose per question, but must beat the better expert clearly


@pytest.mark.parametrize("method,reduce", COMBOS)
def test_each_head_learns_a_task_that_needs_both_experts(task_data: dict, method: str, reduce: str) -> None:
    assert 0.35 < task_data["single"] < 0.65  # the task really needs both experts
    head = build_head(method, reduce, task_data["weight"], LETTERS, seed=0)
    train(head, *task_data["train"])
    acc = accuracy(head, *task_data["test"])
    if method == "weighted":
        assert acc >= task_data["single"] + WEIGHTED_MARGIN, (acc, task_data["single"])
    else:
        assert acc >= LEARN_THRESHOLD[method], acc


@pytest.mark.parametrize("method", METHODS)
def test_a_head_given_zeroed_states_stays_near_chance(task_data: dict, method: str) -> None:
    head = build_head(method, "learned", task_data["weight"], LETTERS, seed=0)
    task, domain, labels = task_data["train"]
    train(head, torch.zeros_like(task), torch.zeros_like(domain), labels, steps=100)
    test_task, test_domain, test_labels = task_data["test"]
    assert accuracy(head, torch.zeros_like(test_task), torch.zeros_like(test_domain), test_labels) < 0.35


# bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "average"}, "method='average'; valid: weighted, transformer, late-fusion"),
    ({"reduce": "full"}, "reduce='full'; valid: learned"),
    ({"letter_ids": [11, 23, 37]}, "letter_ids=[11, 23, 37]; expected 4 distinct token ids"),
    ({"letter_ids": [11, 11, 37, 41]}, "expected 4 distinct"),
    ({"letter_ids": [11, 23, 37, VOCAB]}, f"below the vocab size {VOCAB}"),
    ({"lm_head_weight": torch.zeros(VOCAB, dtype=torch.int8)}, "lm_head_weight is (500,); pass the unquantized"),
])
def test_factory_names_the_bad_argument_and_the_valid_values(kwargs: dict, needle: str) -> None:
    args = {"method": "weighted", "reduce": "letters", "lm_head_weight": lm_head(), "letter_ids": LETTERS, **kwargs}
    with pytest.raises(UserError, match="^ensemble head: ") as err:
        build_head(**args)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_factory_reports_every_bad_argument_at_once() -> None:
    with pytest.raises(UserError) as err:
        build_head("average", "full", lm_head(), LETTERS)
    assert "method='average'" in str(err.value) and "reduce='full'" in str(err.value)


@pytest.mark.parametrize("task,domain,needle", [
    (states(3, 1)[:, :32], states(3, 2), "task expert states have shape (3, 32), the LM head expects (rows, 64)"),
    (states(3, 1), states(4, 2), "task and domain states have 3 and 4 rows"),
])
def test_states_that_do_not_fit_the_lm_head_are_refused(task: torch.Tensor, domain: torch.Tensor, needle: str) -> None:
    head = build_head("late-fusion", "letters", lm_head(), LETTERS)
    with pytest.raises(UserError) as err:
        head(task, domain)
    assert needle in str(err.value)


# the real tiny model -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_on_the_tiny_models_lm_head_the_weighted_head_at_1_0_equals_the_feature_cache_letter_logits(monkeypatch) -> None:
    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.heads import last_hidden
    from medminds_hpc.modeling.loading import load_model

    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)
    model, tok = load_model("tiny", device="cpu")
    letters = prompts.letter_token_ids(tok)
    batch = tok(["Question: which bone? Answer:", "Question: a drug of choice for malaria is Answer:"],
                return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = last_hidden(model, batch["input_ids"], batch["attention_mask"]).float()
    weight = model.get_output_embeddings().weight
    for method, reduce in COMBOS:
        head = build_head(method, reduce, weight, letters, seed=0)
        assert all(p.shape != weight.shape for p in head.parameters())
        assert head(hidden, hidden.flip(0)).shape == (2, 4)
    head = build_head("weighted", "letters", weight, letters)
    head.set_expert_weights(1.0, 0.0)
    with torch.no_grad():
        out = head(hidden, hidden.flip(0))
    expected = features.letter_logits(model, tok, hidden)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert torch.equal(out.argmax(1), features.lm_head_logits(model, hidden)[:, letters].argmax(1))


def test_the_heads_are_the_methods_the_ensemble_stage_offers() -> None:
    import dataclasses
    import typing

    from medminds_hpc.stages.ensemble import Config

    hints = typing.get_type_hints(Config)
    assert typing.get_args(hints["method"]) == METHODS
    assert {f.name: f.default for f in dataclasses.fields(Config)}["method"] in METHODS
