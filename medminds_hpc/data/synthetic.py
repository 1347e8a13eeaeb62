"""Seeded synthetic data in the canonical schemas, whose answers a tiny model can learn (offline demos and tests).

The rule: every question names a CUE (a finding, a disease) and the correct option is the cue's PARTNER from a
fixed table (polyuria -> Diabetes mellitus, gout -> Allopurinol, ...); the three distractors are partners of other
cues. The cue also fixes the letter: cue number k in the table always sits at letter k % 4 (6 cues per letter), so
the answer is learnable from the question alone by attending from the last token to the cue - a 2-layer, 64-wide
transformer reaches ~98% on held-out rows in ~100 steps (batch 32) - while a reader who knows the pairs also solves
it from the options. Letters are balanced exactly (each within one row of 25%), subjects are the 21 MedMCQA subjects
with MedMCQA's imbalance (Dental ~1/3, Psychiatry well under 1%), choice types ~68% single / 32% multi.

ARC-style rows use the same rule on a science table (subject "arc"); instruct rows state the medical pairs as
question and answer, so a "domain expert" trained on them knows the facts that the MCQ rows ask about.

    from medminds_hpc.data.synthetic import medmcqa_rows
    rows = medmcqa_rows(2000, seed=0, split="train")
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from medminds_hpc.data.schema import NUM_OPTIONS

GENERATOR_VERSION = "1"

# (cue in the question, the correct option): the whole "knowledge" the synthetic data teaches
MEDICAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("polyuria", "Diabetes mellitus"), ("wheezing", "Bronchial asthma"), ("jaundice", "Hepatitis"),
    ("goitre", "Iodine deficiency"), ("hemarthrosis", "Hemophilia"), ("night blindness", "Vitamin A deficiency"),
    ("bleeding gums", "Vitamin C deficiency"), ("bowed legs", "Vitamin D deficiency"), ("tetany", "Hypocalcemia"),
    ("dental caries", "Streptococcus mutans"), ("gingivitis", "Dental plaque"), ("cyclic fever", "Plasmodium"),
    ("hemoptysis", "Mycobacterium tuberculosis"), ("chancre", "Treponema pallidum"), ("anaphylaxis", "Adrenaline"),
    ("raised intraocular pressure", "Timolol"), ("hypertension", "Amlodipine"), ("absence seizures", "Ethosuximide"),
    ("depression", "Fluoxetine"), ("gout", "Allopurinol"), ("lens opacity", "Cataract"),
    ("ear discharge", "Otitis media"), ("bone pain after trauma", "Fracture"), ("silvery scales", "Psoriasis"),
)
SCIENCE_PAIRS: tuple[tuple[str, str], ...] = (
    ("ice is heated", "It melts."), ("a magnet nears an iron nail", "The nail is attracted."),
    ("plants get sunlight", "They make food by photosynthesis."), ("water is boiled", "It evaporates."),
    ("a ball is dropped", "Gravity pulls it down."), ("the Earth rotates", "Day and night occur."),
    ("a circuit is broken", "The bulb goes out."), ("seeds get water", "They germinate."),
    ("the Moon orbits the Earth", "Its phases change."), ("a rock weathers", "It breaks into soil."),
    ("salt dissolves in water", "A solution forms."), ("a frog develops", "A tadpole becomes an adult."),
)
# the 21 MedMCQA subjects with weights shaped like the real distribution (Dental ~32%, Psychiatry < 1%)
SUBJECTS: tuple[tuple[str, int], ...] = (
    ("Dental", 320), ("Surgery", 90), ("Pathology", 80), ("Pharmacology", 66), ("Medicine", 60), ("Pediatrics", 52),
    ("Gynaecology & Obstetrics", 50), ("Anatomy", 48), ("Physiology", 40), ("Biochemistry", 35),
    ("Social & Preventive Medicine", 32), ("Microbiology", 32), ("Ophthalmology", 17), ("Forensic Medicine", 14),
    ("Radiology", 14), ("ENT", 11), ("Anaesthesia", 8), ("Orthopaedics", 6), ("Skin", 5), ("Psychiatry", 4), ("Unknown", 2),
)
MULTI_SHARE = 0.32
SINGLE_TEMPLATES: tuple[str, ...] = (
    "A patient presents with {cue}. Which of the following is most likely associated?",
    "Which of the following is characteristically linked to {cue}?",
    "{Cue} is most commonly related to:",
)
MULTI_TEMPLATES: tuple[str, ...] = (
    "All of the following are unrelated to {cue} except:",
    "Which of the following statements about {cue} is true?",
)
ARC_TEMPLATES: tuple[str, ...] = ("What most likely happens when {cue}?", "A student observes that {cue}. Which result is expected?")
INSTRUCT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("What is most commonly associated with {cue}?", "{Partner} is the classic association of {cue}."),
    ("A patient has {cue}. What should be considered?", "With {cue}, think of {partner}."),
)
INSTRUCTION = "Answer the question truthfully, you are a medical professional."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _balanced_answers(n: int, rng: random.Random) -> list[int]:
    answers = [i % NUM_OPTIONS for i in range(n)]
    rng.shuffle(answers)
    return answers


def _mcq(rng: random.Random, pairs: tuple[tuple[str, str], ...], answer: int, template: str) -> tuple[str, list[str]]:
    k = rng.choice([j for j in range(len(pairs)) if j % NUM_OPTIONS == answer])
    cue, partner = pairs[k]
    distractors = [pairs[j][1] for j in rng.sample([j for j in range(len(pairs)) if j != k], NUM_OPTIONS - 1)]
    options = distractors[:answer] + [partner] + distractors[answer:]
    return template.format(cue=cue, Cue=_cap(cue)), options


def medmcqa_rows(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """`n` canonical MedMCQA-schema rows; the same (n, seed, split) always gives the same rows."""
    rng = random.Random(f"medmcqa:{seed}:{split}")
    names = [s for s, _ in SUBJECTS]
    weights = [w for _, w in SUBJECTS]
    rows = []
    for i, answer in enumerate(_balanced_answers(n, rng)):
        multi = rng.random() < MULTI_SHARE
        template = rng.choice(MULTI_TEMPLATES if multi else SINGLE_TEMPLATES)
        question, options = _mcq(rng, MEDICAL_PAIRS, answer, template)
        rows.append({"id": f"syn-{split}-{i:06d}", "question": question, "options": options, "answer": answer,
                     "subject": rng.choices(names, weights)[0], "topic": "",
                     "choice_type": "multi" if multi else "single"})
    return rows


def arc_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` ARC-style canonical rows (subject "arc") under the same rule, on science pairs."""
    rng = random.Random(f"arc:{seed}")
    rows = []
    for i, answer in enumerate(_balanced_answers(n, rng)):
        question, options = _mcq(rng, SCIENCE_PAIRS, answer, rng.choice(ARC_TEMPLATES))
        rows.append({"id": f"syn-arc-{i:06d}", "question": question, "options": options, "answer": answer,
                     "subject": "arc", "topic": "", "choice_type": "single"})
    return rows


def instruct_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` canonical instruct rows stating the medical pairs (the domain knowledge behind the MCQ rows)."""
    rng = random.Random(f"instruct:{seed}")
    rows = []
    for i in range(n):
        cue, partner = MEDICAL_PAIRS[rng.randrange(len(MEDICAL_PAIRS))]
        q, a = rng.choice(INSTRUCT_TEMPLATES)
        fill = {"cue": cue, "Cue": _cap(cue), "partner": partner, "Partner": _cap(partner)}
        rows.append({"id": f"syn-instruct-{i:06d}", "instruction": INSTRUCTION, "input": q.format(**fill),
                     "output": a.format(**fill), "source": "synthetic"})
    return rows


def fingerprint(n: int, seed: int, kind: str) -> str:
    """Stands in for an input file's sha256 in the data card: changes when the generator or its arguments do."""
    return hashlib.sha256(f"synthetic:{GENERATOR_VERSION}:{kind}:{n}:{seed}".encode()).hexdigest()


def correct_by_rule(row: dict[str, Any]) -> int:
    """The answer recomputed from the text alone (what a model must learn); tests assert it equals row['answer']."""
    pairs = SCIENCE_PAIRS if row["subject"] == "arc" else MEDICAL_PAIRS
    for cue, partner in pairs:
        if cue.lower() in row["question"].lower() and partner in row["options"]:
            return row["options"].index(partner)
    raise ValueError(f"row {row['id']!r} does not follow the synthetic rule")


def letter_of_cue(question: str) -> int:
    """The answer from the question alone (cue k -> letter k % 4): the shortcut a tiny model learns."""
    for pairs in (MEDICAL_PAIRS, SCIENCE_PAIRS):
        for k, (cue, _partner) in enumerate(pairs):
            if cue.lower() in question.lower():
                return k % NUM_OPTIONS
    raise ValueError(f"no synthetic cue in {question!r}")


# two kinds of questions that only a combination of two experts solves ------------------------------------------
# Kind 1 (ARC-style, science) and kind 2 (MedMCQA-style, medical) use disjoint tables of 48 cues each under the
# same rule (cue k -> letter k % 4, 12 cues per letter). An expert trained on one kind knows nothing of the other's
# cues, so each expert alone scores ~100% on its kind, ~25% on the other and ~60% on a 50/50 mix; a combiner that
# reads both experts (and sees which kind a question is) can reach ~100%. See DESIGN.md section 6.
KIND1_PAIRS: tuple[tuple[str, str], ...] = SCIENCE_PAIRS + (
    ("iron is left in damp air", "It rusts."), ("a candle burns", "Wax turns into gas and light."),
    ("a rubber band is stretched", "It stores elastic energy."), ("two hands are rubbed together", "They warm up by friction."),
    ("light hits a mirror", "It is reflected."), ("a straw stands in a glass of water", "It looks bent by refraction."),
    ("a bell is struck", "It vibrates and makes sound."), ("a balloon is rubbed on hair", "It gains a static charge."),
    ("warm air rises", "Cool air sinks to replace it."), ("clouds cool down", "Rain falls."),
    ("a volcano erupts", "Lava flows out."), ("tectonic plates collide", "Mountains form."),
    ("a caterpillar pupates", "A butterfly emerges."), ("bees visit flowers", "Pollen is carried between plants."),
    ("a plant is kept in the dark", "It grows pale and weak."), ("a lake freezes", "Ice floats on top."),
    ("sugar is stirred into tea", "It dissolves."), ("baking soda meets vinegar", "Carbon dioxide bubbles form."),
    ("a battery powers a motor", "Chemical energy becomes motion."), ("wind turns a turbine", "Electricity is generated."),
    ("a prism splits white light", "A band of colours appears."), ("the Sun heats the ocean", "Water vapour rises."),
    ("a seed is planted too deep", "It may not sprout."), ("a river reaches the sea", "It deposits sediment."),
    ("glaciers move downhill", "Valleys are carved."), ("a compass is held level", "Its needle points north."),
    ("a pendulum is released", "It swings back and forth."), ("a copper wire carries current", "It conducts electricity."),
    ("wood is burned", "Ash and smoke remain."), ("a puddle sits in the sun", "It dries up."),
    ("steam touches a cold window", "Droplets condense."), ("a deer loses its habitat", "Its population falls."),
    ("a fossil is found in rock", "The organism lived long ago."), ("a lever lifts a heavy box", "Less force is needed."),
    ("soil is covered with plants", "Erosion slows."), ("the Earth orbits the Sun", "The seasons change."),
)
KIND2_PAIRS: tuple[tuple[str, str], ...] = MEDICAL_PAIRS + (
    ("butterfly rash", "Systemic lupus erythematosus"), ("koplik spots", "Measles"),
    ("strawberry tongue", "Scarlet fever"), ("rice water stools", "Vibrio cholerae"),
    ("whooping cough", "Bordetella pertussis"), ("moon facies", "Cushing syndrome"),
    ("exophthalmos", "Graves disease"), ("resting tremor", "Parkinson disease"),
    ("kussmaul breathing", "Diabetic ketoacidosis"), ("pin point pupils", "Opioid poisoning"),
    ("clubbing of fingers", "Bronchiectasis"), ("painless hematuria", "Bladder carcinoma"),
    ("hemolysis after fava beans", "G6PD deficiency"), ("spoon shaped nails", "Iron deficiency anaemia"),
    ("macroglossia", "Hypothyroidism"), ("trismus", "Tetanus"),
    ("bitemporal hemianopia", "Pituitary adenoma"), ("rose spots", "Typhoid fever"),
    ("erythema migrans", "Lyme disease"), ("honey coloured crusts", "Impetigo"),
    ("oral thrush", "Candida albicans"), ("epistaxis in a child", "Little's area"),
    ("sickle shaped red cells", "Sickle cell anaemia"), ("heartburn", "Gastro-oesophageal reflux"),
)
# the cue always in lower case: "Gout" and " gout" share no token, which would double what an expert must learn
KIND2_SINGLE_TEMPLATES: tuple[str, ...] = tuple(t for t in SINGLE_TEMPLATES if "{Cue}" not in t)
KINDS: dict[int, tuple[tuple[str, str], ...]] = {1: KIND1_PAIRS, 2: KIND2_PAIRS}


def _kind_row(rng: random.Random, kind: int, answer: int, row_id: str, subjects: tuple[list[str], list[int]],
              cues: int = 48) -> dict[str, Any]:
    if kind == 1:
        question, options = _mcq(rng, KIND1_PAIRS[:cues], answer, rng.choice(ARC_TEMPLATES))
        return {"id": row_id, "question": question, "options": options, "answer": answer, "subject": "arc",
                "topic": "", "choice_type": "single"}
    multi = rng.random() < MULTI_SHARE
    question, options = _mcq(rng, KIND2_PAIRS[:cues], answer, rng.choice(MULTI_TEMPLATES if multi else KIND2_SINGLE_TEMPLATES))
    return {"id": row_id, "question": question, "options": options, "answer": answer,
            "subject": rng.choices(*subjects)[0], "topic": "", "choice_type": "multi" if multi else "single"}


def _check_cues(cues: int) -> None:
    if not (NUM_OPTIONS <= cues <= len(KIND1_PAIRS) and cues % NUM_OPTIONS == 0):
        raise ValueError(f"cues={cues!r}: expected a multiple of {NUM_OPTIONS} from {NUM_OPTIONS} to {len(KIND1_PAIRS)} "
                         "(how many pairs of each kind's table the questions use)")


def two_kind_rows(n: int, kind: int, seed: int = 0, split: str = "train", cues: int = 48) -> list[dict[str, Any]]:
    """`n` canonical MCQ rows of one kind (1: ARC-style science, subject "arc"; 2: MedMCQA-style medical), valid as
    MedMCQA and as ARC rows, on the first `cues` pairs of the kind's table (fewer facts for an expert to learn);
    ids "kind<k>-<split>-<seed>-<i>". Same arguments, same rows."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected 1 (ARC-style science) or 2 (MedMCQA-style medical)")
    _check_cues(cues)
    rng = random.Random(f"two-kind:{kind}:{seed}:{split}")
    subjects = ([s for s, _ in SUBJECTS], [w for _, w in SUBJECTS])
    return [_kind_row(rng, kind, answer, f"kind{kind}-{split}-{seed}-{i:06d}", subjects, cues)
            for i, answer in enumerate(_balanced_answers(n, rng))]


def mixed_rows(n: int, seed: int = 0, split: str = "train", cues: int = 48) -> list[dict[str, Any]]:
    """`n` rows, half of each kind (kind 1 gets the odd one out), in a seeded shuffled order."""
    rows = two_kind_rows(n - n // 2, 1, seed, split, cues) + two_kind_rows(n // 2, 2, seed, split, cues)
    random.Random(f"mixed:{seed}:{split}").shuffle(rows)
    return rows


# a third table, invented, that neither kind shares: what a base is pretrained on -------------------------------
# 48 cues "<colour> <place>" -> partners "<name> <thing>", shuffled once: a base that learns them learns to read a
# question's cue and answer with a letter, and nothing of the two kinds' tables.
_PRETRAINING_CUES = [f"{a} {b}" for a in ("amber", "cobalt", "silver", "velvet", "granite", "indigo")
                     for b in ("harbor", "lantern", "meadow", "orchard", "canyon", "glacier", "falcon", "willow")]
_PRETRAINING_PARTNERS = [f"{a} {b}" for a in ("Arden", "Bellamy", "Corwin", "Delphine", "Emrys", "Fenwick")
                         for b in ("protocol", "index", "sequence", "module", "ledger", "pattern", "theorem", "cycle")]
random.Random(123).shuffle(_PRETRAINING_PARTNERS)
PRETRAINING_PAIRS: tuple[tuple[str, str], ...] = tuple(zip(_PRETRAINING_CUES, _PRETRAINING_PARTNERS))
PRETRAINING_TEMPLATES: tuple[str, ...] = ARC_TEMPLATES + KIND2_SINGLE_TEMPLATES + MULTI_TEMPLATES


def pretraining_rows(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """`n` canonical MCQ rows on PRETRAINING_PAIRS in the templates of both kinds (what `tiny-pretrained` learned)."""
    rng = random.Random(f"pretraining:{seed}:{split}")
    rows = []
    for i, answer in enumerate(_balanced_answers(n, rng)):
        question, options = _mcq(rng, PRETRAINING_PAIRS, answer, rng.choice(PRETRAINING_TEMPLATES))
        rows.append({"id": f"pretraining-{split}-{seed}-{i:06d}", "question": question, "options": options,
                     "answer": answer, "subject": "Unknown", "topic": "", "choice_type": "single"})
    return rows


def kind_of(row: dict[str, Any]) -> int:
    """The kind of a `two_kind_rows` row, from its id."""
    return int(str(row["id"]).split("-", 1)[0].removeprefix("kind"))


def two_kind_answer(row: dict[str, Any]) -> int:
    """The answer of a `two_kind_rows` row recomputed from its text: the cue's letter in its kind's table, which is
    also where the cue's partner sits among the options."""
    for k, (cue, partner) in enumerate(KINDS[kind_of(row)]):
        if cue.lower() in row["question"].lower():
            if row["options"].index(partner) != k % NUM_OPTIONS:
                raise ValueError(f"row {row['id']!r}: the partner of {cue!r} is not at letter {k % NUM_OPTIONS}")
            return k % NUM_OPTIONS
    raise ValueError(f"row {row['id']!r} holds no cue of kind {kind_of(row)}")
