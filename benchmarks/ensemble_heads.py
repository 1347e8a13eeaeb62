"""The ensemble heads at Mistral's sizes: one training step (forward + backward) per batch, on CPU or GPU.

    .venv/bin/python benchmarks/ensemble_heads.py                          # vocab 32,000 x hidden 4,096, batch 32
    .venv/bin/python benchmarks/ensemble_heads.py --batch 256 --threads 2 --device cuda

Random float32 states and LM head. Prints, per method x reduce, ms per step and trainable parameters, and for
late fusion with the learned reduction the same step computed the direct way (both experts' batch x vocab
logits, concatenated, then Linear 2 x vocab -> 4), which the heads never do: they fold the Linear into the LM head.
"""

from __future__ import annotations

import argparse
import time


def step_ms(head, loss_of, task, domain, labels, repeats: int) -> float:
    """Median ms of one forward + backward + Adam step."""
    import torch

    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss_of(task, domain, labels).backward()
        opt.step()
        if task.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times[1:])[repeats // 2]


def main() -> None:
    import torch

    from medminds_hpc.modeling.ensemble_heads import METHODS, REDUCES, build_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    weight = torch.randn(args.vocab, args.hidden, device=dev) / args.hidden**0.5
    letters = [330, 365, 334, 384]  # " A".." D" in Mistral's tokenizer
    task, domain = torch.randn(args.batch, args.hidden, device=dev), torch.randn(args.batch, args.hidden, device=dev)
    labels = torch.randint(0, 4, (args.batch,), device=dev)
    ce = torch.nn.functional.cross_entropy
    print(f"vocab {args.vocab} x hidden {args.hidden}, batch {args.batch}, {dev}, threads {torch.get_num_threads()}")
    for method in METHODS:
        for reduce in REDUCES:
            head = build_head(method, reduce, weight, letters, seed=0)
            ms = step_ms(head, lambda t, d, y: ce(head(t, d), y), task, domain, labels, args.repeats)
            params = sum(p.numel() for p in head.parameters())
            print(f"{method:12s} {reduce:8s} {ms:9.1f} ms/step  {params:>9,d} parameters")
    head = build_head("late-fusion", "learned", weight, letters, seed=0)

    def direct(t, d, y):
        return ce(head.fuse(torch.cat([t @ weight.T, d @ weight.T], dim=1)), y)

    ms = step_ms(head, direct, task, domain, labels, args.repeats)
    print(f"{'late-fusion':12s} {'direct':8s} {ms:9.1f} ms/step  (batch x 2 x vocab logits materialised)")


if __name__ == "__main__":
    main()
