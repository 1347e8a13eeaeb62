"""DDP scaling on the dev Slurm cluster: training steps/s of 1, 2 and 3 CPU ranks (gloo), same global batch.

    PYTHONPATH=. .venv/bin/python benchmarks/ddp.py [--model tiny-4layer] [--steps 120] [--batch 12]

Each rank count is one real job of the classifier baseline (`-o resources.gpus=N`, or 3 nodes x 1 GPU for 3 ranks:
no GPU type of the dev cluster has 3 on a node), run one after the other. The rate is taken from the run's own step
log (metrics.jsonl), between the first logged step and the last, so job start-up, model loading and the final
evaluation are not counted. Scaling efficiency = (steps/s with N ranks / steps/s with 1) / N. The dev cluster's
nodes share this machine's cores, so expect little or no speed-up there: the figure says what DDP costs in
communication on one host, not what it gains on a real cluster.

Measured on a quiet 2-core host (tiny-4layer, global batch 12, 50 steps timed each): 1 rank 3.72 steps/s, 2 ranks
4.79 (1.29x, 64% efficiency), 3 ranks on the 2 cores 4.48 (1.20x, 40%).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPES = {1: 'gpu = "any"\ngpus = 1', 2: 'gpu = "any"\ngpus = 2', 3: 'gpu = "any"\ngpus = 1\nnodes = 3'}


def experiment(model: str, steps: int, batch: int, ranks: int) -> str:
    params = dict(adapter="none", lora_dropout=0.0, learning_rate=1e-3, batch_size=batch, max_steps=steps, max_train_rows=480,
                  eval_rows=12, checkpoint_every_steps=10_000, max_length=128, selection="validation", warmup_steps=0)
    from tests.helpers import params_toml

    return f'stage = "baseline-classifier"\nmodel = "{model}"\n[params]\n{params_toml(params)}\n[resources.micro]\npartition = "gpu"\n{SHAPES[ranks]}\n'


def steps_per_s(run_dir: Path) -> tuple[float, int]:
    """(rate, steps measured) between the first and the last step logged by the Trainer."""
    from medminds_hpc import fileio

    logged = [(r["step"], r["time"]) for r in fileio.read_jsonl(run_dir / "metrics.jsonl") if "loss" in r and not r.get("eval")]
    (s0, t0), (s1, t1) = logged[0], logged[-1]
    return (s1 - s0) / (t1 - t0), s1 - s0


def measure(ranks: int, model: str, steps: int, batch: int, profile: Path, jobs: Path) -> dict:
    from medminds_hpc import runs, status, submit

    name = f"bench-ddp-{ranks}"
    (jobs / f"{name}.toml").write_text(experiment(model, steps, batch, ranks))
    (p,) = submit.submit(name, submit.SubmitOptions(dataset="micro", cluster=str(profile), executor="slurm", model=model),
                         say=lambda _s: None)
    deadline = time.time() + 900
    while time.time() < deadline:
        (st,) = status.collect([runs.get(p.run_id)])
        if st.state in (runs.COMPLETED, runs.FAILED, "CANCELLED"):
            break
        time.sleep(3)
    run = runs.get(p.run_id)
    if run.state != runs.COMPLETED:
        raise SystemExit(f"{ranks} ranks: run {p.run_id} ended {run.state}: {run.data.get('error')} (logs: {run.dir / 'logs'})")
    rate, measured = steps_per_s(run.dir)
    return {"ranks": ranks, "steps_per_s": rate, "steps": measured, "per_rank_batch": batch // ranks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-4layer")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per run (the rate is over all but the first logged)")
    ap.add_argument("--batch", type=int, default=12, help="global batch: divisible by 1, 2 and 3")
    ap.add_argument("--ranks", default="1,2,3")
    args = ap.parse_args()
    from _common import bench_home

    from tests.helpers import any_gpu_profile

    with bench_home(), tempfile.TemporaryDirectory(prefix="medminds-ddp-") as tmp:
        os.environ["MEDMINDS_JOBS"] = str(Path(tmp))
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from medminds_hpc.data.prepare import prepare

        prepare("micro", source="synthetic", say=lambda *_: None)
        profile = any_gpu_profile(Path(tmp))
        rows = [measure(int(n), args.model, args.steps, args.batch, profile, Path(tmp)) for n in args.ranks.split(",")]
    base = rows[0]["steps_per_s"] if rows[0]["ranks"] == 1 else None
    print(f"DDP on the dev cluster: {args.model}, global batch {args.batch}, {os.cpu_count()} CPU cores on this host, "
          f"gloo, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"{'ranks':>5}  {'batch/rank':>10}  {'steps/s':>8}  {'speed-up':>8}  {'efficiency':>10}  {'steps timed':>11}")
    for r in rows:
        speed = r["steps_per_s"] / base if base else float("nan")
        print(f"{r['ranks']:>5}  {r['per_rank_batch']:>10}  {r['steps_per_s']:>8.2f}  {speed:>7.2f}x  {speed / r['ranks']:>9.0%}  {r['steps']:>11}")


if __name__ == "__main__":
    main()
