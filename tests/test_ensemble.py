"""The features and ensemble stages on the tiny model: one cache shared by the heads, the same head whether the
experts are cached or recomputed, resume after a stop, adapters that train with freeze_experts=false, a damaged
cache rebuilt, and bad options refused before anything is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medminds_hpc import artifacts, fileio, results, runs
from medminds_hpc.context import StopRequested
from medminds_hpc.errors import UserError
from medminds_hpc.stages import ensemble, features as features_stage
from tests.helpers import make_expert, prepare_synthetic, run_cli, shrink_prepared, stage_ctx

TRAIN, VALIDATION = 96, 40
FEATURES = features_stage.Config(rows_per_shard=40, eval_batch_size=16)
FEATURES_RUN = "features-micro-00000001"


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    """Prepared data (shrunk), two random experts and a finished features run, made once for the module."""
    home = tmp_path_factory.mktemp("ensemble") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        torch.set_num_threads(1)
        prepare_synthetic("micro")
        shrink_prepared("micro", medmcqa_train=TRAIN, medmcqa_validation=VALIDATION)
        experts = {"task": make_expert("task", seed=1), "domain": make_expert("domain", seed=2)}
        needs = {f"expert-{name}": run.id for name, run in experts.items()}
        runs.create(FEATURES_RUN, {"experiment": "features", "dataset": "micro", "model": "tiny", "needs": needs,
                                   "params": dataclasses.asdict(FEATURES)})
        features_stage.run(stage_ctx(FEATURES_RUN), FEATURES)
    return home


@pytest.fixture
def home(module_home, monkeypatch) -> Path:
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)
    return module_home


def expert_needs() -> dict[str, str]:
    return runs.get(FEATURES_RUN).data["needs"]


def ensemble_ctx(run_id: str, *, with_features: bool = True, stop_at: int | None = None, **kw):
    needs = {**expert_needs(), **({"features": FEATURES_RUN} if with_features else {})}
    return stage_ctx(run_id, needs=needs, stop_at=stop_at, **kw)


def config(**kw) -> ensemble.Config:
    base = dict(method="late-fusion", reduce="letters", batch_size=16, epochs=2.0, learning_rate=1e-2,
                checkpoint_every_steps=3, eval_batch_size=16, seed=7)
    base.update(kw)
    return ensemble.Config(**base)


def head_of(run_id: str) -> dict[str, torch.Tensor]:
    return load_file(str(artifacts.path(runs.get(run_id), artifacts.ENSEMBLE) / ensemble.HEAD_FILE))


def predictions_of(run_id: str):
    import pandas as pd

    return pd.read_parquet(runs.get(run_id).dir / "predictions.parquet")


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("home")]


def test_features_run_caches_both_splits_and_the_lm_head(home):
    from medminds_hpc.modeling import features

    run = runs.get(FEATURES_RUN)
    root = features_stage.cache_root(run)
    for split, n in (("medmcqa_train", TRAIN), ("medmcqa_validation", VALIDATION)):
        manifest = features.read_manifest(root / split)
        assert manifest["rows"] == n and len(manifest["shards"]) == -(-n // FEATURES.rows_per_shard)
    weight = load_file(str(root / features.LM_HEAD_FILE))["weight"]
    assert weight.shape[1] == 64 and weight.shape[0] > 500  # vocab x hidden of the tiny model, not rows x vocab


def test_a_second_features_call_computes_nothing_and_a_job_array_builds_the_same_cache(home, tmp_path):
    from medminds_hpc.modeling import features

    again = features_stage.run(stage_ctx(FEATURES_RUN), FEATURES)
    assert again["rows_computed"] == 0
    expert_runs = {name: runs.get(rid) for name, rid in
                   (("task", expert_needs()["expert-task"]), ("domain", expert_needs()["expert-domain"]))}
    from medminds_hpc.stages.baseline import load_rows

    ctx = stage_ctx(FEATURES_RUN)
    rows = {split: load_rows(ctx, split) for split in features_stage.SPLITS}
    for task in (1, 0):  # the tasks of a 2-task array, in either order
        features_stage.build(tmp_path, expert_runs, rows, FEATURES, shard=task, num_shards=2)
    whole = features_stage.cache_root(runs.get(FEATURES_RUN))
    for split in features_stage.SPLITS:
        assert sorted(p.name for p in (tmp_path / split).glob("shard-*")) == sorted(p.name for p in (whole / split).glob("shard-*"))
        for shard in (whole / split).glob("shard-*"):
            assert (tmp_path / split / shard.name).read_bytes() == shard.read_bytes()
    assert (tmp_path / features.LM_HEAD_FILE).read_bytes() == (whole / features.LM_HEAD_FILE).read_bytes()


@pytest.mark.parametrize("method,reduce", [("late-fusion", "learned"), ("transformer", "letters"), ("weighted", "learned")])
def test_a_head_trained_from_the_cache_equals_one_trained_recomputing_the_experts(home, method, reduce):
    cfg = config(method=method, reduce=reduce, max_steps=6, learning_rate=1e-3)
    for cache in (True, False):
        ensemble.run(ensemble_ctx(f"ensemble-{method}-micro-{int(cache):08d}"), dataclasses.replace(cfg, cache=cache))
    cached, recomputed = head_of(f"ensemble-{method}-micro-00000001"), head_of(f"ensemble-{method}-micro-00000000")
    assert cached.keys() == recomputed.keys() and cached
    for name in cached:
        torch.testing.assert_close(cached[name], recomputed[name], atol=1e-6, rtol=0)
    initial = init_head(method, reduce)  # both heads moved away from their init: not a comparison of two inits
    assert any(not torch.allclose(cached[name], initial[name]) for name in cached)


def init_head(method: str, reduce: str) -> dict[str, torch.Tensor]:
    from medminds_hpc.modeling import features
    from medminds_hpc.modeling.ensemble_heads import build_head

    experts = features.experts_of({name: runs.get(expert_needs()[f"expert-{name}"]) for name in features.EXPERTS})
    weight, letters = features.load_lm_head(features_stage.cache_root(runs.get(FEATURES_RUN)), experts)
    return build_head(method, reduce, weight, letters, seed=7).state_dict()


def test_writes_the_metrics_contract_predictions_and_the_head(home):
    ctx = ensemble_ctx("ensemble-weighted-micro-00000002")
    out = ensemble.run(ctx, config(method="weighted", epochs=2.0))
    metrics = results.read(ctx.run_dir)
    assert results.problems(metrics) == [] and metrics["n"] == VALIDATION == out["n"]
    assert metrics["features_run"] == FEATURES_RUN and metrics["method"] == "ensemble-weighted"
    assert [e["epoch"] for e in metrics["epochs"]] == [1.0, 2.0]
    info = fileio.read_json(artifacts.path(ctx.run, artifacts.ENSEMBLE) / ensemble.INFO_FILE)
    assert info["reduce"] == "letters" and len(info["expert_weights"]) == 2
    assert set(head_of(ctx.run.id)) >= {"expert_weights", "mix.weight", "mix.bias"}
    assert not any("rows" in k for k in head_of(ctx.run.id))  # the frozen LM head is not saved with the head
    preds = predictions_of(ctx.run.id)
    assert len(preds) == VALIDATION and (preds["score_kind"] == "logit").all()


def test_an_ensemble_stopped_mid_training_finishes_like_an_uninterrupted_one(home):
    cfg = config(method="transformer", epochs=3.0)
    whole = ensemble.run(ensemble_ctx("ensemble-transformer-micro-00000010"), cfg)
    stopped = ensemble_ctx("ensemble-transformer-micro-00000011", stop_at=8)
    with pytest.raises(StopRequested):
        ensemble.run(stopped, cfg)
    assert stopped.resume().step == 8
    resumed = ensemble.run(ensemble_ctx("ensemble-transformer-micro-00000011"), cfg)
    assert resumed == whole
    a, b = predictions_of("ensemble-transformer-micro-00000010"), predictions_of("ensemble-transformer-micro-00000011")
    np.testing.assert_allclose(a[["score_a", "score_b", "score_c", "score_d"]].to_numpy(),
                               b[["score_a", "score_b", "score_c", "score_d"]].to_numpy(), atol=1e-6)
    for name, tensor in head_of("ensemble-transformer-micro-00000010").items():
        torch.testing.assert_close(tensor, head_of("ensemble-transformer-micro-00000011")[name], atol=1e-6, rtol=0)


def test_with_freeze_experts_false_both_adapters_train_with_the_head(home):
    from medminds_hpc.modeling import features

    experts = {name: runs.get(expert_needs()[f"expert-{name}"]) for name in features.EXPERTS}
    before = {name: load_file(str(artifacts.path(run, artifacts.ADAPTER) / "adapter_model.safetensors"))
              for name, run in experts.items()}
    ctx = ensemble_ctx("ensemble-late-fusion-micro-00000020")
    out = ensemble.run(ctx, config(freeze_experts=False, max_steps=4, epochs=1.0))
    saved = artifacts.path(ctx.run, artifacts.ENSEMBLE) / ensemble.ADAPTERS_DIR
    for name in features.EXPERTS:
        trained = load_file(str(saved / name / "adapter_model.safetensors"))
        assert trained.keys() == before[name].keys()
        assert any(not torch.allclose(trained[k], before[name][k]) for k in trained), name
        again = load_file(str(artifacts.path(experts[name], artifacts.ADAPTER) / "adapter_model.safetensors"))
        assert all(torch.equal(again[k], before[name][k]) for k in again)  # the expert runs' own files untouched
    metrics = results.read(ctx.run_dir)
    assert metrics["freeze_experts"] is False and metrics["cache"] is False and out["steps"] == 4
    assert metrics["trainable_parameters"] > sum(t.numel() for t in head_of(ctx.run.id).values())


def test_a_damaged_cache_is_rebuilt_not_used(home):
    cfg = config(method="late-fusion", max_steps=4)
    clean = ensemble.run(ensemble_ctx("ensemble-late-fusion-micro-00000030"), cfg)
    root = features_stage.cache_root(runs.get(FEATURES_RUN))
    shard = root / "medmcqa_train" / "shard-00001.safetensors"
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])
    ctx = ensemble_ctx("ensemble-late-fusion-micro-00000031")
    assert ensemble.run(ctx, cfg) == clean
    assert shard.read_bytes() == intact
    events = [r for r in fileio.read_jsonl(ctx.run_dir / "metrics.jsonl") if r.get("event") == "feature cache rebuilt"]
    assert [e["rows"] for e in events] == [FEATURES.rows_per_shard]  # the damaged shard alone was recomputed


def test_an_ensemble_without_a_features_run_builds_its_own_cache(home):
    ctx = ensemble_ctx("ensemble-weighted-micro-00000040", with_features=False)
    out = ensemble.run(ctx, config(method="weighted", max_steps=2, max_length=512))
    assert out["n"] == VALIDATION
    assert (features_stage.cache_root(ctx.run) / "medmcqa_train" / "manifest.json").is_file()


def test_experts_on_different_bases_stop_the_features_stage_before_anything_is_written(home):
    other = make_expert("domain", seed=3, model="tiny-4layer")
    ctx = stage_ctx("features-micro-00000099", needs={"expert-task": expert_needs()["expert-task"], "expert-domain": other.id})
    with pytest.raises(UserError, match="different base models|was trained on 'tiny-4layer'"):
        features_stage.run(ctx, FEATURES)
    assert not artifacts.path(ctx.run, artifacts.FEATURES).exists()


def test_keep_best_with_selection_validation_reports_the_best_validated_epoch(home):
    ctx = ensemble_ctx("ensemble-weighted-micro-00000050")
    ensemble.run(ctx, config(method="weighted", epochs=3.0, keep="best", selection="validation"))
    metrics = results.read(ctx.run_dir)
    best = max(metrics["epochs"], key=lambda e: e["accuracy"])
    assert metrics["kept"] == f"best (epoch {metrics['best']['epoch']})" and metrics["best"]["accuracy"] == best["accuracy"]
    assert metrics["accuracy"] == pytest.approx(best["accuracy"])  # the scored weights are the best epoch's
    assert metrics["selection"] == "validation" and metrics["train_rows"] == TRAIN


def test_keep_best_with_selection_dev_keeps_the_epoch_best_on_rows_carved_from_the_cached_train_split(home):
    ctx = ensemble_ctx("ensemble-weighted-micro-00000051")
    ensemble.run(ctx, config(method="weighted", epochs=3.0, keep="best"))
    metrics = results.read(ctx.run_dir)
    best = max(metrics["epochs"], key=lambda e: e["accuracy"])
    assert metrics["selection"] == "dev" and {e["split"] for e in metrics["epochs"]} == {"dev"}
    assert (metrics["dev_rows"], metrics["train_rows"], metrics["n"]) == (10, TRAIN - 10, VALIDATION)  # a tenth, rounded
    assert metrics["best"]["epoch"] == best["epoch"] and metrics["kept"] == f"best (epoch {best['epoch']})"
    chosen = load_file(str(artifacts.path(ctx.run, artifacts.BEST) / "trainable.safetensors"))
    kept = head_of(ctx.run.id)
    assert kept and all(torch.equal(kept[name], chosen[f"head.{name}"]) for name in kept)  # scored with the chosen weights
    assert not [r for r in fileio.read_jsonl(ctx.run_dir / "metrics.jsonl") if r.get("event") == "feature cache rebuilt"]
