"""`medminds list`: the experiments as a person reads them (names whole at any width) and as scripts do (--json).

    medminds list                                  # every experiment: stage, needs (and resources when wide enough)
    medminds list expert-task --cluster generic    # every parameter: default, help, the paper's value; resources per size

Only configs and profiles are read: no torch, no transformers, nothing submitted.
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from typing import Any, Literal

from medminds_hpc import clusters, config, experiments, tables
from medminds_hpc.errors import UserError


def resources_by_size(exp: experiments.Experiment, profile: clusters.ClusterProfile) -> dict[str, clusters.JobResources | str]:
    """What each dataset size of `exp` gets on `profile` (the layering `submit` uses), or why it is refused."""
    out: dict[str, clusters.JobResources | str] = {}
    for size in clusters.DATASET_SIZES:
        try:
            out[size] = clusters.job_resources(profile, size, exp.resources.get(size, {}))
        except UserError as e:
            out[size] = f"refused: {str(e).split(': ', 1)[-1]}"
    return out


def _summary(res: clusters.JobResources | str) -> str:
    return res if isinstance(res, str) else res.summary()


def overview(profile: clusters.ClusterProfile) -> list[dict[str, Any]]:
    """One row per experiment in jobs/."""
    rows = []
    for exp in experiments.load_all():
        res = resources_by_size(exp, profile)
        rows.append({"name": exp.name, "stage": exp.stage, "needs": exp.needs, "implemented": exp.stage_info.implemented,
                     "description": exp.description, "cluster": profile.name,
                     "resources": {s: _summary(r) for s, r in res.items()}, "file": str(exp.path)})
    return rows


def render_overview(rows: list[dict[str, Any]], profile: clusters.ClusterProfile, width: int) -> str:
    """Names whole; needs wrap; the per-size resource columns only when the terminal has room for them."""
    def stage(r: dict[str, Any]) -> str:
        return r["stage"] if r["implemented"] else f"{r['stage']} (not yet)"

    base = [[r["name"], stage(r), ", ".join(r["needs"])] for r in rows]
    wide = [b + [r["resources"][s] for s in clusters.DATASET_SIZES] for b, r in zip(base, rows)]
    wide_headers = ["experiment", "stage", "needs", *clusters.DATASET_SIZES]
    needed = tables.table_width(wide_headers, wide)
    if needed <= width:
        text = tables.wrapped_table(wide_headers, wide, width)
        note = (f"Resources on cluster profile '{profile.name}' (--cluster PROFILE for another). "
                "Parameters and defaults of one experiment: medminds list NAME.")
    else:
        text = tables.wrapped_table(wide_headers[:3], base, width)
        note = (f"One experiment's parameters, defaults and resources per dataset size on cluster profile '{profile.name}': "
                f"medminds list NAME. A terminal of {needed} columns or more shows the resources here.")
    return text + "\n" + textwrap.fill(note, width)


# one experiment ---------------------------------------------------------------------------------------------------
def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _choices(tp: Any) -> list[Any]:
    """The valid values of a Literal field (also inside `X | None` or `Literal[...] | bool`), else []."""
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if tp is bool:
        return [True, False]
    args = typing.get_args(tp)
    literal = [c for arg in args for c in _choices(arg) if typing.get_origin(arg) is Literal]
    return [c for arg in args for c in _choices(arg)] if literal else []


def field_help(cls: type) -> dict[str, str]:
    """Each field's help, taken from the nearest class that documents it (a stage that only changes a shared
    training field's default keeps that field's help)."""
    helps: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        helps.update({k: v for k, v in config.field_help(klass).items() if v})
    return helps


def parameters(exp: experiments.Experiment) -> list[dict[str, Any]]:
    """Every stage parameter: its default, the experiment file's value (the paper's), per-size values and help."""
    cls = exp.stage_info.config_class()
    helps = field_help(cls)
    types_ = config.field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default(f)
        value = exp.params.get(f.name, default)
        by_size = {s: t[f.name] for s, t in exp.params_by_size.items() if f.name in t}
        choices = _choices(types_[f.name])
        domain = " | ".join(fmt(c) for c in choices) if choices else config.describe_domain(cls, f.name)
        out.append({"name": f.name, "default": default, "value": value, "in_file": f.name in exp.params, "differs": value != default, "by_size": by_size,
                    "help": helps.get(f.name, ""), "choices": choices, "domain": domain})
    return out


def resource_keys() -> dict[str, str]:
    """Each key of -o resources.KEY=VALUE with its declared domain."""
    return {key: config.describe_domain(clusters.Resources, key) for key in config.field_types(clusters.Resources)}


def rules(exp: experiments.Experiment) -> list[str]:
    """The relations between the stage's parameters, as `submit` checks them."""
    return [f"{', '.join(r.keys)}: {r.text}" for r in config.relations(exp.stage_info.config_class())]


def detail(name: str, profile: clusters.ClusterProfile) -> dict[str, Any]:
    """Everything `medminds list NAME` shows, as plain data (the --json form)."""
    exp = experiments.load(name)
    stage = exp.stage_info
    res = resources_by_size(exp, profile)
    return {
        "name": exp.name, "stage": exp.stage, "stage_summary": stage.summary, "implemented": stage.implemented,
        "description": exp.description, "file": str(exp.path), "needs": exp.needs,
        "model": experiments.model_of(exp, None),
        "cluster": profile.name, "cluster_file": profile.path,
        "parameters": parameters(exp), "rules": rules(exp), "resource_keys": resource_keys(),
        "asks": {s: exp.resources.get(s, {}) for s in clusters.DATASET_SIZES},
        "resources": {s: ({"error": r} if isinstance(r, str) else dataclasses.asdict(r)) for s, r in res.items()},
    }


def fmt(value: Any) -> str:
    """A value as it is written after `-o key=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(fmt(v) for v in value)
    return str(value)


def render_detail(d: dict[str, Any], width: int) -> str:
    def para(text: str, indent: str = "") -> str:
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent + "  ")

    lines = [para(f"{d['name']}: {d['description']}" if d["description"] else d["name"]),
             para(f"file: {d['file']}", "  "),
             para(f"stage: {d['stage']} ({d['stage_summary'] or 'a stage module'})" + ("" if d["implemented"] else ", not built yet"), "  "),
             para(f"needs: {', '.join(d['needs']) or 'nothing'}", "  ")]
    if d["model"]:
        lines.append(para(f"model: {d['model']} (--model NAME|PATH for another)", "  "))
    lines += ["", para(f"parameters (-o KEY=VALUE to change one). 'experiment' is the value in {d['file']} "
                       "(the paper's setting) where it differs from the stage default.")]
    rows = []
    for p in d["parameters"]:
        mine = [fmt(p["value"])] if p["differs"] else []
        mine += [f"{s}: {fmt(v)}" for s, v in p["by_size"].items()]
        rows.append([p["name"], fmt(p["default"]), p["domain"], "\n".join(mine), p["help"]])
    lines.append(tables.wrapped_table(["parameter", "default", "valid", "experiment", "help"], rows, width))
    if d["rules"]:
        lines += ["", para("rules between parameters (checked at submit):")] + [para(r, "  ") for r in d["rules"]]
    lines += ["", para(f"resources on cluster profile '{d['cluster']}' ({d['cluster_file']}; --cluster PROFILE for another, "
                       "-o resources.KEY=VALUE for one submission). 'experiment asks' is its [resources.SIZE].")]
    rows, refused = [], []
    for size in clusters.DATASET_SIZES:
        r = d["resources"][size]
        asks = ", ".join(f"{k}={fmt(v)}" for k, v in d["asks"][size].items())
        if "error" in r:
            refused.append(para(f"{size}: {r['error']}", "  "))
            continue
        gpu = (f"{r['nodes']} nodes x " if r.get("nodes", 1) > 1 else "") + (f"{r['gpus']}x{r['gpu']}" if r["gpu"] else "cpu")
        memory = f"{r['gpu_memory_gb']} GB" if r["gpu_memory_gb"] else ""
        rows.append([size, gpu, memory, r["partition"], clusters.format_minutes(r["time_min"]), str(r["cpus"]), r["mem"], asks])
    if rows:
        lines.append(tables.wrapped_table(["size", "gpu", "gpu memory", "partition", "time", "cpus", "mem", "experiment asks"], rows, width))
    lines += refused
    keys = ", ".join(f"{k} ({v})" if v else k for k, v in d["resource_keys"].items())
    lines += ["", para(f"resource keys (-o resources.KEY=VALUE, each checked against the profile at submit): {keys}")]
    return "\n".join(lines)
