"""The monitoring dashboard in a real headless Chromium, with every host but 127.0.0.1 unreachable."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from mlexec.connectors.kafka import produce_records
from mlexec.connectors.samplestore import open_store
from mlexec.monitoring.dashboard import Dashboard, DashboardData
from mlexec.topologies.render import grafana_panels, grafana_site_query
from tests.dataflows.spine import FIELDS, T0, prepared
from tests.monitoring.test_monitor import (
    HOUR_MS,
    _at,
    _direct_topology,
    _monitor_over,
    _monitoring,
    _sample_rows,
)

pytestmark = pytest.mark.integration

_OFFLINE = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package")
    return binary


def _browse(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--host-resolver-rules={_OFFLINE}",
            "--window-size=1400,1500",
            "--virtual-time-budget=20000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_dashboard_draws_every_plot_from_the_store_offline(broker, tmp_path, uid):
    path = _direct_topology(
        tmp_path,
        broker.bootstrap,
        uid,
        # evaluated each hour (below) as scheduled: no gap between them
        _monitoring(T0, every="1h", watch={f: {"psi": {"warning": 0.1}} for f in FIELDS[:4]}),
    )
    topology, plan, uc, conf = prepared(path)
    rng = np.random.default_rng(4)
    n = 2000
    rows = _sample_rows(T0, n, rng)
    for hour in (1, 2, 3):  # f1 drifts further each hour
        shifted = rng.normal(size=n) + 0.4 * hour
        rows += _sample_rows(T0 + hour * HOUR_MS, n, rng, f1=shifted)
    for row in rows:
        row["y"] = float(rng.beta(2, 5))
    now_ms = int(time.time() * 1000)
    # a backfill at 6,259/s, then a live trickle of ~30/s, and a pause of the pipeline
    rates = {0: 6259.0, 1: 31.0, 2: 30.0, 3: 29.0, 7: 30.0, 8: 32.0}
    snapshots = [
        {
            "time": now_ms - (9 - i) * 10_000,
            "site": "here",
            "part": "pipeline",
            "rows": [
                {"usecase": uc.name, "name": "records_in_per_s", "value": rate},
                {"usecase": uc.name, "name": "predictions_per_s", "value": rate - 1},
                {"usecase": uc.name, "name": "latency_p50_ms", "value": 0.2},
                {"usecase": uc.name, "name": "latency_p99_ms", "value": 0.9},
                {"usecase": uc.name, "name": "lag", "value": float(100 * i)},
            ],
        }
        for i, rate in rates.items()
    ]
    produce_records(
        conf, "mlexec.metrics", [(b"here/pipeline", orjson.dumps(s)) for s in snapshots]
    )
    with open_store(topology.sites["here"].sample_store) as store:
        monitor = _monitor_over(store, plan, uc, rows)
        for hour in (2, 3, 4):
            monitor.run_once(_at(T0 + hour * HOUR_MS))
        board = Dashboard(DashboardData(plan, "here", store, hours=24 * 365 * 10), port=0).start()
        try:
            page = httpx.get(board.url, timeout=10).text
            assert not re.search(r"(src|href)=[\"']https?://", page)  # every asset is local
            data = httpx.get(f"{board.url}api/usecase?name={uc.name}", timeout=10).json()
            assert set(data["drift"]) == {"psi"}  # only what is watched, of every statistic
            assert set(data["drift"]["psi"]) == set(FIELDS[:4])
            assert len(data["drift"]["psi"]["f1"]["v"]) == 3
            assert data["thresholds"]["psi"] == [
                {"severity": "warning", "value": 0.1, "columns": FIELDS[:4]}
            ]
            assert data["predictions"]["window"] == "1h" and list(
                data["predictions"]["outputs"]
            ) == ["y"]
            throughput = data["throughput"]["series"]
            assert sorted(throughput) == ["predictions_per_s", "records_in_per_s"]
            assert data["throughput"]["scale"] == "log"  # 6,259/s and 30/s both readable
            assert data["latency"]["scale"] == "linear"
            rates_drawn = throughput["records_in_per_s"]["v"]
            assert rates_drawn == [6259.0, 31.0, 30.0, 29.0, None, 30.0, 32.0]  # the pause a gap

            dom = _browse(board.url, "--dump-dom")
            assert dom.returncode == 0, dom.stderr[-2000:]
            html = dom.stdout
            assert f'data-loaded="{uc.name}"' in html
            for plot in ("drift", "predictions", "latency", "throughput", "lag", "alerts"):
                match = re.search(rf'id="{plot}"[^>]*data-points="(\d+)"', html)
                assert match is not None, f"{plot} was not drawn"
                assert int(match.group(1)) > 0, f"{plot} holds no data"
            assert html.count("main-svg") >= 5  # plotly drew its SVGs
            drift_html = html[html.index('id="drift"') : html.index('id="predictions-title"')]
            assert 'data-thresholds="1"' in drift_html
            # the warning's threshold: a horizontal dashed line across the plot, in its colour
            line = r'class="shape-group"[^>]*><path[^>]*d="M[\d.]+,([\d.]+)L[\d.]+,\1"[^>]*'
            drawn = re.search(line + r"stroke: rgb\(178, 106, 0\)[^>]*stroke-dasharray", drift_html)
            assert drawn, "no threshold line drawn in the drift plot"
            assert "warning 0.1" in drift_html  # the line says what it is
            assert re.search(r'id="throughput"[^>]*data-scale="log"', html)
            assert "Predictions of y, last 1h window" in html
            assert "psi of f1" in html  # the alerts table

            shot = Path(tmp_path / "dashboard.png")
            taken = _browse(board.url, f"--screenshot={shot}")
            assert taken.returncode == 0, taken.stderr[-2000:]
            assert shot.stat().st_size > 20_000
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            keep = Path("test-artifacts")
            keep.mkdir(exist_ok=True)
            shutil.copy(shot, keep / "dashboard.png")
        finally:
            board.close()

        # the Grafana dashboard's panels are valid ClickHouse SQL that finds this data
        found_sites = store.query(grafana_site_query(store.database))["site"].to_list()
        assert found_sites  # the $site variable lists the sites that report here
        for panel in grafana_panels(store.database):
            sql = panel["targets"][0]["rawSql"]
            sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 20 YEAR", sql)
            sql = sql.replace("${usecase}", uc.name).replace("${statistic}", "psi")
            sql = sql.replace("${site:singlequote}", ", ".join(f"'{s}'" for s in found_sites))
            found = store.query(sql)
            if panel["title"].startswith(("Data quality", "Accuracy")):
                continue  # this use case watches psi only and has no labels
            assert found.height > 0, panel["title"]
