"""Cluster profiles (slurm/*.toml): partitions, GPU types, and how a dataset size maps to job resources.

Experiments are cluster-neutral: they say what a job needs (`time`, `gpus`, `min_gpu_memory_gb`, or
`gpu = "none"` for a CPU job) and the profile turns that into its own GPU types and partitions, so one
experiment runs on any cluster with a profile. `job_resources` is the one place where the layers meet.
An impossible request (unknown GPU type, more GPUs than a node has, a time beyond the partition's limit,
no GPU with enough memory) is refused here, before anything reaches sbatch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medminds_hpc import config, paths
from medminds_hpc.errors import UserError

DATASET_SIZES = ("micro", "mini", "mega")
DEFAULT_CLUSTER = "unity"


def parse_time(value: str | int) -> int:
    """Slurm time ("MM", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS") or an int of minutes -> minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"time must be positive, got {value}")
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"expected a Slurm time like 01:00:00 or 2-00:00:00, got {value!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
    elif b is None:  # MM
        minutes = int(a)
    elif c is None:  # MM:SS (Slurm's reading of two fields)
        minutes = int(a) + (1 if int(b) else 0)
    else:  # HH:MM:SS
        minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    if minutes <= 0:
        raise ValueError(f"time must be positive, got {value!r}")
    return minutes


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


@dataclass
class Partition:
    max_time: str = "2-00:00:00"
    preemptible: bool = False
    description: str = ""


@dataclass
class GpuType:
    gres: str = field(metadata={"help": "type name in --gres=gpu:TYPE:N"})
    per_node: int = field(default=1, metadata={"help": "GPUs of this type on one node"})
    constraint: str = field(default="", metadata={"help": "node feature for --constraint (default: gres name)"})
    memory_gb: int = field(default=0, metadata={"help": "memory of one GPU in GB (what min_gpu_memory_gb is compared with)"})
    cpus: int = field(default=4, metadata={"help": "default --cpus-per-task for jobs on this GPU"})
    mem: str = field(default="32G", metadata={"help": "default --mem for jobs on this GPU"})
    partitions: list[str] = field(default_factory=list)


@dataclass
class Resources:
    """What one job asks for; experiments set these per dataset size, the profile fills the rest."""

    gpu: str | None = field(default=None, metadata={"help": "GPU type of the profile, or 'none' for CPU only (a type ties an experiment to one cluster)"})
    gpus: int = field(default=1, metadata={"help": "GPUs on each node; one task (one DDP rank) per GPU"})
    nodes: int = field(default=1, metadata={"help": "nodes of the job; GPU jobs train with DDP across all nodes' GPUs"})
    min_gpu_memory_gb: int | None = field(default=None, metadata={
        "help": "memory each GPU needs, in GB: the profile's type for the size if it has enough, else its smallest that does (0: no need)"})
    time: str = field(default="01:00:00", metadata={"help": "wall time, Slurm format"})
    partition: str | None = field(default=None, metadata={"help": "partition (default: the profile's)"})
    cpus: int | None = field(default=None, metadata={"help": "--cpus-per-task (default: the GPU type's)"})
    mem: str | None = field(default=None, metadata={"help": "--mem (default: the GPU type's)"})


@dataclass
class ClusterProfile:
    name: str
    description: str = ""
    gpu_request: Literal["gres", "constraint"] = "gres"
    default_partition: str = "gpu-preempt"
    cpu_partition: str = "cpu"
    account: str = ""
    qos: str = ""
    signal_delay_s: int = 120
    max_requeues: int = 20
    setup: list[str] = field(default_factory=list)
    cpu_job_cpus: int = 2
    cpu_job_mem: str = "8G"
    partitions: dict[str, Partition] = field(default_factory=dict)
    gpus: dict[str, GpuType] = field(default_factory=dict)
    sizes: dict[str, Resources] = field(default_factory=dict)
    path: str = ""

    def size_defaults(self, dataset: str) -> dict[str, Any]:
        """What the profile gives a job of this dataset size when the experiment says nothing."""
        size = self.sizes.get(dataset)
        return {k: v for k, v in vars(size).items() if v is not None} if size else {}

    def gpus_with_memory(self, need_gb: int, partition: str | None = None, count: int = 1) -> list[str]:
        """GPU types with at least `need_gb` GB each (and `count` on a node, in `partition`), smallest first."""
        fits = [(g.memory_gb, name) for name, g in self.gpus.items()
                if g.memory_gb >= need_gb and g.per_node >= count and (not partition or not g.partitions or partition in g.partitions)]
        return [name for _, name in sorted(fits)]

    def _memory_listing(self) -> str:
        return ", ".join(f"{name} {g.memory_gb} GB" for name, g in sorted(self.gpus.items(), key=lambda kv: (kv[1].memory_gb, kv[0])))

    def _choose_gpu(self, res: Resources, partition: str | None, problems: list[str]) -> str | None:
        """The GPU type of the job: the one asked for, else the smallest with enough memory, else none (CPU)."""
        gpu = None if res.gpu in (None, "none", "") else res.gpu
        need = res.min_gpu_memory_gb or 0
        if need <= 0:
            return gpu
        if res.gpu == "none":
            problems.append(f"min_gpu_memory_gb = {need} asks for a GPU but gpu = 'none' makes a CPU job; drop one of the two")
            return None
        if gpu is None:
            fitting = self.gpus_with_memory(need, partition, max(res.gpus, 1))
            if not fitting:
                problems.append(f"no GPU type on cluster {self.name} has {need} GB (min_gpu_memory_gb) for {res.gpus} GPU(s) on a node"
                                f"{f' in partition {partition!r}' if partition else ''}; its types: {self._memory_listing()}; "
                                f"lower min_gpu_memory_gb or use another --cluster")
                return None
            return fitting[0]
        if gpu in self.gpus and self.gpus[gpu].memory_gb < need:
            bigger = self.gpus_with_memory(need)
            problems.append(f"GPU type {gpu!r} has {self.gpus[gpu].memory_gb} GB but the job needs {need} GB (min_gpu_memory_gb); "
                            f"GPU types with enough: {', '.join(bigger) or '(none on cluster ' + self.name + ')'}")
        return gpu

    def resolve(self, *layers: dict[str, Any], where: str = "") -> "JobResources":
        """Merge resource layers (later wins) onto nothing, check them against this profile."""
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if v is not None})
        res = config.build(Resources, merged, where or f"cluster {self.name}")
        problems: list[str] = []
        wants_gpu = res.gpu not in (None, "none", "") or (res.gpu is None and (res.min_gpu_memory_gb or 0) > 0)
        partition = res.partition or (self.default_partition if wants_gpu else self.cpu_partition)
        gpu = self._choose_gpu(res, partition, problems)
        if partition not in self.partitions:
            problems.append(
                f"unknown partition {partition!r} on cluster {self.name}; valid partitions: {', '.join(sorted(self.partitions))}"
            )
        gres = constraint = None
        cpus, mem = self.cpu_job_cpus, self.cpu_job_mem
        gpus = res.gpus if gpu else 0
        memory_gb = None
        if gpu:
            if gpu not in self.gpus:
                problems.append(f"unknown GPU type {gpu!r} on cluster {self.name}; valid GPU types: {', '.join(sorted(self.gpus))}")
            else:
                g = self.gpus[gpu]
                cpus, mem, memory_gb = g.cpus, g.mem, g.memory_gb or None
                if gpus < 1:
                    problems.append(f"gpus must be at least 1 for GPU type {gpu!r} (use gpu = 'none' for a CPU job)")
                if gpus > g.per_node:
                    problems.append(f"{gpus} {gpu} GPUs on one node is impossible on cluster {self.name}: a node has at most {g.per_node}")
                if g.partitions and partition in self.partitions and partition not in g.partitions:
                    problems.append(f"GPU type {gpu!r} is not in partition {partition!r}; it is in: {', '.join(g.partitions)}")
                if self.gpu_request == "gres":
                    gres = f"gpu:{g.gres}:{gpus}"
                else:
                    constraint = g.constraint or g.gres
        if res.nodes < 1:
            problems.append(f"nodes must be at least 1, got {res.nodes}")
        elif res.nodes > 1 and not gpu:
            problems.append(f"nodes = {res.nodes} asks for a multi-node job but it has no GPU (one task per GPU): "
                            f"set resources.gpu, or nodes = 1 for a CPU job")
        try:
            minutes = parse_time(res.time)
        except ValueError as e:
            problems.append(f"time: {e}")
            minutes = 0
        if partition in self.partitions and minutes:
            limit = parse_time(self.partitions[partition].max_time)
            if minutes > limit:
                problems.append(f"time {res.time} exceeds partition {partition!r}'s limit of {self.partitions[partition].max_time}")
        if problems:
            raise UserError(f"{where or 'resources'}: " + "; ".join(problems))
        return JobResources(
            cluster=self.name,
            partition=partition,
            gpu=gpu,
            gpus=gpus,
            nodes=res.nodes,
            cpus=res.cpus or cpus,
            mem=res.mem or mem,
            time_min=minutes,
            gres=gres,
            constraint=constraint,
            account=self.account or None,
            qos=self.qos or None,
            signal_delay_s=self.signal_delay_s,
            max_requeues=self.max_requeues,
            preemptible=self.partitions[partition].preemptible,
            setup=list(self.setup),
            gpu_memory_gb=memory_gb,
        )


def job_resources(profile: ClusterProfile, dataset: str, asked: dict[str, Any] | None = None,
                  overrides: dict[str, Any] | None = None, where: str = "") -> "JobResources":
    """The one resource layering (`list` and `submit` both call it): the profile's defaults for the dataset size,
    then the experiment's `[resources.SIZE]`, then `-o resources.*`.

    A memory need (`min_gpu_memory_gb`) without a GPU type keeps the profile's type for the size when it has
    enough memory and otherwise lets the profile pick its smallest type that does; a type named by the
    experiment or on the command line is kept, and refused if too small.
    """
    defaults = profile.size_defaults(dataset)
    chosen = {k: v for k, v in {**(asked or {}), **(overrides or {})}.items() if v is not None}
    need = chosen.get("min_gpu_memory_gb") or 0
    default_gpu = defaults.get("gpu")
    if need > 0 and "gpu" not in chosen and default_gpu is not None:
        if default_gpu == "none" or (default_gpu in profile.gpus and profile.gpus[default_gpu].memory_gb < need):
            defaults.pop("gpu")  # the size's usual type is too small (or none): the memory need picks one
    try:
        return profile.resolve(defaults, asked or {}, overrides or {}, where=where or f"resources on cluster {profile.name} ({dataset})")
    except UserError as e:
        pinned = (asked or {}).get("gpu")
        if pinned not in (None, "none") and pinned not in profile.gpus and "gpu" not in (overrides or {}):
            raise UserError(f"{e} (the experiment's [resources.{dataset}] names it: say what the job needs instead, "
                            f"e.g. min_gpu_memory_gb = N, which every cluster profile can meet)") from None
        raise


@dataclass
class JobResources:
    cluster: str
    partition: str
    gpu: str | None
    gpus: int
    cpus: int
    mem: str
    time_min: int
    gres: str | None = None
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 20
    preemptible: bool = False
    setup: list[str] = field(default_factory=list)
    gpu_memory_gb: int | None = None  # memory of one GPU of the chosen type (None: CPU job or not stated)
    nodes: int = 1

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU: each is one DDP rank with its own GPU (a CPU job is one task)."""
        return max(1, self.gpus) if self.gpu else 1

    @property
    def world_size(self) -> int:
        """How many ranks train together (what the per-device batch is divided by)."""
        return self.nodes * self.tasks_per_node

    def slurm_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit.SlurmExecutor.update_parameters."""
        params: dict[str, Any] = {
            "partition": self.partition,
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus,
            "mem": self.mem,
            "signal_delay_s": self.signal_delay_s,
            "stderr_to_stdout": True,
        }
        if self.world_size > 1:  # a rank that dies alone must leave the others running: they requeue the job
            params["srun_args"] = ["--kill-on-bad-exit=0"]
        if self.gres:
            params["gres"] = self.gres
        if self.constraint:
            params["constraint"] = self.constraint
            params["gpus_per_node"] = self.gpus
        if self.account:
            params["account"] = self.account
        if self.qos:
            params["qos"] = self.qos
        if self.setup:
            params["setup"] = list(self.setup)
        return params

    def summary(self) -> str:
        gpu = f"{self.gpus}x{self.gpu}" if self.gpu else "cpu"
        nodes = f"{self.nodes} nodes x " if self.nodes > 1 else ""
        return f"{nodes}{gpu} {self.partition} {format_minutes(self.time_min)}"


def available_profiles() -> list[str]:
    d = paths.profiles_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def default_cluster() -> str:
    return os.environ.get("MEDMINDS_CLUSTER") or DEFAULT_CLUSTER


def load_profile(name_or_path: str | None = None) -> ClusterProfile:
    name_or_path = name_or_path or default_cluster()
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = paths.profiles_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise UserError(
            f"unknown cluster profile {name_or_path!r}; valid profiles: {', '.join(available_profiles()) or '(none)'} "
            f"(files in {paths.profiles_dir()}, or give a path to a .toml)"
        )
    return parse_profile(paths.read_toml(path), path)


def parse_profile(raw: dict[str, Any], path: Path) -> ClusterProfile:
    raw = dict(raw)
    where = str(path)
    problems: list[str] = []
    parts = {}
    for name, table in raw.pop("partitions", {}).items():
        try:
            parts[name] = config.build(Partition, table, f"[partitions.{name}]")
        except UserError as e:
            problems.append(str(e))
    gpus = {}
    for name, table in raw.pop("gpus", {}).items():
        try:
            gpus[name] = config.build(GpuType, table, f"[gpus.{name}]")
        except UserError as e:
            problems.append(str(e))
    sizes = {}
    for name, table in raw.pop("sizes", {}).items():
        if name not in DATASET_SIZES:
            problems.append(f"[sizes.{name}]: unknown dataset size; valid sizes: {', '.join(DATASET_SIZES)}")
            continue
        try:
            sizes[name] = config.build(Resources, table, f"[sizes.{name}]")
        except UserError as e:
            problems.append(str(e))
    raw.setdefault("name", path.stem)
    try:
        profile = config.build(ClusterProfile, raw, "top level")
    except UserError as e:
        problems.append(str(e))
        profile = None
    if profile is not None:
        profile.partitions, profile.gpus, profile.sizes, profile.path = parts, gpus, sizes, str(path)
        for pname in [profile.default_partition, profile.cpu_partition]:
            if pname not in parts:
                problems.append(f"partition {pname!r} is used as a default but not defined under [partitions]")
    for gname, g in gpus.items():
        for pname in g.partitions:
            if pname not in parts:
                problems.append(f"[gpus.{gname}]: partition {pname!r} is not defined under [partitions]")
    for sname, res in sizes.items():
        if res.gpu not in (None, "none") and res.gpu not in gpus:
            problems.append(f"[sizes.{sname}]: unknown GPU type {res.gpu!r}; valid GPU types: {', '.join(sorted(gpus))}")
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems))
    return profile
