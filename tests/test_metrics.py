"""Evaluation metrics against hand-computed numbers, and the predictions file."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from medminds_hpc.training.metrics import (
    PROB_COLUMNS,
    SCORE_COLUMNS,
    evaluate_predictions,
    read_predictions,
    wilson_interval,
    write_predictions,
)


def one_hot(pred: list[int], sharp: float = 0.7) -> np.ndarray:
    """Probabilities whose argmax is `pred`."""
    p = np.full((len(pred), 4), (1 - sharp) / 3)
    p[np.arange(len(pred)), pred] = sharp
    return p


# gold  A B C D A B, predicted A B C A B B: rows 0, 1, 2, 5 correct
GOLD = [0, 1, 2, 3, 0, 1]
PRED = [0, 1, 2, 0, 1, 1]
SUBJECTS = ["Anatomy", "Anatomy", "Dental", "Dental", "Dental", "Anatomy"]
CHOICE_TYPES = ["single", "multi", "single", "single", "multi", "single"]


def small_case() -> dict:
    return evaluate_predictions([f"q{i}" for i in range(6)], GOLD, one_hot(PRED), subjects=SUBJECTS, choice_types=CHOICE_TYPES)


def test_wilson_interval_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 10)  # upper bound z^2 / (n + z^2)
    assert low == 0.0 and high == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None


def test_accuracy_confusion_matrix_and_macro_f1_by_hand():
    m = small_case()
    assert m["n"] == 6 and m["n_correct"] == 4 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["accuracy_ci95"] == pytest.approx(wilson_interval(4, 6))
    # rows gold A-D, columns predicted A-D
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    # F1 per class: A 2*1/(2+2)=0.5, B 2*2/(2+3)=0.8, C 1.0, D 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 1.0 + 0.0) / 4)
    assert m["predicted_share"] == pytest.approx({"A": 2 / 6, "B": 3 / 6, "C": 1 / 6, "D": 0.0})
    assert m["gold_share"] == pytest.approx({"A": 2 / 6, "B": 2 / 6, "C": 1 / 6, "D": 1 / 6})


def test_per_subject_and_per_choice_type():
    m = small_case()
    assert m["per_subject"]["Anatomy"]["n"] == 3 and m["per_subject"]["Anatomy"]["accuracy"] == 1.0
    assert m["per_subject"]["Dental"]["n"] == 3 and m["per_subject"]["Dental"]["accuracy"] == pytest.approx(1 / 3)
    assert m["per_subject"]["Dental"]["accuracy_ci95"] == pytest.approx(wilson_interval(1, 3))
    assert m["per_choice_type"]["single"] == {"n": 4, "correct": 3, "accuracy": 0.75, "accuracy_ci95": wilson_interval(3, 4)}
    assert m["per_choice_type"]["multi"]["accuracy"] == 0.5
    assert evaluate_predictions(["a"], [0], one_hot([0]))["per_subject"] == {}


def test_unlabelled_rows_are_excluded_but_counted():
    labelled = small_case()
    gold = GOLD + [-1, -1, -1]
    pred = PRED + [3, 3, 3]
    m = evaluate_predictions(list(range(9)), gold, one_hot(pred), subjects=SUBJECTS + ["Surgery"] * 3)
    assert m["n"] == 6 and m["n_total"] == 9 and m["n_unlabelled"] == 3
    for key in ("accuracy", "accuracy_ci95", "confusion_matrix", "macro_f1", "gold_share"):
        assert m[key] == labelled[key]
    assert "Surgery" not in m["per_subject"]
    assert m["predicted_share"]["D"] == pytest.approx(3 / 9)  # over every predicted row
    none = evaluate_predictions([1, 2], [-1, -1], one_hot([0, 1]))
    assert none["n"] == 0 and none["accuracy"] is None and none["accuracy_ci95"] is None and none["n_unlabelled"] == 2


def test_always_a_on_the_medmcqa_label_balance_scores_its_share():
    counts = {0: 293, 1: 262, 2: 232, 3: 213}  # train balance A 29.3%, B 26.2%, C 23.2%, D 21.3%
    gold = np.concatenate([np.full(c, k) for k, c in counts.items()])
    rng = np.random.default_rng(0)
    rng.shuffle(gold)
    probs = np.tile([0.4, 0.2, 0.2, 0.2], (len(gold), 1))
    m = evaluate_predictions(range(len(gold)), gold, probs)
    assert m["accuracy"] == pytest.approx(0.293)
    assert m["predicted_share"] == {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}
    assert m["macro_f1"] == pytest.approx((2 * 293 / (293 + 1000)) / 4)  # only A has a non-zero F1
    assert m["confusion_matrix"] == [[293, 0, 0, 0], [262, 0, 0, 0], [232, 0, 0, 0], [213, 0, 0, 0]]


def test_gold_as_letters_logits_and_nullable_columns():
    logits = np.log(one_hot(PRED)) * 3.0  # argmax is what counts, not normalisation
    by_letter = evaluate_predictions(range(6), ["A", "B", "C", "D", "a", "B"], logits)
    assert by_letter["accuracy"] == small_case()["accuracy"]
    nullable = pd.Series([0, 1, None], dtype="Int64")
    m = evaluate_predictions(range(3), nullable, one_hot([0, 0, 0]))
    assert m["n"] == 2 and m["n_unlabelled"] == 1 and m["accuracy"] == 0.5
    m = evaluate_predictions(range(2), np.array([1.0, np.nan]), one_hot([1, 0]))
    assert m["n"] == 1 and m["accuracy"] == 1.0


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"expected \(N, 4\)"):
        evaluate_predictions([1, 2], [0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_predictions([1], [0], [[np.nan, 0, 0, 0]])
    with pytest.raises(ValueError, match="0-3"):
        evaluate_predictions([1], [4], one_hot([0]))
    with pytest.raises(ValueError, match="ids"):
        evaluate_predictions([1, 2, 3], [0, 1], one_hot([0, 1]))
    with pytest.raises(ValueError, match="subjects"):
        evaluate_predictions([1, 2], [0, 1], one_hot([0, 1]), subjects=["x"])


def test_predictions_parquet_round_trips_atomically(tmp_path):
    probs = one_hot(PRED)
    path = write_predictions(tmp_path / "run" / "predictions.parquet", ["q0", "q1", "q2", "q3", "q4", 5], SUBJECTS, GOLD, probs)
    df = read_predictions(path)
    assert list(df.columns) == ["id", "subject", "gold", "predicted", "prob_a", "prob_b", "prob_c", "prob_d"]
    assert df["id"].tolist() == ["q0", "q1", "q2", "q3", "q4", "5"]
    assert df["subject"].tolist() == SUBJECTS and df["gold"].tolist() == GOLD and df["predicted"].tolist() == PRED
    np.testing.assert_allclose(df[["prob_a", "prob_b", "prob_c", "prob_d"]].to_numpy(), probs)
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.parquet"]  # no temp file left behind
    # the file reproduces the metrics
    again = evaluate_predictions(df["id"], df["gold"], df[["prob_a", "prob_b", "prob_c", "prob_d"]], subjects=df["subject"])
    assert again == evaluate_predictions(range(6), GOLD, probs, subjects=SUBJECTS)
    # a run directory works as the destination; unlabelled gold and missing subjects survive
    run = tmp_path / "run2"
    run.mkdir()
    path2 = write_predictions(run, ["x", "y"], None, [-1, 2], one_hot([1, 2]), choice_types=["single", "multi"])
    df2 = read_predictions(run)
    assert path2 == run / "predictions.parquet" and df2["gold"].tolist() == [-1, 2] and df2["subject"].isna().all()
    assert df2["choice_type"].tolist() == ["single", "multi"]


@pytest.mark.parametrize("kind", ["logprob", "logit"])
def test_predictions_keep_the_raw_scores(tmp_path, kind):
    # letter log-probabilities over a whole vocabulary put little mass on the letters: the 4-way probs hide that
    raw = np.log(one_hot(PRED) * 0.02) if kind == "logprob" else np.array(
        [[2.0, -1.0, 0.5, 0.0], [0.1, 3.0, -2.0, 1.0], [0.0, 0.0, 9.0, 1.0], [1.5, 1.0, 1.2, 1.4], [-5.0, -4.0, -6.0, -7.0], [0.0, 2.0, 1.0, 1.9]])
    path = write_predictions(tmp_path, [f"q{i}" for i in range(6)], SUBJECTS, GOLD, scores=raw, score_kind=kind)
    df = read_predictions(path)
    assert list(df.columns[-5:]) == [*SCORE_COLUMNS, "score_kind"] and set(df["score_kind"]) == {kind}
    np.testing.assert_array_equal(df[list(SCORE_COLUMNS)].to_numpy(), raw)  # the evidence, exactly
    scores = df[list(SCORE_COLUMNS)].to_numpy()
    softmax = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(df[list(PROB_COLUMNS)].to_numpy(), softmax, rtol=0, atol=1e-12)
    assert df["predicted"].tolist() == raw.argmax(1).tolist()
    if kind == "logprob":
        np.testing.assert_allclose(np.exp(scores).sum(axis=1), 0.02)  # the mass on the four letters survives


def test_raw_scores_must_be_consistent_and_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    raw = np.log(one_hot(PRED))
    with pytest.raises(ValueError, match="score_kind=None; valid: logprob, logit"):
        write_predictions(run, range(6), SUBJECTS, GOLD, scores=raw)
    with pytest.raises(ValueError, match="not the softmax of scores"):
        write_predictions(run, range(6), SUBJECTS, GOLD, one_hot(GOLD), scores=raw, score_kind="logprob")
    with pytest.raises(ValueError, match="scores has shape"):
        write_predictions(run, range(6), SUBJECTS, GOLD, scores=raw[:, :3], score_kind="logit")
    with pytest.raises(ValueError, match="pass the raw scores"):
        write_predictions(run, range(6), SUBJECTS, GOLD)
    assert not list(run.iterdir())  # nothing half-written
    path = write_predictions(run, range(6), SUBJECTS, GOLD, one_hot(PRED), scores=raw, score_kind="logprob")
    np.testing.assert_allclose(read_predictions(path)[list(PROB_COLUMNS)].to_numpy(), one_hot(PRED), atol=1e-12)


def test_metrics_module_does_not_import_torch():
    import subprocess

    code = "import sys, medminds_hpc.training.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
