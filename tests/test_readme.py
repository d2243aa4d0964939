"""The documentation's examples are valid topology sections, so it stays true.

The README is the front door; the reference lives in docs/, one page per topic.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mlexec.topologies.schema import UseCase

ROOT = Path(__file__).resolve().parents[1]


PAGES = {
    "## Connectors": "docs/connectors.md",
    "## Outputs": "docs/outputs.md",
    "## Dispatch rules and reductions": "docs/dispatch-and-reduction.md",
    "## Monitoring": "docs/monitoring.md",
    "## Model life cycle": "docs/lifecycle.md",
}


def _page(heading: str) -> str:
    """The docs page that took over the README section ``heading``."""
    return (ROOT / PAGES[heading]).read_text()


def _yaml_block_after(heading: str) -> dict:
    section = _page(heading)
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


def _table_rows(heading: str, first_column: str) -> list[list[str]]:
    section = _page(heading)
    start = section.index(f"| {first_column} |")
    rows = []
    for line in section[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def _dispatch_for(reduction: dict) -> dict:
    """A sequence is a group's records: it needs a grouping dispatch, not per record."""
    return (
        {"kind": "count", "count": 8} if reduction.get("kind") == "sequence" else {"kind": "record"}
    )


def test_every_dispatch_rule_and_reduction_has_a_valid_example():
    from typing import get_args

    from mlexec.topologies.schema import Dispatch, Reduction

    dispatch_kinds, reduction_kinds = set(), set()
    base = {
        "input": {
            "key": "pump",
            "time": "ts",
            "schema": {
                "pump": "str",
                "ts": "timestamp",
                "temperature": "float",
                "vibration": "float",
                "a": "float",
                "b": "float",
            },
        },
        "model": {"name": "m", "version": "1", "path": "m.onnx"},
    }
    for row in _table_rows("## Dispatch rules and reductions", "dispatch"):
        example = yaml.safe_load(row[2].strip("`"))
        dispatch_kinds.add(UseCase.model_validate({**base, "dispatch": example}).dispatch.kind)
    for row in _table_rows("## Dispatch rules and reductions", "reduction"):
        example = yaml.safe_load(row[2].strip("`"))
        if "kind" not in example:  # the stateful option, shown on its own
            example = {"kind": "aggregate", "fields": {"vibration": ["mean"]}, **example}
        reduction_kinds.add(
            UseCase.model_validate(
                {**base, "dispatch": _dispatch_for(example), "reduction": example}
            ).reduction.kind
        )
    union = get_args(get_args(Dispatch)[0])
    assert dispatch_kinds == {get_args(m.model_fields["kind"].annotation)[0] for m in union}
    union = get_args(get_args(Reduction)[0])
    assert reduction_kinds == {get_args(m.model_fields["kind"].annotation)[0] for m in union}
    doc = _yaml_block_after("## Dispatch rules and reductions")
    (usecase,) = doc["usecases"].values()
    UseCase.model_validate({**usecase, "model": base["model"]})


def test_every_aggregation_is_in_the_readme_table():
    from mlexec.topologies.schema import AGGREGATIONS

    named = set()
    for row in _table_rows("## Dispatch rules and reductions", "aggregation"):
        named |= {re.sub(r"\(.*\)", "", n).strip() for n in re.findall(r"`([^`]+)`", row[0])}
    assert named == set(AGGREGATIONS)


def test_the_monitoring_example_validates_and_the_table_names_every_statistic():
    from mlexec.topologies.schema import STATISTICS, Monitoring

    doc = _yaml_block_after("## Monitoring")
    checked = Monitoring.model_validate(doc["monitoring"])
    assert checked.reference is not None and checked.reference.kind == "range"
    assert checked.accuracy is not None and checked.health.lag is not None
    judged = {s for w in checked.watch.values() for s in w.thresholds()}
    assert judged == {"psi", "ks", "mean_shift", "null_rate", "out_of_range"}
    rows = _table_rows("## Monitoring", "statistic")
    assert sorted(r[0].strip("`") for r in rows) == sorted(STATISTICS)


def test_the_life_cycle_example_validates():
    doc = _yaml_block_after("## Model life cycle")
    checked = UseCase.model_validate(
        {
            "input": {
                "key": "k",
                "time": "t",
                "schema": {"k": "str", "t": "timestamp", "x": "float"},
            },
            "dispatch": {"kind": "microbatch"},
            "model": {"name": "m", "version": "1", "path": "m.onnx"},
            **doc,
        }
    )
    assert checked.lifecycle is not None and checked.lifecycle.training is not None
    assert checked.lifecycle.training.retrain_on == ["drift", "accuracy"]


def test_the_readme_is_a_front_door_and_every_page_it_links_exists():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    links = re.findall(r"\]\((docs/[a-z-]+\.md)\)", text)
    assert len(set(links)) >= 11
    for link in links:
        assert (ROOT / link).exists(), link
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([a-z-]+\.md)\)", page.read_text()):
            assert (ROOT / "docs" / target).exists(), (page.name, target)


def test_the_five_minute_topology_validates():
    from mlexec.topologies import parse_topology

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own CSV and model in five minutes") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    topology = parse_topology(block.group(1), "README.md")
    (usecase,) = topology.usecases.values()
    assert usecase.input.key == "pump" and [c.kind for c in usecase.connectors] == ["csv"]
