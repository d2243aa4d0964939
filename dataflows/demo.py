"""``mlexec demo``: the whole spine from nothing, on embedded defaults.

It starts a local broker, makes synthetic sensor data (a CSV with a few broken rows;
the pressure sensor drifts in the last 30 % of the time) and two models trained on the
first 70 % (scikit-learn → ONNX), records that training data as the models' monitoring
reference, reads the CSV into the raw topic with the topology's CSV connector (broken
rows are dead-lettered there), runs the demo topology's site to the end, delivers
alarms with its file output, sends the true labels to the feedback topic, runs the
monitoring once, and reports what happened. It stops the broker before it returns.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from mlexec.connectors.broker import LocalBroker
from mlexec.connectors.kafka import client_config, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.connectors.samplestore import SampleStore, open_store
from mlexec.errors import MlexecError
from mlexec.lifecycle.reaction import follow
from mlexec.monitoring.monitor import Evaluation, Monitor
from mlexec.outputs import prepare_outputs, run_outputs
from mlexec.runtime.connect import prepare_connectors, run_connectors
from mlexec.runtime.run import prepare_resources, prepare_site, run_site
from mlexec.topologies import load_topology, plan_topology
from mlexec.topologies.plan import Plan

__all__ = [
    "DemoReport",
    "make_models",
    "make_sensor_csv",
    "run_demo",
    "sensor_frame",
    "training_frame",
]

FEATURES = ["temperature", "vibration", "current", "rpm", "pressure"]
#: The share of the time (from the start) the models are trained on; the rest is served.
TRAINED = 0.7
WINDOW_FIELDS = {
    "temperature": ["mean", "max"],
    "vibration": ["mean", "std", "max", "rms"],
    "current": ["mean", "std"],
    "rpm": ["mean", "min"],
}


def sensor_frame(
    machines: int = 20, seconds: int = 1000, seed: int = 7, end_ms: int | None = None
) -> pl.DataFrame:
    """Synthetic readings, one per machine and second, ending now; ~4 % anomalous."""
    rng = np.random.default_rng(seed)
    n = machines * seconds
    machine = np.repeat([f"m-{i:02d}" for i in range(machines)], seconds)
    end = end_ms if end_ms is not None else int(time.time()) // 60 * 60_000
    start = end - seconds * 1000
    ts = start + np.tile(np.arange(seconds) * 1000, machines)
    anomaly = np.zeros(n, dtype=bool)
    for _ in range(machines * 2):  # episodes of 10-40 s
        at = rng.integers(0, n - 40)
        anomaly[at : at + rng.integers(10, 40)] = True
    temperature = rng.normal(65.0, 2.0, n) + anomaly * rng.normal(12.0, 3.0, n)
    vibration = np.abs(rng.normal(1.0, 0.15, n) + anomaly * rng.normal(1.5, 0.5, n))
    current = rng.normal(12.0, 0.8, n) + anomaly * rng.normal(3.0, 1.0, n)
    rpm = rng.normal(1480.0, 15.0, n) - anomaly * rng.normal(120.0, 30.0, n)
    # the pressure sensor drifts up to +0.8 bar (4 standard deviations) over the last 30 %
    progress = np.tile(np.arange(seconds) / seconds, machines)
    pressure = rng.normal(4.0, 0.2, n) + np.clip((progress - TRAINED) / (1 - TRAINED), 0, 1) * 0.8
    frame = pl.DataFrame(
        {
            "machine": machine,
            "ts": ts,
            "temperature": temperature.round(3),
            "vibration": vibration.round(4),
            "current": current.round(3),
            "rpm": rpm.round(1),
            "pressure": pressure.round(3),
            "anomaly": anomaly,
        }
    )
    return frame.sort(["ts", "machine"])  # a live stream: readings in time order


def make_sensor_csv(frame: pl.DataFrame, path: Path, broken_every: int = 997) -> int:
    """Write the readings as CSV, every ``broken_every``-th with an unreadable value."""
    rows = frame.drop("anomaly").rows()
    broken = 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(frame.drop("anomaly").columns)
        for i, row in enumerate(rows):
            if broken_every and i % broken_every == broken_every - 1:
                row = (*row[:2], "n/a", *row[3:])
                broken += 1
            writer.writerow(row)
    return broken


def window_frame(frame: pl.DataFrame, size_ms: int = 10_000) -> pl.DataFrame:
    """Per machine and tumbling window, the demo's declared aggregations (polars)."""
    from mlexec.operators.reduce import aggregate_expression

    exprs = [aggregate_expression(a, f) for f, aggs in WINDOW_FIELDS.items() for a in aggs]
    return (
        frame.with_columns(window=pl.col("ts") - pl.col("ts") % size_ms, time=pl.col("ts"))
        .sort(["machine", "window", "ts"])
        .group_by(["machine", "window"], maintain_order=True)
        .agg(*exprs, pl.col("anomaly").any())
    )


def training_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The readings of the first ``TRAINED`` share of the time: what the models learn from."""
    start, end = frame["ts"].min(), frame["ts"].max()
    assert isinstance(start, int) and isinstance(end, int)
    return frame.filter(pl.col("ts") < start + (end - start) * TRAINED)


def make_models(frame: pl.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Train the reading and window models on ``frame`` and export them to ONNX."""
    try:
        from skl2onnx import to_onnx
        from sklearn.ensemble import IsolationForest
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:
        msg = "the demo trains its models with scikit-learn: pip install 'mlexec[demo]'"
        raise MlexecError(msg) from exc
    x = frame.select(FEATURES).to_numpy().astype(np.float32)
    y = frame["anomaly"].to_numpy().astype(np.int64)
    clf = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=60, random_state=0)
    )
    clf.fit(x, y)
    reading = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    windows = window_frame(frame)
    columns = [f"{f}_{a}" for f, aggs in WINDOW_FIELDS.items() for a in aggs]
    xw = windows.select(columns).to_numpy().astype(np.float32)
    forest = IsolationForest(n_estimators=50, contamination=0.05, random_state=0).fit(xw)
    window = to_onnx(forest, xw[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    paths = {
        "reading-anomaly": out_dir / "reading-anomaly.onnx",
        "window-anomaly": out_dir / "window-anomaly.onnx",
    }
    paths["reading-anomaly"].write_bytes(reading.SerializeToString())
    paths["window-anomaly"].write_bytes(window.SerializeToString())
    return paths


@dataclass
class DemoReport:
    """Figures the demo prints; also what its test checks."""

    records_in: int
    broken_in: int
    predictions: dict[str, int]
    deadletters: dict[str, int]
    samples: dict[str, int]
    retention: dict[str, str]
    monitoring: dict[str, pl.DataFrame]
    #: Per output: (predictions it considered, actions delivered, where to).
    actions: dict[str, tuple[int, int, str]]


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the ``with`` block (the demo topology reads them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def demo_topology_path() -> Path:
    """The embedded demo topology shipped in the ``topologies`` package."""
    return Path(str(resources.files("mlexec.topologies").joinpath("demo.yaml")))


def _monitor(plan: Plan, store: SampleStore, trained_on: pl.DataFrame) -> list[Evaluation]:
    """Record the training data as each model's reference, then evaluate once."""
    monitor = follow(Monitor(plan, "edge", store))
    monitor.prepare()
    readings, windows = plan.usecases["readings"], plan.usecases["windows"]
    monitor.record_reference(readings, trained_on, monitor.reference_name(readings))
    monitor.record_reference(windows, window_frame(trained_on), monitor.reference_name(windows))
    return monitor.run_once()


def _monitoring_tables(evaluations: list[Evaluation]) -> dict[str, pl.DataFrame]:
    """Drift against the training data, accuracy against the labels, the alerts raised."""
    drift = pl.DataFrame(
        [
            {"use case": ev.usecase, "column": col, "statistic": stat, "value": round(v, 4)}
            for ev in evaluations
            for (col, stat), v in ev.values.items()
            if (col, stat) in ev.thresholds and stat not in ("error_rate", "mae", "rmse")
        ]
    )
    accuracy = pl.DataFrame(
        [
            {
                "model version": row["version"],
                "variant": row["variant"],
                "labelled samples": row["labelled"],
                "error rate": round(row["error_rate"], 4),
            }
            for ev in evaluations
            for row in ev.accuracy
        ]
    )
    alerts = pl.DataFrame(
        [{"severity": a.severity, "alert": a.message()} for ev in evaluations for a in ev.alerts]
    )
    return {
        "drift against the training data (watched values)": drift,
        "readings: accuracy against the labels on readings.feedback": accuracy,
        "alerts raised (also on mlexec.alerts)": alerts,
    }


def run_demo(work_dir: Path, machines: int = 20, seconds: int = 1000) -> DemoReport:
    """Run the demo in ``work_dir`` (wiped first) and return its report."""
    work_dir = work_dir.resolve()
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    frame = sensor_frame(machines, seconds)
    csv_path = work_dir / "sensors.csv"
    broken = make_sensor_csv(frame, csv_path)
    trained_on = training_frame(frame)
    make_models(trained_on, work_dir)

    with (
        LocalBroker() as broker,
        _environment(MLEXEC_BOOTSTRAP=broker.bootstrap, MLEXEC_DEMO_DIR=str(work_dir)),
    ):
        path = demo_topology_path()
        topology = load_topology(path)
        plan = plan_topology(topology, str(path))
        site = prepare_site(plan, "edge", source=str(path))
        conf = client_config(topology.sites["edge"].kafka)
        prepare_resources(site)
        connectors = prepare_connectors(plan, "edge", once=True)
        run_connectors(connectors, once=True)
        run_site(site)
        outputs = prepare_outputs(plan, "edge")
        run_outputs(outputs, once=True)

        predictions = {
            n: len(read_topic(conf, uc.predictions_topic)) for n, uc in plan.usecases.items()
        }
        dead = {n: len(read_topic(conf, uc.deadletter_topic)) for n, uc in plan.usecases.items()}
        # the truth arrives later, by machine and time, on the feedback topic
        truth = frame.select("machine", "ts", "anomaly").rows()
        produce_records(
            conf,
            plan.usecases["readings"].feedback_topic,
            [
                (m.encode(), orjson.dumps({"key": m, "time": t, "label": int(a)}))
                for m, t, a in truth
            ],
        )
        with open_store(topology.sites["edge"].sample_store) as store:
            evaluations = _monitor(plan, store, trained_on)

    with open_store(topology.sites["edge"].sample_store) as store:
        db = store.database
        samples, retention, monitoring = {}, {}, {}
        for n, uc in plan.usecases.items():
            table = f"`{db}`.`{uc.table}`"
            samples[n] = int(store.query(f"SELECT count() AS n FROM {table} FINAL")["n"][0])
            retention[n] = f"{uc.usecase.retention.total_seconds() / 86400:g} days"
        monitoring["readings by machine"] = store.query(
            f"""
            SELECT key AS machine, count() AS samples,
                   countIf(label = 1) AS anomalies_kept,
                   round(avg(probabilities[2]), 3) AS mean_p_anomaly,
                   round(quantile(0.99)(inference_ms), 3) AS p99_batch_ms
            FROM `{db}`.`{plan.usecases["readings"].table}` FINAL
            GROUP BY key ORDER BY anomalies_kept DESC, machine LIMIT 5"""
        )
        monitoring["windows flagged by the forest"] = store.query(
            f"""
            SELECT count() AS windows, countIf(label = -1) AS flagged,
                   round(avg(vibration_rms), 3) AS mean_vibration_rms,
                   round(avgIf(vibration_rms, label = -1), 3) AS flagged_vibration_rms
            FROM `{db}`.`{plan.usecases["windows"].table}` FINAL"""
        )
        monitoring.update(_monitoring_tables(evaluations))
    return DemoReport(
        records_in=sum(c.read for c in connectors.statuses),
        broken_in=broken,
        predictions=predictions,
        deadletters=dead,
        samples=samples,
        retention=retention,
        monitoring=monitoring,
        actions={s.output: (s.consumed, s.delivered, s.target) for s in outputs.statuses},
    )


def write_example(folder: Path, rows: int = 600, seed: int = 7) -> dict[str, Path]:
    """Files to start from: pump readings of the last hour, a classifier, labels.

    A new user brings these: a CSV, a scikit-learn model exported with skl2onnx's
    defaults, and what was found later.

    ``pumps.csv`` has ISO 8601 times with a zone and some empty ``vibration`` cells;
    ``pumps.onnx`` imputes them and says whether a reading is abnormal (a label and a
    ZipMap of probabilities); ``labels.csv`` holds what a technician found for a third
    of the readings, by pump and time.
    """
    from skl2onnx import to_onnx
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=55)
    temperature = rng.normal(60.0, 5.0, rows)
    vibration = rng.normal(0.3, 0.1, rows) + np.clip(temperature - 62.0, 0, None) * 0.05
    abnormal = (vibration > 0.42).astype(np.int64)
    lines = ["pump,ts,temperature,vibration"]
    labels = ["pump,ts,label"]
    for i in range(rows):
        at = (start + timedelta(seconds=5 * i)).isoformat()
        pump = f"pump-{i % 6}"
        cell = "" if i % 37 == 5 else f"{vibration[i]:.4f}"
        lines.append(f"{pump},{at},{temperature[i]:.3f},{cell}")
        if i % 3 == 0:
            labels.append(f"{pump},{at},{int(abnormal[i])}")
    csv_path, labels_path, model_path = (
        folder / n for n in ("pumps.csv", "labels.csv", "pumps.onnx")
    )
    csv_path.write_text("\n".join(lines) + "\n")
    labels_path.write_text("\n".join(labels) + "\n")
    x = np.column_stack([temperature, vibration]).astype(np.float32)
    x[::37, 1] = np.nan
    pipe = make_pipeline(SimpleImputer(), LogisticRegression()).fit(x, abnormal)
    model_path.write_bytes(to_onnx(pipe, x[:1]).SerializeToString())
    return {"csv": csv_path, "labels": labels_path, "model": model_path}
