"""A sequence model over a tumbling window: each key's window of records → ``[T, F]``.

The model weighs every step of the sequence differently, so an order other than event
time, padding at the wrong end or the wrong records kept would change its answer. The
expected answers come from this test's own windowing of the raw topic, fed to
onnxruntime directly; every raw record is accounted for by id in the ``records`` of
exactly one prediction.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import yaml
from onnx import TensorProto, helper

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.runtime.run import prepare_site, run_site
from mlexec.topologies import load_topology, plan_topology
from tests.operators.test_model_contract import _refused, _topology

T0 = 1_900_000_000_000
STEPS, FIELDS = 8, ["a", "b", "c"]
WINDOW_MS = 2_000


def sequence_model(path: Path, steps: int = STEPS) -> Path:
    """y = tanh(Σ_t Σ_f seq[n, t, f] · W[t, f]): every position weighs differently."""
    weights = np.random.default_rng(3).normal(size=(1, steps, len(FIELDS))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["seq", "w"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axes"], ["total"], keepdims=0),
            helper.make_node("Tanh", ["total"], ["y"]),
        ],
        "sequence",
        [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", steps, len(FIELDS)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel()),
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _site(tmp: Path, bootstrap: str, uid: str, model: Path) -> Path:
    doc = {
        "name": f"t{uid}",
        "sites": {
            "here": {
                "kafka": {"bootstrap": bootstrap},
                "sample_store": f"chdb://{tmp}/chdb",
                "state_dir": f"{tmp}/state",
            }
        },
        "usecases": {
            f"seq{uid}": {
                "input": {
                    "topic": f"raw-{uid}",
                    "partitions": 2,
                    "key": "machine",
                    "time": "ts",
                    "max_ahead": "3650d",
                    "schema": {
                        "machine": "str",
                        "ts": "timestamp",
                        **dict.fromkeys(FIELDS, "float"),
                    },
                },
                "dispatch": {"kind": "tumbling", "size": f"{WINDOW_MS}ms", "lateness": "1s"},
                "reduction": {"kind": "sequence", "fields": FIELDS, "length": STEPS},
                "model": {"name": "seq", "version": "1", "path": str(model)},
                "sampling": {"rate": 1.0},
            }
        },
    }
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_sequence_model_over_a_tumbling_window_equals_onnxruntime(broker, tmp_path, uid):
    model = sequence_model(tmp_path / "seq.onnx")
    path = _site(tmp_path, broker.bootstrap, uid, model)
    topology = load_topology(path)
    plan = plan_topology(topology, str(path))
    (uc,) = plan.usecases.values()
    conf = client_config(topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    rng = random.Random(5)
    rows = []
    for i in range(900):  # 3 keys at one pace; m2 keeps a quarter: windows of ~4 and ~17
        machine = f"m{i % 3}"
        if machine == "m2" and rng.random() < 0.75:
            continue
        ts = T0 + i * 40 + rng.randint(0, 30)  # a little out of order, within the lateness
        rows.append(
            {"machine": machine, "ts": ts, **{f: round(rng.gauss(0, 1), 4) for f in FIELDS}}
        )
    produce_records(conf, uc.raw_topic, [(r["machine"].encode(), orjson.dumps(r)) for r in rows])
    run_site(prepare_site(plan, "here"), recovery=False)

    raw = {
        f"{uc.raw_topic}:{p}:{o}": orjson.loads(v or b"")
        for _k, v, _h, p, o in read_topic(conf, uc.raw_topic)
    }
    preds = [orjson.loads(v or b"") for _k, v, *_ in read_topic(conf, uc.predictions_topic)]
    windows: dict[str, list[str]] = defaultdict(list)
    for rid, rec in raw.items():
        start = rec["ts"] - rec["ts"] % WINDOW_MS
        windows[f"{uc.name}:{rec['machine']}:{start}"].append(rid)
    dead = [dict(h)["mlexec.reason"] for _k, _v, h, *_ in read_topic(conf, uc.deadletter_topic)]
    assert dead == [], dead[:3]
    by_id = {p["id"]: p for p in preds}
    assert len(by_id) == len(preds) == len(windows), "one prediction per key and window"
    assert set(by_id) == set(windows)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    seen: list[str] = []
    for wid, members in windows.items():
        pred = by_id[wid]
        assert sorted(pred["records"]) == sorted(members)
        seen += pred["records"]
        ordered = sorted(members, key=lambda r: (raw[r]["ts"], r))[-STEPS:]
        seq = np.zeros((1, STEPS, len(FIELDS)), dtype=np.float32)
        values = np.array([[raw[r][f] for f in FIELDS] for r in ordered], dtype=np.float32)
        seq[0, STEPS - len(values) :] = values  # padded at the start: the latest step last
        want = float(session.run(None, {"seq": seq})[0][0])
        assert abs(pred["outputs"]["y"] - want) <= 1e-6 * max(1.0, abs(want)), wid
    assert sorted(seen) == sorted(raw), "every record in exactly one prediction"
    assert any(len(m) < STEPS for m in windows.values()) and any(
        len(m) > STEPS for m in windows.values()
    )


def test_a_sequence_model_is_refused_where_its_steps_or_fields_do_not_fit(tmp_path):
    model = sequence_model(tmp_path / "seq.onnx", steps=8)
    schema = dict.fromkeys(FIELDS, "float")
    _refused(
        _topology(
            tmp_path,
            model,
            schema,
            reduction={"kind": "sequence", "fields": FIELDS, "length": 12},
            dispatch={"kind": "tumbling", "size": "2s"},
        ),
        "takes 8 steps",
        "length 12",
    )
    _refused(
        _topology(
            tmp_path,
            model,
            schema,
            reduction={"kind": "sequence", "fields": ["a", "b"], "length": 8},
            dispatch={"kind": "tumbling", "size": "2s"},
        ),
        "takes 3 fields per step",
    )
