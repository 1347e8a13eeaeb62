"""Row selection: first N is the paper's prefix; stratified keeps every subject; shortfalls are said, not hidden."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from medminds_hpc.data import splits
from medminds_hpc.errors import UserError
from tests.helpers import MEDMCQA_SAMPLE as SAMPLE


def unbalanced(n_big: int = 300) -> list[str]:
    keys = ["Dental"] * n_big + ["Surgery"] * 80 + ["ENT"] * 9 + ["Psychiatry"] * 1 + ["Unknown"] * 1
    import random

    random.Random(0).shuffle(keys)
    return keys


def test_first_is_the_prefix():
    keys = unbalanced()
    assert splits.select(keys, 50, "first", seed=3) == list(range(50))


@pytest.mark.parametrize("n", [5, 20, 100, 390])
def test_stratified_keeps_every_subject_and_the_size(n):
    keys = unbalanced()
    chosen = splits.select(keys, n, "stratified", seed=0)
    assert len(chosen) == n == len(set(chosen)) and chosen == sorted(chosen)
    assert {keys[i] for i in chosen} == set(keys)
    again = splits.select(keys, n, "stratified", seed=0)
    other = splits.select(keys, n, "stratified", seed=1)
    assert chosen == again and (chosen != other or n >= 390)


def test_stratified_is_proportional():
    keys = unbalanced(3000)
    got = Counter(keys[i] for i in splits.select(keys, 309, "stratified", seed=0))
    assert abs(got["Dental"] - 309 * 3000 / len(keys)) <= 2 and got["Psychiatry"] == 1


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"real MedMCQA sample absent ({SAMPLE})")
def test_stratified_on_the_real_subjects():
    subjects = [json.loads(line)["subject_name"] for line in SAMPLE.read_text().splitlines()]
    chosen = splits.select(subjects, 100, "stratified", seed=0)
    assert len(chosen) == 100 and {subjects[i] for i in chosen} == set(subjects)  # all 21, Psychiatry included


def test_allocate_edge_cases():
    counts = {"a": 10, "b": 1, "c": 1}
    assert splits.allocate(counts, 12) == counts
    assert splits.allocate(counts, 2) == {"a": 1, "b": 1, "c": 0}  # fewer rows than groups
    alloc = splits.allocate(counts, 3)
    assert alloc == {"a": 1, "b": 1, "c": 1}


def test_all_when_asked_for_more():
    keys = unbalanced()
    assert splits.select(keys, None, "stratified", 0) == list(range(len(keys)))
    assert splits.select(keys, 10**6, "first", 0) == list(range(len(keys)))
    assert splits.shortfall("MedMCQA train", 10**6, 391) == ["MedMCQA train: asked for 1,000,000 rows, the source has 391: using all of them"]


@pytest.mark.parametrize("method", ["first", "stratified"])
def test_carve_one_pool_without_overlap(method):
    keys = unbalanced()
    train, val, warnings = splits.carve(keys, 100, 20, method, 0, "MedMCQA")
    assert (len(train), len(val), warnings) == (100, 20, [])
    assert not set(train) & set(val)
    train, val, warnings = splits.carve(keys, 2000, 500, method, 0, "MedMCQA")
    assert len(train) + len(val) == len(keys) and len(val) == round(len(keys) * 500 / 2500)
    assert not set(train) & set(val) and "using all of them" in warnings[0]
    train, val, _ = splits.carve(keys, None, None, method, 0, "MedMCQA")
    assert len(val) == round(len(keys) * splits.CARVE_VALIDATION_FRACTION) and len(train) + len(val) == len(keys)


def test_sizes_and_bad_names():
    assert (splits.SIZES["micro"].train, splits.SIZES["micro"].validation) == (2000, 500)
    assert (splits.SIZES["mini"].train, splits.SIZES["mini"].validation) == (20000, 2000)
    assert splits.SIZES["mega"].train is None
    with pytest.raises(UserError, match="micro, mini, mega"):
        splits.size_spec("huge")
    with pytest.raises(UserError, match="first .* or stratified"):
        splits.check_method("random")
