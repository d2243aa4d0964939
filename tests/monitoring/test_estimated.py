"""Accuracy before labels (CBPE): a covariate shift lowers the estimate as it lowers the truth."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.dashboard import DashboardData
from mlexec.monitoring.estimate import estimate, fit_calibration, isotonic
from mlexec.monitoring.monitor import Monitor, latest
from mlexec.runtime.run import prepare_site, run_site
from mlexec.topologies import TopologyError, load_topology, plan_topology

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
T0 = 1_900_000_000_000 - 1_900_000_000_000 % HOUR_MS  # an hour's start, in 2030
PER_HOUR = 4_000
#: The spread of x0 hour by hour: ever closer to the boundary, ever more often wrong.
SPREADS = [1.0, 1.0, 0.8, 0.6, 0.5, 0.42, 0.36]


def _truth(x0: np.ndarray) -> np.ndarray:
    """P(y = 1 | x): what the labels are drawn from, the same every hour (no concept shift)."""
    return 1.0 / (1.0 + np.exp(-4.0 * x0))


def _classifier(folder: Path, rng: np.random.Generator) -> Path:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([rng.normal(size=5000), rng.normal(size=5000)]).astype(np.float32)
    y = (rng.uniform(size=5000) < _truth(x[:, 0])).astype(np.int64)
    path = folder / "classifier.onnx"
    path.write_bytes(to_onnx(LogisticRegression().fit(x, y), x[:1]).SerializeToString())
    return path


def _topology(tmp: Path, bootstrap: str, uid: str, model: Path) -> Path:
    at = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat()  # noqa: E731
    doc: dict[str, Any] = {
        "name": f"cbpe{uid}",
        "sites": {
            "here": {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": f"chdb://{tmp}/chdb",
                "state_dir": f"{tmp}/state",
            }
        },
        "usecases": {
            f"churn{uid}": {
                "input": {
                    "topic": f"raw-cbpe-{uid}",
                    "partitions": 2,
                    "key": "id",
                    "time": "ts",
                    "max_ahead": "3650d",
                    "schema": {"id": "str", "ts": "timestamp", "x0": "float", "x1": "float"},
                },
                "dispatch": {"kind": "microbatch", "max_records": 512},
                "reduction": {"kind": "identity"},
                "model": {"name": "churn", "version": "1", "path": str(model)},
                "sampling": {"rate": 1.0},
                "monitoring": {
                    "window": "1h",
                    "every": "1h",
                    "reference": {"kind": "range", "start": at(T0), "end": at(T0 + HOUR_MS)},
                    "accuracy": {
                        "output": "output_label",
                        "metric": "error_rate",
                        "thresholds": {"warning": 0.2},
                        "estimated": True,
                        "probabilities": "output_probability",
                    },
                },
            }
        },
    }
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_estimated_accuracy_tracks_the_realized_and_alerts_before_the_labels(broker, tmp_path, uid):
    rng = np.random.default_rng(21)
    path = _topology(tmp_path, broker.bootstrap, uid, _classifier(tmp_path, rng))
    topology = load_topology(path)
    plan = plan_topology(topology)
    (uc,) = plan.usecases.values()
    conf = client_config(topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    records, labels = [], {}
    for hour, spread in enumerate(SPREADS):
        x0 = rng.normal(scale=spread, size=PER_HOUR)
        x1 = rng.normal(size=PER_HOUR)
        y = (rng.uniform(size=PER_HOUR) < _truth(x0)).astype(int)
        for i in range(PER_HOUR):
            rid = f"h{hour}-{i}"
            ts = T0 + hour * HOUR_MS + i * (HOUR_MS // PER_HOUR)
            records.append({"id": rid, "ts": ts, "x0": float(x0[i]), "x1": float(x1[i])})
            labels[rid] = (hour, ts, int(y[i]))
    produce_records(conf, uc.raw_topic, [(r["id"].encode(), orjson.dumps(r)) for r in records])
    run_site(prepare_site(plan, "here"), recovery=False)

    def send_labels(hours: set[int]) -> None:  # by key and event time, as a CRM would
        chosen = [(k, ts, y) for k, (h, ts, y) in labels.items() if h in hours]
        produce_records(
            conf,
            uc.feedback_topic,
            [(k.encode(), orjson.dumps({"key": k, "time": ts, "label": y})) for k, ts, y in chosen],
        )

    send_labels({0})  # only the reference hour is labelled yet
    store_url = topology.sites["here"].sample_store
    ends = [T0 + (h + 1) * HOUR_MS for h in range(1, len(SPREADS))]
    with open_store(store_url) as store:
        stored = store.query(f"SELECT count() AS n FROM mlexec.{uc.table} FINAL")
        assert int(stored["n"][0]) == len(records)  # every record scored and sampled
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        before = [monitor.run_once(_at(end))[0] for end in ends]
    subject = "1/production"
    estimated = [ev.values[(subject, "estimated_accuracy")] for ev in before]
    assert all((subject, "error_rate") not in ev.values for ev in before)  # no labels yet
    early = [ev for ev in before if any(a.statistic == "estimated_error_rate" for a in ev.alerts)]
    assert early, [round(e, 3) for e in estimated]  # the estimate alerts, with no label there
    first_alert = before.index(early[0])

    # the labels arrive late: the realized accuracy of the same windows, afterwards
    send_labels(set(range(1, len(SPREADS))))
    with open_store(store_url) as store:
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        after = [monitor.run_once(_at(end))[0] for end in ends]
        shown = latest(store, uc)  # what monitor show prints
        board = DashboardData(plan, "here", store, hours=24 * 365 * 10).usecase(uc.name)
    performance = set(shown["performance"]["statistic"].to_list())
    assert {"error_rate", "estimated_error_rate", "estimated_roc_auc"} <= performance
    assert not set(shown["drift"]["statistic"].to_list()) & performance
    drawn = board["performance"]["series"]
    assert len(drawn["1/production estimated error rate"]["v"]) == len(ends)
    assert len(drawn["1/production error rate"]["v"]) == len(ends)
    realized = [1.0 - ev.values[(subject, "error_rate")] for ev in after]
    assert realized[0] > 0.85 and realized[-1] < 0.78  # the truth fell from ~0.9 to ~0.75
    gaps = [abs(e - r) for e, r in zip(estimated, realized, strict=True)]
    assert max(gaps) <= 0.03, list(zip(estimated, realized, strict=True))
    # the realized alert could only come with the labels, days later in real life; it
    # flags the same shift (at a window within one of the estimate's first alert)
    flagged = [ev for ev in after if any(a.statistic == "error_rate" for a in ev.alerts)]
    assert flagged and abs(after.index(flagged[0]) - first_alert) <= 1


def test_the_calibration_equals_scikit_learns_isotonic_and_fixes_a_miscalibrated_model():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(5)
    x, y = rng.uniform(size=3000), (rng.uniform(size=3000) < 0.2 + 0.6 * rng.uniform(size=3000))
    xs, ys = isotonic(x, y.astype(float))
    fitted = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    grid = np.linspace(0, 1, 201)
    np.testing.assert_allclose(np.interp(grid, xs, ys), fitted.predict(grid), atol=1e-12)

    # scores squared: overconfident on one side; the estimate from raw scores would be wrong
    truth = rng.uniform(size=20_000)
    label = (rng.uniform(size=20_000) < truth).astype(int)
    calibration = fit_calibration(truth[:10_000] ** 2, label[:10_000])
    got = estimate(truth[10_000:] ** 2, None, calibration)
    predicted = (truth[10_000:] ** 2 >= 0.5).astype(int)
    assert abs(got["accuracy"] - np.mean(predicted == label[10_000:])) < 0.02


def test_estimated_accuracy_is_refused_without_probabilities_or_a_labelled_range(tmp_path):
    model = tmp_path / "m.onnx"
    base = _topology(tmp_path, "127.0.0.1:9092", "x", model).read_text()
    doc = yaml.safe_load(base)
    acc = doc["usecases"]["churnx"]["monitoring"]["accuracy"]
    del acc["probabilities"]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(
        TopologyError, match="accuracy.probabilities: expected the output of class probabilities"
    ):
        load_topology(tmp_path / "a.yaml")
    doc = yaml.safe_load(base)
    doc["usecases"]["churnx"]["monitoring"]["accuracy"]["metric"] = "mae"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(TopologyError, match="metric 'mae' is estimated from the features"):
        load_topology(tmp_path / "b.yaml")


#: The spread of x0 hour by hour, for the regressor: ever more rows where it is noisier.
REGRESSOR_SPREADS = [1.0, 1.0, 1.2, 1.4, 1.6]


def _noise(x0: np.ndarray) -> np.ndarray:
    """The label noise's scale: the model is worse the farther x0 is from 0."""
    return 0.1 + 0.5 * np.abs(x0)


def _regressor(folder: Path, rng: np.random.Generator) -> Path:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    x = rng.normal(size=(5000, 2)).astype(np.float32)
    y = 2.0 * x[:, 0] + x[:, 1] + rng.normal(size=5000) * _noise(x[:, 0])
    path = folder / "regressor.onnx"
    path.write_bytes(to_onnx(LinearRegression().fit(x, y), x[:1]).SerializeToString())
    return path


def test_a_regressors_estimated_error_tracks_the_realized_before_the_labels(broker, tmp_path, uid):
    """DLE: the inputs move where the model is noisier; the learned error says so first."""
    rng = np.random.default_rng(8)
    path = _topology(tmp_path, broker.bootstrap, uid, _regressor(tmp_path, rng))
    doc = yaml.safe_load(path.read_text())
    (uc_doc,) = doc["usecases"].values()
    uc_doc["monitoring"]["accuracy"] = {
        "output": "variable",
        "metric": "mae",
        "thresholds": {"warning": 0.55},
        "estimated": True,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    topology = load_topology(path)
    plan = plan_topology(topology)
    (uc,) = plan.usecases.values()
    conf = client_config(topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    per_hour = 3000
    records, labels = [], {}
    for hour, spread in enumerate(REGRESSOR_SPREADS):
        x0 = rng.normal(scale=spread, size=per_hour)
        x1 = rng.normal(size=per_hour)
        y = 2.0 * x0 + x1 + rng.normal(size=per_hour) * _noise(x0)
        for i in range(per_hour):
            rid = f"h{hour}-{i}"
            ts = T0 + hour * HOUR_MS + i * (HOUR_MS // per_hour)
            records.append({"id": rid, "ts": ts, "x0": float(x0[i]), "x1": float(x1[i])})
            labels[rid] = (hour, ts, float(y[i]))
    produce_records(conf, uc.raw_topic, [(r["id"].encode(), orjson.dumps(r)) for r in records])
    run_site(prepare_site(plan, "here"), recovery=False)

    def send_labels(hours: set[int]) -> None:
        chosen = [(k, ts, y) for k, (h, ts, y) in labels.items() if h in hours]
        produce_records(
            conf,
            uc.feedback_topic,
            [(k.encode(), orjson.dumps({"key": k, "time": ts, "label": y})) for k, ts, y in chosen],
        )

    send_labels({0})
    store_url = topology.sites["here"].sample_store
    ends = [T0 + (h + 1) * HOUR_MS for h in range(1, len(REGRESSOR_SPREADS))]
    with open_store(store_url) as store:
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        before = [monitor.run_once(_at(end))[0] for end in ends]
    subject = "1/production"
    estimated = [ev.values[(subject, "estimated_mae")] for ev in before]
    assert all((subject, "mae") not in ev.values for ev in before)  # no labels yet
    assert all(
        ev.values[(subject, "estimated_rmse")] >= e for ev, e in zip(before, estimated, strict=True)
    )
    early = [ev for ev in before if any(a.statistic == "estimated_mae" for a in ev.alerts)]
    assert early, [round(e, 3) for e in estimated]

    send_labels(set(range(1, len(REGRESSOR_SPREADS))))
    with open_store(store_url) as store:
        monitor = Monitor(plan, "here", store)
        monitor.prepare()
        after = [monitor.run_once(_at(end))[0] for end in ends]
    realized = [ev.values[(subject, "mae")] for ev in after]
    assert realized[-1] > 1.3 * realized[0]  # the error grew as the inputs moved
    gaps = [abs(e - r) / r for e, r in zip(estimated, realized, strict=True)]
    print(
        "estimated vs realized MAE per window:",
        [(round(e, 3), round(r, 3)) for e, r in zip(estimated, realized, strict=True)],
    )
    assert max(gaps) <= 0.08, list(zip(estimated, realized, strict=True))
    flagged = [ev for ev in after if any(a.statistic == "mae" for a in ev.alerts)]
    assert flagged and before.index(early[0]) <= after.index(flagged[0])


def test_rows_without_probabilities_are_left_out_and_a_concept_shift_is_not_seen():
    rng = np.random.default_rng(9)
    p = rng.uniform(size=8000)
    label = (rng.uniform(size=8000) < p).astype(int)
    calibration = fit_calibration(p[:4000], label[:4000])
    window = p[4000:].copy()
    window[::10] = np.nan  # a model that gave NaN for some rows
    got = estimate(window, None, calibration)
    kept = ~np.isnan(window)
    realized = np.mean((window[kept] >= 0.5).astype(int) == label[4000:][kept])
    assert abs(got["accuracy"] - realized) < 0.02 and got["rows"] == kept.sum()
    # what CBPE cannot see: the same inputs now mean the other label
    flipped = 1 - label[4000:]
    assert np.mean((p[4000:] >= 0.5).astype(int) == flipped) < 0.3  # the truth collapsed
    assert estimate(p[4000:], None, calibration)["accuracy"] > 0.7  # the estimate did not
