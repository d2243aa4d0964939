"""A regressor's error before its labels arrive: direct loss estimation (DLE).

NannyML's method for regression. On the labelled reference rows, a second model learns
the first one's error from what it saw and what it said: gradient-boosted trees
(scikit-learn's ``HistGradientBoostingRegressor``) fitted to ``|y − ŷ|`` and to
``(y − ŷ)²`` on the features and the prediction. Each tree ensemble estimates the
conditional mean of its target, so over a window the mean of the first is the expected
MAE and the square root of the mean of the second the expected RMSE.

What it assumes, and so what it misses: as CBPE, that P(y | x) stays as in the
reference. It sees a covariate shift into regions where the model was worse (noisier
inputs, ranges it fitted poorly) — that is what it is for; it cannot see a concept
shift, nor errors in regions the reference never reached (the trees extrapolate flat
from the nearest region they saw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ErrorModel", "fit_error_model"]

#: Labelled rows needed to learn an error.
MIN_ROWS = 200


def _trees() -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        max_iter=150,
        learning_rate=0.1,
        max_leaf_nodes=31,
        min_samples_leaf=40,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=0,
    )


@dataclass(frozen=True)
class ErrorModel:
    """The learned absolute and squared error of one model version."""

    #: The inputs read, in order: the chosen columns, then the prediction.
    columns: tuple[str, ...]
    absolute: Any
    squared: Any
    #: Labelled reference rows it was fitted on.
    rows: int

    def estimate(self, features: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
        """Expected MAE and RMSE of one window's predictions (rows without one are left out)."""
        x = _inputs(features, predicted)
        usable = np.isfinite(np.asarray(predicted, dtype=np.float64))
        if not usable.any():
            return {}
        absolute = np.maximum(self.absolute.predict(x[usable]), 0.0)
        squared = np.maximum(self.squared.predict(x[usable]), 0.0)
        return {
            "mae": float(absolute.mean()),
            "rmse": float(np.sqrt(squared.mean())),
            "rows": float(usable.sum()),
        }


def _inputs(features: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64).reshape(len(predicted), -1)
    return np.column_stack([x, np.asarray(predicted, dtype=np.float64)])


def fit_error_model(
    features: np.ndarray, predicted: np.ndarray, labels: np.ndarray, columns: tuple[str, ...]
) -> ErrorModel:
    """Learn the error of ``predicted`` against ``labels`` from the features and prediction."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    usable = np.isfinite(y) & np.isfinite(p)
    if usable.sum() < MIN_ROWS:
        msg = (
            f"{int(usable.sum())} labelled rows with a prediction; the error model needs {MIN_ROWS}"
        )
        raise ValueError(msg)
    x = _inputs(features, p)[usable]
    error = y[usable] - p[usable]
    absolute = _trees().fit(x, np.abs(error))
    squared = _trees().fit(x, np.square(error))
    return ErrorModel((*columns, "prediction"), absolute, squared, int(usable.sum()))
