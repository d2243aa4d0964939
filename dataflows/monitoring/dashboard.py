"""``mlexec monitor dashboard``: one HTML page of a site's monitoring, served on 127.0.0.1.

Plots of drift per watched column over time, the prediction distribution of the
window against the reference, inference latency, throughput, lag and the latest
alerts, per use case. The page and its one script (plotly.js, from the ``plotly``
Python package) are served by this process: nothing is fetched from the internet.
The data comes from the site's sample store at each page load (JSON under ``/api``).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from mlexec.connectors.samplestore import SampleStore, SampleStoreError
from mlexec.monitoring.sql import ALERTS_TABLE, DRIFT_TABLE, METRICS_TABLE, quote, sql_time
from mlexec.topologies.plan import Plan
from mlexec.usecase import samples_table, watchable_columns

__all__ = ["Dashboard", "DashboardData", "plotly_js"]

_log = logging.getLogger(__name__)

#: Runtime measures plotted, by panel.
_PANELS = {
    "latency": ("latency_p50_ms", "latency_p99_ms"),
    "throughput": ("records_in_per_s", "predictions_per_s", "deadletters_per_s"),
    "lag": ("lag", "store_backlog"),
}


def plotly_js() -> Path:
    """plotly.js as shipped inside the ``plotly`` package (no CDN)."""
    return Path(str(files("plotly") / "package_data" / "plotly.min.js"))


class DashboardData:
    """The JSON the page draws, read from a site's sample store."""

    def __init__(self, plan: Plan, site: str, store: SampleStore, hours: float = 24.0) -> None:
        self.plan = plan
        self.store = store
        self.usecases = [
            uc for uc in plan.chosen_at(site, stage="store") if uc.usecase.monitoring is not None
        ]
        self.hours = hours
        self._db = f"`{store.database}`"

    def _since(self) -> str:
        return sql_time(datetime.now(UTC) - timedelta(hours=self.hours))

    def overview(self) -> dict[str, Any]:
        return {"usecases": [uc.name for uc in self.usecases], "hours": self.hours}

    def usecase(self, name: str) -> dict[str, Any]:
        """Everything the page shows of one use case."""
        uc = next((u for u in self.usecases if u.name == name), None)
        if uc is None:
            return {"error": f"no monitored use case {name!r}"}
        return {
            "usecase": name,
            "drift": self._drift(name),
            "predictions": self._predictions(uc),
            **{panel: self._metrics(name, names) for panel, names in _PANELS.items()},
            "alerts": self._alerts(name),
        }

    def _drift(self, usecase: str) -> dict[str, Any]:
        """Per statistic, per column: (times, values)."""
        frame = self.store.query(
            f"SELECT statistic, column, groupArray(toUnixTimestamp64Milli(time)) AS t, "
            f"groupArray(value) AS v FROM (SELECT * FROM {self._db}.{DRIFT_TABLE} "
            f"WHERE usecase = {quote(usecase)} AND time >= {self._since()} ORDER BY time) "
            "GROUP BY statistic, column ORDER BY statistic, column"
        )
        out: dict[str, Any] = {}
        for stat, column, t, v in frame.iter_rows():
            out.setdefault(stat, {})[column] = {"t": t, "v": v}
        return out

    def _predictions(self, uc: Any) -> dict[str, Any]:
        """A histogram of the first scalar output over the window, by model version."""
        table = samples_table(uc)
        outputs = [c for c in watchable_columns(table) if c not in uc.features]
        if not outputs:
            return {}
        output = outputs[0]
        frame = self.store.query(
            f"SELECT model_version AS version, groupArray(10000)(toFloat64(`{output}`)) AS v "
            f"FROM {self._db}.`{uc.table}` WHERE event_time >= "
            f"(SELECT max(event_time) FROM {self._db}.`{uc.table}`) - INTERVAL "
            f"{int(uc.usecase.monitoring.window.total_seconds())} SECOND GROUP BY version"
        )
        return {"output": output, "versions": {r[0]: r[1] for r in frame.iter_rows()}}

    def _metrics(self, usecase: str, names: tuple[str, ...]) -> dict[str, Any]:
        listed = ", ".join(quote(n) for n in names)
        frame = self.store.query(
            f"SELECT name, groupArray(toUnixTimestamp64Milli(time)) AS t, groupArray(value) AS v "
            f"FROM (SELECT time, name, max(value) AS value FROM {self._db}.{METRICS_TABLE} "
            f"WHERE usecase = {quote(usecase)} AND name IN ({listed}) AND time >= {self._since()} "
            "GROUP BY time, name ORDER BY time) GROUP BY name ORDER BY name"
        )
        return {name: {"t": t, "v": v} for name, t, v in frame.iter_rows()}

    def _alerts(self, usecase: str) -> list[dict[str, Any]]:
        frame = self.store.query(
            f"SELECT toUnixTimestamp64Milli(time) AS time, kind, subject, statistic, value, "
            f"severity, message FROM {self._db}.{ALERTS_TABLE} WHERE usecase = {quote(usecase)} "
            "ORDER BY time DESC LIMIT 50"
        )
        return list(frame.iter_rows(named=True))


class _Handler(BaseHTTPRequestHandler):
    data: DashboardData
    script: bytes

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        url = urlparse(self.path)
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", _PAGE.encode())
            elif url.path == "/assets/plotly.min.js":
                self._send(200, "application/javascript", self.script, cache=True)
            elif url.path == "/api/overview":
                self._json(self.data.overview())
            elif url.path == "/api/usecase":
                name = parse_qs(url.query).get("name", [""])[0]
                self._json(self.data.usecase(name))
            else:
                self._send(404, "text/plain", b"not found")
        except SampleStoreError as exc:
            self._send(503, "application/json", orjson.dumps({"error": str(exc)}))

    def _json(self, value: Any) -> None:
        self._send(200, "application/json", orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    def _send(self, code: int, kind: str, body: bytes, cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        _log.debug(format, *args)


class Dashboard:
    """The page's HTTP server on 127.0.0.1; ``port`` 0 picks a free one."""

    def __init__(self, data: DashboardData, port: int = 8050) -> None:
        handler = type("Handler", (_Handler,), {"data": data, "script": plotly_js().read_bytes()})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Dashboard:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mlexec-dashboard", daemon=True
        )
        self._thread.start()
        return self

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` (or an interrupt)."""
        self.start()
        try:
            stop.wait()
        finally:
            self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mlexec monitoring</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script src="/assets/plotly.min.js"></script>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 12px 20px; display: flex; gap: 16px;
           align-items: center; }
  header h1 { font-size: 18px; margin: 0; font-weight: 600; }
  select { font-size: 14px; padding: 2px 6px; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 12px;
         padding: 12px; }
  section { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002; padding: 8px; }
  section h2 { font-size: 14px; margin: 4px 8px; font-weight: 600; }
  .plot { height: 300px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  td, th { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eee; }
  .critical { color: #b00020; font-weight: 600; } .warning { color: #b26a00; }
  .resolved { color: #2e7d32; } .empty { color: #888; padding: 8px; }
</style>
</head>
<body>
<header><h1>mlexec monitoring</h1>
  <label>use case <select id="usecase"></select></label>
  <label>drift statistic <select id="statistic"></select></label>
  <span id="status"></span></header>
<main>
  <section><h2>Drift per watched value</h2><div id="drift" class="plot"></div></section>
  <section><h2>Prediction distribution (window)</h2><div id="predictions" class="plot"></div></section>
  <section><h2>Inference latency (ms)</h2><div id="latency" class="plot"></div></section>
  <section><h2>Throughput (records/s)</h2><div id="throughput" class="plot"></div></section>
  <section><h2>Lag and store backlog (records)</h2><div id="lag" class="plot"></div></section>
  <section><h2>Alerts</h2><div id="alerts"></div></section>
</main>
<script>
const layout = (y) => ({margin: {l: 50, r: 10, t: 10, b: 60}, yaxis: {title: y},
  xaxis: {type: "date"}, legend: {orientation: "h"}});
let current = null;

function lines(id, series, y) {
  const traces = Object.entries(series).map(([name, s]) => ({
    x: s.t.map((t) => new Date(t)), y: s.v, name, mode: "lines+markers", type: "scatter"}));
  draw(id, traces, layout(y));
}

function draw(id, traces, lay) {
  const el = document.getElementById(id);
  const points = traces.reduce((n, t) => n + (t.y || t.x || []).length, 0);
  el.dataset.points = points;
  if (!points) { el.innerHTML = '<div class="empty">no data yet</div>'; return; }
  Plotly.newPlot(el, traces, lay, {displaylogo: false, responsive: true});
}

function drift() {
  const stat = document.getElementById("statistic").value;
  lines("drift", (current.drift || {})[stat] || {}, stat);
}

function alerts(rows) {
  const el = document.getElementById("alerts");
  el.dataset.points = rows.length;
  if (!rows.length) { el.innerHTML = '<div class="empty">no alerts</div>'; return; }
  el.innerHTML = "<table><tr><th>time</th><th>severity</th><th>kind</th><th>message</th></tr>" +
    rows.map((a) => `<tr><td>${new Date(a.time).toISOString()}</td>` +
      `<td class="${a.severity}">${a.severity}</td><td>${a.kind}</td><td>${a.message}</td></tr>`)
      .join("") + "</table>";
}

async function load(name) {
  document.getElementById("status").textContent = "loading…";
  current = await (await fetch("/api/usecase?name=" + encodeURIComponent(name))).json();
  const stats = Object.keys(current.drift || {});
  const sel = document.getElementById("statistic");
  sel.innerHTML = stats.map((s) => `<option>${s}</option>`).join("");
  if (stats.includes("psi")) sel.value = "psi";
  drift();
  const p = current.predictions || {};
  draw("predictions", Object.entries(p.versions || {}).map(([v, xs]) => ({
    x: xs, type: "histogram", name: "version " + v, opacity: 0.7})),
    {margin: {l: 50, r: 10, t: 10, b: 40}, barmode: "overlay", xaxis: {title: p.output || ""}});
  lines("latency", current.latency || {}, "ms");
  lines("throughput", current.throughput || {}, "records/s");
  lines("lag", current.lag || {}, "records");
  alerts(current.alerts || []);
  document.getElementById("status").textContent = "";
  document.body.dataset.loaded = name;
}

(async () => {
  const overview = await (await fetch("/api/overview")).json();
  const sel = document.getElementById("usecase");
  sel.innerHTML = overview.usecases.map((u) => `<option>${u}</option>`).join("");
  sel.onchange = () => load(sel.value);
  document.getElementById("statistic").onchange = drift;
  if (overview.usecases.length) await load(overview.usecases[0]);
  else document.getElementById("status").textContent = "no monitored use case on this site";
})();
</script>
</body>
</html>
"""
