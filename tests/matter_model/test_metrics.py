"""Counts and scores of a detected class by hand; ranking quality against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from matter_model.metrics import (
    ConfusionCounts,
    MatchCounts,
    average_precision,
    confusion_counts,
    ranking_quality,
    roc_auc,
)


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


@pytest.mark.parametrize("levels", [None, 5])  # continuous scores, then many ties
def test_ranking_quality_matches_scikit_learn(levels) -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        truth = rng.random(300) < 0.2
        score = rng.normal(size=300) + truth
        if levels:
            score = np.round(score * levels / 4) / levels
        got = ranking_quality(score, truth)
        assert got["auc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
        assert got["average_precision"] == pytest.approx(
            average_precision_score(truth, score), abs=1e-12
        )


def test_ranking_quality_without_both_classes() -> None:
    score = np.array([0.9, 0.8, 0.1])
    assert average_precision(score, np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(score, np.zeros(3))) and np.isnan(roc_auc(score, np.ones(3)))
    for truth in (np.zeros(3, bool), np.ones(3, bool)):
        assert ranking_quality(score, truth) == {"auc": None, "average_precision": None}
