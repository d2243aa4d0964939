"""The model's signature is the contract: what validate accepts, refuses, and says.

Models come from the real exporters (``tests/realmodels.py``). Every refusal is one
line — no traceback — naming what the model takes, what the use case gives, and what
to change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.operators.infer import OnnxModel
from mlexec.operators.records import Records
from tests import realmodels

ABC = {"a": "float", "b": "float", "c": "float"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("contract-models")
    made = {
        "zipmap": realmodels.zipmap_classifier(folder),
        "strlabel": realmodels.string_label_classifier(folder),
        "pipeline": realmodels.column_pipeline(folder),
        "fixed3": realmodels.fixed_batch_regressor(folder, batch=3),
        "tfidf": realmodels.text_classifier(folder)[0],
    }
    made["named"] = realmodels.with_feature_names(
        made["zipmap"], ["a", "b", "c"], folder / "named.onnx"
    )
    return made


def _topology(folder: Path, onnx_path: Path, schema: dict[str, str], **extra: Any) -> Path:
    model_keys = extra.pop("model", {})
    doc = {
        "name": "contract",
        "sites": {
            "here": {
                "kafka": {"bootstrap": "127.0.0.1:9"},
                "sample_store": f"chdb://{folder}/chdb",
                "state_dir": f"{folder}/state",
            }
        },
        "usecases": {
            "uc": {
                "input": {
                    "key": "machine",
                    "time": "ts",
                    "schema": {"machine": "str", "ts": "timestamp", **schema},
                },
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "m", "version": "1", "path": str(onnx_path), **model_keys},
                **extra,
            }
        },
    }
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _validate(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
    return result.exit_code, " ".join(result.output.split())


def _refused(path: Path, *words: str) -> str:
    code, out = _validate(path)
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error:"), out
    assert f"{path}: usecases.uc.model" in out, out
    for word in words:
        assert word in out, (word, out)
    return out


def test_a_reordered_schema_is_refused_where_the_model_names_its_features(tmp_path, models):
    _refused(
        _topology(tmp_path, models["named"], {"b": "float", "a": "float", "c": "float"}),
        "trained on features ['a', 'b', 'c']",
        "in another order: ['b', 'a', 'c']",
        "model.inputs",
    )
    assert _validate(_topology(tmp_path, models["named"], ABC))[0] == 0


def test_a_reordered_schema_is_refused_where_the_reference_names_its_features(tmp_path, models):
    reference = tmp_path / "training.csv"
    reference.write_text("a,b,c\n0.1,0.2,0.3\n0.4,0.5,0.6\n")
    monitoring = {"watch": {"a": {}}, "reference": {"kind": "file", "path": str(reference)}}
    out = _refused(
        _topology(
            tmp_path,
            models["zipmap"],
            {"c": "float", "a": "float", "b": "float"},
            monitoring=monitoring,
        ),
        "order ['a', 'b', 'c']",
        "feeds them as ['c', 'a', 'b']",
    )
    assert "model.inputs" in out
    # declaring the order is the user's word for it: accepted
    fixed = _topology(
        tmp_path,
        models["zipmap"],
        {"c": "float", "a": "float", "b": "float"},
        monitoring=monitoring,
        model={"inputs": ["a", "b", "c"]},
    )
    assert _validate(fixed)[0] == 0


def test_validate_prints_the_signature_classes_and_providers(tmp_path, models):
    path = _topology(tmp_path, models["strlabel"], ABC, model={"providers": ["cuda", "cpu"]})
    code, out = _validate(path)
    assert code == 0, out
    assert "X: float[N, 3] ← a, b, c" in out
    assert "output_label: str per row" in out
    assert "classes ['pump_bad', 'pump_ok', 'pump_worn']" in out
    assert "CUDAExecutionProvider is not available" in out and "CPU" in out


def test_validate_json_carries_the_signature(tmp_path, models):
    path = _topology(
        tmp_path, models["pipeline"], {"pressure": "float", "color": "str", "temp": "float"}
    )
    done = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    model = doc["usecases"]["uc"]["model"]
    assert {i["input"]: i["columns"] for i in model["inputs"]} == {
        "temp: float[N, 1]": ["temp"],
        "pressure: float[N, 1]": ["pressure"],
        "color: string[N, 1]": ["color"],
    }
    assert doc["ok"] and doc["sites"]["here"]["kafka"] == "127.0.0.1:9"


def test_a_pipeline_with_one_input_per_column_is_fed_by_name(tmp_path, models):
    schema = {"pressure": "float", "color": "str", "temp": "float"}  # any order: by name
    code, out = _validate(_topology(tmp_path, models["pipeline"], schema))
    assert code == 0, out
    assert "color: string[N, 1] ← color" in out and "temp: float[N, 1] ← temp" in out
    _refused(
        _topology(
            tmp_path, models["pipeline"], {"pressure": "float", "colour": "str", "temp": "float"}
        ),
        "has 3 inputs",
        "none named ['color']",
        "model.inputs: {input: [fields...]}",
    )
    mapped = _topology(
        tmp_path,
        models["pipeline"],
        {"pressure": "float", "colour": "str", "temp": "float"},
        model={"inputs": {"temp": ["temp"], "pressure": ["pressure"], "color": ["colour"]}},
    )
    assert _validate(mapped)[0] == 0


def test_types_that_cannot_feed_an_input_are_refused_saying_what_to_declare(tmp_path, models):
    _refused(
        _topology(
            tmp_path, models["pipeline"], {"pressure": "float", "color": "float", "temp": "float"}
        ),
        "takes strings",
        "column 'color' is numeric",
        "declare the field as str",
    )
    _refused(
        _topology(
            tmp_path,
            models["tfidf"],
            {"message": "str", "level": "float"},
            model={"inputs": ["level"]},
        ),
        "takes strings",
    )


def _sequence_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["seq"], ["y"], axes=[1, 2], keepdims=0)],
        "seq",
        [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_sequence_model_without_a_sequence_reduction_is_refused_saying_what_to_declare(tmp_path):
    out = _refused(
        _topology(tmp_path, _sequence_model(tmp_path / "seq.onnx"), ABC),
        "seq: float[N, 8, 3]",
        "is a sequence [rows, steps, fields]",
        "reduction: {kind: sequence",
    )
    assert "found shape" not in out


def test_a_fixed_batch_is_served_in_pieces_equal_to_onnxruntime(models):
    rows = 7  # two pieces of 3 and one padded piece of 1 + 2 copies
    x = realmodels.training_rows(rows, seed=42)
    records = Records(
        record_ids=[str(i) for i in range(rows)],
        ids=np.arange(rows, dtype=np.uint64),
        keys=["k"] * rows,
        times=np.zeros(rows, dtype=np.int64),
        columns={n: x[:, j].astype(np.float64) for j, n in enumerate("abc")},
    )
    model = OnnxModel(models["fixed3"], "m", "1", ["a", "b", "c"], kinds={})
    assert model.batch == 3
    got = model(records).outputs["variable"]
    session = ort.InferenceSession(str(models["fixed3"]), providers=["CPUExecutionProvider"])
    padded = np.concatenate([x, x[-1:], x[-1:]])
    want = np.concatenate(
        [session.run(None, {"x": padded[i : i + 3]})[0][:, 0] for i in (0, 3, 6)]
    )[:rows]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_exporters_locale_is_served_or_the_reason_is_said(tmp_path, models):
    """skl2onnx's StringNormalizer asks for en_US.UTF-8; without it here, mlexec serves the
    model with C.UTF-8 and validate says so."""
    try:
        ort.InferenceSession(str(models["tfidf"]), providers=["CPUExecutionProvider"])
        installed = True
    except Exception:  # noqa: BLE001 - onnxruntime's own error: the locale is missing
        installed = False
    code, out = _validate(_topology(tmp_path, models["tfidf"], {"message": "str"}))
    assert code == 0, out
    assert ("served with C.UTF-8" in out) is not installed, out
    assert re.search(r"text: string\[N, 1\] ← message", out), out


def test_a_file_that_is_not_a_model_is_refused_without_a_traceback(tmp_path, models):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(models["zipmap"].read_bytes()[:200])  # a cut-off download
    _refused(_topology(tmp_path, broken, ABC), str(broken))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all\xff" * 10)
    _refused(_topology(tmp_path, garbage, ABC), "is not an ONNX model")


def test_text_columns_are_not_watched_and_class_names_not_compared_saying_why(tmp_path, models):
    schema = {"pressure": "float", "color": "str", "temp": "float"}
    ref = {"kind": "range", "start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z"}
    code, out = _validate(
        _topology(
            tmp_path,
            models["pipeline"],
            schema,
            monitoring={"watch": {"color": {}}, "reference": ref},
        )
    )
    assert (
        code == 2 and "monitoring.watch.color" in out and "text" in out and "Traceback" not in out
    )
    accuracy = {
        "watch": {},
        "accuracy": {
            "output": "output_label",
            "metric": "error_rate",
            "thresholds": {"warning": 0.2},
        },
    }
    code, out = _validate(_topology(tmp_path, models["strlabel"], ABC, monitoring=accuracy))
    assert code == 2 and "monitoring.accuracy.output" in out and "class names" in out, out
    # the probabilities of the same model are numbers: watched
    watched = {
        "watch": {"temp": {}},
        "reference": {
            "kind": "range",
            "start": "2030-01-01T00:00:00Z",
            "end": "2030-01-02T00:00:00Z",
        },
    }
    assert _validate(_topology(tmp_path, models["pipeline"], schema, monitoring=watched))[0] == 0


def test_a_missing_or_short_reference_file_is_refused_at_validate(tmp_path, models):
    monitoring = {
        "watch": {"a": {}, "c": {}},
        "reference": {"kind": "file", "path": str(tmp_path / "gone.parquet")},
    }
    code, out = _validate(_topology(tmp_path, models["zipmap"], ABC, monitoring=monitoring))
    assert (
        code == 2 and "monitoring.reference.path" in out and "gone.parquet does not exist" in out
    ), out
    short = tmp_path / "short.csv"
    short.write_text("a,b\n1,2\n")
    monitoring["reference"]["path"] = str(short)
    code, out = _validate(_topology(tmp_path, models["zipmap"], ABC, monitoring=monitoring))
    assert code == 2 and "lacks watched columns ['c']" in out, out
