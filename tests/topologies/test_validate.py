"""Broken topologies are refused before anything starts, naming file, path, expected, found."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlexec.cli import app
from mlexec.operators.testing import make_mlp
from mlexec.topologies import TopologyError, load_topology, parse_topology

GOOD = """\
name: plant
sites:
  edge:
    kafka:
      bootstrap: ${TEST_BOOTSTRAP:-127.0.0.1:9092}
    sample_store: chdb:///tmp/never-opened
usecases:
  vib:
    input:
      partitions: 2
      key: machine
      time: ts
      schema:
        machine: str
        ts: timestamp
        a: float
        b: float
    dispatch:
      kind: microbatch
      max_records: 64
      max_wait: 20ms
    model:
      name: m
      version: "1"
      path: model.onnx
    sampling:
      rate: 0.1
      keep_when: "y > 0.5"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_mlp(tmp_path / "model.onnx", inputs=2, hidden=(4,))
    return tmp_path


def _validate(folder: Path, text: str) -> tuple[int, str, Path]:
    path = folder / "topology.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "250"})
    return result.exit_code, result.output, path


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_good_topology_validates_and_prints_the_plan(folder):
    code, out, _ = _validate(folder, GOOD)
    assert code == 0, out
    flat = _flat(out)
    for expected in ("vib.raw", "vib.predictions", "vib.deadletter", "samples_vib", "microbatch"):
        assert expected in flat


def test_validate_prints_connectors_and_outputs(folder):
    doc = yaml.safe_load(GOOD)
    doc["usecases"]["vib"]["connectors"] = [{"kind": "csv", "name": "export", "path": "in/*.csv"}]
    doc["usecases"]["vib"]["outputs"] = [
        {
            "kind": "mqtt",
            "topic": "plant/{key}/alarm",
            "when": "y > 0.9",
            "debounce": {"every": "30s", "on_change": "y"},
        },
        {"kind": "file", "path": "out", "format": "parquet"},
    ]
    code, out, _ = _validate(folder, yaml.safe_dump(doc, sort_keys=False))
    assert code == 0, out
    flat = _flat(out)
    for expected in (
        "export",
        "in/*.csv",
        "plant/{key}/alarm",
        "y > 0.9",
        "on change of y",
        "out (parquet)",
        "vib.outputs.deadletter",
    ):
        assert expected in flat, (expected, flat)


def test_the_embedded_demo_topology_loads():
    from mlexec.demo import demo_topology_path
    from mlexec.topologies import plan_topology

    topo = load_topology(demo_topology_path())
    plan = plan_topology(topo)
    assert set(plan.usecases) == {"readings", "windows"}
    assert plan.usecases["windows"].features[:2] == ("temperature_mean", "temperature_max")


# Each mistake: (how to break the good topology, YAML path named, words the message has)
MISTAKES = {
    "misspelt key": (
        lambda d: d["usecases"]["vib"]["dispatch"].update(max_record=5),
        "usecases.vib.dispatch.max_record",
        ["unknown key"],
    ),
    "wrong type": (
        lambda d: d["usecases"]["vib"]["dispatch"].update(max_records="many"),
        "usecases.vib.dispatch.max_records",
        ["integer", "'many'"],
    ),
    "out of range": (
        lambda d: d["usecases"]["vib"]["sampling"].update(rate=1.5),
        "usecases.vib.sampling.rate",
        ["less than or equal to 1", "1.5"],
    ),
    "missing required": (
        lambda d: d["usecases"]["vib"]["model"].pop("version"),
        "usecases.vib.model.version",
        ["required", "found nothing"],
    ),
    "unknown dispatch kind": (
        lambda d: d["usecases"]["vib"]["dispatch"].update(kind="hourly"),
        "usecases.vib.dispatch",
        ["microbatch", "tumbling", "hourly"],
    ),
    "key not in schema": (
        lambda d: d["usecases"]["vib"]["input"].update(key="device"),
        "usecases.vib.input",
        ["'device'", "not in the schema"],
    ),
    "bad duration": (
        lambda d: d["usecases"]["vib"]["dispatch"].update(max_wait="soon"),
        "usecases.vib.dispatch.max_wait",
        ["duration", "'soon'"],
    ),
    "bad store url": (
        lambda d: d["sites"]["edge"].update(sample_store="mysql://x"),
        "sites.edge.sample_store",
        ["chdb:///dir", "mysql://x"],
    ),
    "placement on unknown site": (
        lambda d: d["usecases"]["vib"].update(placement={"infer": "cloud"}),
        "usecases.vib.placement.infer",
        ["['edge']", "'cloud'"],
    ),
    "model input no stage makes": (
        lambda d: d["usecases"]["vib"]["model"].update(inputs=["a", "c"]),
        "usecases.vib.model.inputs.1",
        ["['a', 'b']", "'c'"],
    ),
    "model width does not fit": (
        lambda d: d["usecases"]["vib"]["input"]["schema"].update(c="float"),
        "usecases.vib.model",
        ["takes 2 columns", "gives 3"],
    ),
    "condition on a column that is not there": (
        lambda d: d["usecases"]["vib"]["sampling"].update(keep_when="score > 0.5"),
        "usecases.vib.sampling.keep_when",
        ["score"],
    ),
    "missing model file": (
        lambda d: d["usecases"]["vib"]["model"].update(path="nowhere.onnx"),
        "usecases.vib.model.path",
        ["does not exist"],
    ),
    "connector of unknown kind": (
        lambda d: d["usecases"]["vib"].update(connectors=[{"kind": "ftp", "path": "x"}]),
        "usecases.vib.connectors.0",
        ["csv", "logfile", "http", "sql", "kafka", "'ftp'"],
    ),
    "csv encoding unknown": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[{"kind": "csv", "path": "in/*.csv", "encoding": "klingon"}]
        ),
        "usecases.vib.connectors.0.encoding",
        ["text encoding", "'klingon'"],
    ),
    "log pattern without groups for the schema": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[
                {"kind": "logfile", "path": "a.log", "pattern": r"(?P<machine>\S+) (?P<a>\S+)"}
            ]
        ),
        "usecases.vib.connectors.0.pattern",
        ["named groups", "['ts', 'b']"],
    ),
    "log pattern that is no regex": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[{"kind": "logfile", "path": "a.log", "pattern": "(?P<ts>"}]
        ),
        "usecases.vib.connectors.0.pattern",
        ["regular expression", "'(?P<ts>'"],
    ),
    "http with interval and cron": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[
                {"kind": "http", "url": "http://127.0.0.1/x", "every": "1m", "cron": "0 * * * *"}
            ]
        ),
        "usecases.vib.connectors.0",
        ["exactly one of 'every'", "'cron'"],
    ),
    "http cron that is no schedule": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[{"kind": "http", "url": "http://127.0.0.1/x", "cron": "every day"}]
        ),
        "usecases.vib.connectors.0.cron",
        ["cron expression", "'every day'"],
    ),
    "http records path that is no JMESPath": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[
                {"kind": "http", "url": "http://127.0.0.1/x", "every": "1m", "records": "data[["}
            ]
        ),
        "usecases.vib.connectors.0.records",
        ["JMESPath", "'data[['"],
    ),
    "sql without table or query": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[{"kind": "sql", "url": "sqlite:///x.db", "cursor": "id"}]
        ),
        "usecases.vib.connectors.0",
        ["exactly one of 'table' or 'query'"],
    ),
    "two connectors with one name": (
        lambda d: d["usecases"]["vib"].update(
            connectors=[{"kind": "csv", "path": "a.csv"}, {"kind": "csv", "path": "b.csv"}]
        ),
        "usecases.vib.connectors.1.name",
        ["unique", "'csv' twice"],
    ),
    "mqtt topic template with an unknown field": (
        lambda d: d["usecases"]["vib"].update(
            outputs=[{"kind": "mqtt", "topic": "plant/{machine}/x"}]
        ),
        "usecases.vib.outputs.0.topic",
        ["outputs.<name>", "{machine}"],
    ),
    "debounce with nothing to debounce on": (
        lambda d: d["usecases"]["vib"].update(
            outputs=[{"kind": "file", "path": "out", "debounce": {"max_keys": 5}}]
        ),
        "usecases.vib.outputs.0.debounce",
        ["'every'", "'on_change'"],
    ),
    "output filter on a column that is not there": (
        lambda d: d["usecases"]["vib"].update(
            outputs=[{"kind": "file", "path": "out", "when": "nosuch > 1"}]
        ),
        "usecases.vib.outputs.0.when",
        ["nosuch"],
    ),
    "scale policy upside down": (
        lambda d: d["sites"]["edge"].update(
            pipeline={"scale": {"out_above": 100, "in_below": 500}}
        ),
        "sites.edge.pipeline.scale",
        ["in_below (500) below out_above (100)"],
    ),
    "unknown aggregation": (
        lambda d: d["usecases"]["vib"].update(
            reduction={"kind": "aggregate", "fields": {"a": ["mean", "median"]}}
        ),
        "usecases.vib.reduction.fields",
        ["quantile(q)", "'median'"],
    ),
    "quantile out of range": (
        lambda d: d["usecases"]["vib"].update(
            reduction={"kind": "aggregate", "fields": {"a": ["quantile(95)"]}}
        ),
        "usecases.vib.reduction.fields",
        ["q in [0, 1]", "'quantile(95)'"],
    ),
    "hop that does not divide the window": (
        lambda d: d["usecases"]["vib"].update(
            dispatch={"kind": "sliding", "size": "10s", "hop": "3s"}
        ),
        "usecases.vib.dispatch.hop",
        ["divides the window size", "0:00:03"],
    ),
    "sessions with corrections": (
        lambda d: d["usecases"]["vib"].update(
            dispatch={"kind": "session", "gap": "5s", "late": "correction"}
        ),
        "usecases.vib.dispatch.late",
        ["'deadletter' for session windows"],
    ),
    "cron that is no schedule": (
        lambda d: d["usecases"]["vib"].update(dispatch={"kind": "cron", "schedule": "nightly"}),
        "usecases.vib.dispatch.schedule",
        ["cron expression", "'nightly'"],
    ),
    "cron in an unknown zone": (
        lambda d: d["usecases"]["vib"].update(
            dispatch={"kind": "cron", "schedule": "0 2 * * *", "timezone": "Mars/Olympus"}
        ),
        "usecases.vib.dispatch.timezone",
        ["IANA time zone", "'Mars/Olympus'"],
    ),
    "condition with both thresholds": (
        lambda d: d["usecases"]["vib"].update(
            dispatch={"kind": "condition", "field": "a", "above": 1, "below": 0}
        ),
        "usecases.vib.dispatch",
        ["exactly one of 'above' or 'below'"],
    ),
    "condition re-arm level above the threshold": (
        lambda d: d["usecases"]["vib"].update(
            dispatch={"kind": "condition", "field": "a", "above": 1, "clear": 2}
        ),
        "usecases.vib.dispatch.clear",
        ["re-arm level at or below 'above' (1.0)", "2.0"],
    ),
    "condition on a field that is not numeric": (
        lambda d: d["usecases"]["vib"].update(
            dispatch={"kind": "condition", "field": "machine", "above": 1}
        ),
        "usecases.vib.dispatch.field",
        ["numeric input field", "'str'"],
    ),
    "stateful reduction of a column no stage makes": (
        lambda d: d["usecases"]["vib"].update(
            reduction={"kind": "identity", "stateful": {"diff": ["c"]}}
        ),
        "usecases.vib.reduction.stateful.diff",
        ["['a', 'b']", "'c'"],
    ),
    "reduction entry point that does not import": (
        lambda d: d["usecases"]["vib"].update(
            reduction={"kind": "python", "entrypoint": "no_such_pkg.x:f", "columns": ["a", "b"]}
        ),
        "usecases.vib.reduction.entrypoint",
        ["cannot import module 'no_such_pkg.x'"],
    ),
    "pre-model file missing": (
        lambda d: d["usecases"]["vib"].update(
            reduction={"kind": "onnx", "path": "pre.onnx", "inputs": ["a"], "columns": ["a", "b"]}
        ),
        "usecases.vib.reduction.path",
        ["pre.onnx"],
    ),
    "watched column that does not exist": (
        lambda d: d["usecases"]["vib"].update(
            monitoring={"reference": {"kind": "model"}, "watch": {"c": {}}}
        ),
        "usecases.vib.monitoring.watch.c",
        ["a numeric feature or scalar model output", "'c'"],
    ),
    "drift without a reference": (
        lambda d: d["usecases"]["vib"].update(
            monitoring={"watch": {"a": {"ks": {"warning": 0.1}}}}
        ),
        "usecases.vib.monitoring.reference",
        ["a reference", "found none"],
    ),
    "thresholds in the wrong order": (
        lambda d: d["usecases"]["vib"].update(
            monitoring={"watch": {"a": {"null_rate": {"warning": 0.5, "critical": 0.1}}}}
        ),
        "usecases.vib.monitoring.watch.a.null_rate",
        ["critical (0.1) at least warning (0.5)"],
    ),
    "accuracy of a feature": (
        lambda d: d["usecases"]["vib"].update(
            monitoring={"accuracy": {"output": "a", "thresholds": {"warning": 1}}}
        ),
        "usecases.vib.monitoring.accuracy.output",
        ["a numeric scalar model output", "'a'"],
    ),
    "lifecycle without accuracy": (
        lambda d: d["usecases"]["vib"].update(lifecycle={"min_labels": 10}),
        "usecases.vib.lifecycle",
        ["monitoring.accuracy", "found none"],
    ),
    "training entry point that is not module:function": (
        lambda d: d["usecases"]["vib"].update(
            monitoring={"accuracy": {"output": "y", "thresholds": {"warning": 1}}},
            lifecycle={"training": {"entrypoint": "train.py"}},
        ),
        "usecases.vib.lifecycle.training.entrypoint",
        ["train.py"],
    ),
    "sasl without credentials": (
        lambda d: d["sites"]["edge"]["kafka"].update(security={"protocol": "sasl_ssl"}),
        "sites.edge.kafka.security",
        ["sasl"],
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_validate_refuses_mistakes_naming_file_path_expected_and_found(folder, mistake):
    breaker, yaml_path, words = MISTAKES[mistake]
    doc = yaml.safe_load(GOOD)
    breaker(doc)
    code, out, path = _validate(folder, yaml.safe_dump(doc, sort_keys=False))
    flat = _flat(out)
    assert code != 0, out
    assert str(path) in flat.replace(" ", "") or str(path) in flat
    assert f"{yaml_path}:" in flat, flat
    for word in words:
        assert word in flat, (word, flat)


def test_errors_carry_the_line_of_the_offending_key(folder):
    text = GOOD.replace("max_records: 64", "max_records: -3")
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source="plant.yaml", base_dir=folder)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "max_records" in t)
    assert f"plant.yaml:{line}: usecases.vib.dispatch.max_records" in str(info.value)


def test_environment_variables_expand_and_a_missing_one_is_named(folder, monkeypatch):
    monkeypatch.setenv("TEST_BOOTSTRAP", "127.0.0.1:19999")
    topo = parse_topology(GOOD, base_dir=folder)
    assert topo.sites["edge"].kafka.bootstrap == "127.0.0.1:19999"
    with pytest.raises(
        TopologyError, match=r"sites\.edge\.sample_store: environment variable STORE_DIR"
    ):
        parse_topology(
            GOOD.replace("chdb:///tmp/never-opened", "chdb://${STORE_DIR}"), base_dir=folder
        )


def test_invalid_yaml_names_the_line():
    with pytest.raises(TopologyError, match=r"x\.yaml:\d+: not valid YAML"):
        parse_topology("name: a\nsites: [\n", source="x.yaml")


def test_several_sites_need_every_stage_placed(folder):
    doc = yaml.safe_load(GOOD)
    doc["sites"]["cloud"] = dict(doc["sites"]["edge"])
    doc["usecases"]["vib"]["placement"] = {
        "connectors": "edge",
        "dispatch": "edge",
        "infer": "cloud",
    }
    with pytest.raises(TopologyError, match=r"usecases\.vib\.placement\.store: .*found none"):
        parse_topology(yaml.safe_dump(doc), base_dir=folder)
    doc["usecases"]["vib"]["placement"]["store"] = "cloud"
    doc["links"] = [{"source": "edge", "target": "cloud", "secure": False}]
    topo = parse_topology(yaml.safe_dump(doc), base_dir=folder)  # multi-site is expressible
    assert topo.site_of("vib", "infer") == "cloud"


def test_defaults_nest_and_environment_values_are_taken_verbatim(monkeypatch):
    from mlexec.topologies.loader import expand_env

    monkeypatch.delenv("OUTER", raising=False)
    monkeypatch.delenv("INNER", raising=False)
    assert expand_env("${OUTER:-a${INNER:-b}c}") == "abc"
    monkeypatch.setenv("INNER", "B")
    assert expand_env("${OUTER:-a${INNER:-b}c}") == "aBc"
    monkeypatch.setenv("OUTER", "${INNER}")
    assert expand_env("${OUTER:-x}") == "${INNER}"
    assert expand_env("cost $5, ${ not a variable") == "cost $5, ${ not a variable"


def test_topology_dir_names_the_files_folder_so_the_demo_finds_what_make_demo_wrote(
    monkeypatch, tmp_path
):
    from mlexec.demo import demo_topology_path

    monkeypatch.delenv("MLEXEC_DEMO_DIR", raising=False)
    monkeypatch.setenv("TOPOLOGY_DIR", "/elsewhere")  # the file's folder, whatever the env says
    topo = load_topology(demo_topology_path())
    checkout = demo_topology_path().resolve().parent.parent
    made = Path(topo.usecases["readings"].model.path).resolve()  # type: ignore[union-attr]
    assert made == checkout / ".mlexec" / "demo" / "reading-anomaly.onnx"
    assert Path(topo.sites["edge"].state_dir).resolve() == checkout / ".mlexec" / "demo" / "state"
