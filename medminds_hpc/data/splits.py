"""Dataset sizes and how rows are chosen for them: the paper's first N rows, or a seeded sample by subject.

    micro  2,000 train / 500 validation      (ARC and instruct capped at 2,000: a fast demo)
    mini   20,000 train / 2,000 validation   (all ARC, all instruct)
    mega   the full train / full validation  (182,822 / 4,183 from the Hub)

`stratified` (default) samples each subject in proportion to its share, at least one row per subject present, so
rare subjects (Psychiatry < 1%) never disappear from a small split. `first` takes the first N rows (the paper
exactly). Chosen rows keep their original order. When a source has fewer rows than asked, all are used and a
warning says so.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal, Sequence

from medminds_hpc.errors import UserError

Method = Literal["first", "stratified"]
METHODS: tuple[str, ...] = ("first", "stratified")
CARVE_VALIDATION_FRACTION = 0.1  # validation share carved from a single pool when the size asks for "all"


@dataclass(frozen=True)
class SizeSpec:
    """Rows per output for one dataset size; None means every row the source has."""

    name: str
    train: int | None
    validation: int | None
    arc: int | None
    instruct: int | None


SIZES: dict[str, SizeSpec] = {
    "micro": SizeSpec("micro", 2_000, 500, 2_000, 2_000),
    "mini": SizeSpec("mini", 20_000, 2_000, None, None),
    "mega": SizeSpec("mega", None, None, None, None),
}


def size_spec(name: str) -> SizeSpec:
    if name not in SIZES:
        raise UserError(f"unknown dataset size {name!r}; valid: {', '.join(SIZES)} (--dataset micro|mini|mega)")
    return SIZES[name]


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise UserError(f"split={method!r} is not a split method; valid: first (the first N rows, as the paper) or stratified (seeded, by subject)")
    return method  # type: ignore[return-value]


def allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """Rows per group: proportional to its count (largest remainder), at least 1 per group, never more than it has."""
    total = sum(counts.values())
    if n >= total:
        return dict(counts)
    groups = sorted(counts, key=lambda g: (-counts[g], g))  # deterministic order: biggest first, then name
    if n < len(groups):  # not enough rows for one per group: the n biggest groups get one each
        return {g: (1 if i < n else 0) for i, g in enumerate(groups)}
    quota = {g: n * counts[g] / total for g in groups}
    alloc = {g: min(counts[g], max(1, math.floor(quota[g]))) for g in groups}
    diff = n - sum(alloc.values())
    while diff > 0:  # add to the largest remainders among groups with rows left
        ready = [g for g in groups if alloc[g] < counts[g]]
        for g in sorted(ready, key=lambda g: (-(quota[g] - alloc[g]), g))[:diff]:
            alloc[g] += 1
            diff -= 1
    while diff < 0:  # the minimum of 1 overshot: take from the most over-allocated groups above 1
        ready = [g for g in groups if alloc[g] > 1]
        for g in sorted(ready, key=lambda g: (quota[g] - alloc[g], g))[:-diff]:
            alloc[g] -= 1
            diff += 1
    return alloc


def select(keys: Sequence[str], n: int | None, method: Method, seed: int) -> list[int]:
    """Indices (ascending) of the rows chosen: all when n is None or n >= len(keys)."""
    total = len(keys)
    if n is None or n >= total:
        return list(range(total))
    if method == "first":
        return list(range(n))
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_group[k].append(i)
    alloc = allocate({g: len(ix) for g, ix in by_group.items()}, n)
    chosen: list[int] = []
    for g, k in alloc.items():
        chosen += random.Random(f"{seed}:{g}").sample(by_group[g], k)
    return sorted(chosen)


def shortfall(what: str, asked: int | None, available: int) -> list[str]:
    if asked is not None and asked > available:
        return [f"{what}: asked for {asked:,} rows, the source has {available:,}: using all of them"]
    return []


def carve(keys: Sequence[str], n_train: int | None, n_validation: int | None, method: Method, seed: int,
          what: str) -> tuple[list[int], list[int], list[str]]:
    """Train and validation indices from ONE pool (a source with only one of the two splits), and warnings.

    Enough rows: exactly n_validation, then n_train from the rest. Too few: the asked ratio is kept and all rows
    are used. Size "all" (None): a validation share of CARVE_VALIDATION_FRACTION.
    """
    total = len(keys)
    warnings: list[str] = []
    if n_train is None or n_validation is None:
        n_val = max(1, round(total * CARVE_VALIDATION_FRACTION)) if total > 1 else 0
        n_tr = total - n_val
    elif n_train + n_validation <= total:
        n_val, n_tr = n_validation, n_train
    else:
        n_val = min(total - 1, max(1, round(total * n_validation / (n_train + n_validation)))) if total > 1 else 0
        n_tr = total - n_val
        warnings.append(f"{what}: asked for {n_train:,} train + {n_validation:,} validation rows, the source has "
                        f"{total:,}: using all of them, {n_tr:,} train / {n_val:,} validation")
    if method == "first":
        return list(range(n_tr)), list(range(n_tr, n_tr + n_val)), warnings
    val = select(keys, n_val, method, seed)
    taken = set(val)
    rest = [i for i in range(total) if i not in taken]
    train = [rest[j] for j in select([keys[i] for i in rest], n_tr, method, seed + 1)]
    return train, val, warnings


def counts(keys: Sequence[str]) -> dict[str, int]:
    """Rows per key, most frequent first (for the data card)."""
    return dict(sorted(Counter(keys).items(), key=lambda kv: (-kv[1], kv[0])))


def carve_dev(keys: Sequence[str], n: int, seed: int) -> tuple[list[int], list[int]]:
    """(rest, dev): `n` row indices held out of a training split for choosing the best epoch, sampled in
    proportion to `keys` (the answer letter), seeded; both ascending, disjoint, together every row."""
    dev = select(keys, n, "stratified", seed) if n > 0 else []
    taken = set(dev)
    return [i for i in range(len(keys)) if i not in taken], dev
