"""The feature cache of two frozen experts: the states equal each expert's own forward pass, the LM head on them
gives the expert's logits, and the cache on disk is refused when stale or partial, rebuilt, resumable and small."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medminds_hpc import runs
from medminds_hpc.context import StopRequested
from medminds_hpc.data import prompts
from medminds_hpc.data.synthetic import medmcqa_rows
from medminds_hpc.errors import UserError
from medminds_hpc.modeling import features
from medminds_hpc.modeling.heads import decoder_of
from medminds_hpc.modeling.loading import load_model
from tests.helpers import MISTRAL_TOKENIZER, make_expert, require_shared_data, stage_ctx

ROWS = medmcqa_rows(10, seed=0, split="validation")
RPS = 3  # rows per shard: 10 rows -> 4 shards, the last one short


@pytest.fixture(autouse=True)
def builtin_tokenizer(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features") / "home"


@pytest.fixture(scope="module")
def experts(module_home) -> dict[str, runs.Run]:
    """Two finished experts with random LoRAs on `tiny`, made once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        return {"task": make_expert("task", seed=1), "domain": make_expert("domain", seed=2)}


@pytest.fixture
def home(experts, module_home, monkeypatch) -> Path:
    monkeypatch.setenv("MEDMINDS_HOME", str(module_home))
    return module_home


@pytest.fixture(scope="module")
def loaded(experts, module_home):
    """(model, tokenizer): the base once with both adapters."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        return features.load_experts(experts)


@pytest.fixture(scope="module")
def alone(experts, module_home):
    """Each expert on its own fresh base, as a PeftModel with that single adapter."""
    from peft import PeftModel

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMINDS_HOME", str(module_home))
        mp.delenv("MEDMINDS_TOKENIZER", raising=False)
        return {name: PeftModel.from_pretrained(load_model("tiny")[0], str(run.artifacts_dir / "adapter")).eval()
                for name, run in experts.items()}


@pytest.fixture(scope="module")
def cached(experts, loaded, tmp_path_factory) -> features.Features:
    """A cache of ROWS extracted once for the module."""
    directory = tmp_path_factory.mktemp("cache")
    spec = features.cache_spec(experts, ROWS, split="validation", rows_per_shard=RPS)
    features.extract(directory, spec, ROWS, *loaded, batch_size=2)
    out = features.load(directory, spec)
    assert out is not None
    return out


def spec_of(experts, **kw) -> features.CacheSpec:
    kw.setdefault("rows_per_shard", RPS)
    return features.cache_spec(experts, ROWS, split="validation", **kw)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def single_forward(model, tok, row) -> tuple[torch.Tensor, torch.Tensor]:
    """(final normed hidden state, next-token logits) at the last token of one unpadded prompt."""
    ids = tok(prompts.mcq_prompt(row), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-1][0, -1], out.logits[0, -1]


# the states ----------------------------------------------------------------------------------------------------
def test_cached_states_equal_each_expert_alone(cached, alone, loaded):
    _, tok = loaded
    assert cached.ids == [str(r["id"]) for r in ROWS]
    for name, model in alone.items():
        direct = torch.stack([single_forward(model, tok, row)[0] for row in ROWS]).numpy()
        assert cached.states[name].dtype == np.float32 and cached.states[name].shape == direct.shape
        np.testing.assert_allclose(cached.states[name], direct, atol=1e-5, rtol=0)
    assert np.abs(cached.states["task"] - cached.states["domain"]).max() > 1e-2  # two different experts


@pytest.mark.parametrize("padding_side,batch_size", [("left", 3), ("right", 1), ("left", 10)])
def test_padding_side_and_batch_size_do_not_change_states(cached, loaded, padding_side, batch_size):
    texts = [prompts.mcq_prompt(r) for r in ROWS]
    states = features.hidden_states(*loaded, texts, batch_size=batch_size, padding_side=padding_side)
    for name in features.EXPERTS:
        np.testing.assert_allclose(states[name], cached.states[name], atol=1e-5, rtol=0)


def test_layers_run_in_blocks_of_rows_give_the_same_states_with_a_lower_peak(cached, loaded, monkeypatch):
    from medminds_hpc.training.peak_memory import peak_above_start

    model, tok = loaded
    texts = [prompts.mcq_prompt(r) for r in ROWS]
    attention = decoder_of(model).layers[0].self_attn
    calls: list[int] = []
    hook = attention.register_forward_hook(lambda module, args, out: calls.append(out[0].shape[0]))

    def extract() -> dict[str, np.ndarray]:
        return features.hidden_states(model, tok, texts, batch_size=len(texts), padding_side="left")

    try:
        monkeypatch.setattr(features, "CHUNK_POSITIONS", 10**9)  # no blocks
        whole_peak = peak_above_start(extract)
        assert calls == [len(texts)] * 2  # each expert's batch through the layer at once
        monkeypatch.setattr(features, "CHUNK_POSITIONS", 1)  # every block one row
        calls.clear()
        blocks_peak = peak_above_start(extract)
        assert calls == [1] * (2 * len(texts))
        states = extract()
    finally:
        hook.remove()
    for name in features.EXPERTS:
        np.testing.assert_allclose(states[name], cached.states[name], atol=1e-5, rtol=0)
    assert blocks_peak < 0.6 * whole_peak, (blocks_peak, whole_peak)
    assert "forward" not in vars(decoder_of(model).layers[0])  # the layers are themselves again afterwards


def test_lm_head_on_cache_gives_each_experts_logits(cached, alone, loaded):
    from medminds_hpc.modeling.scoring import letter_logprobs

    model, tok = loaded
    letters = prompts.letter_token_ids(tok)
    for name, expert in alone.items():
        own = torch.stack([single_forward(expert, tok, row)[1] for row in ROWS])
        logits = features.lm_head_logits(model, cached.states[name])
        assert logits.shape == (len(ROWS), len(tok))
        torch.testing.assert_close(logits, own, atol=1e-4, rtol=0)
        four = features.letter_logits(model, tok, cached.states[name])
        torch.testing.assert_close(four, logits[:, letters], atol=1e-5, rtol=0)
        scored = letter_logprobs(expert, tok, ROWS)
        assert four.argmax(1).tolist() == scored.argmax(1).tolist()


# one base ------------------------------------------------------------------------------------------------------
def test_one_base_two_named_adapters(loaded):
    from medminds_hpc.modeling.adapters import adapter_names

    model, _ = loaded
    assert adapter_names(model) == ["task", "domain"]
    assert not any(p.requires_grad for p in model.parameters())
    bases = {id(m) for m in model.modules() if type(m).__name__ == "MistralModel"}
    assert len(bases) == 1


def test_experts_on_different_bases_stop_before_anything_is_written(tmp_path):
    task = make_expert("task", seed=1)
    domain = make_expert("domain", seed=2, model="tiny-4layer")
    target = tmp_path / "features"
    with pytest.raises(UserError) as e:
        features.ensure(target, {"task": task, "domain": domain}, ROWS, split="validation")
    message = str(e.value)
    assert "\n" not in message
    for part in (task.id, domain.id, "'tiny'", "'tiny-4layer'", "--model"):
        assert part in message
    assert not target.exists()


def test_experts_with_different_tokenizers_are_refused(tmp_path):
    a = features.ExpertInfo("task", "expert-task-micro-1", "tiny", "tiny-aaaa", tmp_path, "0" * 64)
    b = features.ExpertInfo("domain", "expert-domain-micro-2", "tiny", "tiny-bbbb", tmp_path, "1" * 64)
    with pytest.raises(UserError, match=r"expert-task-micro-1 \(tokenizer tiny-aaaa\) and expert-domain-micro-2 "
                                        r"\(tokenizer tiny-bbbb\).*MEDMINDS_TOKENIZER"):
        features.check_same_base([a, b])
    features.check_same_base([a, features.ExpertInfo("domain", "d", "tiny", "tiny-aaaa", tmp_path, "1" * 64)])


def test_experts_with_another_tiny_tokenizer_are_refused(experts, home, tmp_path, monkeypatch):
    require_shared_data(MISTRAL_TOKENIZER)
    domain = make_expert("domain", seed=3)  # built-in tokenizer, like the task expert
    monkeypatch.setenv("MEDMINDS_TOKENIZER", str(MISTRAL_TOKENIZER))
    task = make_expert("task", seed=4)  # the real Mistral tokenizer
    with pytest.raises(UserError, match=rf"experts {task.id} \(tokenizer tiny-\w+\) and {domain.id} \(tokenizer "
                                        rf"tiny-\w+\) of model 'tiny' were trained with different tokenizers"):
        features.ensure(tmp_path / "cache", {"task": task, "domain": domain}, ROWS, split="validation")
    with pytest.raises(UserError, match=r"builds here as tiny-\w+ \(another tokenizer\): set \$MEDMINDS_TOKENIZER"):
        features.load_experts(experts)  # trained on the built-in tokenizer, loaded with Mistral's
    assert not (tmp_path / "cache").exists()


def test_expert_without_adapter_is_refused(home, experts):
    unfinished = runs.create("expert-domain-micro-unfinished", {"experiment": "expert-domain", "dataset": "micro", "model": "tiny"})
    with pytest.raises(UserError, match=r"expert 'domain': run expert-domain-micro-unfinished has no "
                                        r"artifacts/adapter/adapter_model.safetensors.*finish that run first"):
        features.cache_spec({"task": experts["task"], "domain": unfinished}, ROWS, split="validation")


@pytest.mark.parametrize("kw,match", [
    ({"rows_per_shard": 0}, r"rows_per_shard=0: it must be at least 1"),
    ({"template": "chat"}, r"unknown prompt template 'chat'; valid: paper"),
    ({"max_length": 1}, r"max_length=1: it must be at least 2"),
])
def test_bad_options_are_refused(home, experts, kw, match):
    with pytest.raises(UserError, match=match):
        spec_of(experts, **kw)


def test_a_shard_index_outside_the_array_is_refused(home, experts):
    with pytest.raises(UserError, match=r"shard 2 of 2: the shard index must be in 0..1"):
        features.my_shards(spec_of(experts), shard=2, num_shards=2)


# the cache on disk ---------------------------------------------------------------------------------------------
def test_cache_size_is_rows_times_hidden_not_vocab(loaded, tmp_path, experts):
    model, tok = loaded
    hidden = decoder_of(model).config.hidden_size
    spec = spec_of(experts)
    features.extract(tmp_path, spec, ROWS, model, tok)
    size = sum(features.shard_path(tmp_path, i).stat().st_size for i in range(spec.num_shards))
    payload = len(ROWS) * hidden * 4 * len(features.EXPERTS)
    assert payload < size < payload + 1024 * spec.num_shards
    assert size < len(ROWS) * len(tok) * 4  # one expert's logits alone would be bigger
    manifest = features.read_manifest(tmp_path)
    assert manifest["rows"] == len(ROWS) and manifest["rows_per_shard"] == RPS and manifest["dtype"] == "float32"
    assert manifest["experts"]["task"]["run"] == experts["task"].id and manifest["split"] == "validation"
    assert manifest["shards"]["3"]["rows"] == [9, 10]


def test_interrupted_extraction_resumes_at_the_next_shard(loaded, experts, tmp_path):
    model, tok = loaded
    spec = spec_of(experts)
    calls = {"n": 0}
    hook = decoder_of(model).register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        def preempt(index: int) -> None:
            if index == 1:
                raise StopRequested("stopped at shard 1 after saving")  # as ctx.step_done does on USR2

        with pytest.raises(StopRequested):
            features.extract(tmp_path / "a", spec, ROWS, model, tok, batch_size=RPS, on_shard=preempt)
        assert calls["n"] == 2 * 2  # two shards, one batch each, two experts
        assert features.load(tmp_path / "a", spec) is None  # partial
        kept = {i: features.shard_path(tmp_path / "a", i).stat().st_mtime_ns for i in (0, 1)}
        assert features.extract(tmp_path / "a", spec, ROWS, model, tok, batch_size=RPS) == [2, 3]
        assert calls["n"] == 4 * 2
        assert {i: features.shard_path(tmp_path / "a", i).stat().st_mtime_ns for i in (0, 1)} == kept
        assert features.extract(tmp_path / "a", spec, ROWS, model, tok) == []  # complete: nothing to do
        assert calls["n"] == 4 * 2
    finally:
        hook.remove()
    features.extract(tmp_path / "b", spec, ROWS, model, tok, batch_size=RPS)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")


def test_a_stage_stops_on_the_stop_flag_and_the_requeued_job_finishes(home, experts, tmp_path, cached):
    """ctx.step_done after each shard: USR2 saves and raises StopRequested; the next attempt computes the rest."""
    ctx = stage_ctx("ensemble-late-micro-00000001", needs={"expert-task": experts["task"].id,
                                                           "expert-domain": experts["domain"].id})
    asked = iter([False, True])
    ctx.stop_requested = lambda: next(asked, False)
    build = dict(split="validation", rows_per_shard=RPS, batch_size=2,
                 on_shard=lambda i: ctx.step_done(i + 1, dict, total=4))
    with pytest.raises(StopRequested):
        features.ensure(tmp_path, experts, ROWS, **build)
    assert ctx.resume().step == 2 and sorted(features.read_manifest(tmp_path)["shards"]) == ["0", "1"]
    again = features.ensure(tmp_path, experts, ROWS, **build)
    assert sorted(again.manifest["shards"]) == ["0", "1", "2", "3"]
    for name in features.EXPERTS:
        np.testing.assert_array_equal(again.states[name], cached.states[name])


def test_job_array_tasks_extract_their_own_shards(loaded, experts, tmp_path, cached):
    model, tok = loaded
    spec = spec_of(experts)
    assert features.extract(tmp_path, spec, ROWS, model, tok, batch_size=2, shard=1, num_shards=2) == [1, 3]
    assert features.load(tmp_path, spec) is None  # shards 0 and 2 still owed by task 0
    assert features.extract(tmp_path, spec, ROWS, model, tok, batch_size=2, shard=0, num_shards=2) == [0, 2]
    whole = features.load(tmp_path, spec)
    for name in features.EXPERTS:
        np.testing.assert_array_equal(whole.states[name], cached.states[name])


@pytest.mark.parametrize("damage", ["truncate", "delete", "template", "max_length", "rows"])
def test_stale_or_partial_cache_is_refused_and_rebuilt(loaded, experts, tmp_path, damage):
    model, tok = loaded
    spec = spec_of(experts)
    features.extract(tmp_path / "cache", spec, ROWS, model, tok)
    rows = ROWS
    shard = features.shard_path(tmp_path / "cache", 2)
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "delete":
        shard.unlink()
    elif damage == "template":
        spec = spec_of(experts, template="harness")
    elif damage == "max_length":
        spec = spec_of(experts, max_length=64)
    else:
        rows = ROWS[:7]
        spec = features.cache_spec(experts, rows, split="validation", rows_per_shard=RPS)
    assert features.load(tmp_path / "cache", spec) is None
    expected = [2] if damage in ("truncate", "delete") else list(range(spec.num_shards))
    assert features.extract(tmp_path / "cache", spec, rows, model, tok) == expected
    assert features.extract(tmp_path / "fresh", spec, rows, model, tok) == list(range(spec.num_shards))
    assert files_of(tmp_path / "cache") == files_of(tmp_path / "fresh")
    assert features.load(tmp_path / "cache", spec) is not None


def test_a_changed_adapter_is_detected_and_rebuilt(tmp_path):
    """An expert retrained into the same run directory: same run id, other adapter bytes."""
    task, domain = make_expert("task", seed=11), make_expert("domain", seed=12)
    pair = {"task": task, "domain": domain}
    first = features.ensure(tmp_path / "cache", pair, ROWS, split="validation", rows_per_shard=RPS)
    retrained = make_expert("domain", seed=13)
    shutil.rmtree(domain.artifacts_dir / "adapter")
    shutil.copytree(retrained.artifacts_dir / "adapter", domain.artifacts_dir / "adapter")
    assert features.load(tmp_path / "cache", spec_of(pair)) is None
    rebuilt = features.ensure(tmp_path / "cache", pair, ROWS, split="validation", rows_per_shard=RPS)
    assert rebuilt.manifest["experts"]["domain"]["run"] == domain.id
    assert np.abs(rebuilt.states["domain"] - first.states["domain"]).max() > 1e-2
    np.testing.assert_array_equal(rebuilt.states["task"], first.states["task"])
    fresh = features.ensure(tmp_path / "fresh", pair, ROWS, split="validation", rows_per_shard=RPS)
    assert files_of(tmp_path / "cache") == files_of(tmp_path / "fresh")
    np.testing.assert_array_equal(fresh.states["domain"], rebuilt.states["domain"])
