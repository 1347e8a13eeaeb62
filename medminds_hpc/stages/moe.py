"""Mixture of the two LoRA experts (paper section 6.3): a router before every decoder layer of one shared base,
a 4-way head on the last real token, trained on MedMCQA train and scored on validation.

The base is loaded once with both experts' adapters (`features.load_experts`); `modeling/moe.py` puts a router
(`modeling/routers.py`) before each decoder layer and mixes the experts' layer outputs (mix=outputs, the paper) or
their LoRA deltas in one base pass (mix=deltas). The routers and the head train through the shared engine
(checkpoints hold routers, head and optimizer only; resume is exact); the experts stay frozen unless
train_experts=true.

    medminds submit moe-linear --dataset mini                       # the experts first, then the mixture
    medminds submit moe-topk --dataset mini -o mix=deltas           # one base pass per layer instead of two
    medminds submit moe-linear -d micro -o granularity=token -o head_init=letters

Routing statistics (per layer: the share of tokens or questions sent to each expert, their mean probability, gate
entropy, overflow) are logged per training epoch into metrics.jsonl (`"routing": true` records) and, with the
validation split's routing, into metrics.json under "routing"; which expert each validation question went to in
each layer is in routing.parquet (`read_question_routing`). Writes predictions.parquet, routing.parquet,
metrics.json and artifacts/router (trainable.safetensors: routers + head; moe.json; the two adapters in peft format
under adapters/ when they trained).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

from medminds_hpc import artifacts, fileio
from medminds_hpc.errors import UserError
from medminds_hpc.modeling.moe_spec import NUM_EXPERTS, MoESpec
from medminds_hpc.training.selection import planned_training  # noqa: F401  (StageInfo.trains)
from medminds_hpc.training.options import PROMPT_FITS, Relation, TrainOptions, doc

if TYPE_CHECKING:
    import numpy as np

    from medminds_hpc.context import StageContext
    from medminds_hpc.modeling.moe import Mixture, MoEClassifier

INFO_FILE = "moe.json"
ADAPTERS_DIR = "adapters"
CALLBACK = "RoutingStatistics"  # the routing statistics' name in the Trainer's checkpointed state
ROUTING_FILE = "routing.parquet"  # per validation question and layer: its gates (`write_question_routing`)


@dataclass
class Config(TrainOptions):
    router: Literal["linear", "topk", "mlp"] = field(default="linear", metadata=doc("router kind before each decoder layer"))
    hard: bool = field(default=True, metadata=doc(
        "linear and mlp routers: each unit takes its top-1 expert (the paper; the router learns through a "
        "straight-through soft gradient); false: a soft mix of both experts"))
    mix: Literal["outputs", "deltas"] = field(default="outputs", metadata=doc(
        "outputs: the gate-weighted sum of each expert's layer output (the paper; one layer pass per expert used); "
        "deltas: the gate-weighted LoRA deltas inside one base pass (cheaper)"))
    granularity: Literal["token", "sequence"] = field(default="sequence", metadata=doc(
        "sequence: one decision per question, from the mean of its real tokens' states (each expert was trained as "
        "a whole model: it learns far more reliably); token: every token routed on its own state"))
    top_k: int = field(default=1, metadata=doc("experts per token for the top-k router (at most the number of experts)", ge=1, le=NUM_EXPERTS))
    capacity_factor: float = field(default=1.25, metadata=doc(
        "top-k router: tokens an expert may take, times the even share; overflow goes to the next choice, then "
        "through the base layer (training only)", gt=0, le=1000))
    router_noise: float = field(default=1.0, metadata=doc("top-k router: scale of the learned noise", ge=0))
    router_hidden: int = field(default=128, metadata=doc("mlp router: width of its hidden layer", ge=1, le=65536))
    load_balance_coef: float = field(default=0.0, metadata=doc("weight of the load-balancing loss (0: off)", ge=0))
    head_init: Literal["random", "letters"] = field(default="random", metadata=doc(
        "random (the paper) or the LM-head rows of ' A'..' D' (starts from the next-word prior)"))
    train_experts: bool = field(default=False, metadata=doc("true: both experts' adapters train with the routers and head"))
    amp: bool = field(default=True, metadata=doc("mixed precision on CUDA (false: fp32); the routers always run in fp32"))
    prompt: Literal["paper", "harness"] = field(default="paper", metadata=doc("prompt template"))
    eval_rows: int = field(default=0, metadata=doc("validate on at most this many MedMCQA validation rows (0: all)", ge=0))
    keep: Literal["last", "best"] = field(default="last", metadata=doc(
        "weights reported and saved: after the last epoch, or the epoch judged best (on the split `selection` names)"))
    adam_eps: float = field(default=1e-8, metadata=doc("Adam epsilon", gt=0))
    max_length: int = 128
    epochs: float = 10.0

    def spec(self) -> MoESpec:
        return MoESpec(router=self.router, mix=self.mix, granularity=self.granularity, hard=self.hard, top_k=self.top_k,
                       capacity_factor=self.capacity_factor, noise=self.router_noise, router_hidden=self.router_hidden)

    RELATIONS: ClassVar[tuple[Relation, ...]] = (PROMPT_FITS,)


# the model ---------------------------------------------------------------------------------------------------
def build_model(lm: Any, tokenizer: Any, cfg: Config) -> "MoEClassifier":
    """The mixture with its routers (seeded by cfg.seed) and head on `lm`, the base carrying both experts."""
    from medminds_hpc.data.prompts import letter_token_ids
    from medminds_hpc.modeling.moe import MoEClassifier, install

    mixture = install(lm, cfg.spec(), seed=cfg.seed)
    letters = letter_token_ids(tokenizer) if cfg.head_init == "letters" else None
    return MoEClassifier(lm, mixture, cfg.head_init, letters, seed=cfg.seed, balance_coef=cfg.load_balance_coef,
                         train_experts=cfg.train_experts)


def save_mixture(model: "MoEClassifier", directory: Path, info: dict[str, Any]) -> None:
    """The routers and head (trainable.safetensors, as the engine's checkpoints name them), what they were trained
    from (moe.json), and the two adapters in peft format (adapters/task, adapters/domain) when they trained."""
    from medminds_hpc.training import engine

    directory.mkdir(parents=True, exist_ok=True)
    engine.save_trainable(model, directory)
    if model.train_experts:
        with model.mixture.plain_layers() as lm:
            lm.save_pretrained(str(directory / ADAPTERS_DIR), selected_adapters=list(model.mixture.names))
    fileio.atomic_write_json(directory / INFO_FILE, info)


# routing statistics ------------------------------------------------------------------------------------------
def routing_callback(ctx: "StageContext", mixture: "Mixture") -> Any:
    """A TrainerCallback that logs the routing statistics of each training epoch into metrics.jsonl.

    The running sums are part of every checkpoint (transformers' ExportableState, kept in trainer_state.json), so
    an attempt resumed mid-epoch continues them exactly. An epoch's record is written when it ends; a stop that
    landed on an epoch's last step saved first, and the resumed attempt writes what is still missing."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    stats = mixture.stats

    class RoutingStatistics(TrainerCallback, ExportableState):
        def state(self) -> dict[str, Any]:
            return {"args": {}, "attributes": {"totals": stats.state()}}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            saved = (state.stateful_callbacks or {}).get(CALLBACK)
            if isinstance(saved, dict) and saved.get("attributes", {}).get("totals"):
                stats.load(saved["attributes"]["totals"])
            else:
                stats.reset()
            self.close(state, whole_epochs_only=True)

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.close(state, whole_epochs_only=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.max_steps and state.global_step >= state.max_steps:  # finished inside an epoch (max_steps)
                self.close(state, whole_epochs_only=False)

        def close(self, state: Any, whole_epochs_only: bool) -> None:
            epoch = round(state.epoch or 0.0, 4)
            if stats.empty or epoch <= 0 or (whole_epochs_only and epoch != int(epoch)):
                return
            if epoch not in {r["epoch"] for r in routing_history(ctx.run_dir)}:
                ctx.log({"routing": True, "epoch": epoch, "step": state.global_step, "layers": stats.summary()})
            stats.reset()

    RoutingStatistics.__name__ = RoutingStatistics.__qualname__ = CALLBACK
    return RoutingStatistics()


def routing_history(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch routing records of metrics.jsonl, every attempt together (an epoch written twice counts once)."""
    by_epoch: dict[float, dict[str, Any]] = {}
    for record in fileio.read_jsonl(run_dir / "metrics.jsonl"):
        if record.get("routing"):
            by_epoch[record["epoch"]] = {k: record[k] for k in ("epoch", "step", "layers")}
    return [by_epoch[e] for e in sorted(by_epoch)]


def validation_routing(gates: "np.ndarray", names: Sequence[str]) -> list[dict[str, Any]]:
    """Per layer, over the scored questions: the share whose gates (averaged over their tokens) favour each
    expert, and the mean gate of each. `gates` is (questions, layers, experts)."""
    import numpy as np

    out = []
    for layer in range(gates.shape[1]):
        g = gates[:, layer, :]
        chosen = np.bincount(g.argmax(-1), minlength=len(names)) / max(1, len(g))
        out.append({"layer": layer, "share": {n: round(float(c), 6) for n, c in zip(names, chosen)},
                    "gate": {n: round(float(m), 6) for n, m in zip(names, g.mean(0) if len(g) else np.zeros(len(names)))}})
    return out


def write_question_routing(run_dir: Path, ids: Sequence[Any], gates: "np.ndarray", names: Sequence[str]) -> Path:
    """routing.parquet: one row per question and layer (id, layer, gate_<expert> averaged over the question's real
    tokens, expert: the one with the largest gate), so routing can be read against anything known per question."""
    import io

    import numpy as np
    import pandas as pd

    questions, layers, _ = gates.shape
    frame = pd.DataFrame({"id": pd.Series(np.repeat([str(i) for i in ids], layers), dtype="string"),
                          "layer": np.tile(np.arange(layers, dtype=np.int64), questions),
                          **{f"gate_{n}": gates[:, :, e].reshape(-1).astype(np.float32) for e, n in enumerate(names)},
                          "expert": pd.Series(np.asarray(names, dtype=object)[gates.argmax(-1).reshape(-1)], dtype="string")})
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    fileio.atomic_write_bytes(run_dir / ROUTING_FILE, buf.getvalue())
    return run_dir / ROUTING_FILE


def read_question_routing(run_dir: Path) -> Any:
    """routing.parquet of a finished moe run -> DataFrame (id, layer, gate_<expert>..., expert)."""
    import pandas as pd

    return pd.read_parquet(run_dir / ROUTING_FILE)


# the stage ---------------------------------------------------------------------------------------------------
def run(ctx: "StageContext", cfg: Config) -> dict[str, Any]:
    """Train the routers and head (and the adapters, with train_experts) on MedMCQA train, then score validation."""
    import datasets
    import numpy as np
    import torch

    from medminds_hpc.data.prompts import mcq_prompt
    from medminds_hpc.modeling.features import load_experts
    from medminds_hpc.modeling.scoring import head_logits, score_prompts
    from medminds_hpc.stages import features as features_stage
    from medminds_hpc.stages.baseline import load_rows, prompt_collator, scoring_progress, write_results
    from medminds_hpc.training import engine, metrics, selection

    expert_runs = features_stage.expert_runs_of(ctx)
    all_train = load_rows(ctx, "medmcqa_train")
    val_rows = load_rows(ctx, "medmcqa_validation", cfg.eval_rows)
    if not all_train:
        raise UserError(f"no MedMCQA training rows for dataset {ctx.dataset!r}; rerun `medminds prepare --dataset {ctx.dataset}`")
    split = selection.split(cfg, [r["answer"] for r in all_train], cfg.max_train_rows)
    train_rows, judged_rows = selection.pick(all_train, split.train), split.judged(all_train, val_rows)
    lm, tokenizer = load_experts(expert_runs)
    model = build_model(lm, tokenizer, cfg)
    mixture = model.mixture
    info: dict[str, Any] = {"model": ctx.model, **dataclasses.asdict(cfg.spec()), "head_init": cfg.head_init,
                            "train_experts": cfg.train_experts, "load_balance_coef": cfg.load_balance_coef,
                            "prompt": cfg.prompt, "max_length": cfg.max_length, "layers": len(mixture.layers),
                            "experts": {name: run.id for name, run in expert_runs.items()}}

    def evaluate(m: Any) -> dict[str, Any]:
        logits = head_logits(m, tokenizer, judged_rows, cfg.prompt, batch_size=cfg.eval_batch_size, max_length=cfg.max_length)
        return metrics.evaluate_predictions([r["id"] for r in judged_rows], [r["answer"] for r in judged_rows], logits)

    train_data = datasets.Dataset.from_dict({"prompt": [mcq_prompt(r, cfg.prompt) for r in train_rows],
                                             "label": [int(r["answer"]) for r in train_rows]})
    options = dataclasses.replace(cfg, precision=cfg.precision if cfg.amp else "fp32")
    plan = engine.TrainPlan(model=model, train_dataset=train_data, options=options,
                            collator=prompt_collator(tokenizer, cfg.max_length), evaluate=evaluate,
                            save_best=engine.save_trainable, callbacks=[routing_callback(ctx, mixture)],
                            args_extra={"adam_epsilon": cfg.adam_eps})
    outcome = engine.train(ctx, plan)

    kept = engine.keep_weights(ctx, model, outcome, cfg.keep)
    model.eval()
    info["kept"] = kept
    if ctx.is_rank_zero:
        fileio.replace_dir(artifacts.path(ctx.run, artifacts.ROUTER), lambda tmp: save_mixture(model, tmp, info))

    layers, experts = len(mixture.layers), len(mixture.names)

    def score(ids: Any, mask: Any, last: Any) -> Any:
        logits, gates = model.with_gates(ids, mask)
        return torch.cat([logits.float(), gates.float().flatten(1)], dim=1)

    started = time.time()
    texts = [mcq_prompt(r, cfg.prompt) for r in val_rows]
    device = next(model.score.parameters()).device
    scored = score_prompts(score, tokenizer, texts, device=device, batch_size=cfg.eval_batch_size,
                           max_length=cfg.max_length, progress=scoring_progress(ctx, stoppable=True))
    scored = scored.reshape(len(texts), 4 + layers * experts)
    logits, gates = scored[:, :4], scored[:, 4:].reshape(len(texts), layers, experts)
    eval_seconds = time.time() - started
    routing = {"epochs": routing_history(ctx.run_dir), "validation": validation_routing(gates, mixture.names)}
    if ctx.is_rank_zero:
        write_question_routing(ctx.run_dir, [r["id"] for r in val_rows], np.asarray(gates), mixture.names)
    extra = {"method": f"moe-{cfg.router}", **{k: v for k, v in info.items() if k != "model"}, "steps": outcome.steps,
             "train_rows": len(train_rows), "epochs": outcome.history, "best": outcome.best, **split.record(),
             "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
             "routing": routing, "router": str(artifacts.path(ctx.run, artifacts.ROUTER))}
    result = write_results(ctx, val_rows, np.asarray(logits), "logit", train_seconds=outcome.train_seconds,
                           eval_seconds=eval_seconds, extra=extra)
    return {"accuracy": result["accuracy"], "n": result["n"], "steps": outcome.steps}
