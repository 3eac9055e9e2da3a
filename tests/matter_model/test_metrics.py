"""Counts and scores of a detected class, by hand."""

import numpy as np
import pytest

from matter_model.metrics import ConfusionCounts, MatchCounts, confusion_counts


def test_counts_and_scores_by_hand() -> None:
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
    counts = confusion_counts(pred, truth)
    assert counts == ConfusionCounts(tp=2, fp=2, fn=1, tn=3)
    assert counts.precision == pytest.approx(0.5)
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    valid = np.ones_like(truth)
    valid[1, 3] = False  # drops one false positive
    assert confusion_counts(pred, truth, valid) == ConfusionCounts(tp=2, fp=1, fn=1, tn=3)
    assert ConfusionCounts().f1 == 0.0 and ConfusionCounts(fn=3).precision == 0.0


def test_counts_sum_field_by_field_and_only_with_their_own_kind() -> None:
    assert ConfusionCounts(1, 2, 3, 4) + ConfusionCounts(10, 20, 30, 40) == ConfusionCounts(
        11, 22, 33, 44
    )
    assert MatchCounts(3, 1, 2) + MatchCounts(1, 0, 0) == MatchCounts(4, 1, 2)
    with pytest.raises(TypeError):
        MatchCounts(1, 0, 0) + ConfusionCounts(1, 0, 0, 5)


def test_matches_report_no_true_negatives() -> None:
    assert MatchCounts(2, 1, 1).as_dict() == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "tp": 2,
        "fp": 1,
        "fn": 1,
    }
    assert ConfusionCounts(2, 1, 1, 7).as_dict()["tn"] == 7
