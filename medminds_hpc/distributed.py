"""The ranks of a multi-task job (one task per GPU, see clusters.JobResources) and the few collectives the project uses.

A job with more than one task trains with PyTorch DDP through the Trainer: every task runs the same stage, and
what must be the same everywhere is agreed here: the stop flag (an all-reduce MAX at each step boundary, so all
ranks save and leave at the same step: a rank that stops alone leaves the others waiting in the next all-reduce),
and evaluation results (each rank scores rows[rank::world], gathered back into the input order). Only rank 0
writes (StageContext.is_rank_zero). Losing a peer (a rank killed alone) surfaces as an error from the next
collective; `peer_lost` recognises it so that the job requeues instead of failing or hanging. torch is imported
inside the functions: a single-task job never loads torch.distributed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import zlib
from dataclasses import dataclass
from typing import Any

# the collectives' timeout: a peer that is alive but stuck fails the job after this long, never hangs it
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_env() -> Ranks:
    """The ranks torch.distributed's env:// method reads (all 1-task defaults when unset)."""
    return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def node_address(hostname: str) -> str:
    """An address of `hostname` the other tasks can connect to: the name itself when it resolves, else the
    NodeAddr Slurm knows it by (a cluster whose node names are not in DNS; one scontrol call, only then)."""
    try:
        socket.getaddrinfo(hostname, None)
        return hostname
    except OSError:
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", hostname], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return hostname
    for word in out.split():
        if word.startswith("NodeAddr="):
            return word.split("=", 1)[1] or hostname
    return hostname


def master_port(job_id: str, restart: int) -> int:
    """The same port on every task of one start of a job, another one after a requeue (the old one may linger)."""
    return 20000 + zlib.crc32(f"{job_id}:{restart}".encode()) % 40000


def export_env() -> Ranks:
    """Set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from submitit's view of the job."""
    from submitit.helpers import TorchDistributedEnvironment

    dist = TorchDistributedEnvironment()
    dist.master_addr = node_address(dist.master_addr)
    dist.master_port = master_port(str(dist._job_env.job_id), int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0))
    # each rank picks cuda:LOCAL_RANK itself; Slurm gives every task of a node all of the node's GPUs
    dist.export(set_cuda_visible_devices=False, overwrite=True)
    return from_env()


def init(ranks: Ranks, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the job's process group (nccl on CUDA, gloo on CPU) with a bounded timeout; the Trainer then uses it."""
    if not ranks.distributed:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=ranks.rank, world_size=ranks.world_size,
                            timeout=timedelta(seconds=timeout_s))


def active() -> bool:
    """Whether this process is one of several ranks, joining their process group on first use.

    The group starts when first needed (training, or sharded scoring), after the stage has loaded its model:
    under a process group transformers' save_pretrained writes nothing on ranks other than 0, which would leave a
    model cache that a rank builds (the tiny models) without weights."""
    ranks = from_env()
    if not ranks.distributed:
        return False
    init(ranks)
    return True


def _device() -> Any:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank when it is true on any (one all-reduce MAX); the flags themselves outside a
    process group."""
    if not active():
        return tuple(bool(f) for f in flags)
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def my_share(n: int) -> range:
    """The indices of n rows this rank handles: rank, rank + world, ... (all of them outside a process group)."""
    if not active():
        return range(n)
    import torch.distributed as dist

    return range(dist.get_rank(), n, dist.get_world_size())


def gather_rows(part: Any, n: int) -> Any:
    """Every rank's `part` (a numpy array of the rows in `my_share(n)`) put back into one array of n rows in order."""
    if not active():
        return part
    import numpy as np
    import torch.distributed as dist

    world = dist.get_world_size()
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, part)
    shape = next((p.shape[1:] for p in parts if len(p)), part.shape[1:])
    out = np.empty((n, *shape), dtype=part.dtype)
    for r, p in enumerate(parts):
        if len(p):  # a rank with no rows (fewer rows than ranks) sends an empty array of any shape
            out[r::world] = p
    return out


PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket", "timed out", "nccl", "gloo")


def peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank died or stopped answering."""
    import sys

    if "torch" not in sys.modules or not isinstance(error, RuntimeError):
        return False
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return any(p in text for p in PEER_LOST)


def shutdown() -> None:
    """Leave the process group (at the end of a job; a requeued start joins a fresh one)."""
    import sys

    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
