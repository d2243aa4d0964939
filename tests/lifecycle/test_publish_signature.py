"""``mlexec model publish`` checks the whole signature before a version reaches a site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.connectors.kafka import client_config
from mlexec.lifecycle.registry import read_registry
from mlexec.topologies import load_topology
from tests import realmodels


def _topology(tmp_path: Path, bootstrap: str, uid: str, model: Path) -> Path:
    doc = {
        "name": f"t{uid}",
        "sites": {
            "here": {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": f"chdb://{tmp_path}/chdb",
                "state_dir": f"{tmp_path}/state",
            }
        },
        "usecases": {
            f"uc{uid}": {
                "input": {
                    "topic": f"raw-{uid}",
                    "key": "machine",
                    "time": "ts",
                    "schema": {
                        "machine": "str",
                        "ts": "timestamp",
                        "a": "float",
                        "b": "float",
                        "c": "float",
                    },
                },
                "dispatch": {"kind": "microbatch"},
                "model": {"name": "clf", "version": "1", "path": str(model)},
            }
        },
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _publish(path: Path, model: Path, uid: str, version: str) -> tuple[int, str]:
    done = CliRunner().invoke(
        app,
        ["model", "publish", str(path), str(model), "--usecase", f"uc{uid}", "--version", version],
        env={"COLUMNS": "240"},
    )
    return done.exit_code, " ".join(done.output.split())


def _wider(path: Path, out: Path) -> Path:
    """The same classifier exported for 4 features."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    onnx.save(to_onnx(LogisticRegression().fit(x, x[:, 0] > 0), x[:1]), str(out))
    return out


def test_publish_refuses_versions_whose_signature_does_not_fit(tmp_path, broker, uid):
    zipmap = realmodels.zipmap_classifier(tmp_path)
    path = _topology(tmp_path, broker.bootstrap, uid, zipmap)
    strings = realmodels.string_label_classifier(tmp_path)
    code, out = _publish(path, strings, uid, "2")
    assert code == 1 and "output 'output_label' is output_label: str per row" in out, out
    assert "the use case serves output_label: int per row" in out
    code, out = _publish(path, _wider(zipmap, tmp_path / "wide.onnx"), uid, "3")
    assert code == 1 and "takes 4 columns per row, the use case gives 3" in out, out
    # other classes in the same shape: refused for the stored probabilities' order
    swapped = onnx.load(str(zipmap))
    for node in swapped.graph.node:
        if node.op_type == "ZipMap":
            for attr in node.attribute:
                if attr.name == "classlabels_int64s":
                    attr.ints[:] = [1, 0]
    onnx.save(swapped, str(tmp_path / "swapped.onnx"))
    code, out = _publish(path, tmp_path / "swapped.onnx", uid, "4")
    assert code == 1 and "gives classes [1, 0]; the use case serves [0, 1]" in out, out
    # a version that fits (a retrained one, same signature) is published, with its classes
    (tmp_path / "v5").mkdir()
    code, out = _publish(path, realmodels.zipmap_classifier(tmp_path / "v5"), uid, "5")
    assert code == 0, out
    registry = read_registry(client_config(load_topology(path).sites["here"].kafka))
    assert sorted(v for u, v in registry.manifests if u == f"uc{uid}") == ["5"]
    manifest = registry.manifests[(f"uc{uid}", "5")]
    outputs = {name: shape for name, _kind, shape in manifest.outputs}
    assert list(outputs["output_probability"]) == ["n", 2, 0, 1]
