"""The input contract, proven by generated inputs: every value outside a parameter's declared domain, every broken
relation and every damaged profile or experiment file is refused with exit code 2, lines that name the key, no job
submitted and nothing written; every value inside the domains is accepted.

The cases come from the declarations themselves (config.domains, config.relations, the stage configs, the
profiles), so a new parameter is covered the day it is declared. Seeded (derandomized), fast tier.
Set MEDMINDS_CONTRACT_STATS=FILE to have the cases drawn and their verdicts written there (benchmarks/input_contract.py).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medminds_hpc import cli, clusters, config, experiments
from tests.helpers import ROOT, tree_snapshot



def seeded(examples: int) -> settings:
    """Derandomized (the same cases every run), no example database, no deadline (a case plans a whole graph)."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
CLUSTER = "unity"
HUGE = 10**40
STATS: list[dict[str, Any]] = []


def _write_stats() -> None:
    if os.environ.get("MEDMINDS_CONTRACT_STATS") and STATS:
        Path(os.environ["MEDMINDS_CONTRACT_STATS"]).write_text(json.dumps(STATS))


atexit.register(_write_stats)


# what is declared ---------------------------------------------------------------------------------------------------
def experiment_names() -> list[str]:
    return experiments.available()


def stage_class(name: str) -> type:
    return experiments.load(name).stage_info.config_class()


def text_of(value: Any) -> str:
    """A value as typed after `-o key=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(text_of(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _choices(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return None


def _members(tp: Any) -> list[Any]:
    """The alternatives of a union (`int | None`, `Literal["auto"] | bool`), or the type itself."""
    return [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (typing.Union, type(int | None)) else [tp]


def outside(tp: Any, domain: config.Domain) -> list[str]:
    """Texts outside a field's type or domain: wrong type, beyond each bound, non-finite, huge, empty, wrong length."""
    members = _members(tp)
    bad: list[str] = []
    kinds = {("literal" if _choices(m) else "list" if typing.get_origin(m) is list else m) for m in members}
    if int in kinds and float not in kinds:
        bad += ["abc", "1.5", "true"]
    if float in kinds:
        bad += ["abc", "1..2", "nan", "inf", "-inf"]
    if bool in kinds and kinds <= {bool, "literal"}:
        bad += ["maybe", "2"]
    if kinds == {"literal"}:
        bad += ["no-such-choice"]
    if "list" in kinds:
        (inner,) = typing.get_args(members[0])
        bad += ["no-such-choice"] if _choices(inner) else ["a,b", "[1,"]
    numeric = kinds & {int, float} or ("list" in kinds and typing.get_args(members[0]) in ((int,), (float,)))
    if numeric:
        step = 1 if int in kinds else 0.5
        if domain.ge is not None:
            bad.append(text_of(type(step)(domain.ge - step)))
        if domain.gt is not None:
            bad += [text_of(type(step)(domain.gt)), text_of(type(step)(domain.gt - 1))]
        if domain.le is not None:
            bad.append(text_of(type(step)(domain.le + step)))
        if domain.lt is not None:
            bad.append(text_of(type(step)(domain.lt)))
        if int in kinds:
            bad.append(str(HUGE))
        elif domain.le is not None or domain.lt is not None:
            bad.append("1e300")
    if domain.length is not None and "list" in kinds:
        bad += [",".join(["1"] * (domain.length + 1)), ",".join(["1"] * max(domain.length - 1, 1)) if domain.length > 2 else "1"]
    optional = type(None) in typing.get_args(tp)
    if domain.nonempty and not optional:  # an optional field's empty text is its None
        bad += ["", "  "] if "list" not in kinds else [""]
    if domain.pattern is not None:
        bad += ["lots", "12X"]
    if domain.parse is not None:
        bad += ["soon", "-5"]
    return list(dict.fromkeys(bad))


def parameter_cases() -> list[tuple[str, str, list[str]]]:
    """(experiment, key, bad texts) for every parameter of every experiment with values outside its domain."""
    cases = []
    for name in experiment_names():
        cls = stage_class(name)
        domains = config.domains(cls)
        for key, tp in config.field_types(cls).items():
            bad = outside(tp, domains[key])
            if bad:
                cases.append((name, key, bad))
        cases.append((name, "shards", ["0", "-1", "x"]))
    return cases


def resource_cases() -> list[tuple[str, str]]:
    """(key, bad text) for every resource: outside its declared domain, or naming what the profile does not have."""
    profile = clusters.load_profile(CLUSTER)
    domains = config.domains(clusters.Resources)
    cases = [(key, text) for key, tp in config.field_types(clusters.Resources).items() for text in outside(tp, domains[key])]
    longest = max(clusters.parse_time(p.max_time) for p in profile.partitions.values())
    cases += [("gpu", "no-such-gpu"), ("partition", "no-such-partition"), ("time", clusters.format_minutes(longest + 60)),
              ("min_gpu_memory_gb", str(10**6)), ("gpus", str(max(g.per_node for g in profile.gpus.values()) + 1))]
    return list(dict.fromkeys(cases))


PARAMETER_CASES = parameter_cases()
RESOURCE_CASES = resource_cases()


# running a command as a user would, in this process ---------------------------------------------------------------------
snapshot = tree_snapshot  # every path under the home, and the home itself: kind, size, mode, mtime


@pytest.fixture
def sbatch_log(tmp_path, monkeypatch) -> Path:
    """A logging sbatch first on PATH: a refused command never reaches it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "Submitted batch job 999"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def invoke(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli.app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def problem_lines(lines: list[str]) -> list[str]:
    """The lines that state a problem: all of them but the 'N problems:' header; the 'error: ' mark dropped."""
    lines = [re.sub(r"^error: ", "", line) for line in lines]
    return lines[1:] if lines and re.fullmatch(r"\d+ problems:", lines[0]) else lines


def refused_cleanly(args: list[str], keys: list[str], home: Path, log: Path, record: dict[str, Any]) -> list[str]:
    """What breaks the contract for this command: not exit 2, a line naming none of `keys`, a file written, a job."""
    before = snapshot(home)
    code, lines = invoke(*args)
    broken = []
    if code != 2:
        broken.append(f"exit code {code}")
    lines = problem_lines(lines)
    if not lines:
        broken.append("no message")
    broken += [f"line names none of {keys}: {line}" for line in lines if not any(k in line for k in keys)]
    if snapshot(home) != before:
        broken.append("something under $MEDMINDS_HOME changed")
    if log.exists() and log.read_text():
        broken.append(f"sbatch was called: {log.read_text()}")
    STATS.append({**record, "clean": not broken, "broken": broken, "output": lines[:3]})
    return broken


# 1. every parameter and resource outside its domain -----------------------------------------------------------------
@pytest.mark.parametrize("name, key, texts", PARAMETER_CASES, ids=[f"{n}.{k}" for n, k, _ in PARAMETER_CASES])
@seeded(2)
@given(data=st.data())
def test_a_parameter_outside_its_domain_is_refused(name, key, texts, data, medminds_home, sbatch_log):
    """Every experiment x every parameter: values drawn from outside its declared domain."""
    text = data.draw(st.sampled_from(texts), label="value")
    broken = refused_cleanly(["submit", name, "-d", "micro", "--cluster", CLUSTER, "--executor", "slurm", "-o", f"{key}={text}"],
                             [key], medminds_home, sbatch_log, {"test": "parameter", "experiment": name, "key": key, "value": text})
    assert not broken, (name, key, text, broken)


def test_every_declared_parameter_has_values_outside_its_domain():
    """The generator covers every typed field but free text (a name, a path): none is silently left out."""
    covered = {(name, key) for name, key, _ in PARAMETER_CASES}
    for name in experiment_names():
        cls = stage_class(name)
        for key, tp in config.field_types(cls).items():
            if (name, key) not in covered:
                assert str in _members(tp) and not config.domains(cls)[key].nonempty, (name, key)


@seeded(3 * len(RESOURCE_CASES))
@given(case=st.sampled_from(RESOURCE_CASES), name=st.sampled_from(["expert-task", "prepare", "moe-topk", "baseline-nextword"]))
def test_a_resource_outside_its_domain_is_refused(case, name, medminds_home, sbatch_log):
    key, text = case
    broken = refused_cleanly(["submit", name, "-d", "micro", "--cluster", CLUSTER, "--executor", "slurm", "-o", f"resources.{key}={text}"],
                             [key, "resources"], medminds_home, sbatch_log, {"test": "resource", "experiment": name, "key": key, "value": text})
    assert not broken, (name, case, broken)


def _inside(tp: Any, domain: config.Domain) -> st.SearchStrategy | None:
    """Values inside a field's domain (kept small: these runs are planned on a real profile's GPUs)."""
    members = _members(tp)
    choices = [c for m in members for c in (_choices(m) or ([True, False] if m is bool else []))]
    if choices:
        return st.sampled_from(choices)
    tp = members[0]
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        if _choices(inner):
            return st.lists(st.sampled_from(_choices(inner)), min_size=1, max_size=3, unique=True)
        item = _inside(inner, domain)
        return st.lists(item, min_size=domain.length or 1, max_size=domain.length or 3) if item is not None else None
    low = domain.ge if domain.ge is not None else domain.gt if domain.gt is not None else 0
    high = domain.le if domain.le is not None else domain.lt if domain.lt is not None else low + 1000
    if tp is int:
        return st.integers(int(math.ceil(low)) + (domain.gt is not None), min(int(high) - (domain.lt is not None), int(low) + 1000))
    if tp is float:
        return st.floats(low, min(high, low + 1000), exclude_min=domain.gt is not None, exclude_max=domain.lt is not None,
                         allow_nan=False, allow_infinity=False)
    return None


def inside_cases() -> list[tuple[str, str]]:
    return [(name, key) for name in experiment_names() for key, tp in config.field_types(stage_class(name)).items()
            if _inside(tp, config.domains(stage_class(name))[key]) is not None]


INSIDE_CASES = inside_cases()


# 2. inside every domain: accepted --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, key", INSIDE_CASES, ids=[f"{n}.{k}" for n, k in INSIDE_CASES])
@seeded(2)
@given(data=st.data())
def test_a_parameter_inside_its_domain_is_accepted(name, key, data, medminds_home, sbatch_log):
    """The domains are not too strict: any value inside one (with the relations kept) plans, on the tiny model."""
    cls = stage_class(name)
    value = data.draw(_inside(config.field_types(cls)[key], config.domains(cls)[key]))
    base = experiments.resolve(experiments.load(name), "micro").config
    assume(not config.relation_problems(_replaced(base, {key: value})))
    code, lines = invoke("submit", name, "-d", "micro", "--model", "tiny", "--cluster", CLUSTER, "--dry-run", "-o", f"{key}={text_of(value)}")
    STATS.append({"test": "inside", "experiment": name, "key": key, "value": text_of(value), "clean": code == 0, "output": lines[:2]})
    assert code == 0, (name, key, value, lines)
    assert list(snapshot(medminds_home)) == ["."]  # nothing under the home


def _replaced(obj: Any, values: dict[str, Any]) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **values)


# 3. relations between parameters --------------------------------------------------------------------------------------
def relation_cases() -> list[tuple[str, int]]:
    return [(name, i) for name in experiment_names() for i in range(len(config.relations(stage_class(name))))]


@seeded(4 * len(relation_cases()))
@given(case=st.sampled_from(relation_cases()), data=st.data())
def test_a_broken_relation_is_refused(case, data, medminds_home, sbatch_log):
    """Values each inside its domain whose combination breaks one of the stage's declared relations."""
    name, index = case
    cls = stage_class(name)
    relation = config.relations(cls)[index]
    types_, domains = config.field_types(cls), config.domains(cls)
    values = {k: data.draw(_inside(types_[k], domains[k]).filter(lambda v: not isinstance(v, int) or v < 400), label=k)
              for k in relation.keys}
    base = experiments.resolve(experiments.load(name), "micro").config
    assume(not relation.holds(_replaced(base, values)))
    args = ["submit", name, "-d", "micro", "--cluster", CLUSTER, "--executor", "slurm"]
    for k, v in values.items():
        args += ["-o", f"{k}={text_of(v)}"]
    broken = refused_cleanly(args, list(relation.keys), medminds_home, sbatch_log,
                             {"test": "relation", "experiment": name, "key": ",".join(relation.keys), "value": str(values)})
    assert not broken, (name, values, broken)


def test_every_shipped_experiment_plans_at_every_size_on_every_profile(medminds_home):
    """The paper's values (the experiment files) and the shipped profiles are inside every domain."""
    for profile in clusters.available_profiles():
        for name in experiment_names():
            for size in clusters.DATASET_SIZES:
                code, lines = invoke("submit", name, "-d", size, "--cluster", profile, "--dry-run")
                assert code == 0, (profile, name, size, lines)


# 4. damaged profiles and experiment files ------------------------------------------------------------------------------
def toml_text(table: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer for the shapes profiles and experiment files have."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    scalars = [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in table.items():
        if isinstance(v, dict):
            key = f'"{k}"' if not re.fullmatch(r"[\w-]+", k) else k
            out += ["", toml_text(v, f"{prefix}.{key}" if prefix else key)]
    return "\n".join(out)


def _tables(raw: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    return [t for k, v in raw.items() if isinstance(v, dict) for t in [path + (k,)] + _tables(v, path + (k,))]


def _drop(raw: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    del parent[path[-1]]
    return out


def _set(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    parent = out
    for k in path[:-1]:
        parent = parent.setdefault(k, {})
    parent[path[-1]] = value
    return out


def profile_mutations() -> list[tuple[str, Any, list[str]]]:
    """(what, new content, words one of which each line must name) for the dev profile, which a micro GPU job
    uses whole: its default partitions, the micro size's table and GPU type."""
    raw = tomllib.loads((ROOT / "slurm" / "dev.toml").read_text())
    micro_gpu = raw["sizes"]["micro"]["gpu"]
    needed = [("partitions",), ("gpus",), ("sizes",), ("sizes", "micro"), ("partitions", raw["default_partition"]),
              ("gpus", micro_gpu)]
    out: list[tuple[str, Any, list[str]]] = [(f"drop [{'.'.join(t)}]", _drop(raw, t), [t[-1], "partition", "gpu"]) for t in needed]
    out += [("wrong type per_node", _set(raw, ("gpus", micro_gpu, "per_node"), "two"), ["per_node"]),
            ("wrong type max_time", _set(raw, ("partitions", "gpu", "max_time"), 5.5), ["max_time"]),
            ("bad max_time", _set(raw, ("partitions", "gpu", "max_time"), "forever"), ["max_time"]),
            ("wrong type partitions", _set(raw, ("partitions",), 3), ["partitions"]),
            ("unknown key", _set(raw, ("gpus", micro_gpu, "colour"), "red"), ["colour"]),
            ("unknown top key", _set(raw, ("colour",), "red"), ["colour"]),
            ("unknown size", _set(raw, ("sizes", "huge"), {"gpu": micro_gpu}), ["huge"]),
            ("size's unknown gpu", _set(raw, ("sizes", "micro", "gpu"), "no-such-gpu"), ["no-such-gpu"]),
            ("gpu's unknown partition", _set(raw, ("gpus", micro_gpu, "partitions"), ["no-such-partition"]), ["no-such-partition"]),
            ("bad mem", _set(raw, ("gpus", micro_gpu, "mem"), "lots"), ["mem"]),
            ("bad encoding", b"description = \"caf\xe9\"\n", ["utf-8"]),
            ("not toml", "[[[", ["toml"])]
    return out


def experiment_mutations() -> list[tuple[str, Any, list[str]]]:
    raw = tomllib.loads((ROOT / "jobs" / "expert-task.toml").read_text())
    out: list[tuple[str, Any, list[str]]] = [
        ("drop stage", _drop(raw, ("stage",)), ["stage"]),
        ("unknown stage", _set(raw, ("stage",), "no-such-stage"), ["stage"]),
        ("unknown top key", _set(raw, ("colour",), "red"), ["colour"]),
        ("unknown param", _set(raw, ("params", "colour"), "red"), ["colour"]),
        ("unknown resource", _set(raw, ("resources", "micro", "colour"), "red"), ["colour"]),
        ("unknown size", _set(raw, ("resources", "huge"), {"time": "01:00:00"}), ["huge"]),
        ("params not a table", _set(raw, ("params",), 3), ["params"]),
        ("needs not a list", _set(raw, ("needs",), "prepare"), ["needs"]),
        ("unknown need", _set(raw, ("needs",), ["no-such-experiment"]), ["needs"]),
        ("pinned gpu the profile lacks", _set(raw, ("resources", "micro", "gpu"), "no-such-gpu"), ["no-such-gpu"]),
        ("bad encoding", b"stage = \"expert\"\ndescription = \"caf\xe9\"\n", ["utf-8"]),
    ]
    cls = stage_class("expert-task")
    for key, tp in config.field_types(cls).items():
        if tp in (int, float):  # a typed TOML value outside the domain, and one of the wrong type
            bad = [v for b in outside(tp, config.domains(cls)[key]) if (v := _number(b, tp)) is not None]
            out += [(f"{key} = {v}", _set(raw, ("params", key), v), [key]) for v in bad[:1]]
            out.append((f"{key} wrong type", _set(raw, ("params", key), "abc"), [key]))
    return out


def _number(text: str, tp: type) -> int | float | None:
    """A finite number of TOML's size that `text` spells, else None."""
    try:
        value = tp(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < 2**63 else None


def _write(path: Path, content: Any) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else toml_text(content))


@seeded(2 * len(profile_mutations()))
@given(case=st.sampled_from(profile_mutations()))
def test_a_damaged_profile_is_refused(case, medminds_home, sbatch_log, tmp_path_factory):
    what, content, words = case
    folder = tmp_path_factory.mktemp("profiles")
    _write(folder / "broken.toml", content)
    broken = refused_cleanly(["submit", "expert-task", "-d", "micro", "--cluster", str(folder / "broken.toml"), "--executor", "slurm"],
                             words + [str(folder / "broken.toml")], medminds_home, sbatch_log, {"test": "profile", "key": what, "value": ""})
    assert not broken, (what, broken)


@seeded(len(experiment_mutations()))
@given(case=st.sampled_from(experiment_mutations()))
def test_a_damaged_experiment_file_is_refused(case, medminds_home, sbatch_log, tmp_path_factory, monkeypatch):
    what, content, words = case
    folder = tmp_path_factory.mktemp("jobs")
    for path in (ROOT / "jobs").glob("*.toml"):
        (folder / path.name).write_bytes(path.read_bytes())
    _write(folder / "expert-task.toml", content)
    monkeypatch.setenv("MEDMINDS_JOBS", str(folder))
    broken = refused_cleanly(["submit", "expert-task", "-d", "micro", "--cluster", "dev", "--executor", "slurm"],
                             words + [str(folder / "expert-task.toml")], medminds_home, sbatch_log,
                             {"test": "experiment file", "key": what, "value": ""})
    assert not broken, (what, broken)


# 5. the same against the real dev cluster, for a sample ------------------------------------------------------------
def _slurm_job_ids() -> set[str]:
    import subprocess

    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout.split()
    accounted = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-o", "JobID", "-S", "now-1days"], capture_output=True,
                               text=True, timeout=30).stdout.split()
    return set(queued) | set(accounted)


@pytest.mark.slurm
def test_refused_on_the_real_cluster_without_a_job(medminds_home):
    """A sample of the generated cases through the real CLI and the real sbatch of the dev cluster: exit 2, lines
    naming the key, nothing written, no job."""
    from tests.helpers import run_cli

    sample = [(name, key, texts[0]) for name, key, texts in PARAMETER_CASES[:: max(1, len(PARAMETER_CASES) // 8)]]
    sample += [("expert-task", f"resources.{key}", text) for key, text in RESOURCE_CASES[:: max(1, len(RESOURCE_CASES) // 4)]]
    before_jobs = _slurm_job_ids()
    for name, key, text in sample:
        before = snapshot(medminds_home)
        proc = run_cli("submit", name, "-d", "micro", "--cluster", "dev", "--executor", "slurm", "-o", f"{key}={text}")
        lines = problem_lines([line for line in proc.stderr.splitlines() if line.strip()])
        bare = key.split(".")[-1]
        assert proc.returncode == 2 and lines and all(bare in line or "resources" in line for line in lines), (name, key, text, proc.stderr)
        assert snapshot(medminds_home) == before, (name, key, text)
    assert _slurm_job_ids() == before_jobs


# 6. what the declarations must say ---------------------------------------------------------------------------------------
def declared_classes() -> list[type]:
    return list(dict.fromkeys([stage_class(n) for n in experiment_names()] +
                              [clusters.Resources, clusters.GpuType, clusters.Partition, clusters.ClusterProfile]))


def test_every_number_declares_its_bounds():
    """A whole or real number without a declared lower bound would let 0, -1 or -inf through unseen: every one
    of every stage config, resource and profile table says where it starts."""
    for cls in declared_classes():
        domains = config.domains(cls)
        for key, tp in config.field_types(cls).items():
            members = _members(tp)
            inner = [a for m in members for a in (typing.get_args(m) if typing.get_origin(m) is list else (m,))]
            if any(m in (int, float) for m in inner) and not _choices(tp):
                d = domains[key]
                assert d.ge is not None or d.gt is not None, f"{cls.__name__}.{key} declares no lower bound"


@pytest.mark.parametrize("experiment, key, bad, good", [
    ("expert-task", "epochs", "0", "0.5"), ("expert-task", "batch_size", "0", "1"), ("expert-task", "grad_accum", "0", "1"),
    ("expert-task", "learning_rate", "0", "1e-9"), ("expert-task", "learning_rate", "nan", "2e-4"),
    ("expert-task", "warmup_steps", "-1", "0"), ("expert-task", "lora_r", "0", "1"), ("expert-task", "eval_rows", "-1", "0"),
    ("expert-task", "max_train_rows", "-1", "0"), ("expert-task", "keep_checkpoints", "0", "1"),
    ("expert-task", "checkpoint_every_steps", "0", "1"), ("expert-task", "checkpoint_every_minutes", "0", "0.5"),
    ("expert-task", "max_length", "64", "128"), ("moe-topk", "capacity_factor", "0", "0.1"), ("moe-topk", "top_k", "3", "2"),
])
def test_the_study_bounds(experiment, key, bad, good, medminds_home):
    """The bounds a researcher relies on, each at its edge: refused just outside, accepted just inside."""
    code, lines = invoke("submit", experiment, "-d", "micro", "--model", "tiny", "--dry-run", "-o", f"{key}={bad}")
    assert code == 2 and key in " ".join(lines), lines
    code, lines = invoke("submit", experiment, "-d", "micro", "--model", "tiny", "--dry-run", "-o", f"{key}={good}")
    assert code == 0, lines


@pytest.mark.parametrize("command", [["submit", "prepare"], ["submit", "all", "--only", "prepare"]])
@pytest.mark.parametrize("home_exists", [True, False])
def test_a_submission_sbatch_refuses_leaves_the_home_as_found(command, home_exists, medminds_home, tmp_path, monkeypatch):
    """sbatch itself says no (an account, a QOS): one line, exit 2, and no lock file, runs/ folder or home left."""
    bin_dir = tmp_path / "refusing"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: Invalid account or account/partition combination specified" >&2\nexit 1\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    if not home_exists:
        medminds_home.rmdir()
    before = snapshot(medminds_home)
    code, lines = invoke(*command, "-d", "micro", "-o", "prepare.source=synthetic" if "all" in command else "source=synthetic",
                         "--cluster", "dev", "--executor", "slurm")
    assert code == 2 and any("Invalid account" in line for line in problem_lines(lines)), lines
    assert snapshot(medminds_home) == before
