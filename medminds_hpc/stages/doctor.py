"""Report what a job sees on its node: GPUs, CUDA, libraries, disk, Hugging Face cache and Hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from medminds_hpc import environment, paths
from medminds_hpc.training.options import doc


REPORT_FILE = "doctor.json"


@dataclass
class Config:
    expect_gpu: str = field(default="", metadata=doc("GPU type the job asked for (reported beside what it got)"))
    check_hub: bool = field(default=True, metadata=doc("try to reach huggingface.co (5 s timeout)"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _hub_reachable() -> str:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return "not tried (HF_HUB_OFFLINE=1)"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
        return "yes"
    except OSError as e:
        return f"no ({e.__class__.__name__})"


def run(ctx: Any, cfg: Config) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    hf_home = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    report: dict[str, Any] = {
        "node": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_nodelist": os.environ.get("SLURM_JOB_NODELIST", ""),
        "expected_gpu": cfg.expect_gpu,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        "slurm_gpus": os.environ.get("SLURM_JOB_GPUS", os.environ.get("SLURM_STEP_GPUS", "")),
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "cpu build",
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "trl": _version("trl"),
        "bitsandbytes": _version("bitsandbytes"),
        # find_spec only: importing unsloth without a GPU raises, and it patches transformers on import
        "unsloth_installed": importlib.util.find_spec("unsloth") is not None,
        "hf_cache": hf_home,
        "free_disk_gb_home": round(shutil.disk_usage(paths.home()).free / 1e9, 1),
        "free_disk_gb_hf_cache": round(shutil.disk_usage(hf_home if os.path.isdir(hf_home) else paths.home()).free / 1e9, 1),
        "hub_reachable": _hub_reachable() if cfg.check_hub else "not tried",
        "lock": str(environment.lock_in_use() or "none recorded (not installed by install.sh)"),
        "differs_from_lock": environment.differences() or "nothing: every version is the lock's",
    }
    ctx.write_json(REPORT_FILE, report)
    return {"cuda_available": cuda, "node": report["node"]}
