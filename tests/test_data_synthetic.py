"""Synthetic data: deterministic, realistic shape (21 unbalanced subjects, both choice types), balanced letters,
and every answer recoverable from the text by the simple rule a tiny model learns."""

from __future__ import annotations

from collections import Counter

import pytest

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


# two kinds that only a combination of two experts solves ----------------------------------------------------
def test_two_kinds_follow_the_rule_on_disjoint_cue_tables():
    cues = {kind: {cue for cue, _ in pairs} for kind, pairs in synthetic.KINDS.items()}
    assert len(cues[1]) == len(cues[2]) == 48 and not cues[1] & cues[2]
    every_cue = cues[1] | cues[2]
    for kind in (1, 2):
        for r in synthetic.two_kind_rows(400, kind, seed=1):
            assert synthetic.kind_of(r) == kind and tuple(r) == schema.MCQ_COLUMNS and len(set(r["options"])) == 4
            assert synthetic.two_kind_answer(r) == r["answer"]  # the cue's letter, where its partner sits
            assert [c for c in every_cue if c.lower() in r["question"].lower()] != []
            assert {c for c in every_cue if c.lower() in r["question"].lower()} <= cues[kind]  # no cue of the other kind


def test_two_kinds_look_like_arc_and_medmcqa():
    science, medical = synthetic.two_kind_rows(300, 1), synthetic.two_kind_rows(300, 2)
    assert {r["subject"] for r in science} == {"arc"} and {r["choice_type"] for r in science} == {"single"}
    assert {r["subject"] for r in medical} <= {s for s, _ in synthetic.SUBJECTS} and len({r["subject"] for r in medical}) > 5
    assert {r["choice_type"] for r in medical} == {"single", "multi"}
    stems = {kind: {r["question"].replace(cue, "").replace(cue[:1].upper() + cue[1:], "") for r in rows
                    for cue, _ in synthetic.KINDS[kind] if cue.lower() in r["question"].lower()}
             for kind, rows in ((1, science), (2, medical))}
    assert not stems[1] & stems[2]  # each kind has its own templates


def test_two_kinds_are_deterministic_balanced_and_unique():
    assert synthetic.two_kind_rows(40, 2, seed=3) == synthetic.two_kind_rows(40, 2, seed=3)
    assert synthetic.two_kind_rows(40, 2, seed=3) != synthetic.two_kind_rows(40, 2, seed=4)
    assert synthetic.two_kind_rows(40, 2, seed=3, split="train") != synthetic.two_kind_rows(40, 2, seed=3, split="validation")
    for kind in (1, 2):
        assert set(Counter(r["answer"] for r in synthetic.two_kind_rows(400, kind)).values()) == {100}
    rows = synthetic.mixed_rows(401, seed=2, split="validation")
    assert rows == synthetic.mixed_rows(401, seed=2, split="validation")
    assert Counter(synthetic.kind_of(r) for r in rows) == {1: 201, 2: 200}
    assert len({r["id"] for r in rows}) == 401
    assert max(Counter(r["answer"] for r in rows).values()) - min(Counter(r["answer"] for r in rows).values()) <= 2
    assert [synthetic.kind_of(r) for r in rows[:20]] not in ([1] * 20, [2] * 20)  # shuffled, not in blocks
    train_ids = {r["id"] for r in synthetic.mixed_rows(401, seed=2, split="train")}
    assert not train_ids & {r["id"] for r in rows}


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"kind=3: expected 1 \(ARC-style science\) or 2"):
        synthetic.two_kind_rows(4, 3)


def test_fewer_cues_use_the_first_pairs_of_each_table():
    rows = synthetic.mixed_rows(600, seed=1, cues=8)
    for kind in (1, 2):
        kind_rows = [r for r in rows if synthetic.kind_of(r) == kind]
        used = {c for c, _ in synthetic.KINDS[kind] for r in kind_rows if c.lower() in r["question"].lower()}
        assert used == {c for c, _ in synthetic.KINDS[kind][:8]}
        assert all(synthetic.two_kind_answer(r) == r["answer"] for r in kind_rows)
        partners = {p for _, p in synthetic.KINDS[kind][:8]}
        assert all(set(r["options"]) <= partners for r in kind_rows)  # distractors from the same 8 pairs
    assert synthetic.two_kind_rows(60, 2, seed=1) == synthetic.two_kind_rows(60, 2, seed=1, cues=48)


@pytest.mark.parametrize("cues", [0, 6, 52])
def test_a_cue_count_that_is_not_a_multiple_of_four_up_to_48_is_refused(cues):
    with pytest.raises(ValueError, match=rf"cues={cues}: expected a multiple of 4 from 4 to 48"):
        synthetic.two_kind_rows(4, 1, cues=cues)


def test_pretraining_rows_share_no_word_of_a_cue_with_either_kind():
    kinds = {w for kind in (1, 2) for cue, _ in synthetic.KINDS[kind] for w in cue.lower().split()}
    pretraining = {w for cue, _ in synthetic.PRETRAINING_PAIRS for w in cue.lower().split()}
    assert len(synthetic.PRETRAINING_PAIRS) == 48 and not kinds & pretraining
    rows = synthetic.pretraining_rows(400, seed=0)
    assert rows == synthetic.pretraining_rows(400, seed=0) and len({r["id"] for r in rows}) == 400
    assert set(Counter(r["answer"] for r in rows).values()) == {100}
    for r in rows:
        k = next(k for k, (cue, _) in enumerate(synthetic.PRETRAINING_PAIRS) if cue in r["question"])
        assert r["options"][r["answer"]] == synthetic.PRETRAINING_PAIRS[k][1] and r["answer"] == k % 4
    templates = {t.split("{")[0] for t in synthetic.PRETRAINING_TEMPLATES}
    assert len({next(t for t in templates if r["question"].startswith(t)) for r in rows}) >= 5  # both kinds' templates
