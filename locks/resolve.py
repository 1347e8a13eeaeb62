"""Write the lock files install.sh installs from: pip's own resolution of each environment, pinned.

    python3 locks/resolve.py            # rewrites locks/cpu.txt, locks/gpu.txt and locks/gpu-on-cpu.txt

- cpu.txt: `.[dev,real]` with constraints-cpu.txt (the CPU build of torch): CI, laptops, CPU nodes.
- gpu.txt: `.[dev,real,gpu]` (unsloth and what it pins), as pip resolves it for a CUDA node: what a GPU cluster gets.
- gpu-on-cpu.txt: gpu.txt as CI can run it without a GPU: every package the toolkit needs at the GPU lock's
  version, but torch (the CPU build of the nearest version this machine has, named in constraints-cpu.txt),
  torch's CUDA libraries and unsloth with the packages only unsloth needs (none of them import without a GPU).

Each resolution runs `pip install --dry-run --ignore-installed --report` in a fresh venv (nothing installed) and
keeps every package of the report but the toolkit itself. The header of each file records the command, the date,
pip's version and torch's build (CPU, or the CUDA version its wheel needs).
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"
PROJECT = "medminds-hpc"
CUDA_PARTS = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")  # torch's CUDA build, not the toolkit's needs


def resolve(pip: Path, extras: str, constraints: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [str(pip), "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
               *constraints, f".[{extras}]"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"pip could not resolve .[{extras}]:\n{proc.stderr[-3000:]}")
        return json.loads(report.read_text())


def packages(report: dict) -> dict[str, dict]:
    return {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}


def torch_build(item: dict) -> str:
    version = item["metadata"]["version"]
    if "+cpu" in version:
        return "CPU build"
    cuda = [r for r in item["metadata"].get("requires_dist") or [] if r.startswith(("cuda-toolkit", "nvidia-cuda-runtime"))]
    return f"CUDA build ({Requirement(cuda[0]).specifier})" if cuda else "build without a CUDA dependency"


def needed(report: dict, roots_extras: set[str], skip: set[str]) -> set[str]:
    """The packages the toolkit reaches from its own requirements (with `roots_extras`), not through `skip`."""
    items = packages(report)
    env = report["environment"]
    seen: set[tuple[str, str]] = set()  # (package, one of its extras or "")

    def visit(name: str, extra: str) -> None:
        if name not in items or name in skip or (name, extra) in seen:
            return
        seen.add((name, extra))
        for text in items[name]["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            if req.marker is None and extra:
                continue  # the package's own requirements come with extra ""
            if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                continue
            child = canonicalize_name(req.name)
            for e in ["", *sorted(req.extras)]:
                visit(child, e)

    for extra in ["", *sorted(roots_extras)]:
        visit(PROJECT, extra)
    return {name for name, _ in seen} - {PROJECT}


def cpu_torch() -> str:
    """The torch of constraints-cpu.txt: the CPU build on this machine's disk."""
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        if line.strip().startswith("torch=="):
            return line.strip().split("==", 1)[1]
    sys.exit("constraints-cpu.txt names no torch==VERSION")


def write(path: Path, about: list[str], report: dict, names: set[str], replace: dict[str, str] | None = None) -> None:
    items = packages(report)
    lines = [f"# {line}" for line in about]
    lines += [f"# resolved {datetime.date.today()} by locks/resolve.py with pip {report.get('pip_version')} "
              f"(Python {report['environment']['python_full_version']}, {report['environment']['platform_machine']}); "
              "install.sh installs it with `pip install --no-deps -r`"]
    pins = {n: (replace or {}).get(n, items[n]["metadata"]["version"]) for n in names}
    lines += [f"{items[n]['metadata']['name']}=={pins[n]}" for n in sorted(names, key=str.lower)]
    path.write_text("\n".join(lines) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(names)} packages")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        pip = Path(tmp) / "bin" / "pip"
        cpu = resolve(pip, "dev,real", ["-c", "constraints-cpu.txt"])
        gpu = resolve(pip, "dev,real,gpu", [])
    cpu_names = set(packages(cpu)) - {PROJECT}
    write(LOCKS / "cpu.txt", ["The CPU environment (CI, laptops, CPU nodes): .[dev,real] with constraints-cpu.txt.",
                              f"torch {packages(cpu)['torch']['metadata']['version']}: {torch_build(packages(cpu)['torch'])}."],
          cpu, cpu_names)
    gpu_items = packages(gpu)
    gpu_names = set(gpu_items) - {PROJECT}
    torch = gpu_items["torch"]
    write(LOCKS / "gpu.txt", ["The GPU environment (CUDA nodes): .[dev,real,gpu], unsloth and its pins.",
                              f"torch {torch['metadata']['version']}: {torch_build(torch)}; the nodes' NVIDIA driver must support it."],
          gpu, gpu_names)
    tested = needed(gpu, {"dev", "real"}, skip={"unsloth"}) - {n for n in gpu_items if CUDA_PARTS.match(n)}
    write(LOCKS / "gpu-on-cpu.txt", [
        "gpu.txt as CI runs it without a GPU: every package the toolkit needs at the GPU lock's version, but torch",
        f"(the CPU build {cpu_torch()} for the GPU lock's {torch['metadata']['version']}), torch's CUDA libraries, and unsloth with "
        "what only it needs.",
        f"left out of gpu.txt: {', '.join(sorted(gpu_names - tested))}"],
        gpu, tested, replace={"torch": cpu_torch()})


if __name__ == "__main__":
    main()
