"""Training entry points the life-cycle tests package, as a user's would be."""

from __future__ import annotations

import polars as pl


def fit_linear(frame: pl.DataFrame):  # type: ignore[no-untyped-def]
    """scikit-learn least squares on the 16 features → ONNX (input ``x``, output ``y``)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    features = [f"f{i}" for i in range(16)]
    x = frame.select(features).to_numpy().astype("float32")
    model = LinearRegression().fit(x, frame["label"].to_numpy())
    return to_onnx(
        model,
        initial_types=[("x", FloatTensorType([None, 16]))],
        final_types=[("y", FloatTensorType([None, 1]))],
        target_opset=17,
    )
