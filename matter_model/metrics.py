"""Counts of a detected class and the scores they give: precision, recall, F1.

Kept as counts, not scores, so that per-item figures and micro figures (counts summed over every
item, as the OSCD and SpaceNet papers report them) come from one code path: ``a + b`` sums two
sets of counts.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass
from typing import Self

import numpy as np


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
