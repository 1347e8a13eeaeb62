"""The expert stage: LoRA SFT with trl on prepared data, loss on the answer only, exact resume, a reusable adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medminds_hpc import artifacts, runs
from medminds_hpc.context import StageContext, StopRequested
from medminds_hpc.data import prompts
from medminds_hpc.data.prepare import prepare
from medminds_hpc.stages import expert
from medminds_hpc.training.metrics import PROB_COLUMNS, SCORE_COLUMNS, read_predictions
from tests.helpers import MISTRAL_TOKENIZER, SHARED_DATA, require_shared_data
from tests.helpers import run_expert as run_stage, small_expert as small, stage_ctx


def _sft_on_cpu() -> bool:
    from medminds_hpc import compat

    return compat.sft_trains_without_triton()


# trl 1.15 (the GPU lock's) computes SFT losses with Triton kernels only: its experts train on a GPU, not here
sft_on_cpu = pytest.mark.skipif(not _sft_on_cpu(), reason="this trl's SFTTrainer needs Triton and CUDA (the GPU lock's trl)")

MEDQUAD = SHARED_DATA / "medquad" / "medquad_qa_pairs_5k.jsonl"


@pytest.fixture
def micro_data(medminds_home):
    prepare("micro", source="synthetic", say=lambda *_: None)


def test_loss_is_on_the_answer_only(micro_data):
    from medminds_hpc.data.prepare import load_prepared
    from medminds_hpc.modeling.loading import load_tokenizer

    tok = load_tokenizer("tiny")
    rows = load_prepared("micro", "arc_train").to_list()[:5]
    ds, counts = expert.training_rows(small(), rows, tok)
    assert counts == {"rows": 5, "kept": 5, "dropped_prompt_too_long": 0, "answer_cut": 0, "max_length": 256}
    for row, ex in zip(rows, ds):
        labelled = [t for t in ex["labels"] if t != prompts.IGNORE_INDEX]
        assert labelled == [prompts.letter_token_ids(tok)[row["answer"]], tok.eos_token_id]
    everything, _ = expert.training_rows(small(loss_on="all"), rows, tok)
    assert everything[0]["labels"] == everything[0]["input_ids"]


def test_domain_examples_keep_their_question_on_real_data():
    """Real MedQuAD rows with the real Mistral tokenizer: long answers are cut, questions never; a prompt that cannot
    fit is dropped and counted."""
    from transformers import AutoTokenizer

    from medminds_hpc.data.instruct import load_instruct

    require_shared_data(MEDQUAD, MISTRAL_TOKENIZER)
    tok = AutoTokenizer.from_pretrained(str(MISTRAL_TOKENIZER))
    rows = load_instruct(MEDQUAD, show_progress=False)["train"].to_list()[:150]
    ds, counts = expert.training_rows(small("medical-instruct", max_length=48), rows, tok)
    assert counts["kept"] + counts["dropped_prompt_too_long"] == 150 and len(ds) == counts["kept"]
    assert 0 < counts["dropped_prompt_too_long"] < 150 and counts["answer_cut"] > 0, counts
    fitting = [r for r in rows if len(tok(prompts.instruct_parts(r)[0], add_special_tokens=False)["input_ids"])
               <= 48 - 1 - prompts.MIN_ANSWER_TOKENS - 1]
    assert len(fitting) == counts["kept"]
    for row, ex in zip(fitting, ds):
        prompt_ids = tok(prompts.instruct_parts(row)[0], add_special_tokens=False)["input_ids"]
        assert ex["input_ids"][: 1 + len(prompt_ids)] == [tok.bos_token_id, *prompt_ids]  # the whole question
        assert len(ex["input_ids"]) <= 48


def test_a_max_length_no_prompt_fits_says_what_to_do(micro_data):
    from medminds_hpc.data.prepare import load_prepared
    from medminds_hpc.errors import UserError
    from medminds_hpc.modeling.loading import load_tokenizer

    rows = load_prepared("micro", "arc_train").to_list()[:3]
    with pytest.raises(UserError, match=r"max_length=32: none of the 3 arc rows fits.*-o max_length=256"):
        expert.training_rows(small(max_length=32), rows, load_tokenizer("tiny"))


def test_holdout_is_seeded_and_spread_over_the_data():
    rows = [{"id": f"{part}-{i}"} for part in ("challenge-train", "challenge-test", "easy-train", "easy-test") for i in range(50)]
    holdout, train = expert.split_holdout(rows, 20, seed=0)
    assert len(holdout) == 20 and len(train) == 180 and not {r["id"] for r in holdout} & {r["id"] for r in train}
    assert expert.split_holdout(rows, 20, seed=0) == (holdout, train)  # a requeued job holds out the same rows
    assert expert.split_holdout(rows, 20, seed=1)[0] != holdout
    assert len({r["id"].rsplit("-", 1)[0] for r in holdout}) == 4  # not the last rows of one part
    assert [r["id"] for r in train] == [r["id"] for r in rows if r not in holdout]  # prepared order kept


@pytest.mark.slow
@sft_on_cpu
def test_task_expert_learns_and_its_adapter_reloads(micro_data):
    result = run_stage("expert-task-micro-00000001", small(epochs=2.0))
    run = runs.get("expert-task-micro-00000001")
    metrics = run.metrics()
    # held-out ARC-style questions, next-word letter accuracy; chance is 0.25
    assert metrics["task_accuracy"] >= 0.6, metrics["epochs"]
    assert [round(e["epoch"]) for e in metrics["epochs"]] == [1, 2]
    # selection=dev: epochs judged on the held-out training rows; MedMCQA validation scored once, at the end
    assert metrics["selection"] == "dev" and metrics["dev_rows"] == metrics["holdout_rows"] == 100
    assert all(e["split"] == "dev" and e["accuracy"] == e["task_accuracy"] for e in metrics["epochs"])
    assert {"accuracy", "accuracy_ci95", "n", "confusion_matrix", "per_subject", "train_seconds", "eval_seconds"} <= set(metrics)
    assert result["steps"] == metrics["steps"]
    assert metrics["sft_examples"] == {"rows": 480, "kept": 480, "dropped_prompt_too_long": 0, "answer_cut": 0, "max_length": 256}
    preds = read_predictions(run.dir)  # the raw letter log-probabilities beside their softmax
    raw = preds[list(SCORE_COLUMNS)].to_numpy()
    assert set(preds["score_kind"]) == {"logprob"} and (raw < 0).all()
    np.testing.assert_allclose(preds[list(PROB_COLUMNS)].to_numpy(), np.exp(raw) / np.exp(raw).sum(1, keepdims=True), atol=1e-12)

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


@pytest.mark.slow
@sft_on_cpu
def test_domain_expert_learns_its_answers(micro_data):
    cfg = small("medical-instruct", epochs=2.0, max_train_rows=320, learning_rate=1e-2, max_length=96)
    run_stage("expert-domain-micro-00000001", cfg)
    epochs = runs.get("expert-domain-micro-00000001").metrics()["epochs"]
    # teacher-forced accuracy of held-out answer tokens; chance is ~1/900 with the built-in vocabulary
    assert epochs[-1]["task_accuracy"] >= 0.3, epochs


@pytest.mark.slow
@sft_on_cpu
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


def test_an_expert_that_cannot_train_here_says_why_before_loading_anything(monkeypatch):
    """A trl whose SFT needs Triton, on a machine without CUDA: one line naming trl's version and what to do."""
    import trl

    from medminds_hpc import compat
    from medminds_hpc.errors import UserError

    monkeypatch.setattr(compat, "sft_trains_without_triton", lambda: False)
    with pytest.raises(UserError, match=rf"trl {trl.__version__} trains experts with Triton kernels, which need a CUDA GPU"):
        expert.run(stage_ctx("expert-task-micro-00000001"), small())
