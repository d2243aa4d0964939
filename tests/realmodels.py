"""Models as data scientists export them: the real exporters with their default options.

scikit-learn through skl2onnx, LightGBM and XGBoost through onnxmltools, each trained on
a few hundred made-up rows and written to ``folder``. Nothing here changes what the
exporter wrote; the tests feed mlexec exactly these files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

FEATURES = ["a", "b", "c"]
COLORS = ["red", "green", "blue"]
WORDS = ["disk", "full", "timeout", "started", "done", "retry", "ok", "error"]


def training_rows(n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def _labels(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def zipmap_classifier(folder: Path) -> Path:
    """LogisticRegression, ``to_onnx`` defaults: int64 labels and a ZipMap of probabilities."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = training_rows()
    return _save(to_onnx(LogisticRegression().fit(x, _labels(x)), x[:1]), folder / "zipmap.onnx")


def string_label_classifier(folder: Path) -> Path:
    """A random forest whose classes are names: a string label and a ZipMap keyed by them."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    x = training_rows(seed=1)
    names = np.array(["pump_bad", "pump_ok", "pump_worn"])[_labels(x) + (x[:, 2] > 1)]
    forest = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(x, names)
    return _save(to_onnx(forest, x[:1]), folder / "strlabel.onnx")


def double_regressor(folder: Path) -> Path:
    """LinearRegression exported with ``DoubleTensorType``: double in, double out."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.linear_model import LinearRegression

    x = training_rows(seed=2).astype(np.float64)
    reg = LinearRegression().fit(x, x @ np.array([1.5, -2.0, 0.25]) + 3.0)
    model = convert_sklearn(reg, initial_types=[("x", DoubleTensorType([None, 3]))])
    return _save(model, folder / "double.onnx")


def int64_regressor(folder: Path) -> Path:
    """A regressor over counts: an int64 input."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import Int64TensorType
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(3).integers(0, 50, size=(300, 3)).astype(np.int64)
    reg = LinearRegression().fit(x, x @ np.array([0.5, 1.0, -0.25]))
    model = convert_sklearn(reg, initial_types=[("counts", Int64TensorType([None, 3]))])
    return _save(model, folder / "int64.onnx")


def column_pipeline(folder: Path) -> Path:
    """ColumnTransformer → LogisticRegression over a DataFrame: one input per column,
    an imputer on ``temp`` (trained with gaps), a one-hot of the string ``color``."""
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(4)
    x = training_rows(seed=4)
    frame = pd.DataFrame(
        {"temp": x[:, 0].copy(), "pressure": x[:, 1].copy(), "color": rng.choice(COLORS, len(x))}
    )
    frame.loc[::7, "temp"] = np.nan
    y = ((np.nan_to_num(frame["temp"]) > 0) ^ (frame["color"] == "red")).astype(int)
    numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    columns = ColumnTransformer(
        [
            ("num", numeric, ["temp", "pressure"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"]),
        ]
    )
    pipe = make_pipeline(columns, LogisticRegression()).fit(frame, y)
    return _save(to_onnx(pipe, frame[:1]), folder / "pipeline.onnx")


def text_classifier(folder: Path) -> tuple[Path, object]:
    """TF-IDF + LogisticRegression over log messages (a string ``[N, 1]`` input), and the
    scikit-learn pipeline itself (the reference where onnxruntime lacks the locale)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, 3)) for _ in range(300)]
    y = np.array([int("error" in t or "timeout" in t) for t in texts])
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, y)
    model = convert_sklearn(pipe, initial_types=[("text", StringTensorType([None, 1]))])
    return _save(model, folder / "tfidf.onnx"), pipe


def lightgbm_classifier(folder: Path) -> Path:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x = training_rows(seed=6)
    clf = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1).fit(x, _labels(x))
    model = convert_lightgbm(clf, initial_types=[("input", FloatTensorType([None, 3]))])
    return _save(model, folder / "lightgbm.onnx")


def xgboost_classifier(folder: Path) -> Path:
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    x = training_rows(seed=7)
    clf = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x, _labels(x))
    model = convert_xgboost(clf, initial_types=[("input", FloatTensorType([None, 3]))])
    return _save(model, folder / "xgboost.onnx")


def fixed_batch_regressor(folder: Path, batch: int = 1) -> Path:
    """A graph whose batch is fixed (a PyTorch export without ``dynamic_axes``)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPRegressor

    x = training_rows(seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(x, x[:, 0])
    model = convert_sklearn(mlp, initial_types=[("x", FloatTensorType([batch, 3]))])
    return _save(model, folder / f"fixed{batch}.onnx")


def with_feature_names(path: Path, names: list[str], out: Path) -> Path:
    """The model at ``path`` with ``feature_names`` in its metadata, as a data scientist
    records them (``onnx.helper.set_model_props``)."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"feature_names": ",".join(names)})
    return _save(model, out)


def with_locale(path: Path, locale: str, out: Path) -> Path:
    """The model with its StringNormalizer's locale set (the test's own reference copy)."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [a for a in node.attribute if a.name != "locale"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("locale", locale)])
    return _save(model, out)
