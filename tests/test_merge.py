"""merge: the two experts' LoRA adapters merged into one (linear, TIES, DARE-TIES) and scored like
baseline-nextword; the merged adapter is saved and loads back; bad options are refused before anything is written."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from medminds_hpc import artifacts, results
from medminds_hpc.stages.baseline import NextWordConfig, run_nextword
from medminds_hpc.stages.merge import MERGED, Config, merge_adapters, run, save_merged
from medminds_hpc.training.metrics import read_predictions
from tests.helpers import ROOT, make_expert, prepare_synthetic, run_cli, stage_ctx, write_job

SCORES = ["score_a", "score_b", "score_c", "score_d"]
TASK_SEED, DOMAIN_SEED = 11, 12


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


def experts(domain_r: int = 4) -> dict[str, str]:
    """Two random-LoRA experts of `tiny` on partly different projections (merging takes the union)."""
    task = make_expert("task", seed=TASK_SEED)
    domain = make_expert("domain", seed=DOMAIN_SEED, targets=("k_proj", "v_proj", "down_proj"), r=domain_r)
    return {"expert-task": task.id, "expert-domain": domain.id}


def merged_scores(run_id: str, needs: dict[str, str], **cfg) -> np.ndarray:
    ctx = stage_ctx(run_id, needs=needs)
    run(ctx, Config(eval_batch_size=100, **cfg))
    return read_predictions(ctx.run_dir)[SCORES].to_numpy()


def nextword_scores(run_id: str, needs: dict[str, str], adapter: str) -> np.ndarray:
    ctx = stage_ctx(run_id, needs=needs)
    run_nextword(ctx, NextWordConfig(adapter=adapter, eval_batch_size=100))  # type: ignore[arg-type]
    return read_predictions(ctx.run_dir)[SCORES].to_numpy()


@pytest.mark.slow
def test_writes_metrics_predictions_and_a_merged_adapter_that_loads_back():
    from medminds_hpc.data.prepare import load_prepared
    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.scoring import letter_logprobs

    prepare_synthetic()
    ctx = stage_ctx("merge-ties-micro-00000001", needs=experts())
    result = run(ctx, Config(method="ties", weights=[1.0, 1.0], density=0.5, eval_batch_size=100))
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert results.problems(metrics) == []
    assert metrics["n"] == 500 == result["n"] and metrics["method"] == "merge-ties" and metrics["density"] == 0.5
    preds = read_predictions(ctx.run_dir)
    assert len(preds) == 500 and set(preds["score_kind"]) == {"logprob"}
    raw = preds[SCORES].to_numpy()
    assert (raw < 0).all()  # log-probabilities over the whole vocabulary
    np.testing.assert_allclose(np.exp(raw).sum(axis=1).mean(), metrics["letter_mass_mean"], rtol=1e-9)

    merged = artifacts.path(ctx.run, artifacts.MERGED)
    assert (merged / "adapter_config.json").is_file() and (merged / "adapter_model.safetensors").is_file()
    base, tokenizer = load_model("tiny")
    rows = load_prepared("micro", "medmcqa_validation", ctx.data_dir()).to_list()[:20]
    again = letter_logprobs(attach_adapters(base, {"merged": merged}), tokenizer, rows, "paper", batch_size=20, max_length=512)
    np.testing.assert_allclose(again, raw[:20], atol=1e-5)


@pytest.mark.slow
def test_linear_with_weights_one_and_zero_scores_like_the_task_expert_alone():
    prepare_synthetic()
    needs = experts()
    merged = merged_scores("merge-linear-micro-00000002", needs, method="linear", weights=[1.0, 0.0])
    task = nextword_scores("baseline-nextword-micro-00000003", {"expert-task": needs["expert-task"]}, "task")
    np.testing.assert_allclose(merged, task, atol=1e-5)


@pytest.mark.slow
def test_linear_half_and_half_differs_from_both_experts():
    prepare_synthetic()
    needs = experts()
    merged = merged_scores("merge-linear-micro-00000004", needs, method="linear", weights=[0.5, 0.5])
    task = nextword_scores("baseline-nextword-micro-00000005", {"expert-task": needs["expert-task"]}, "task")
    domain = nextword_scores("baseline-nextword-micro-00000006", {"expert-domain": needs["expert-domain"]}, "domain")
    assert np.abs(merged - task).max() > 1e-3 and np.abs(merged - domain).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ties", "dare-ties"])
def test_ties_and_dare_are_deterministic_for_a_seed(method):
    prepare_synthetic()
    needs = experts()
    cfg = dict(method=method, weights=[1.0, 1.0], density=0.5)
    first = merged_scores(f"merge-{method}-micro-00000007", needs, seed=1, **cfg)
    second = merged_scores(f"merge-{method}-micro-00000008", needs, seed=1, **cfg)
    np.testing.assert_array_equal(first, second)
    if method == "dare-ties":  # the random drop depends on the seed
        other = merged_scores(f"merge-{method}-micro-00000009", needs, seed=2, **cfg)
        assert np.abs(first - other).max() > 1e-6


def merged(needs: dict[str, str], **cfg: Any) -> Any:
    """The PeftModel of both experts with the adapter MERGED added by `merge_adapters` (no scoring)."""
    from medminds_hpc import runs
    from medminds_hpc.modeling.features import load_experts

    model, _ = load_experts({name: runs.get(needs[f"expert-{name}"]) for name in ("task", "domain")})
    return merge_adapters(model, Config(**cfg), ["task", "domain"])


def lora_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "lora_A") and MERGED in m.lora_A]


def test_linear_is_the_exact_weighted_sum_of_the_updates_whatever_the_ranks():
    """Not peft's factor-wise average (which adds B_task A_domain and B_domain A_task); ranks 4 and 8 merge to 12."""
    model = merged(experts(domain_r=8), method="linear", weights=[0.7, -0.3])
    assert model.peft_config[MERGED].r == 12
    layers = lora_layers(model)
    assert len(layers) == 2 * 5  # 2 layers x (q, v, up of the task expert + k, down of the domain expert; v in both)
    for layer in layers:
        expected = sum(w * layer.get_delta_weight(name) for name, w in (("task", 0.7), ("domain", -0.3))
                       if name in layer.lora_A)
        torch.testing.assert_close(layer.get_delta_weight(MERGED), expected, atol=1e-6, rtol=1e-5)


def test_ties_works_on_the_whole_updates_and_a_rank_above_a_projection_width_saves_and_loads(tmp_path):
    """svd_rank 64 keeps every component of the tiny model's projections (64 wide at most), so the merged update is
    TIES of the experts' full updates exactly; v_proj (32 x 64) has 32 components and is zero-padded to rank 64."""
    from peft.utils.merge_utils import ties

    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.loading import load_model

    model = merged(experts(), method="ties", weights=[1.0, 1.0], density=0.5, svd_rank=64)
    for layer in lora_layers(model):
        assert layer.lora_A[MERGED].weight.shape[0] == 64 == layer.lora_B[MERGED].weight.shape[1]
        names = [name for name in ("task", "domain") if name in layer.lora_A]
        expected = ties([layer.get_delta_weight(n) for n in names], torch.ones(len(names)), 0.5, "total")
        torch.testing.assert_close(layer.get_delta_weight(MERGED), expected, atol=1e-5, rtol=1e-4)
    save_merged(model, tmp_path / "merged")
    base, _ = load_model("tiny")
    again = attach_adapters(base, {"merged": tmp_path / "merged"})
    loaded = {n: m for n, m in again.named_modules() if hasattr(m, "lora_A") and "merged" in m.lora_A}
    for name, layer in model.named_modules():
        if hasattr(layer, "lora_A") and MERGED in layer.lora_A:
            torch.testing.assert_close(loaded[name].get_delta_weight("merged"), layer.get_delta_weight(MERGED))


@pytest.mark.parametrize("option, message", [
    ("weights=1,2,3", "weights: expected 2 items, got 3"),
    ("weights=1", "weights: expected 2 items, got 1"),
    ("density=0", "density: expected a value in (0, 1], got 0.0"),
    ("density=1.5", "density: expected a value in (0, 1], got 1.5"),
    ("method=svd", "method: expected one of 'linear', 'ties', 'dare-ties', got 'svd'"),
    ("svd_rank=-1", "svd_rank: expected a value in [0, 65536], got -1"),
])
def test_bad_options_are_refused_in_one_line_and_nothing_is_written(option, message, medminds_home):
    proc = run_cli("submit", "merge-ties", "-d", "micro", "--model", "tiny", "-o", option, "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "merge-ties" in lines[0] and message in lines[0], proc.stderr
    assert not (medminds_home / "runs").exists() or not any((medminds_home / "runs").iterdir())


@pytest.mark.slow
def test_reachable_through_submit_with_finished_experts(jobs_dir):
    """`submit("merge-dare", ...)` with the debug executor: the finished experts are used as they are, prepare
    (synthetic: no Hub in tests) runs first, then the merge, found through the stage registry."""
    import shutil

    from medminds_hpc import runs
    from medminds_hpc.submit import SubmitOptions, plan, submit

    prepare_toml = (ROOT / "jobs" / "prepare.toml").read_text().replace('source = "hub"', 'source = "synthetic"')
    write_job(jobs_dir, "prepare", prepare_toml)
    for name in ("expert-task", "expert-domain", "merge-dare"):
        write_job(jobs_dir, name, (ROOT / "jobs" / f"{name}.toml").read_text())
    opts = SubmitOptions(dataset="micro", executor="debug", model="tiny", cluster="dev")
    planned = {p.name: p.run_id for p in plan("merge-dare", opts)}
    for name, seed in (("task", TASK_SEED), ("domain", DOMAIN_SEED)):  # finished experts at the ids submit plans
        made = make_expert(name, seed=seed)
        run_id = planned[f"expert-{name}"]
        expert = runs.create(run_id, {"experiment": f"expert-{name}", "dataset": "micro", "model": "tiny"})
        shutil.copytree(artifacts.path(made, artifacts.ADAPTER), artifacts.path(expert, artifacts.ADAPTER))
        expert.update(lambda d: d.update(state=runs.COMPLETED))
    done = submit("merge-dare", opts, say=lambda _line: None)
    assert [p.name for p in done if p.action != "done"] == ["prepare", "merge-dare"]
    run = runs.get(planned["merge-dare"])
    assert run.state == runs.COMPLETED, run.data.get("error")
    assert run.metrics()["n"] == 500 and run.metrics()["method"] == "merge-dare-ties"
    assert (artifacts.path(run, artifacts.MERGED) / "adapter_config.json").is_file()
