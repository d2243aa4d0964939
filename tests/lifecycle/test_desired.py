"""The desired state's bundle: what is sent, what is refused, what a reader verifies."""

from __future__ import annotations

import hashlib

import pytest

from mlexec.errors import RegistryError, TopologyError
from mlexec.lifecycle.desired import Desired, DesiredReader, FileRef, bundle_files

TOPOLOGY = """\
name: t
fleets:
  f: {inventory: plants.csv}
usecases:
  u:
    model: {path: models/m.onnx}
    reduction: {kind: python, package: "pkg.whl"}
    monitoring: {reference: {path: "${MLEXEC_REF}/ref.parquet"}}
"""


def test_the_bundle_holds_the_topology_and_every_relative_file_it_names(tmp_path):
    (tmp_path / "models").mkdir()
    for name, data in {
        "plants.csv": b"name\n",
        "models/m.onnx": b"onnx",
        "pkg.whl": b"zip",
    }.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    files = bundle_files(tmp_path / "t.yaml")
    assert sorted(files) == [
        "models/m.onnx",
        "pkg.whl",
        "plants.csv",
        "t.yaml",
    ]  # ${...} is the member's
    assert files["models/m.onnx"] == b"onnx"


def test_a_missing_file_or_one_outside_the_directory_is_refused_by_yaml_path(tmp_path):
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    with pytest.raises(TopologyError, match=r"fleets\.f\.inventory: cannot read"):
        bundle_files(tmp_path / "t.yaml")
    (tmp_path / "t.yaml").write_text(TOPOLOGY.replace("models/m.onnx", "../m.onnx"))
    (tmp_path / "plants.csv").write_text("name\n")
    with pytest.raises(TopologyError, match=r"usecases\.u\.model\.path: '\.\./m\.onnx' leaves"):
        bundle_files(tmp_path / "t.yaml")


def _desired(files: dict[str, FileRef]) -> Desired:
    return Desired("t", 1, "t.yaml", files, ("a",), digest="d" * 64)


def test_a_reader_rebuilds_a_bundle_and_refuses_tampered_or_missing_chunks(tmp_path):
    data = b"name: t\n"
    sha = hashlib.sha256(data).hexdigest()
    reader = DesiredReader()
    reader.add(f"blob:{sha}:0".encode(), data)
    announced = reader.add(b"desired:t", _desired({"t.yaml": FileRef(sha, len(data), 1)}).value())
    assert announced is not None and announced.version == 1
    entry = reader.materialize(announced, tmp_path / "bundles")
    assert entry.read_bytes() == data and entry.parent.name == "v1-dddddddddddd"
    bad = DesiredReader()
    bad.add(f"blob:{sha}:0".encode(), b"name: x\n")
    with pytest.raises(RegistryError, match="not the one published"):
        bad.materialize(announced, tmp_path / "other")
    with pytest.raises(RegistryError, match="lacks chunks"):
        DesiredReader().materialize(announced, tmp_path / "third")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").glob("v1-*"))
    escaping = _desired({"../x": FileRef(sha, len(data), 1)})
    with pytest.raises(RegistryError, match="leaves the bundle"):
        reader.materialize(escaping, tmp_path / "fourth")
    assert DesiredReader().add(b"desired:t", b"{not json") is None
