"""Synthetic data: deterministic, realistic shape (21 unbalanced subjects, both choice types), balanced letters,
and every answer recoverable from the text by the simple rule a tiny model learns."""

from __future__ import annotations

from collections import Counter

from medminds_hpc.data import schema, synthetic


def test_deterministic_per_seed_and_split():
    assert synthetic.medmcqa_rows(50, seed=3) == synthetic.medmcqa_rows(50, seed=3)
    assert synthetic.medmcqa_rows(50, seed=3) != synthetic.medmcqa_rows(50, seed=4)
    train, val = synthetic.medmcqa_rows(50, split="train"), synthetic.medmcqa_rows(50, split="validation")
    assert not {r["id"] for r in train} & {r["id"] for r in val}


def test_shape_like_medmcqa():
    rows = synthetic.medmcqa_rows(4000, seed=0)
    assert all(tuple(r) == schema.MCQ_COLUMNS and len(r["options"]) == 4 for r in rows)
    subjects = Counter(r["subject"] for r in rows)
    assert len(subjects) == 21
    assert 0.28 < subjects["Dental"] / 4000 < 0.36 and subjects["Psychiatry"] / 4000 < 0.01
    types = Counter(r["choice_type"] for r in rows)
    assert set(types) == {"single", "multi"} and 0.25 < types["multi"] / 4000 < 0.4
    letters = Counter(r["answer"] for r in rows)
    assert set(letters.values()) == {1000}  # exactly balanced


def test_answers_follow_the_rule():
    for rows in (synthetic.medmcqa_rows(2000, seed=5), synthetic.arc_rows(500, seed=5)):
        for r in rows:
            assert synthetic.correct_by_rule(r) == r["answer"]  # the option paired with the cue
            assert synthetic.letter_of_cue(r["question"]) == r["answer"]  # and the cue alone fixes the letter
            assert len(set(r["options"])) == 4


def test_instruct_rows_state_the_pairs():
    rows = synthetic.instruct_rows(200, seed=0)
    assert all(tuple(r) == schema.INSTRUCT_COLUMNS for r in rows) and len({r["id"] for r in rows}) == 200
    partners = {p for _, p in synthetic.MEDICAL_PAIRS}
    assert all(any(p.lower() in r["output"].lower() for p in partners) for r in rows)
