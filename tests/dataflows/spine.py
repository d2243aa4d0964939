"""The spine's test topology and data: 16 float fields, good and malformed records."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import yaml

from mlexec.connectors.kafka import client_config, ensure_topics, produce_records
from mlexec.operators.testing import make_mlp
from mlexec.runtime.run import prepare_site, run_site
from mlexec.topologies import load_topology, plan_topology

FIELDS = [f"f{i}" for i in range(16)]
T0 = 1_900_000_000_000  # event times in 2030: far inside any retention


def spine_topology(
    tmp: Path,
    bootstrap: str,
    uid: str,
    dispatch: str,
    reduction: str,
    sampling: str,
    **usecase: Any,
) -> Path:
    """A one-site topology of one use case reading ``raw-<uid>``; ``usecase`` adds keys."""
    reduce = yaml.safe_load(reduction)
    if reduce["kind"] == "identity":
        width = 16
    elif reduce["kind"] == "aggregate":
        width = sum(len(a) for a in reduce["fields"].values())
    else:  # python / onnx: the columns they declare
        width = len(reduce["columns"])
    make_mlp(tmp / "model.onnx", inputs=width, hidden=(32,), seed=3)
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
            f"uc{uid}": {
                "input": {
                    "topic": f"raw-{uid}",
                    "partitions": 2,
                    "key": "sensor",
                    "time": "ts",
                    "max_ahead": "3650d",  # the test's event times are in 2030
                    "schema": {"sensor": "str", "ts": "timestamp", **{f: "float" for f in FIELDS}},
                },
                "dispatch": yaml.safe_load(dispatch),
                "reduction": reduce,
                "model": {"name": "mlp", "version": "7", "path": "model.onnx"},
                "sampling": yaml.safe_load(sampling),
                "retention": "30d",
                **usecase,
            }
        },
    }
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def identity_site(
    tmp: Path, bootstrap: str, uid: str, rate: float, batch: int = 256, **usecase: Any
) -> Path:
    """The spine topology with micro-batches of ``batch``, no reduction, sampling at ``rate``."""
    return spine_topology(
        tmp,
        bootstrap,
        uid,
        f"{{kind: microbatch, max_records: {batch}}}",
        "{kind: identity}",
        f"{{rate: {rate}}}",
        **usecase,
    )


def good_record(i: int, rng: random.Random, keys: int = 8, step_ms: int = 100) -> dict[str, Any]:
    rec: dict[str, Any] = {"sensor": f"s{i % keys}", "ts": T0 + i * step_ms}
    rec.update({f: round(rng.uniform(-3, 3), 4) for f in FIELDS})
    return rec


def malformed_record(i: int, rng: random.Random) -> tuple[bytes, str]:
    """A bad record of one of several kinds, and what it is."""
    good = good_record(i, rng)
    kind = i % 7
    if kind == 0:
        return b'{"sensor": "s1", "ts": ', "truncated JSON"
    if kind == 1:
        return b"\xff\xfe not utf-8", "not UTF-8"
    if kind == 2:
        return orjson.dumps([1, 2, 3]), "not an object"
    if kind == 3:
        good["f3"] = "high"
        return orjson.dumps(good), "string for float"
    if kind == 4:
        del good["f7"]
        return orjson.dumps(good), "missing field"
    if kind == 5:
        good["f1"] = 1e300
        return orjson.dumps(good), "beyond float32"
    good["ts"] = [1]
    return orjson.dumps(good), "list for timestamp"


def prepared(path: Path):
    """The one-site topology at ``path`` loaded, planned, and its topics created."""
    topology = load_topology(path)
    plan = plan_topology(topology)
    (uc,) = plan.usecases.values()
    conf = client_config(topology.sites["here"].kafka)
    ensure_topics(conf, plan.topics_at("here"))
    return topology, plan, uc, conf


def feed(path: Path, n: int, bad_every: int, seed: int = 1, start: int = 0):
    """Produce ``n`` records (every ``bad_every``-th malformed) numbered from ``start``."""
    topology, plan, uc, conf = prepared(path)
    rng = random.Random(seed)
    values, keys, good, bad = [], [], {}, {}
    for i in range(start, start + n):
        if bad_every and i % bad_every == bad_every - 1:
            value, kind = malformed_record(i, rng)
            bad[len(values)] = (value, kind)
            keys.append(b"s0")
        else:
            rec = good_record(i, rng)
            value = orjson.dumps(rec)
            good[len(values)] = rec
            keys.append(rec["sensor"].encode())
        values.append(value)
    positions = produce_records(conf, uc.raw_topic, list(zip(keys, values, strict=True)))
    return topology, plan, uc, conf, values, positions, good, bad


def run_to_end(path: Path) -> None:
    topology = load_topology(path)
    plan = plan_topology(topology)
    run_site(prepare_site(plan, "here"), recovery=False)
