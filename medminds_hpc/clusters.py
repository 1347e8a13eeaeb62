"""Cluster profiles (slurm/*.toml): partitions, GPU types, and how a dataset size maps to job resources.

Experiments are cluster-neutral: they say what a job needs (`time`, `gpus`, `min_gpu_memory_gb`, or
`gpu = "none"` for a CPU job) and the profile turns that into its own GPU types and partitions, so one
experiment runs on any cluster with a profile. `job_resources` is the one place where the layers meet.
An impossible request (unknown GPU type, more GPUs than a node has, a time beyond the partition's limit,
no GPU with enough memory, GPUs asked of a CPU job) is refused here, before anything reaches sbatch; a
profile is checked whole when it is read (`python -m medminds_hpc.cli list --cluster slurm/mine.toml`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medminds_hpc import config, paths
from medminds_hpc.errors import UserError, many

DATASET_SIZES = ("micro", "mini", "mega")
DEFAULT_CLUSTER = "unity"

# Slurm's --mem: a whole number, megabytes unless a unit follows
MEM_PATTERN = r"[0-9]+[KMGTkmgt]?"
MEM_TEXT = "N[K|M|G|T] as Slurm's --mem takes it (e.g. 500M, 32G)"
TIME_TEXT = "Slurm time: MM, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
# what a job asks for that only a GPU job can have: a CPU job refuses them instead of dropping them
GPU_ONLY_KEYS = ("gpus", "min_gpu_memory_gb", "nodes")


def parse_time(value: str | int) -> int:
    """Slurm time ("MM", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS") or an int of minutes -> minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"expected a positive time, got {value}")
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
        raise ValueError(f"expected a positive time, got {value!r}")
    return minutes


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def _mem(text: str) -> dict[str, Any]:
    return config.doc(text, pattern=MEM_PATTERN, pattern_text=MEM_TEXT)


def _time(text: str) -> dict[str, Any]:
    return config.doc(text, parse=parse_time, pattern_text=TIME_TEXT)


@dataclass
class Partition:
    max_time: str = field(default="2-00:00:00", metadata=_time("the partition's time limit (sinfo -o '%P %l'); longer jobs are refused"))
    preemptible: bool = field(default=False, metadata=config.doc("jobs here may be preempted (requeued) at any time"))
    description: str = field(default="", metadata=config.doc("what the partition is for, shown to people"))


@dataclass
class GpuType:
    gres: str = field(metadata=config.doc("type name in --gres=gpu:TYPE:N", nonempty=True, pattern=r"[^\s:,]+",
                                          pattern_text="a name without spaces, ':' or ','"))
    per_node: int = field(default=1, metadata=config.doc("GPUs of this type on one node", ge=1))
    constraint: str = field(default="", metadata=config.doc(
        "node feature for --constraint (gpu_request = 'constraint' only; default: gres name)"))
    memory_gb: int = field(default=0, metadata=config.doc(
        "memory of one GPU in GB (what min_gpu_memory_gb is compared with; 0: not stated)", ge=0))
    cpus: int = field(default=4, metadata=config.doc("default --cpus-per-task for jobs on this GPU", ge=1))
    mem: str = field(default="32G", metadata=_mem("default --mem for jobs on this GPU"))
    partitions: list[str] = field(default_factory=list, metadata=config.doc(
        "partitions with nodes of this type (empty: all of them)"))


@dataclass
class Resources:
    """What one job asks for; experiments set these per dataset size, the profile fills the rest."""

    gpu: str | None = field(default=None, metadata=config.doc(
        "GPU type of the profile, or 'none' for CPU only (a type ties an experiment to one cluster)", nonempty=True))
    gpus: int = field(default=1, metadata=config.doc("GPUs on each node; one task (one DDP rank) per GPU", ge=0))
    nodes: int = field(default=1, metadata=config.doc("nodes of the job; GPU jobs train with DDP across all nodes' GPUs", ge=1))
    min_gpu_memory_gb: int | None = field(default=None, metadata=config.doc(
        "memory each GPU needs, in GB: the profile's type for the size if it has enough, else its smallest that does (0: no need)",
        ge=0))
    time: str = field(default="01:00:00", metadata=_time("wall time, Slurm format"))
    partition: str | None = field(default=None, metadata=config.doc("partition (default: the profile's)", nonempty=True))
    cpus: int | None = field(default=None, metadata=config.doc("--cpus-per-task (default: the GPU type's)", ge=1))
    mem: str | None = field(default=None, metadata=_mem("--mem (default: the GPU type's)"))


@dataclass
class ClusterProfile:
    name: str = field(metadata=config.doc("the profile's name (default: its file name)", nonempty=True))
    description: str = field(default="", metadata=config.doc("one line on the cluster, shown by `medminds list`"))
    gpu_request: Literal["gres", "constraint"] = field(default="gres", metadata=config.doc(
        "how a GPU type is asked for: --gres=gpu:TYPE:N, or -G N --constraint=FEATURE"))
    default_partition: str = field(default="gpu-preempt", metadata=config.doc("partition of GPU jobs", nonempty=True))
    cpu_partition: str = field(default="cpu", metadata=config.doc("partition of CPU jobs", nonempty=True))
    account: str = field(default="", metadata=config.doc("--account (empty: none)"))
    qos: str = field(default="", metadata=config.doc("--qos (empty: none)"))
    signal_delay_s: int = field(default=120, metadata=config.doc(
        "USR2 this many seconds before the time limit: time to save a checkpoint", ge=0))
    max_requeues: int = field(default=20, metadata=config.doc(
        "preemptions and time-outs before a run is declared FAILED", ge=0))
    setup: list[str] = field(default_factory=list, metadata=config.doc("lines run before the job, e.g. module load cuda"))
    cpu_job_cpus: int = field(default=2, metadata=config.doc("--cpus-per-task of CPU jobs", ge=1))
    cpu_job_mem: str = field(default="8G", metadata=_mem("--mem of CPU jobs"))
    partitions: dict[str, Partition] = field(default_factory=dict, metadata=config.doc("[partitions.NAME] tables"))
    gpus: dict[str, GpuType] = field(default_factory=dict, metadata=config.doc("[gpus.NAME] tables"))
    sizes: dict[str, Resources] = field(default_factory=dict, metadata=config.doc("[sizes.SIZE] tables"))
    path: str = field(default="", init=False)
    size_keys: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)  # what each [sizes.SIZE] says

    def size_defaults(self, dataset: str) -> dict[str, Any]:
        """What the profile gives a job of this dataset size when the experiment says nothing: the keys its
        [sizes.SIZE] table sets (not Resources' own defaults, which would read as asked for)."""
        size = self.sizes.get(dataset)
        if size is None:
            return {}
        keys = self.size_keys.get(dataset, tuple(vars(size)))
        return {k: getattr(size, k) for k in keys if getattr(size, k) is not None}

    def gpus_with_memory(self, need_gb: int, partition: str | None = None, count: int = 1) -> list[str]:
        """GPU types with at least `need_gb` GB each (and `count` on a node, in `partition`), smallest first."""
        fits = [(g.memory_gb, name) for name, g in self.gpus.items()
                if g.memory_gb >= need_gb and g.per_node >= count and (not partition or not g.partitions or partition in g.partitions)]
        return [name for _, name in sorted(fits)]

    def _memory_listing(self) -> str:
        return ", ".join(f"{name} {g.memory_gb} GB" for name, g in sorted(self.gpus.items(), key=lambda kv: (kv[1].memory_gb, kv[0])))

    def _choose_gpu(self, res: Resources, partition: str | None, problems: list[str]) -> str | None:
        """The GPU type of the job: the one asked for, else the smallest with enough memory, else none (CPU)."""
        gpu = None if res.gpu in (None, "none") else res.gpu
        need = res.min_gpu_memory_gb or 0
        if need <= 0:
            return gpu
        if res.gpu == "none":
            problems.append(f"min_gpu_memory_gb = {need} asks for a GPU but gpu = 'none' makes a CPU job; drop one of the two")
            return None
        if gpu is None:
            fitting = self.gpus_with_memory(need, partition, max(res.gpus, 1))
            if not fitting:
                problems.append(f"min_gpu_memory_gb = {need}: no GPU type on cluster {self.name} has {need} GB for {res.gpus} GPU(s) on a node"
                                f"{f' in partition {partition!r}' if partition else ''}; its types: {self._memory_listing()}; "
                                f"lower min_gpu_memory_gb or use another --cluster")
                return None
            return fitting[0]
        if gpu in self.gpus and self.gpus[gpu].memory_gb < need:
            bigger = self.gpus_with_memory(need)
            problems.append(f"gpu = {gpu!r}, min_gpu_memory_gb = {need}: GPU type {gpu!r} has {self.gpus[gpu].memory_gb} GB but the job needs {need} GB; "
                            f"GPU types with enough: {', '.join(bigger) or '(none on cluster ' + self.name + ')'}")
        return gpu

    def check(self, *layers: dict[str, Any], gpu_from: str = "") -> tuple["JobResources | None", list[str]]:
        """Merge resource layers (later wins) and check them against this profile: the job, or every problem (each
        one line, without a location). Every key a layer gives is used or refused: GPUs, a memory need or several
        nodes asked of a CPU job are refused, not dropped. `gpu_from` says where a gpu = 'none' came from."""
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if v is not None})
        res, problems = config.problems_of(Resources, merged)
        if res is None:
            return None, problems
        need = res.min_gpu_memory_gb or 0
        cpu_job = res.gpu == "none" or (res.gpu is None and need <= 0)
        partition = res.partition or (self.cpu_partition if cpu_job else self.default_partition)
        gpu = self._choose_gpu(res, partition, problems)
        if partition not in self.partitions:
            problems.append(
                f"unknown partition {partition!r} on cluster {self.name}; valid partitions: {', '.join(sorted(self.partitions))}"
            )
        if cpu_job:
            why = f"gpu = 'none'{f' ({gpu_from})' if gpu_from else ''}" if res.gpu == "none" else "naming no GPU type (gpu) and no min_gpu_memory_gb"
            if "gpus" in merged and res.gpus != 0:
                problems.append(f"gpus = {res.gpus} asks for GPUs but {why} makes a CPU job; drop gpus, "
                                f"or ask for a GPU with gpu = TYPE or min_gpu_memory_gb = N")
            if res.nodes > 1:
                problems.append(f"nodes = {res.nodes} asks for a multi-node job but it has no GPU (one task per GPU): "
                                f"set resources.gpu, or nodes = 1 for a CPU job")
        gres = constraint = None
        cpus, mem = self.cpu_job_cpus, self.cpu_job_mem
        gpus = res.gpus if gpu else 0
        memory_gb = None
        if gpu:
            if gpu not in self.gpus:
                problems.append(f"gpu: unknown GPU type {gpu!r} on cluster {self.name}; valid GPU types: {', '.join(sorted(self.gpus))}")
            else:
                g = self.gpus[gpu]
                cpus, mem, memory_gb = g.cpus, g.mem, g.memory_gb or None
                if gpus < 1:
                    problems.append(f"gpus must be at least 1 for GPU type {gpu!r} (use gpu = 'none' for a CPU job)")
                if gpus > g.per_node:
                    problems.append(f"gpus = {gpus}: {gpus} {gpu} GPUs on one node is impossible on cluster {self.name}: a node has at most {g.per_node}")
                if g.partitions and partition in self.partitions and partition not in g.partitions:
                    problems.append(f"gpu = {gpu!r}, partition = {partition!r}: GPU type {gpu!r} is not in partition {partition!r}; it is in: {', '.join(g.partitions)}")
                if self.gpu_request == "gres":
                    gres = f"gpu:{g.gres}:{gpus}"
                else:
                    constraint = g.constraint or g.gres
        minutes = parse_time(res.time)  # its format is the field's declared domain, checked above
        if partition in self.partitions:
            limit = self.partitions[partition].max_time
            if minutes > parse_time(limit):
                problems.append(f"time = {res.time}: exceeds partition {partition!r}'s limit of {limit}")
        if problems:
            return None, problems
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
        ), []

    def resolve(self, *layers: dict[str, Any], where: str = "") -> "JobResources":
        """Merge resource layers (later wins) onto nothing, check them against this profile; one line a problem."""
        job, problems = self.check(*layers)
        if problems:
            raise many([f"{where or f'resources on cluster {self.name}'}: {p}" for p in problems])
        return job


def job_resources(profile: ClusterProfile, dataset: str, asked: dict[str, Any] | None = None,
                  overrides: dict[str, Any] | None = None, where: str = "") -> "JobResources":
    """The one resource layering (`list` and `submit` both call it): the profile's defaults for the dataset size,
    then the experiment's `[resources.SIZE]`, then `-o resources.*`.

    A memory need (`min_gpu_memory_gb`) without a GPU type keeps the profile's type for the size when it has
    enough memory and otherwise lets the profile pick its smallest type that does; a type named by the
    experiment or on the command line is kept, and refused if too small. A CPU job (gpu = 'none') asked by the
    experiment or the command line sets aside what the profile's size gives GPU jobs (gpus, nodes, memory need);
    the same keys asked of a CPU job by the experiment or the command line are refused. A size the profile has
    no [sizes.SIZE] table for is refused unless the job says itself whether it gets a GPU.
    """
    where = where or f"resources on cluster {profile.name} ({dataset})"
    defaults = profile.size_defaults(dataset)
    chosen = {k: v for k, v in {**(asked or {}), **(overrides or {})}.items() if v is not None}
    need = chosen.get("min_gpu_memory_gb") or 0
    if dataset not in profile.sizes and "gpu" not in chosen and not (isinstance(need, int) and need > 0):
        raise UserError(f"{where}: {profile.path or profile.name}: no [sizes.{dataset}] table: add one saying which GPU type "
                        f"(or gpu = \"none\") a {dataset} job gets")
    default_gpu = defaults.get("gpu")
    if chosen.get("gpu") == "none":  # the job's own CPU choice: the size's GPU settings are not for it
        defaults = {k: v for k, v in defaults.items() if k not in GPU_ONLY_KEYS}
    elif isinstance(need, int) and need > 0 and "gpu" not in chosen and default_gpu is not None:
        if default_gpu == "none" or (default_gpu in profile.gpus and profile.gpus[default_gpu].memory_gb < need):
            defaults.pop("gpu")  # the size's usual type is too small (or none): the memory need picks one
    gpu_from = f"[sizes.{dataset}] of {profile.path or profile.name}" if "gpu" not in chosen and defaults.get("gpu") == "none" else ""
    job, problems = profile.check(defaults, asked or {}, overrides or {}, gpu_from=gpu_from)
    if not problems:
        return job
    pinned = (asked or {}).get("gpu")
    if pinned not in (None, "none") and pinned not in profile.gpus and "gpu" not in (overrides or {}):
        hint = (f" (the experiment's [resources.{dataset}] names it: say what the job needs instead, "
                f"e.g. min_gpu_memory_gb = N, which every cluster profile can meet)")
        problems = [p + hint if p.startswith(f"gpu: unknown GPU type {pinned!r}") else p for p in problems]
    raise many([f"{where}: {p}" for p in problems])


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




TABLE_HINTS = {
    "partitions": "one per Slurm partition jobs use, e.g. [partitions.gpu] with max_time = \"2-00:00:00\" (sinfo -o '%P %l')",
    "gpus": "one per GPU type, e.g. [gpus.a100] with gres = \"a100\", per_node = 4, memory_gb = 80 (sinfo -o '%P %G')",
    "sizes": "one per dataset size, e.g. [sizes.micro] with gpu = \"a100\" (or gpu = \"none\") and time = \"01:00:00\"",
}


def _table(cls: type, table: Any, label: str) -> tuple[Any, list[str]]:
    """`cls` from one [KIND.NAME] table, or its problems, each starting with the table's name."""
    if not isinstance(table, dict):
        return None, [f"{label}: expected a table of keys, got {table!r}"]
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [key for key in required if key not in table]
    if missing:  # said with the field's help, not as a constructor's TypeError
        help_ = config.field_help(cls)
        problems = config.check_mapping(cls, table)[1] + [f"{key}: missing: {help_[key] or 'required'}" for key in missing]
        return None, [f"{label}: {p}" for p in problems]
    obj, problems = config.problems_of(cls, table)
    return obj, [f"{label}: {p}" for p in problems]


def parse_profile(raw: dict[str, Any], path: Path) -> ClusterProfile:
    """The profile of one slurm/*.toml, checked whole: every problem at once, one line each, each naming the file,
    the table and the key; what is missing is said once, not again as the problems it causes."""
    where = str(path)
    raw = dict(raw)
    problems: list[str] = []
    kinds: dict[str, dict[str, Any] | None] = {}  # None: missing or not tables (said once)
    for kind in ("partitions", "gpus", "sizes"):
        value = raw.pop(kind, {})
        if not isinstance(value, dict):
            problems.append(f"{kind}: expected [{kind}.NAME] tables, got {value!r}; add {TABLE_HINTS[kind]}")
            value = None
        elif not value and kind != "sizes":
            problems.append(f"no [{kind}.NAME] tables: add {TABLE_HINTS[kind]}")
            value = None
        kinds[kind] = value
    raw.setdefault("name", path.stem)
    values, bad = config.check_mapping(ClusterProfile, raw)
    problems += bad
    broken = set(raw) - set(values)  # top-level keys with a problem (said): their defaults stand in below
    parts: dict[str, Partition] = {}
    gpus: dict[str, GpuType] = {}
    for kind, cls, out in (("partitions", Partition, parts), ("gpus", GpuType, gpus)):
        for name, table in (kinds[kind] or {}).items():
            obj, bad = _table(cls, table, f"[{kind}.{name}]")
            problems += bad
            if obj is not None:
                out[name] = obj
    sizes: dict[str, Resources] = {}
    size_keys: dict[str, tuple[str, ...]] = {}
    for name, table in (kinds["sizes"] or {}).items():
        if name not in DATASET_SIZES:
            problems.append(f"[sizes.{name}]: unknown dataset size; valid sizes: {', '.join(DATASET_SIZES)}")
            continue
        obj, bad = _table(Resources, table, f"[sizes.{name}]")
        problems += bad
        if obj is not None:
            sizes[name], size_keys[name] = obj, tuple(table)
    profile = ClusterProfile(**{"name": path.stem, **values})
    profile.partitions, profile.gpus, profile.sizes, profile.path, profile.size_keys = parts, gpus, sizes, where, size_keys

    # references between tables; a name whose own table is broken (said above) is not said again here
    part_names = set(kinds["partitions"] or {})
    gpu_names = set(kinds["gpus"] or {})
    defined_parts = ", ".join(sorted(part_names))
    if kinds["partitions"] is not None:  # each partition named but not defined: one line with everything naming it
        unknown: dict[str, list[str]] = {}
        for key in ("default_partition", "cpu_partition"):
            if key not in broken and getattr(profile, key) not in part_names:
                unknown.setdefault(getattr(profile, key), []).append(key if key in raw else f"{key} (not set: its default)")
        for gname, g in gpus.items():
            for pname in dict.fromkeys(g.partitions):
                if pname not in part_names:
                    unknown.setdefault(pname, []).append(f"[gpus.{gname}] partitions")
        for name, refs in unknown.items():
            problems.append(f"{', '.join(refs)}: no partition {name!r} in this profile; its partitions: {defined_parts}; "
                            f"add [partitions.{name}] or name one of those")
    if profile.gpu_request == "gres" and "gpu_request" not in broken:
        for gname, g in gpus.items():
            if g.constraint:
                problems.append(f"[gpus.{gname}]: constraint = {g.constraint!r} would go unused: gpu_request = 'gres' asks for "
                                f"--gres=gpu:{g.gres}:N; drop constraint, or set gpu_request = \"constraint\"")
    base_ok = (kinds["partitions"] is not None and profile.default_partition in parts and profile.cpu_partition in parts
               and not {"default_partition", "cpu_partition"} & broken)
    for sname, res in sizes.items():
        label, keys = f"[sizes.{sname}]", size_keys[sname]
        if "gpu" not in keys and not (res.min_gpu_memory_gb or 0) > 0:
            choices = ", ".join(sorted(gpu_names)) or "(none yet)"
            problems.append(f"{label}: no gpu: say which GPU type a {sname} job gets (gpu = one of {choices}), "
                            f"or gpu = \"none\" for CPU jobs")
            continue
        if res.gpu not in (None, "none") and res.gpu not in gpu_names:
            if kinds["gpus"] is not None:
                problems.append(f"{label}: gpu: unknown GPU type {res.gpu!r}; valid GPU types: {', '.join(sorted(gpu_names))}")
            continue
        if not base_ok or (res.gpu not in (None, "none") and res.gpu not in gpus) \
                or (res.partition is not None and res.partition in part_names and res.partition not in parts):
            continue  # what it refers to is broken, and said so above
        if res.gpu is None and set(gpus) != gpu_names:
            continue  # the memory need picks among the GPU types, and one of them is broken
        _, bad = profile.check({k: getattr(res, k) for k in keys})
        problems += [f"{label}: {p}" for p in bad]
    if problems:
        raise many([f"{where}: {p}" for p in problems])
    return profile
