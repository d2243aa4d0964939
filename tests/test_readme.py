"""The README's examples are valid topology sections, so the documentation stays true."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from topologies.schema import UseCase

ROOT = Path(__file__).resolve().parents[1]


def _yaml_block_after(heading: str) -> dict:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, f"no YAML example under {heading!r}"
    return yaml.safe_load(block.group(1))


def test_the_connector_examples_validate_and_cover_every_kind():
    doc = _yaml_block_after("## Connectors")
    (usecase,) = doc["usecases"].values()
    checked = UseCase.model_validate(
        {
            **usecase,
            "dispatch": {"kind": "microbatch"},
            "model": {"name": "m", "version": "1", "path": "m.onnx"},
        }
    )
    kinds = {c.kind for c in checked.connectors}
    assert kinds == {"csv", "logfile", "http", "sql", "kafka", "mqtt"}


def test_the_output_examples_validate_and_cover_every_kind():
    doc = _yaml_block_after("## Outputs")
    (usecase,) = doc["usecases"].values()
    checked = UseCase.model_validate(
        {
            "input": {
                "key": "k",
                "time": "t",
                "schema": {"k": "str", "t": "timestamp", "x": "float"},
            },
            **usecase,
            "dispatch": {"kind": "microbatch"},
            "model": {"name": "m", "version": "1", "path": "m.onnx"},
        }
    )
    assert {o.kind for o in checked.outputs} == {"kafka", "http", "mqtt", "file"}
