"""How fast `prepare` reads, validates, splits and writes a mega-sized MedMCQA: rows/s and peak memory.

Replicates the real MedMCQA sample (970 rows, original release format, cop 1-4) to 200,000 training rows with
unique ids, in a temporary folder laid out like ../shared/data (the real arc/ and medical_instruct/ folders are
linked in when present), then runs prepare("mega", strict) on it. MedMCQA's full train split is 182,822 rows.

    .venv/bin/python benchmarks/prepare_throughput.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = SHARED / "medmcqa" / "dev-sample.jsonl"


def replicate(rows: int, folder: Path) -> int:
    """Write medmcqa/train.json (rows copies of the sample, ids suffixed) and dev.json (the sample); returns bytes."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    (folder / "medmcqa").mkdir(parents=True)
    with open(folder / "medmcqa" / "train.json", "w", encoding="utf-8") as f:
        for i in range(rows):
            rec = records[i % len(records)]
            f.write(json.dumps({**rec, "id": f"{rec['id']}-r{i // len(records) + 1}"}) + "\n")
    (folder / "medmcqa" / "dev.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for sub in ("arc", "medical_instruct"):
        if (SHARED / sub).exists():
            os.symlink(SHARED / sub, folder / sub)
    return (folder / "medmcqa" / "train.json").stat().st_size


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    if not SAMPLE.exists():
        sys.exit(f"the real MedMCQA sample is needed: {SAMPLE} is absent")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from medminds_hpc.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        t0 = time.perf_counter()
        size = replicate(args.rows, src)
        t_write = time.perf_counter() - t0
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        card = prepare("mega", source=str(src), bad_rows="strict", out_dir=Path(tmp) / "data" / "mega",
                       say=lambda m: None, show_progress=False)
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = prepare("mega", source=str(src), bad_rows="strict", out_dir=Path(tmp) / "data" / "mega", say=lambda m: None)
        t_again = time.perf_counter() - t0
    read = card["medmcqa"]["read"]
    total = read["train"] + read["validation"]
    print(f"input: {read['train']:,} train + {read['validation']:,} validation MedMCQA rows ({size / 1e6:.0f} MB JSON lines, "
          f"written in {t_write:.1f} s), plus ARC {card.get('arc', {}).get('read', {}).get('train', 0):,} and "
          f"instruct {card.get('instruct', {}).get('read', {}).get('train', 0):,} rows")
    print(f"prepare mega (strict): {elapsed:.2f} s for everything, {total / elapsed:,.0f} MedMCQA rows/s")
    print(f"  wrote: " + ", ".join(f"{k} {v['rows']:,} rows" for k, v in card["files"].items()))
    print(f"  second call (up to date: {again['up_to_date']}): {t_again:.2f} s (hashing the inputs)")
    print(f"peak RSS: {peak_rss_mb():,.0f} MB (before prepare: {rss_before:,.0f} MB)")
    print(f"=> MedMCQA's 182,822 training rows: ~{182_822 / (total / elapsed):.1f} s")


if __name__ == "__main__":
    main()
