"""How well a detected class matches its truth: counts and the scores they give (precision,
recall, F1), and the threshold-free quality of a ranking score (ROC AUC, average precision).

Kept as counts, not scores, so that per-item figures and micro figures (counts summed over every
item, as the OSCD and SpaceNet papers report them) come from one code path: ``a + b`` sums two
sets of counts.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass
from typing import Self

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class MatchCounts:
    """True positives, false positives and false negatives of a detected class (SpaceNet's
    matched buildings, which have no true negatives)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0 when nothing was detected."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 0 when the truth holds none of the class."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 0 when both are 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Precision, recall, F1 and the counts, as plain Python numbers."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, **asdict(self)}


@dataclass(frozen=True)
class ConfusionCounts(MatchCounts):
    """The counts of a per-pixel class (OSCD's change pixels), true negatives included."""

    tn: int = 0


def confusion_counts(
    prediction: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
) -> ConfusionCounts:
    """Count tp / fp / fn / tn of the class over the valid pixels (all when ``None``)."""
    pred = np.asarray(prediction, dtype=bool)
    true = np.asarray(truth, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    if valid is not None:
        keep = np.asarray(valid, dtype=bool)
        pred, true = pred[keep], true[keep]
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    return ConfusionCounts(tp, fp, fn, int(pred.size) - tp - fp - fn)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one ranking: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, high
    to low (ties share one threshold, as in scikit-learn's ``average_precision_score``); NaN
    without positives. ``targets`` above 0 are positives."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    # The last index of each run of equal scores: one threshold per distinct score.
    last = np.flatnonzero(np.diff(scores, append=-np.inf))
    tp = np.cumsum(targets)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(tp, prepend=0) / positives
    return float(np.sum(recall_step * precision))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of one ranking (ties share their average rank, as in
    scikit-learn's ``roc_auc_score``); NaN unless ``targets`` hold both classes."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0
    positives = int(targets.sum())
    negatives = targets.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def ranking_quality(score: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Threshold-free quality of a change score: ROC AUC and average precision of the change
    class (None when the truth holds one class only: JSON null, not NaN).

    They separate how well the features rank change from how well Otsu then cuts: a score can
    rank better and still lose F1 when its distribution gives Otsu no long tail to split off.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return {"auc": None, "average_precision": None}
    return {"auc": roc_auc(score, truth), "average_precision": average_precision(score, truth)}
