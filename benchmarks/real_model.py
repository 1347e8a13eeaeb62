"""The toolkit on a real pretrained model on CPU: SmolLM2-135M-Instruct (`--model smollm2-135m-instruct`).

    .venv/bin/python benchmarks/real_model.py                     # 5 min of CPU; 16 min wall on a busy 2-core machine
    .venv/bin/python benchmarks/real_model.py --questions 500 --heldout 300 --train-rows 400 --threads 2

On the real samples in ../shared/data (MedMCQA dev sample, ARC-Challenge test), with the paper's prompt:
(a) zero-shot next-word accuracy and questions/s on MedMCQA and on the held-out ARC rows, with the share of each
    predicted letter (a 135M model mostly answers one letter);
(b) agreement with lm-evaluation-harness (same letter on every question, harness prompt, its log-likelihood
    requests) when `lm_eval` is installed; otherwise says so;
(c) a short LoRA SFT of the task expert on ARC (r 16 on the seven projections, loss on the answer letter only, as
    the expert stage), ARC accuracy before and after on held-out ARC rows with Wilson 95% intervals and McNemar's
    exact p;
(d) a 4-way classifier head on the frozen base, letter-initialised vs random, after the same number of steps on
    the same ARC rows (trained on the base's cached last-token states).
ARC rows are shuffled with a fixed seed; the held-out rows never train. torch uses --threads threads (default 1:
the machine is shared).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE, SHARED_DATA, bench_home  # noqa: E402

MODEL = "smollm2-135m-instruct"
ARC = SHARED_DATA / "arc" / "arc_challenge_test.jsonl"
LETTERS = "ABCD"


def load_rows(questions: int, heldout: int, train_rows: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(MedMCQA rows, ARC held-out rows, ARC training rows) from the shared samples."""
    from medminds_hpc.data.arc import load_arc
    from medminds_hpc.data.medmcqa import load_medmcqa

    for path in (SAMPLE, ARC):
        if not path.exists():
            sys.exit(f"{path} not found: this benchmark needs ../shared/data beside the project")
    medmcqa = load_medmcqa(SAMPLE, splits=("validation",), show_progress=False)["validation"].to_list()[:questions]
    arc = load_arc(str(ARC), show_progress=False)["train"].to_list()
    random.Random(seed).shuffle(arc)
    return medmcqa, arc[:heldout], arc[heldout:heldout + train_rows]


def summary(name: str, logprobs: Any, rows: Sequence[dict], seconds: float | None = None) -> list[bool]:
    """Print accuracy with its Wilson interval, questions/s and the predicted letters' shares; per-row correctness."""
    from medminds_hpc.training.metrics import wilson_interval

    predicted = logprobs.argmax(1).tolist()
    correct = [p == int(r["answer"]) for p, r in zip(predicted, rows)]
    lo, hi = wilson_interval(sum(correct), len(rows))
    shares = " ".join(f"{letter} {predicted.count(i) / len(rows):.0%}" for i, letter in enumerate(LETTERS))
    speed = f", {len(rows) / seconds:.2f} q/s" if seconds else ""
    print(f"  {name:<34} accuracy {sum(correct) / len(rows):.3f} [{lo:.3f}, {hi:.3f}] on {len(rows)}{speed}; "
          f"predicted {shares}", flush=True)
    return correct


def states_and_letters(model: Any, tok: Any, rows: Sequence[dict], batch: int, max_length: int) -> tuple[Any, Any]:
    """(last-token hidden states (N, hidden), letter log-probabilities (N, 4)) of the base in one pass per batch."""
    import torch

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling.heads import last_hidden

    letters = torch.tensor(prompts.letter_token_ids(tok))
    head = model.get_output_embeddings()
    states, logprobs = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            enc = prompts.encode_prompts(tok, [prompts.mcq_prompt(r) for r in rows[start:start + batch]], max_length)
            h = last_hidden(model, enc["input_ids"], enc["attention_mask"], enc["last_index"])
            states.append(h)
            logprobs.append(torch.log_softmax(head(h).float(), dim=-1)[:, letters])
    return torch.cat(states), torch.cat(logprobs)


def part_a(model: Any, tok: Any, medmcqa: list[dict], heldout: list[dict], args: argparse.Namespace) -> tuple[Any, list[bool]]:
    from medminds_hpc.modeling import scoring

    print("(a) zero-shot next-word scoring (paper prompt)", flush=True)
    t = time.perf_counter()
    lp = scoring.letter_logprobs(model, tok, medmcqa, batch_size=args.batch, max_length=args.max_length)
    summary("MedMCQA dev sample", lp, medmcqa, time.perf_counter() - t)
    t = time.perf_counter()
    states, arc_lp = states_and_letters(model, tok, heldout, args.batch, args.max_length)
    before = summary("ARC-Challenge held-out", arc_lp.numpy(), heldout, time.perf_counter() - t)
    gold = " ".join(f"{letter} {sum(int(r['answer']) == i for r in heldout) / len(heldout):.0%}"
                    for i, letter in enumerate(LETTERS))
    print(f"  (ARC held-out gold letters: {gold})", flush=True)
    return states, before


def part_b(model: Any, tok: Any, medmcqa: list[dict], args: argparse.Namespace) -> None:
    print("(b) agreement with lm-evaluation-harness", flush=True)
    if importlib.util.find_spec("lm_eval") is None:
        print("  lm-evaluation-harness is not installed (pip install lm-eval): agreement not measured", flush=True)
        return
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import scoring

    ours = scoring.letter_logprobs(model, tok, medmcqa, template="harness", batch_size=args.batch,
                                   max_length=args.max_length).argmax(1)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(prompts.mcq_prompt(r, "harness"),
                         prompts.answer_text(k)), idx=k) for r in medmcqa for k in range(4)]
    scores = [ll for ll, _greedy in lm.loglikelihood(requests)]
    theirs = [max(range(4), key=lambda k: scores[4 * i + k]) for i in range(len(medmcqa))]
    same = sum(int(a) == b for a, b in zip(ours, theirs))
    print(f"  same letter on {same} of {len(medmcqa)} MedMCQA questions (harness prompt)", flush=True)


def batches(rows: list[dict], size: int, steps: int, seed: int):
    """`steps` batches of `size` rows, reshuffled each pass over the rows."""
    rng, order, done = random.Random(seed), [], 0
    while done < steps:
        if len(order) < size:
            extra = list(range(len(rows)))
            rng.shuffle(extra)
            order += extra
        yield [rows[i] for i in order[:size]]
        order, done = order[size:], done + 1


def part_c(model: Any, tok: Any, heldout: list[dict], train: list[dict], before: list[bool],
           args: argparse.Namespace) -> None:
    import torch

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling import scoring
    from medminds_hpc.modeling.lora import add_lora
    from medminds_hpc.significance import mcnemar_exact

    steps = args.steps or -(-len(train) // args.batch)
    print(f"(c) LoRA SFT of the task expert on {len(train)} ARC rows: {steps} steps of {args.batch}, lr {args.lr}",
          flush=True)
    lm = add_lora(model, r=16, alpha=16, dropout=0.0, seed=args.seed)
    letters = torch.tensor(prompts.letter_token_ids(tok))
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=args.lr)
    lm.train()
    t, losses = time.perf_counter(), []
    for rows in batches(train, args.batch, steps, args.seed):
        enc = prompts.encode_prompts(tok, [prompts.mcq_prompt(r) for r in rows], args.max_length, padding_side="right")
        logits = scoring.logits_at(lm, enc["input_ids"], enc["attention_mask"], enc["last_index"])
        loss = torch.nn.functional.cross_entropy(logits.float(), letters[torch.tensor([int(r["answer"]) for r in rows])])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - t
    print(f"  {seconds:.0f} s ({seconds / steps:.1f} s/step); loss first {losses[0]:.3f}, "
          f"mean of last {min(5, steps)} {sum(losses[-5:]) / len(losses[-5:]):.3f}", flush=True)
    lm.eval()
    after_lp = scoring.letter_logprobs(lm, tok, heldout, batch_size=args.batch, max_length=args.max_length)
    after = summary("ARC held-out, after SFT", after_lp, heldout)
    b = sum(x and not y for x, y in zip(before, after))
    c = sum(y and not x for x, y in zip(before, after))
    print(f"  before {sum(before) / len(heldout):.3f} -> after {sum(after) / len(heldout):.3f}: "
          f"{c} questions gained, {b} lost, McNemar exact p = {mcnemar_exact(b, c):.3g}", flush=True)
    lm.unload()  # the base as it was, for (d)


def part_d(model: Any, tok: Any, held_states: Any, heldout: list[dict], train: list[dict],
           args: argparse.Namespace) -> None:
    import torch

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling.heads import LastTokenClassifier

    steps = args.steps or -(-len(train) // args.batch)
    print(f"(d) 4-way head on the frozen base: letter-initialised vs random, {steps} steps of {args.batch} on the "
          f"same ARC rows, lr {args.head_lr}", flush=True)
    t = time.perf_counter()
    train_states, _ = states_and_letters(model, tok, train, args.batch, args.max_length)
    print(f"  base states of the {len(train)} training rows: {time.perf_counter() - t:.0f} s", flush=True)
    index = {id(r): i for i, r in enumerate(train)}
    labels = torch.tensor([int(r["answer"]) for r in heldout])
    for init in ("letters", "random"):
        head = LastTokenClassifier(model, init, prompts.letter_token_ids(tok), seed=args.seed).score
        optimizer = torch.optim.AdamW(head.parameters(), lr=args.head_lr)
        with torch.no_grad():
            start = (head(held_states).argmax(1) == labels).float().mean().item()
        for rows in batches(train, args.batch, steps, args.seed):
            x = train_states[[index[id(r)] for r in rows]]
            y = torch.tensor([int(r["answer"]) for r in rows])
            torch.nn.functional.cross_entropy(head(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            logits = head(held_states)
        print(f"  {init:<8} head: held-out accuracy before training {start:.3f}", flush=True)
        summary(f"{init} head after {steps} steps", torch.log_softmax(logits, -1).numpy(), heldout)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=100, help="MedMCQA questions for (a) and (b)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out ARC rows (accuracy before/after)")
    parser.add_argument("--train-rows", type=int, default=160, help="ARC rows to train on")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: one pass over the training rows)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate (AdamW)")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="classifier head learning rate (AdamW)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 'b,d'")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    skip = set(args.skip.split(","))
    with bench_home():
        from medminds_hpc.modeling.loading import load_model

        t = time.perf_counter()
        model, tok = load_model(MODEL, device="cpu")
        print(f"{MODEL}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
              f"{type(model).__name__}, loaded (converted on first use) in {time.perf_counter() - t:.0f} s; "
              f"{args.threads} thread(s)", flush=True)
        medmcqa, heldout, train = load_rows(args.questions, args.heldout, args.train_rows, args.seed)
        held_states, before = part_a(model, tok, medmcqa, heldout, args)
        if "b" not in skip:
            part_b(model, tok, medmcqa, args)
        if "c" not in skip:
            part_c(model, tok, heldout, train, before, args)
        if "d" not in skip:
            part_d(model, tok, held_states, heldout, train, args)


if __name__ == "__main__":
    main()
