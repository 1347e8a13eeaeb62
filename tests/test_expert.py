"""The expert stage: LoRA SFT with trl on prepared data, loss on the answer only, exact resume, a reusable adapter."""

from __future__ import annotations

import pytest
import torch

from medminds_hpc import artifacts, runs
from medminds_hpc.context import StageContext, StopRequested
from medminds_hpc.data import prompts
from medminds_hpc.data.prepare import prepare
from medminds_hpc.stages import expert
from tests.helpers import run_expert as run_stage, small_expert as small


@pytest.fixture
def micro_data(medminds_home):
    prepare("micro", source="synthetic", say=lambda *_: None)


def test_loss_is_on_the_answer_only(micro_data):
    from medminds_hpc.data.prepare import load_prepared
    from medminds_hpc.modeling.loading import load_tokenizer

    tok = load_tokenizer("tiny")
    rows = load_prepared("micro", "arc_train").to_list()[:5]
    ds = expert.training_rows(small(), rows, tok)
    for row, ex in zip(rows, ds):
        labelled = [t for t in ex["labels"] if t != prompts.IGNORE_INDEX]
        assert labelled == [prompts.letter_token_ids(tok)[row["answer"]], tok.eos_token_id]
    everything = expert.training_rows(small(loss_on="all"), rows, tok)
    assert everything[0]["labels"] == everything[0]["input_ids"]


def test_task_expert_learns_and_its_adapter_reloads(micro_data):
    result = run_stage("expert-task-micro-00000001", small(epochs=2.0))
    run = runs.get("expert-task-micro-00000001")
    metrics = run.metrics()
    # held-out ARC-style questions, next-word letter accuracy; chance is 0.25
    assert metrics["task_accuracy"] >= 0.6, metrics["epochs"]
    assert [round(e["epoch"]) for e in metrics["epochs"]] == [1, 2]
    assert {"accuracy", "accuracy_ci95", "n", "confusion_matrix", "per_subject", "train_seconds", "eval_seconds"} <= set(metrics)
    assert (run.dir / "predictions.parquet").exists() and result["steps"] == metrics["steps"]

    from peft import PeftModel

    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.scoring import letter_logprobs
    from medminds_hpc.data.prepare import load_prepared

    adapter = artifacts.path(run, artifacts.ADAPTER)
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    base, tok = load_model("tiny")
    rows = load_prepared("micro", "medmcqa_validation").to_list()[:16]
    before = letter_logprobs(base, tok, rows)
    tuned = PeftModel.from_pretrained(base, str(adapter))
    after = letter_logprobs(tuned, tok, rows)
    assert not torch.allclose(torch.tensor(before), torch.tensor(after))


def test_domain_expert_learns_its_answers(micro_data):
    cfg = small("medical-instruct", epochs=2.0, max_train_rows=320, learning_rate=1e-2, max_length=96)
    run_stage("expert-domain-micro-00000001", cfg)
    epochs = runs.get("expert-domain-micro-00000001").metrics()["epochs"]
    # teacher-forced accuracy of held-out answer tokens; chance is ~1/900 with the built-in vocabulary
    assert epochs[-1]["task_accuracy"] >= 0.3, epochs


def test_expert_resumes_exactly(micro_data):
    cfg = small(epochs=1.0, max_train_rows=320)
    reference = run_stage("expert-task-micro-0000000a", cfg)
    with pytest.raises(StopRequested):
        run_stage("expert-task-micro-0000000b", cfg, stop_at=13)
    run = runs.get("expert-task-micro-0000000b")
    ckpts = [c.step for c in StageContext(run=run).checkpoints.all()]
    assert ckpts[0] == 13
    resumed = run_stage("expert-task-micro-0000000b", cfg)
    assert run.reload().data["resumed_from_steps"] == [13]
    a, b = runs.get("expert-task-micro-0000000a").metrics(), run.metrics()
    assert resumed == reference
    for key in ("accuracy", "task_accuracy", "confusion_matrix", "epochs"):
        assert a[key] == b[key], key
    from safetensors.torch import load_file

    wa = load_file(str(runs.get("expert-task-micro-0000000a").artifacts_dir / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(run.artifacts_dir / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
