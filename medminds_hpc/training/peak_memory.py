"""Measured memory of one training step: what the planner (medminds_hpc/memory.py) is checked against.

On CUDA the allocator's own peak (`torch.cuda.max_memory_allocated`); on CPU the profiler's record of every
allocation and free (`profile_memory=True`), summed in time order, which is the same quantity for the CPU
allocator. Both count tensors only: no CUDA context, no allocator caching or fragmentation (the planner adds
those as a fixed context and a margin).

    python benchmarks/memory_estimate.py      # tiny models on this machine: measured peak beside the estimate
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StepMemory:
    resident: int  # bytes held before the step: weights, trainable parameters, optimizer state
    peak: int  # bytes at the highest point of the step, resident included

    @property
    def transient(self) -> int:
        return self.peak - self.resident


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared weights counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resident_bytes(model: Any, optimizer: Any = None) -> int:
    """Parameters, buffers and optimizer state (the moments AdamW keeps per trainable parameter)."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def peak_above_start(fn: Callable[[], Any], device: str = "cpu") -> int:
    """The most bytes allocated at once while `fn` runs, above what was allocated when it started."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def train_step_memory(model: Any, optimizer: Any, compute_loss: Callable[[Any], Any], device: str = "cpu") -> StepMemory:
    """Memory of one steady-state step (forward, backward, optimizer step), as a Trainer runs it.

    A first step is taken unmeasured so the optimizer's state exists, as it does on every step but the first;
    the gradients are released before each step (`zero_grad(set_to_none=True)`, the Trainer's default).
    """

    def step() -> None:
        loss = compute_loss(model)
        loss.backward()
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    resident = resident_bytes(model, optimizer)
    return StepMemory(resident, resident + peak_above_start(step, device))


def forward_memory(model: Any, forward: Callable[[Any], Any], device: str = "cpu") -> StepMemory:
    """Memory of one forward pass without gradients (scoring)."""
    import torch

    def run() -> None:
        with torch.no_grad():
            forward(model)

    resident = resident_bytes(model)
    return StepMemory(resident, resident + peak_above_start(run, device))
