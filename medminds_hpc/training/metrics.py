"""Evaluation of four-option predictions: the numbers every stage reports, and the files they go in.

Pure numpy/pandas (no torch), so `medminds report` and tests can import it cheaply. Every stage ends with

    m = evaluate_predictions(ids, gold, scores, subjects=subjects, choice_types=choice_types)
    write_predictions(run_dir / "predictions.parquet", ids, subjects, gold, scores=scores, score_kind="logprob")
    results.write(run, m, train_seconds=..., eval_seconds=...)      # metrics.json (medminds_hpc/results.py)

Conventions: options are 0-3 (A-D); gold = -1 marks an unlabelled row (MedMCQA test), which is predicted and
written but excluded from every accuracy figure (counted as n_unlabelled). The prediction is the argmax of the four
scores, so `probs` may be probabilities or logits. predictions.parquet keeps the raw scores (score_a..score_d and
their `score_kind`: "logprob", log P(" A".." D") over the whole vocabulary, or "logit", a classifier head's output)
beside prob_a..prob_d, their softmax over the four options: the renormalised probabilities alone lose how much
probability a model put on the letters at all.

    python -c "from medminds_hpc.training.metrics import wilson_interval; print(wilson_interval(50, 100))"
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medminds_hpc import fileio

LETTERS = ("A", "B", "C", "D")
NUM_CHOICES = 4
UNLABELLED = -1
Z_95 = 1.959963984540054  # two-sided 95% normal quantile
PREDICTIONS_FILE = "predictions.parquet"
PROB_COLUMNS = ("prob_a", "prob_b", "prob_c", "prob_d")
SCORE_COLUMNS = ("score_a", "score_b", "score_c", "score_d")
SCORE_KINDS = ("logprob", "logit")


def wilson_interval(correct: int, n: int, z: float = Z_95) -> list[float] | None:
    """95% Wilson score interval for a proportion: unlike the normal interval it stays inside [0, 1] and is
    sensible for the small per-subject counts (Psychiatry has a handful of validation questions). None when n = 0."""
    if n <= 0:
        return None
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _as_labels(gold: Any, n: int) -> np.ndarray:
    """Gold answers as int64 0-3 or -1: accepts ints, letters "A"-"D", and None/NaN/NA/"" for unlabelled."""
    arr = np.asarray(gold)
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":  # e.g. a pandas column with missing labels
        if not np.all(np.isnan(arr) | (arr == np.round(arr))):
            raise ValueError("gold answers must be whole numbers 0-3 (A-D) or -1 (unlabelled)")
        arr = np.where(np.isnan(arr), UNLABELLED, arr).astype(np.int64)
    else:
        mapping = {letter: i for i, letter in enumerate(LETTERS)}
        out = []
        for g in arr.ravel().tolist():
            if g is None or type(g).__name__ == "NAType" or (isinstance(g, float) and math.isnan(g)) or g == "":
                out.append(UNLABELLED)
            elif isinstance(g, str) and g.strip().upper() in mapping:
                out.append(mapping[g.strip().upper()])
            else:
                try:
                    out.append(int(g))
                except (TypeError, ValueError):
                    raise ValueError(f"gold answer {g!r} is not 0-3, A-D or -1") from None
        arr = np.asarray(out, dtype=np.int64).reshape(arr.shape)
    if arr.shape != (n,):
        raise ValueError(f"gold has shape {arr.shape}, expected ({n},) (one answer per row)")
    bad = sorted(set(arr.tolist()) - {UNLABELLED, 0, 1, 2, 3})
    if bad:
        raise ValueError(f"gold answers must be 0-3 (A-D) or -1 (unlabelled); got {bad[:5]}")
    return arr


def _as_probs(probs: Any, what: str = "probs") -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != NUM_CHOICES:
        raise ValueError(f"{what} has shape {arr.shape}, expected (N, {NUM_CHOICES}): one score per option A-D")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{what} has {bad} row(s) with NaN/inf scores: the model diverged or a batch was empty")
    return arr


def _groups(keys: Sequence[Any] | None, n: int, labelled: np.ndarray, correct: np.ndarray, what: str) -> dict[str, dict]:
    if keys is None:
        return {}
    keys = ["unknown" if k is None or (isinstance(k, float) and math.isnan(k)) else str(k) for k in list(keys)]
    if len(keys) != n:
        raise ValueError(f"{what} has {len(keys)} entries for {n} rows")
    out: dict[str, dict] = {}
    key_arr = np.asarray(keys, dtype=object)[labelled]
    corr = correct[labelled]
    for key in sorted(set(key_arr.tolist())):
        mask = key_arr == key
        k, c = int(mask.sum()), int(corr[mask].sum())
        out[key] = {"n": k, "correct": c, "accuracy": c / k, "accuracy_ci95": wilson_interval(c, k)}
    return out


def _shares(labels: np.ndarray) -> dict[str, float]:
    n = len(labels)
    return {letter: (float((labels == i).sum()) / n if n else 0.0) for i, letter in enumerate(LETTERS)}


def macro_f1(confusion: np.ndarray) -> float:
    """Mean per-class F1 over the classes that occur in gold or predictions (sklearn's default label set), so an
    always-"A" model scores low even though its accuracy is ~29%."""
    tp = np.diag(confusion).astype(float)
    gold_n = confusion.sum(axis=1).astype(float)
    pred_n = confusion.sum(axis=0).astype(float)
    present = (gold_n + pred_n) > 0
    if not present.any():
        return 0.0
    denom = gold_n + pred_n
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


def evaluate_predictions(
    ids: Sequence[Any],
    gold: Any,
    probs: Any,
    subjects: Sequence[Any] | None = None,
    choice_types: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Accuracy (with Wilson 95% CI), macro-F1, 4x4 confusion matrix (rows gold A-D, columns predicted), per-subject
    and per-choice-type accuracy, and predicted/gold letter shares. JSON-ready (plain Python types).

    Unlabelled rows (gold -1) count in n_total, n_unlabelled and predicted_share only. With no labelled row at all,
    accuracy, accuracy_ci95 and macro_f1 are None.
    """
    p = _as_probs(probs)
    n_total = p.shape[0]
    if len(ids) != n_total:
        raise ValueError(f"{len(ids)} ids for {n_total} rows of probs")
    g = _as_labels(gold, n_total)
    pred = p.argmax(axis=1)
    labelled = g != UNLABELLED
    n = int(labelled.sum())
    correct = (pred == g) & labelled
    n_correct = int(correct.sum())
    confusion = np.zeros((NUM_CHOICES, NUM_CHOICES), dtype=np.int64)
    np.add.at(confusion, (g[labelled], pred[labelled]), 1)
    return {
        "accuracy": n_correct / n if n else None,
        "accuracy_ci95": wilson_interval(n_correct, n),
        "n": n,
        "n_correct": n_correct,
        "n_total": int(n_total),
        "n_unlabelled": int(n_total - n),
        "macro_f1": macro_f1(confusion) if n else None,
        "confusion_matrix": confusion.tolist(),
        "per_subject": _groups(subjects, n_total, labelled, correct, "subjects"),
        "per_choice_type": _groups(choice_types, n_total, labelled, correct, "choice_types"),
        "predicted_share": _shares(pred),
        "gold_share": _shares(g[labelled]),
    }


def softmax(scores: Any) -> np.ndarray:
    """Scores (N, 4) -> probabilities over the four options (letter log-probabilities renormalised, or a head's
    logits through softmax)."""
    z = np.asarray(scores, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _probs_and_scores(probs: Any, scores: Any, score_kind: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(probs, raw scores or None), checked: with raw scores, probs are their softmax (computed when not given)."""
    if scores is None:
        if probs is None:
            raise ValueError("pass the raw scores (scores=..., score_kind=...) or the probabilities (probs=...)")
        if score_kind is not None:
            raise ValueError(f"score_kind={score_kind!r} without scores: pass the raw scores too")
        return _as_probs(probs), None
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"score_kind={score_kind!r}; valid: {', '.join(SCORE_KINDS)} (letter log-probabilities or head logits)")
    raw = _as_probs(scores, "scores")
    derived = softmax(raw)
    if probs is not None and not np.allclose(_as_probs(probs), derived, rtol=0, atol=1e-6):
        raise ValueError("probs are not the softmax of scores: pass the raw scores alone (probs are derived from them)")
    return derived, raw


def predictions_frame(
    ids: Sequence[Any],
    subjects: Sequence[Any] | None,
    gold: Any,
    probs: Any = None,
    choice_types: Sequence[Any] | None = None,
    *,
    scores: Any = None,
    score_kind: str | None = None,
) -> Any:
    """The predictions table: id, subject, gold (-1 unlabelled), predicted, prob_a..prob_d [, choice_type]
    [, score_a..score_d, score_kind]. With `scores` (raw, of `score_kind`), prob_a..d are their softmax."""
    import pandas as pd

    p, raw = _probs_and_scores(probs, scores, score_kind)
    n = p.shape[0]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} rows of probs")
    if subjects is not None and len(subjects) != n:
        raise ValueError(f"{len(subjects)} subjects for {n} rows of probs")
    frame = pd.DataFrame(
        {
            "id": pd.Series([str(i) for i in ids], dtype="string"),
            "subject": pd.Series([None if s is None else str(s) for s in subjects] if subjects is not None else [None] * n, dtype="string"),
            "gold": _as_labels(gold, n),
            "predicted": p.argmax(axis=1).astype(np.int64),
            **{column: p[:, i] for i, column in enumerate(PROB_COLUMNS)},
        }
    )
    if choice_types is not None:
        if len(choice_types) != n:
            raise ValueError(f"{len(choice_types)} choice_types for {n} rows of probs")
        frame["choice_type"] = pd.Series([None if c is None else str(c) for c in choice_types], dtype="string")
    if raw is not None:
        for i, column in enumerate(SCORE_COLUMNS):
            frame[column] = raw[:, i]
        frame["score_kind"] = pd.Series([score_kind] * n, dtype="string")
    return frame


def write_predictions(
    path: str | os.PathLike,
    ids: Sequence[Any],
    subjects: Sequence[Any] | None,
    gold: Any,
    probs: Any = None,
    *,
    choice_types: Sequence[Any] | None = None,
    scores: Any = None,
    score_kind: str | None = None,
) -> Path:
    """Write predictions.parquet atomically (a reader sees the old file or the new one). `path` may be the file or
    the run directory. Pass the raw `scores` and their `score_kind` (the evidence; probs are derived), or `probs`
    alone. Returns the file's path."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".parquet":
        path = path / PREDICTIONS_FILE
    frame = predictions_frame(ids, subjects, gold, probs, choice_types, scores=scores, score_kind=score_kind)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    fileio.atomic_write_bytes(path, buf.getvalue())
    return path


def read_predictions(path: str | os.PathLike) -> Any:
    """predictions.parquet (or a run directory holding one) -> DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    return pd.read_parquet(path)
