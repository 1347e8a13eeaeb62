"""Experiments (jobs/*.toml): which stage, with which parameters, needing which other experiments, on what.

    medminds list            # every experiment, its stage, needs and resources per dataset size
    medminds list NAME       # its parameters (default, this file's value, help) and resources per size

Resources in a file are cluster-neutral (time, gpus, min_gpu_memory_gb, gpu = "none"): the cluster profile
turns them into its own GPU types and partitions (clusters.job_resources).

A file is validated whole: unknown keys, ill-typed values and bad choices are reported together, each
with the file, the key and what would have been valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medminds_hpc import clusters, config, paths
from medminds_hpc.errors import UserError, many
from medminds_hpc.stages import StageInfo, get_stage

TOP_LEVEL_KEYS = {"stage", "description", "needs", "model", "shards", "params", "params_by_size", "resources"}
DEFAULT_MODEL = "mistral-7b-instruct"


@dataclass
class Experiment:
    name: str
    stage: str
    path: Path
    description: str = ""
    needs: list[str] = field(default_factory=list)
    model: str | None = None
    shards: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    params_by_size: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stage_info(self) -> StageInfo:
        return get_stage(self.stage)


@dataclass
class Resolved:
    """An experiment bound to a dataset size, a model and overrides: everything that defines a run."""

    experiment: Experiment
    dataset: str
    model: str | None
    config: Any
    resource_overrides: dict[str, Any]
    shards: int = 1  # tasks of the job array (the experiment's `shards`, or -o shards=N)
    problems: list[str] = field(default_factory=list)  # what is wrong with it (then `config` is None)

    @property
    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def identity(self, needs: dict[str, str]) -> dict[str, Any]:
        """What the run id hashes: what the run computes, not where it runs."""
        return {"experiment": self.experiment.name, "stage": self.experiment.stage, "dataset": self.dataset,
                "model": self.model, "params": self.params, "needs": needs, "shards": self.shards}


def available() -> list[str]:
    d = paths.jobs_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load(name: str) -> Experiment:
    path = paths.jobs_dir() / f"{name}.toml"
    if not name or "/" in name or not path.exists():
        raise UserError(f"unknown experiment {name!r}; valid experiments: {', '.join(available()) or '(none)'} (files in {paths.jobs_dir()})")
    return parse(paths.read_toml(path), path)


def load_all() -> list[Experiment]:
    return [load(n) for n in available()]


def parse(raw: dict[str, Any], path: Path) -> Experiment:
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(msg)

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            bad(config.unknown_key_message(key, sorted(TOP_LEVEL_KEYS)))
    stage_name = raw.get("stage")
    stage = None
    if not isinstance(stage_name, str):
        bad("missing key 'stage' (the stage this experiment runs)")
    else:
        try:
            stage = get_stage(stage_name)
        except UserError as e:
            bad(f"stage: {e}")
    needs = raw.get("needs", [])
    if not (isinstance(needs, list) and all(isinstance(n, str) for n in needs)):
        bad(f"needs: expected a list of experiment names, got {needs!r}")
        needs = []
    missing = [n for n in needs if n not in available()]
    if missing:
        bad(f"needs: unknown experiment(s) {', '.join(missing)}; valid experiments: {', '.join(available())}")
    shards = raw.get("shards", 1)
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        bad(f"shards: expected a positive integer, got {shards!r}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        bad(f"model: expected a model name, got {model!r}")

    params = raw.get("params", {})
    by_size = raw.get("params_by_size", {})
    resources = raw.get("resources", {})
    for key, table in (("params", params), ("params_by_size", by_size), ("resources", resources)):
        if not isinstance(table, dict):
            bad(f"{key}: expected a table, got {table!r}")
    if stage is not None and isinstance(params, dict):
        cls = stage.config_class()
        problems += [f"[params] {p}" for p in config.check_mapping(cls, params)[1]]
        if isinstance(by_size, dict):
            for size, table in by_size.items():
                if size not in clusters.DATASET_SIZES:
                    bad(f"[params_by_size.{size}]: unknown dataset size; valid sizes: {', '.join(clusters.DATASET_SIZES)}")
                elif not isinstance(table, dict):
                    bad(f"[params_by_size.{size}]: expected a table")
                else:
                    problems += [f"[params_by_size.{size}] {p}" for p in config.check_mapping(cls, table)[1]]
    if isinstance(resources, dict):
        for size, table in resources.items():
            if size not in clusters.DATASET_SIZES:
                bad(f"[resources.{size}]: unknown dataset size; valid sizes: {', '.join(clusters.DATASET_SIZES)}")
            elif not isinstance(table, dict):
                bad(f"[resources.{size}]: expected a table")
            else:
                problems += [f"[resources.{size}] {p}" for p in config.check_mapping(clusters.Resources, table)[1]]
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))
    return Experiment(
        name=path.stem, stage=stage_name, path=path, description=str(raw.get("description", "")), needs=needs,
        model=model, shards=shards, params=params, params_by_size=by_size, resources=resources,
    )


def check_dataset(dataset: str) -> None:
    if dataset not in clusters.DATASET_SIZES:
        raise UserError(f"unknown dataset size {dataset!r}; valid sizes: {', '.join(clusters.DATASET_SIZES)}")


def parse_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"-o {item!r}: expected key=value, e.g. -o learning_rate=1e-4 or -o resources.time=02:00:00")
        pairs.append((key.strip(), value))
    return pairs


def split_overrides(top: str, chain: list[str], overrides: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Route `-o` items to experiments: `key=v` and `resources.key=v` go to `top`, `NAME.key=v` to the needed
    experiment NAME (e.g. `-o prepare.source=synthetic`). Returns the routes and the items that go nowhere."""
    routed: dict[str, list[str]] = {name: [] for name in chain}
    problems = []
    for item in overrides:
        key, _, value = item.partition("=")
        head, dot, rest = key.strip().partition(".")
        if dot and head != "resources":
            problems += route_named(item, head, f"{rest}={value}", routed, "submission")
        else:
            routed[top].append(item)
    return routed, problems


def route_named(item: str, name: str, setting: str, routed: dict[str, list[str]], what: str) -> list[str]:
    """`-o NAME.KEY=VALUE`: KEY=VALUE goes to experiment NAME when the command involves it; else the line saying why."""
    if name in routed:
        routed[name].append(setting)
        return []
    if name not in available():
        return [f"-o {item!r}: there is no experiment {name!r} (NAME.KEY=VALUE sets experiment NAME's parameter); "
                f"experiments: {', '.join(available())}"]
    return [f"-o {item!r}: {name} is not part of this {what}; it involves {', '.join(routed)}"]


def model_of(exp: Experiment, model: str | None) -> str | None:
    """The base model a run of `exp` loads: --model, else the file's `model`, else the default (None: no model)."""
    return (model or exp.model or DEFAULT_MODEL) if exp.stage_info.uses_model else None


def resolve(exp: Experiment, dataset: str, model: str | None = None, overrides: list[str] | None = None) -> Resolved:
    """Bind an experiment to a dataset size, model and `-o key=value` overrides, validating all of them (every
    problem in one error: types, declared domains, relations between parameters)."""
    resolved = bind(exp, dataset, model, overrides)
    if resolved.problems:
        raise many(resolved.problems)
    return resolved


def bind(exp: Experiment, dataset: str, model: str | None = None, overrides: list[str] | None = None) -> Resolved:
    """`resolve` without raising: what is wrong is in `problems` (one line each, naming the experiment and the
    option), and the resource overrides are parsed even when the parameters are not, so both are checked."""
    check_dataset(dataset)
    stage = exp.stage_info
    cls = stage.config_class()
    merged = {**exp.params, **exp.params_by_size.get(dataset, {})}
    resource_overrides: dict[str, Any] = {}
    shards = exp.shards
    problems = []
    for key, value in parse_overrides(overrides or []):
        if key == "shards":
            if not value.strip().isdigit() or int(value) < 1:
                problems.append(f"-o shards={value}: expected a positive integer, the number of tasks of the job array")
            else:
                shards = int(value)
            continue
        if key.startswith("resources."):
            sub = key.split(".", 1)[1]
            values, errs = config.check_mapping(clusters.Resources, {sub: value}, from_text=True)
            if sub == "gpu" and "gpu" in values and values["gpu"] is None:
                values["gpu"] = "none"  # a CPU job, as in a TOML file (None would keep the size's GPU type)
            resource_overrides.update(values)
            problems += [f"-o {key}: {e.split(': ', 1)[-1] if e.startswith(sub) else e}" for e in errs]
            continue
        values, errs = config.check_mapping(cls, {key: value}, from_text=True)
        merged.update(values)
        for e in errs:
            if e.startswith("unknown key"):
                problems.append(f"-o {key}: {e} (or shards, or resources.{{{', '.join(config.field_types(clusters.Resources))}}})")
            else:
                problems.append(f"-o {e}")
    cfg, errs = config.problems_of(cls, merged)
    problems = [f"experiment {exp.name}: {p}" for p in problems + errs]
    return Resolved(exp, dataset, model_of(exp, model), None if problems else cfg, resource_overrides, shards, problems)
