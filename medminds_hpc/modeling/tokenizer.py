"""Tokenizers for the tiny test models: the real Mistral tokenizer when one is configured, else a small byte-level
BPE trained in milliseconds on a fixed built-in corpus, so tests and laptops run with no network.

Which one a tiny model uses: the `tokenizer=` argument, else $MEDMINDS_TOKENIZER (a directory such as
../shared/data/tokenizers/mistral-7b-v0.1), else the built-in BPE. `tokenizer="builtin"` forces the built-in one.

Padding: Mistral ships no pad token. `ensure_pad_token` sets pad = unk (id 0), the Mistral convention: <unk> never
occurs in encoded text, so padded positions are exactly the masked ones, and </s> stays a real token the model
learns to emit (padding with eos would mask it out of the SFT loss). Padding side stays as the tokenizer says
(right for Mistral); code that reads "the last token" must use the attention mask, not position -1.

    python -c "from medminds_hpc.modeling.tokenizer import build_builtin_tokenizer as b; t=b(); print(len(t), t(' A B').input_ids)"
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from medminds_hpc.errors import UserError

BUILTIN = "builtin"
TOKENIZER_ENV = "MEDMINDS_TOKENIZER"
BUILTIN_VERSION = 1
BUILTIN_VOCAB_SIZE = 1024
# Ids match Mistral's for <unk>, <s>, </s>; the built-in tokenizer adds its own <pad> (3).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
LETTERS = (" A", " B", " C", " D")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")

_SENTENCES = (
    "A 45-year-old man presents with chest pain radiating to the left arm and sweating.",
    "Which of the following is the most likely diagnosis?",
    "Which of the following drugs is contraindicated in pregnancy?",
    "The most common site of carcinoma of the stomach is the antrum.",
    "Deficiency of vitamin B12 causes megaloblastic anaemia and peripheral neuropathy.",
    "Insulin is secreted by the beta cells of the islets of Langerhans in the pancreas.",
    "The treatment of choice for anaphylaxis is intramuscular adrenaline.",
    "A child with fever, cough and a rash on the face was brought to the paediatric clinic.",
    "The nerve supply of the diaphragm is the phrenic nerve, from C3, C4 and C5.",
    "Aspirin irreversibly inhibits cyclooxygenase and reduces platelet aggregation.",
    "Dental caries is caused mainly by Streptococcus mutans; fluoride prevents it.",
    "Tuberculosis is diagnosed by sputum microscopy, culture and chest X-ray.",
    "The kidney regulates blood pressure through the renin angiotensin aldosterone system.",
    "Hypertension, diabetes and smoking are risk factors for myocardial infarction.",
    "Schizophrenia is treated with antipsychotic drugs such as haloperidol.",
    "The femoral artery is palpated at the mid-inguinal point below the ligament.",
    "Blood glucose of 250 mg/dL after a meal suggests diabetes mellitus.",
    "Answer the question truthfully, you are a medical professional.",
    "Read the question and the options, then answer with one letter.",
    "None of the above. All of the above. Both A and B. Neither C nor D.",
)
_OPTIONS = (
    ("Myocardial infarction", "Pneumonia", "Pulmonary embolism", "Aortic dissection"),
    ("Warfarin", "Heparin", "Insulin", "Methyldopa"),
    ("Antrum", "Fundus", "Cardia", "Body"),
    ("Haloperidol", "Lithium", "Diazepam", "Fluoxetine"),
    ("Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"),
)


def builtin_corpus() -> str:
    """The fixed training text: medical sentences and MedMCQA-style prompts, so " A".." D", "Question", "Answer"
    and common medical words become single tokens. Changing it changes every built-in tokenizer: bump BUILTIN_VERSION."""
    lines = list(_SENTENCES)
    letters = "ABCD"
    for i, sentence in enumerate(_SENTENCES):
        opts = _OPTIONS[i % len(_OPTIONS)]
        body = " ".join(f"{letters[j]}. {opts[j]}" for j in range(4))
        for j in range(4):
            lines.append(f"Question: {sentence} Options: {body} Answer: {letters[(i + j) % 4]}")
            lines.append(f"The answer is {letters[(i + j) % 4]}, option {letters[j]} is wrong: {opts[j]}.")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 100 1000 % mg ml kg mmHg ( ) [ ] : ; , . ? ! - / ' \"")
    return "\n".join(lines) + "\n"


def builtin_fingerprint() -> str:
    h = hashlib.sha256()
    h.update(f"builtin-bpe v{BUILTIN_VERSION} vocab={BUILTIN_VOCAB_SIZE} specials={SPECIAL_TOKENS}\n".encode())
    h.update(builtin_corpus().encode())
    return h.hexdigest()


def build_builtin_tokenizer() -> Any:
    """Train the byte-level BPE (deterministic) and wrap it as a transformers tokenizer that behaves like
    Mistral's: <s> prepended, no </s> appended, " A".." D" single tokens; plus a <pad> token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BUILTIN_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_corpus().splitlines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    check_letter_tokens(wrapped)
    return wrapped


def check_letter_tokens(tokenizer: Any) -> list[int]:
    """The next-word baseline and letter-aware heads need " A".." D" to be one token each; return their ids."""
    ids = []
    for letter in LETTERS:
        enc = tokenizer.encode(letter, add_special_tokens=False)
        if len(enc) != 1:
            raise RuntimeError(f"tokenizer splits {letter!r} into {len(enc)} tokens {enc}; letter scoring needs one token")
        ids.append(enc[0])
    return ids


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token pad = unk (the Mistral convention; see the module docstring)."""
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise UserError("the tokenizer has neither a pad, an unk nor an eos token: cannot pad batches")
    return tokenizer


def is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def tokenizer_source(tokenizer: str | os.PathLike | None = None) -> str | Path:
    """Where a tiny model's tokenizer comes from: the argument, else $MEDMINDS_TOKENIZER, else BUILTIN.
    A path that is not a tokenizer directory is an error (not a silent fallback to a different vocabulary)."""
    origin = "tokenizer="
    if tokenizer is None:
        tokenizer, origin = os.environ.get(TOKENIZER_ENV) or None, f"${TOKENIZER_ENV}="
    if tokenizer is None or str(tokenizer) == BUILTIN:
        return BUILTIN
    path = Path(tokenizer).expanduser().absolute()
    if not is_tokenizer_dir(path):
        raise UserError(
            f"{origin}{tokenizer}: not a tokenizer directory (expected tokenizer.json or tokenizer.model in it). "
            f"Point it at e.g. ../shared/data/tokenizers/mistral-7b-v0.1, or use {BUILTIN!r} / unset {TOKENIZER_ENV} "
            "for the built-in tokenizer"
        )
    return path


def source_fingerprint(source: str | Path) -> str:
    """A hash of what determines the vocabulary: the built-in recipe, or the bytes of the tokenizer files."""
    if source == BUILTIN:
        return "builtin:" + builtin_fingerprint()
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = Path(source) / name
        if f.exists():
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return "files:" + h.hexdigest()


def load_tokenizer_from(source: str | Path) -> Any:
    """A tokenizer from BUILTIN or a local directory, never the Hub, with a pad token."""
    if source == BUILTIN:
        return ensure_pad_token(build_builtin_tokenizer())
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {source}: {e}") from None
    return ensure_pad_token(tok)
