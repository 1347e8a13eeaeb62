"""baseline-classifier: a 4-way head on the last real token + a trainable LoRA learns the synthetic rule, starts from
the next-word prediction with head_init="letters", is padding invariant, uses one softmax (in the loss), keeps an
expert merged or stacked, checkpoints only LoRA + head, and resumes bit-exactly after a stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medminds_hpc.context import StopRequested
from medminds_hpc.data import synthetic
from medminds_hpc.modeling.heads import HEAD_FILE, INFO_FILE, load_classifier_state
from medminds_hpc.modeling.loading import load_model
from medminds_hpc.modeling.scoring import head_logits, letter_logprobs
from medminds_hpc.training.metrics import softmax as to_probs
from medminds_hpc.stages.baseline import ClassifierConfig, build_classifier, run_classifier
from medminds_hpc.training.engine import TRAINABLE_FILE
from medminds_hpc import results
from medminds_hpc.training.metrics import PROB_COLUMNS, SCORE_COLUMNS, read_predictions
from tests.helpers import make_expert, prepare_synthetic, stage_ctx

PROBS = list(PROB_COLUMNS)


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


def fast(**overrides) -> ClassifierConfig:
    """Test-sized training: the paper's LoRA shape, a learning rate a 64-wide model learns with in a few epochs."""
    options = dict(learning_rate=1e-2, batch_size=16, epochs=3.0, warmup_steps=2, max_train_rows=512, eval_rows=200,
                   dev_rows=64, eval_batch_size=64, seed=7)
    options.update(overrides)
    return ClassifierConfig(**options)


def mixed_rows() -> list[dict]:
    short, middle, long = synthetic.medmcqa_rows(3, seed=5, split="validation")
    short = {**short, "question": "Gout?"}
    long = {**long, "question": " ".join([long["question"]] * 12)}
    return [long, middle, short]


@pytest.mark.slow
def test_learns_the_synthetic_rule_and_saves_head_and_lora():
    prepare_synthetic()
    ctx = stage_ctx("baseline-classifier-mistral-micro-00000001")
    cfg = fast(epochs=2.0, lora_dropout=0.0)  # 64 steps, ~10 s on 2 idle cores
    result = run_classifier(ctx, cfg)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert result["accuracy"] == metrics["accuracy"] >= 0.8  # chance is 0.25; ~0.89 in practice
    assert results.problems(metrics) == [] and metrics["n"] == 200
    assert metrics["steps"] == 64 and metrics["train_seconds"] > 0 and metrics["eval_seconds"] > 0
    assert [round(e["epoch"]) for e in metrics["epochs"]] == [1, 2]
    assert metrics["selection"] == "dev" and [e["split"] for e in metrics["epochs"]] == ["dev", "dev"]
    assert metrics["epochs"][-1]["accuracy"] >= 0.7  # the same model on 64 held-out training rows
    saved = ctx.run.artifacts_dir / "classifier"
    assert {HEAD_FILE, INFO_FILE, "lora"} <= {p.name for p in saved.iterdir()}
    assert (saved / "lora" / "adapter_config.json").exists()
    assert not [p for p in ctx.run.artifacts_dir.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    # the saved head + LoRA reproduce the written predictions on a freshly built model
    rows = _validation_rows()[:200]
    fresh, tok = build_classifier("tiny", cfg)
    load_classifier_state(fresh, saved)
    fresh.eval()
    preds = read_predictions(ctx.run_dir)
    logits = head_logits(fresh, tok, rows, batch_size=64)
    np.testing.assert_allclose(to_probs(logits), preds[PROBS].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(logits, preds[list(SCORE_COLUMNS)].to_numpy(), atol=1e-5)  # the raw head logits
    assert set(preds["score_kind"]) == {"logit"}


def _validation_rows() -> list[dict]:
    from medminds_hpc.data.prepare import load_prepared

    return load_prepared("micro", "medmcqa_validation").to_list()


def test_letters_head_starts_from_the_nextword_prediction():
    rows = synthetic.medmcqa_rows(64, seed=3, split="validation")
    clf, tok = build_classifier("tiny", fast(head_init="letters"))
    clf.eval()
    head = head_logits(clf, tok, rows)
    base, _ = load_model("tiny")
    nextword = letter_logprobs(base, tok, rows)
    assert (head.argmax(1) == nextword.argmax(1)).all()
    np.testing.assert_allclose(to_probs(head), to_probs(nextword), atol=1e-5)
    # the paper's random head does not
    random_clf, _ = build_classifier("tiny", fast(head_init="random"))
    random_clf.eval()
    assert not np.allclose(to_probs(head_logits(random_clf, tok, rows)), to_probs(nextword), atol=1e-2)


def test_head_is_padding_invariant():
    clf, tok = build_classifier("tiny", fast())
    with torch.no_grad():  # a LoRA that does something, so the whole trainable path is exercised
        for name, p in clf.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    clf.eval()
    rows = mixed_rows()
    alone = np.concatenate([head_logits(clf, tok, [r], batch_size=1) for r in rows])
    together = head_logits(clf, tok, rows, batch_size=3)
    assert (together.argmax(1) == alone.argmax(1)).all()
    np.testing.assert_allclose(to_probs(together), to_probs(alone), atol=1e-5)


def test_one_softmax_in_the_loss_and_only_lora_and_head_train():
    clf, tok = build_classifier("tiny", fast(lora_dropout=0.0))
    from medminds_hpc.stages.baseline import prompt_collator

    batch = prompt_collator(tok, 256)([{"prompt": f"Question {i}\nAnswer:", "label": i % 4} for i in range(8)])
    out = clf(**batch)
    assert not torch.allclose(out["logits"].softmax(-1).sum(-1), out["logits"].sum(-1))  # raw logits, not probabilities
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(out["logits"], batch["labels"]))
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (8,)  # class ids, not one-hot
    out["loss"].backward()
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert {"score.weight", "score.bias"} <= trainable
    assert all(n.startswith("score.") or "lora_" in n for n in trainable)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n and "lora_A" in n for n in trainable), proj
    assert clf.score.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in clf.named_parameters() if "lora_A" in n or "lora_B" in n)
    lora = clf.lm.peft_config["default"]
    assert (lora.r, lora.lora_alpha) == (16, 8)


def test_expert_is_merged_or_stacked_with_the_same_result():
    expert = make_expert("task", seed=21)
    pair = ("task", expert.artifacts_dir / "adapter")
    rows = mixed_rows()
    cfg = fast(head_init="letters")
    merged, tok = build_classifier("tiny", cfg, pair)  # unquantized base: the expert is merged into the weights
    stacked, _ = build_classifier("tiny", cfg, pair, merge=False)  # what a 4-bit base does: expert kept as an adapter
    assert list(merged.lm.peft_config) == ["default"]
    assert list(stacked.lm.peft_config) == ["task", "default"]
    assert not any(p.requires_grad for n, p in stacked.named_parameters() if ".task." in n)
    assert any(p.requires_grad for n, p in stacked.named_parameters() if ".default." in n)
    for m in (merged, stacked):
        m.eval()
    np.testing.assert_allclose(head_logits(merged, tok, rows), head_logits(stacked, tok, rows), atol=1e-4)
    # and the expert really is there: letters head == the expert's own next-word prediction
    from medminds_hpc.modeling.adapters import attach_adapters

    base, _ = load_model("tiny")
    expert_lm = attach_adapters(base, {"task": pair[1]})
    np.testing.assert_allclose(to_probs(head_logits(stacked, tok, rows)), to_probs(letter_logprobs(expert_lm, tok, rows)), atol=1e-5)


@pytest.mark.slow
def test_checkpoints_hold_lora_and_head_only_and_best_can_be_kept():
    from safetensors.torch import load_file

    prepare_synthetic()
    ctx = stage_ctx("baseline-classifier-mistral-micro-00000002", checkpoint_every_steps=2)
    run_classifier(ctx, fast(max_train_rows=64, epochs=2.0, eval_rows=32, checkpoint_every_steps=2, keep="best",
                             selection="validation"))
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["kept"] == f"best (epoch {metrics['best']['epoch']})"
    assert metrics["accuracy"] == metrics["best"]["accuracy"] == max(e["accuracy"] for e in metrics["epochs"])
    ckpt = ctx.checkpoints.latest()
    state = load_file(str(ckpt.dir / TRAINABLE_FILE))
    assert {"score.weight", "score.bias"} <= set(state)
    assert all(k.startswith("score.") or "lora_" in k for k in state), sorted(state)[:5]
    assert not any("embed_tokens" in k or "lm_head" in k or "base_layer" in k for k in state)
    base, _ = load_model("tiny")
    base_numel = sum(p.numel() for p in base.parameters())
    assert sum(t.numel() for t in state.values()) < 0.5 * base_numel


@pytest.mark.slow
def test_stopped_and_resumed_equals_uninterrupted():
    prepare_synthetic()
    cfg = fast(max_train_rows=96, epochs=2.0, eval_rows=64, checkpoint_every_steps=4)  # 6 steps per epoch, LoRA dropout on
    ref = stage_ctx("baseline-classifier-mistral-micro-00000003", checkpoint_every_steps=4)
    run_classifier(ref, cfg)

    stopped = stage_ctx("baseline-classifier-mistral-micro-00000004", stop_at=7, checkpoint_every_steps=4)  # mid-epoch 2
    with pytest.raises(StopRequested):
        run_classifier(stopped, cfg)
    assert [c.step for c in stopped.checkpoints.all()] == [7, 4]
    assert not (stopped.run_dir / "metrics.json").exists()
    resumed = stage_ctx("baseline-classifier-mistral-micro-00000004", checkpoint_every_steps=4)  # the requeued job
    run_classifier(resumed, cfg)

    timing = {"train_seconds", "eval_seconds", "classifier", "run"}  # "run": which run wrote it
    want = {k: v for k, v in json.loads((ref.run_dir / "metrics.json").read_text()).items() if k not in timing}
    got = {k: v for k, v in json.loads((resumed.run_dir / "metrics.json").read_text()).items() if k not in timing}
    assert got == want
    np.testing.assert_array_equal(read_predictions(resumed.run_dir)[PROBS].to_numpy(), read_predictions(ref.run_dir)[PROBS].to_numpy())


def test_under_a_4bit_base_the_expert_stays_active_and_frozen():
    pytest.importorskip("bitsandbytes", reason="4-bit loading needs bitsandbytes")
    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.stages.baseline import prompt_collator

    expert = make_expert("domain", seed=22)
    pair = ("domain", expert.artifacts_dir / "adapter")
    clf, tok = build_classifier("tiny", fast(head_init="letters"), pair, quantize="4bit")
    assert list(clf.lm.peft_config) == ["domain", "default"] and clf.lm.base_model.active_adapter == ["domain", "default"]
    clf.eval()
    rows = mixed_rows()
    base, _ = load_model("tiny", quantize="4bit")
    expert_lm = attach_adapters(base, {"domain": pair[1]})
    np.testing.assert_allclose(to_probs(head_logits(clf, tok, rows)), to_probs(letter_logprobs(expert_lm, tok, rows)), atol=1e-5)
    clf.train()
    clf(**prompt_collator(tok, 256)([{"prompt": "Gout?\nAnswer:", "label": i} for i in range(4)]))["loss"].backward()
    grads = {n: p.grad for n, p in clf.named_parameters() if p.requires_grad}
    assert all(".default." in n or n.startswith("score.") for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # B: A's grad is 0 while B = 0
