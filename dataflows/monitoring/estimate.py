"""A classifier's performance before its labels arrive: confidence-based estimation (CBPE).

NannyML's method. A classifier whose probabilities are *calibrated* — of the rows it
gives 0.8, 80 % are of that class — says how often it is right: the expected confusion
matrix of a window is the sum, over its rows, of each class's probability. Raw model
scores are rarely calibrated, so a calibration is fitted first, on labelled reference
rows: per class, an isotonic regression (pool-adjacent-violators) of "is this class"
on the model's probability of it, renormalised over the classes.

What it assumes, and so what it misses: the relation between features and labels
(P(y | x)) stays as it was in the reference — a covariate shift (new regions of the
input, different class balance) is estimated correctly; a concept shift (the same
inputs now mean another label) is invisible to it, and only realized accuracy from
labels shows it.

Per window it gives accuracy, error rate, precision, recall and F1 (for two classes
of class 1; macro-averaged one-vs-rest over more) and ROC AUC (expected true- and
false-positive rates at every score, NannyML's estimate; macro over classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "estimate", "fit_calibration", "isotonic"]


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators).

    Knots ``(xs, ys)``: the fitted value at every distinct ``x``, to interpolate
    linearly between (as scikit-learn's ``IsotonicRegression`` does).
    """
    order = np.argsort(x, kind="stable")
    sorted_x = np.asarray(x, dtype=np.float64)[order]
    xs, start, counts = np.unique(sorted_x, return_index=True, return_counts=True)
    sums = np.add.reduceat(np.asarray(y, dtype=np.float64)[order], start)
    # blocks of adjacent distinct x: (mean, weight, how many distinct x)
    v: list[float] = []
    w: list[float] = []
    n: list[int] = []
    for total, weight in zip(sums, counts.astype(np.float64), strict=True):
        v.append(total / weight)
        w.append(weight)
        n.append(1)
        while len(v) > 1 and v[-2] > v[-1]:  # a violator: pool it with the block before
            pooled = w[-2] + w[-1]
            v[-2] = (v[-2] * w[-2] + v[-1] * w[-1]) / pooled
            w[-2] = pooled
            n[-2] += n[-1]
            del v[-1], w[-1], n[-1]
    return xs, np.repeat(np.array(v), n)


@dataclass(frozen=True)
class Calibration:
    """Per class, the isotonic map from the model's probability to the class's frequency."""

    #: The label value of each class, in the order of the probabilities.
    classes: tuple[float, ...]
    knots: tuple[tuple[np.ndarray, np.ndarray], ...]
    #: Labelled reference rows it was fitted on.
    rows: int

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[rows, classes]``, each row summing to 1."""
        out = np.column_stack(
            [np.interp(probabilities[:, k], xs, ys) for k, (xs, ys) in enumerate(self.knots)]
        )
        total = out.sum(axis=1, keepdims=True)
        flat = total[:, 0] <= 0
        out[flat] = 1.0 / out.shape[1]
        total[flat] = 1.0
        return out / total


def as_matrix(probabilities: np.ndarray) -> np.ndarray:
    """``[rows, classes]`` from a column of P(class 1) (two classes) or of per-class rows."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        return np.column_stack([1.0 - p, p])
    return p


def fit_calibration(
    probabilities: np.ndarray, labels: np.ndarray, classes: tuple[float, ...] | None = None
) -> Calibration:
    """Fit the calibration on labelled rows (``classes``: label values, default 0…K−1)."""
    p = as_matrix(probabilities)
    found = tuple(float(c) for c in (classes or range(p.shape[1])))
    if len(found) != p.shape[1]:
        msg = f"{p.shape[1]} class probabilities, but {len(found)} classes {list(found)}"
        raise ValueError(msg)
    y = np.asarray(labels, dtype=np.float64)
    usable = np.isfinite(p).all(axis=1) & np.isfinite(y)
    p, y = p[usable], y[usable]
    if len(y) == 0:
        msg = "no labelled row with probabilities to calibrate on"
        raise ValueError(msg)
    knots = tuple(isotonic(p[:, k], (y == c).astype(np.float64)) for k, c in enumerate(found))
    return Calibration(found, knots, len(y))


def _expected_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC expected when row i is positive with probability ``positive[i]``."""
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    # rows of equal score move together along the curve
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.r_[0.0, np.cumsum(p)[last]]
    fp = np.r_[0.0, np.cumsum(1.0 - p)[last]]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return float("nan")
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def estimate(
    probabilities: np.ndarray, predicted: np.ndarray | None, calibration: Calibration
) -> dict[str, float]:
    """The expected metrics of one window's predictions (``predicted``: default argmax)."""
    raw = as_matrix(probabilities)
    usable = np.isfinite(raw).all(axis=1)  # a row without probabilities tells nothing
    raw = raw[usable]
    if len(raw) == 0:
        return {}
    cal = calibration.apply(raw)
    classes = np.array(calibration.classes)
    if predicted is None:
        index = np.argmax(raw, axis=1)
    else:
        chosen = np.asarray(predicted, dtype=np.float64)[usable]
        index = np.clip(np.searchsorted(classes, chosen), 0, len(classes) - 1)
    rows = np.arange(len(raw))
    accuracy = float(cal[rows, index].mean())
    out = {"accuracy": accuracy, "error_rate": 1.0 - accuracy, "rows": float(len(raw))}
    per_class = []
    chosen = range(1, 2) if len(classes) == 2 else range(len(classes))
    for k in chosen:
        is_k = index == k
        tp = float(cal[is_k, k].sum())
        fp = float((1.0 - cal[is_k, k]).sum())
        fn = float(cal[~is_k, k].sum())
        precision = tp / (tp + fp) if tp + fp > 0 else float("nan")
        recall = tp / (tp + fn) if tp + fn > 0 else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else float("nan")
        per_class.append((precision, recall, f1, _expected_auc(raw[:, k], cal[:, k])))
    for i, name in enumerate(("precision", "recall", "f1", "roc_auc")):
        out[name] = float(np.nanmean([m[i] for m in per_class])) if per_class else float("nan")
    return out
