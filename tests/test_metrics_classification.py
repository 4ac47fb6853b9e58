"""The classification metrics chapter 08 adds to ``course_lib.metrics``: accuracy, the confusion
matrix, per-class precision/recall/F1 and macro-F1, with the zero-division cases defined.

Checked three ways: cases computed by hand, an independent count over every pair of classes on
random labels, and scikit-learn (when it is installed: it is not in the course's .venv, so
those tests skip there; run them with scikit-learn importable to compare with it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.metrics import accuracy, classification_report, confusion_matrix, macro_f1, precision_recall_f1

# ---------------------------------------------------------------------------- by hand

# 10 examples, 3 classes.   true: 0 0 0 0 1 1 1 2 2 2
#                           pred: 0 0 1 2 1 1 0 2 2 1
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[2, 1, 1],   # true 0: two right, one called 1, one called 2
                           [1, 2, 0],   # true 1
                           [0, 1, 2]]   # true 2
    assert confusion_matrix([1, 1], [1, 1], num_classes=3).tolist() == [[0, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_accuracy_by_hand_and_from_tensors():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(6 / 10)
    assert accuracy(torch.tensor(Y_TRUE), np.array(Y_PRED)) == pytest.approx(0.6)
    assert accuracy([1, 0, 1], [1, 0, 1]) == 1.0


def test_precision_recall_f1_by_hand():
    scores = precision_recall_f1(Y_TRUE, Y_PRED)
    # class 0: TP 2, predicted 3, actual 4 -> P 2/3, R 2/4, F1 4/7
    # class 1: TP 2, predicted 4, actual 3 -> P 2/4, R 2/3, F1 4/7
    # class 2: TP 2, predicted 3, actual 3 -> P 2/3, R 2/3, F1 2/3
    assert scores["precision"].tolist() == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert scores["recall"].tolist() == pytest.approx([1 / 2, 2 / 3, 2 / 3])
    assert scores["f1"].tolist() == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    assert scores["support"].tolist() == [4, 3, 3]
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
    for p, r, f in zip(scores["precision"], scores["recall"], scores["f1"]):  # F1 is their harmonic mean
        assert f == pytest.approx(2 * p * r / (p + r))


def test_majority_answer_on_an_imbalanced_set():
    y_true = [0] * 87 + [1] * 13
    y_pred = [0] * 100
    assert accuracy(y_true, y_pred) == pytest.approx(0.87)
    scores = precision_recall_f1(y_true, y_pred)
    assert scores["precision"].tolist() == pytest.approx([0.87, 0.0])  # class 1 never predicted: 0/0 -> 0
    assert scores["recall"].tolist() == pytest.approx([1.0, 0.0])
    assert macro_f1(y_true, y_pred) == pytest.approx((2 * 87 / (2 * 87 + 13) + 0.0) / 2)


# ---------------------------------------------------------------------------- zero division

def test_a_class_never_predicted_has_zero_division_precision_but_f1_zero():
    y_true, y_pred = [0, 1, 1], [0, 0, 0]  # class 1 present, never predicted
    for zd in (0.0, 1.0):
        s = precision_recall_f1(y_true, y_pred, zero_division=zd)
        assert s["precision"][1] == zd  # TP + FP = 0: undefined
        assert s["recall"][1] == 0.0  # defined: it was missed every time
        assert s["f1"][1] == 0.0  # 2·0 / (0 + 0 + 2): defined, whatever zero_division is


def test_a_class_absent_from_y_true_has_zero_division_recall():
    y_true, y_pred = [0, 0, 0], [0, 1, 0]  # class 1 predicted once, never true
    for zd in (0.0, 1.0):
        s = precision_recall_f1(y_true, y_pred, zero_division=zd)
        assert s["precision"][1] == 0.0 and s["recall"][1] == zd and s["f1"][1] == 0.0


def test_a_class_in_neither_counts_as_zero_division_in_the_macro_average():
    y = [0, 1, 0, 1]
    assert macro_f1(y, y) == 1.0
    assert macro_f1(y, y, num_classes=3) == pytest.approx(2 / 3)  # class 2: F1 undefined -> 0
    assert macro_f1(y, y, num_classes=3, zero_division=1.0) == 1.0
    s = precision_recall_f1(y, y, num_classes=3, zero_division=float("nan"))
    assert [math.isnan(v) for v in s["f1"]] == [False, False, True]
    assert s["support"].tolist() == [2, 2, 0]


def test_perfect_and_all_wrong_predictions():
    assert macro_f1([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0
    assert macro_f1([0, 1, 1, 0], [1, 0, 0, 1]) == 0.0
    assert accuracy([0, 1, 1, 0], [1, 0, 0, 1]) == 0.0


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1], [0, 1, 1], "2 labels and y_pred 3"),
    ([], [], "no labels"),
    ([[0, 1]], [[0, 1]], "1-D"),
    ([0.0, 0.5], [0, 1], "integer class ids"),
    ([0, -1], [0, 1], "0..1"),
])
def test_bad_labels_are_clear_errors(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        macro_f1(y_true, y_pred)


def test_a_class_id_beyond_num_classes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"0\.\.1 \(num_classes=2\), found 2"):
        confusion_matrix([0, 2], [0, 1], num_classes=2)
    assert accuracy(np.array([0.0, 1.0]), [0, 1]) == 1.0  # whole-number floats are ids


# ---------------------------------------------------------------------------- an independent count

def reference_scores(y_true, y_pred, k, zero_division):
    """Every quantity counted pair by pair in plain Python, the definitions written out."""
    precision, recall, f1 = [], [], []
    for c in range(k):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        precision.append(tp / (tp + fp) if tp + fp else zero_division)
        recall.append(tp / (tp + fn) if tp + fn else zero_division)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else zero_division)
    return precision, recall, f1


labels = st.integers(min_value=1, max_value=4).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=40)))


@settings(max_examples=150, deadline=None)
@given(labels, st.sampled_from([0.0, 1.0]))
def test_matches_an_independent_count_on_random_labels(case, zero_division):
    k, pairs = case
    y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    precision, recall, f1 = reference_scores(y_true, y_pred, k, zero_division)
    s = precision_recall_f1(y_true, y_pred, num_classes=k, zero_division=zero_division)
    assert s["precision"].tolist() == pytest.approx(precision)
    assert s["recall"].tolist() == pytest.approx(recall)
    assert s["f1"].tolist() == pytest.approx(f1)
    assert macro_f1(y_true, y_pred, num_classes=k, zero_division=zero_division) == pytest.approx(sum(f1) / k)
    assert accuracy(y_true, y_pred) == pytest.approx(sum(t == p for t, p in pairs) / len(pairs))
    cm = confusion_matrix(y_true, y_pred, num_classes=k)
    assert cm.sum() == len(pairs) and np.trace(cm) == sum(t == p for t, p in pairs)


# ---------------------------------------------------------------------------- scikit-learn

@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn's note; labels= is passed
def test_matches_scikit_learn_on_random_labels():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (not a course dependency)")
    rng = np.random.default_rng(0)
    for trial in range(200):
        k = int(rng.integers(1, 5))
        n = int(rng.integers(1, 30))
        y_true, y_pred = rng.integers(0, k, n), rng.integers(0, k, n)
        if trial % 3 == 0:  # often leave a class out of one side, to reach the zero-division cases
            y_pred = np.minimum(y_pred, max(k - 2, 0))
        ids = list(range(k))
        for zd in (0.0, 1.0):
            p, r, f, support = sk.precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=zd)
            s = precision_recall_f1(y_true, y_pred, num_classes=k, zero_division=zd)
            np.testing.assert_allclose(s["precision"], p)
            np.testing.assert_allclose(s["recall"], r)
            np.testing.assert_allclose(s["f1"], f)
            np.testing.assert_array_equal(s["support"], support)
            assert macro_f1(y_true, y_pred, num_classes=k, zero_division=zd) == pytest.approx(
                sk.f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=zd))
        np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, num_classes=k),
                                      sk.confusion_matrix(y_true, y_pred, labels=ids))
        assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))


# ---------------------------------------------------------------------------- the printed report

def test_classification_report_names_the_classes_and_rounds():
    text = classification_report(Y_TRUE, Y_PRED)  # no names: the ids
    assert text.splitlines()[0].split() == ["precision", "recall", "F1", "support"]
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["0", "1", "2", "accuracy", "macro-F1"]
    with pytest.raises(ValueError, match="num_classes=2"):
        classification_report(Y_TRUE, Y_PRED, id2label={0: "ham", 1: "spam"})
    text = classification_report([0, 0, 1, 1], [0, 1, 1, 1], id2label={"0": "ham", "1": "spam"})  # JSON keys
    assert text.splitlines()[1:] == [
        "ham           1.000      0.500      0.667        2",
        "spam          0.667      1.000      0.800        2",
        "accuracy                            0.750        4",
        "macro-F1                            0.733        4",
    ]
