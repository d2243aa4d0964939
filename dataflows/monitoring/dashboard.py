"""``mlexec monitor dashboard``: one HTML page of a site's monitoring, served on 127.0.0.1.

Plots of drift per watched column over time, the prediction distribution of the
window against the reference, inference latency, throughput, lag and the latest
alerts, per use case; for a use case a fleet serves, a map of its members by state
and each member's predictions, errors and alerts (:func:`mlexec.monitoring.fleet.fleet_view`).
The page and its one script (plotly.js, from the ``plotly``
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

__all__ = ["Dashboard", "DashboardData", "axis_scale", "gapped", "plotly_js"]

_log = logging.getLogger(__name__)

#: Runtime measures plotted, by panel.
_PANELS = {
    "latency": ("latency_p50_ms", "latency_p99_ms"),
    "throughput": ("records_in_per_s", "predictions_per_s", "deadletters_per_s"),
    "lag": ("lag", "store_backlog"),
}


#: The outputs whose distributions are shown, at most.
_MAX_OUTPUTS = 8
#: A pause longer than this many usual intervals is drawn as a gap.
_GAP = 3.0
#: Values spread over more than this factor are drawn on a log axis (a backfill's
#: thousands per second beside a live trickle's tens).
_LOG_SPREAD = 30.0


def gapped(
    times: list[int], values: list[float | None], every_ms: float | None = None
) -> dict[str, Any]:
    """``{"t", "v"}`` with a ``None`` value where the series pauses, so the line breaks.

    A pause is an interval over ``_GAP`` times the usual one: ``every_ms`` when the
    series has a schedule, else the median interval of the series itself.
    """
    if len(times) < 2:
        return {"t": list(times), "v": list(values)}
    steps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
    usual = every_ms or (steps[len(steps) // 2] if steps else 0)
    t: list[int] = [times[0]]
    v: list[float | None] = [values[0]]
    for (a, b), value in zip(zip(times, times[1:], strict=False), values[1:], strict=True):
        if usual and b - a > _GAP * usual:
            t.append((a + b) // 2)
            v.append(None)
        t.append(b)
        v.append(value)
    return {"t": t, "v": v}


def axis_scale(series: dict[str, dict[str, Any]]) -> str:
    """``log`` when the positive values spread over more than ``_LOG_SPREAD``, else ``linear``."""
    positive = [x for s in series.values() for x in s["v"] if x is not None and x > 0]
    if positive and max(positive) > _LOG_SPREAD * min(positive):
        return "log"
    return "linear"


def _duration(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
        fleets = [uc.name for uc in self.usecases if uc.from_fleet("infer")]
        return {
            "usecases": [uc.name for uc in self.usecases],
            "fleets": fleets,
            "hours": self.hours,
        }

    def fleet(self, name: str) -> dict[str, Any]:
        """The members of the fleet that serves use case ``name``, one by one."""
        from mlexec.monitoring.fleet import fleet_view

        uc = next((u for u in self.usecases if u.name == name and u.from_fleet("infer")), None)
        if uc is None:
            return {"error": f"no monitored use case {name!r} served by a fleet"}
        table = samples_table(uc)
        output = next((c for c in watchable_columns(table) if c not in uc.features), None)
        now = datetime.now(UTC)
        return fleet_view(self.store, self.plan, uc, output, now, now - timedelta(hours=self.hours))

    def usecase(self, name: str) -> dict[str, Any]:
        """Everything the page shows of one use case."""
        uc = next((u for u in self.usecases if u.name == name), None)
        if uc is None:
            return {"error": f"no monitored use case {name!r}"}
        drift, thresholds, varying = self._drift(uc)
        return {
            "usecase": name,
            "drift": drift,
            "thresholds": thresholds,
            "threshold_series": varying,
            "predictions": self._predictions(uc),
            "performance": self._performance(uc),
            "segments": self._segments(uc),
            **{panel: self._metrics(name, names) for panel, names in _PANELS.items()},
            "alerts": self._alerts(name),
        }

    def _evaluated(self, usecase: str) -> str:
        """The whole windows' evaluations since the page's horizon (a re-evaluated one's latest)."""
        return (
            f"SELECT column, statistic, time, argMax(value, recorded_at) AS value, "
            f"argMax(ifNull(warning, nan), recorded_at) AS warning "
            f"FROM {self._db}.{DRIFT_TABLE} WHERE usecase = {quote(usecase)} AND segment = '' "
            f"AND time >= {self._since()} GROUP BY column, statistic, time ORDER BY time"
        )

    def _drift(self, uc: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Per watched statistic, per column: (times, values); and the statistics' thresholds.

        Only what the use case watches is shown (the monitor computes every statistic of a
        watched column); each threshold line says its severity and value. A threshold
        given as a false-alarm rate differs by window size: its warning per window.
        """
        mon = uc.usecase.monitoring
        watched = {col: w.thresholds() for col, w in mon.watch.items()}
        if mon.multivariate is not None:
            watched["multivariate"] = {"reconstruction": mon.multivariate.thresholds}
        frame = self.store.query(
            f"SELECT statistic, column, groupArray(toUnixTimestamp64Milli(time)) AS t, "
            f"groupArray(value) AS v, groupArray(warning) AS w FROM ({self._evaluated(uc.name)}) "
            "GROUP BY statistic, column ORDER BY statistic, column"
        )
        every = uc.usecase.monitoring.every.total_seconds() * 1000
        out: dict[str, Any] = {}
        varying: dict[str, Any] = {}
        lines: dict[str, dict[tuple[str, float], list[str]]] = {}
        for stat, column, t, v, w in frame.iter_rows():
            limits = watched.get(column, {}).get(stat)
            if limits is None:
                continue
            out.setdefault(stat, {})[column] = gapped(t, v, every)
            if limits.false_alarm_rate is not None:
                shown = [None if x != x else x for x in w]  # NaN: no threshold that window
                varying.setdefault(stat, {})[column] = gapped(t, shown, every)
            for severity in ("warning", "critical"):
                value = getattr(limits, severity)
                if value is not None:
                    lines.setdefault(stat, {}).setdefault((severity, value), []).append(column)
        thresholds = {
            stat: [
                {"severity": severity, "value": value, "columns": columns}
                for (severity, value), columns in sorted(found.items(), key=lambda kv: kv[0][1])
            ]
            for stat, found in lines.items()
        }
        return out, thresholds, varying

    def _performance(self, uc: Any) -> dict[str, Any]:
        """Realized error (labels) and estimated error (CBPE, DLE) per version/variant over time."""
        frame = self.store.query(
            f"SELECT column, statistic, groupArray(toUnixTimestamp64Milli(time)) AS t, "
            f"groupArray(value) AS v FROM ({self._evaluated(uc.name)}) WHERE statistic IN "
            "('mae', 'rmse', 'error_rate', 'estimated_error_rate', 'estimated_mae', "
            "'estimated_rmse') "
            "GROUP BY column, statistic ORDER BY column, statistic"
        )
        every = uc.usecase.monitoring.every.total_seconds() * 1000
        series = {
            f"{subject} {stat.replace('_', ' ')}": gapped(t, v, every)
            for subject, stat, t, v in frame.iter_rows()
        }
        return {"series": series, "scale": "linear"}

    def _segments(self, uc: Any) -> list[dict[str, Any]]:
        """The latest evaluation's segments farthest past their thresholds."""
        from mlexec.monitoring.monitor import top_segments

        name = quote(uc.name)
        frame = self.store.query(
            f"SELECT column, segment, statistic, value, severity FROM {self._db}.{DRIFT_TABLE} "
            f"WHERE usecase = {name} AND segment != '' AND time = (SELECT max(time) FROM "
            f"{self._db}.{DRIFT_TABLE} WHERE usecase = {name})"
        )
        return top_segments(frame, uc).to_dicts() if frame.height else []

    def _predictions(self, uc: Any) -> dict[str, Any]:
        """Histograms of the scalar outputs over the last window, by model version."""
        table = samples_table(uc)
        outputs = [c for c in watchable_columns(table) if c not in uc.features][:_MAX_OUTPUTS]
        window = uc.usecase.monitoring.window
        shown: dict[str, Any] = {}
        for output in outputs:
            frame = self.store.query(
                f"SELECT model_version AS version, "
                f"groupArray(10000)(toFloat64(`{output}`)) AS v FROM {self._db}.`{uc.table}` "
                f"WHERE event_time >= (SELECT max(event_time) FROM {self._db}.`{uc.table}`) "
                f"- INTERVAL {int(window.total_seconds())} SECOND GROUP BY version"
            )
            shown[output] = {r[0]: r[1] for r in frame.iter_rows()}
        return {"window": _duration(window), "outputs": shown}

    def _metrics(self, usecase: str, names: tuple[str, ...]) -> dict[str, Any]:
        """Per measure: (times, values), gaps shown as gaps; and the axis' scale."""
        listed = ", ".join(quote(n) for n in names)
        frame = self.store.query(
            f"SELECT name, groupArray(toUnixTimestamp64Milli(time)) AS t, groupArray(value) AS v "
            f"FROM (SELECT time, name, max(value) AS value FROM {self._db}.{METRICS_TABLE} "
            f"WHERE usecase = {quote(usecase)} AND name IN ({listed}) AND time >= {self._since()} "
            "GROUP BY time, name ORDER BY time) GROUP BY name ORDER BY name"
        )
        series = {name: gapped(t, v) for name, t, v in frame.iter_rows()}
        return {"series": series, "scale": axis_scale(series)}

    def _alerts(self, usecase: str) -> list[dict[str, Any]]:
        frame = self.store.query(
            f"SELECT toUnixTimestamp64Milli(time) AS time, site, kind, subject, statistic, value, "
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
            elif url.path == "/api/fleet":
                self._json(self.data.fleet(parse_qs(url.query).get("name", [""])[0]))
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
  #fleet-section { grid-column: 1 / -1; }
  #fleet-map { display: flex; flex-wrap: wrap; gap: 4px; padding: 4px 8px; }
  .tile { width: 84px; padding: 4px; border-radius: 4px; font-size: 11px; color: #fff;
          cursor: pointer; border: 2px solid transparent; overflow: hidden; }
  .tile.online { background: #2e7d32; } .tile.offline { background: #b00020; }
  .tile.never { background: #888; } .tile.trouble { border-color: #f5b700; }
  .tile.chosen { outline: 2px solid #1d2330; }
</style>
</head>
<body>
<header><h1>mlexec monitoring</h1>
  <label>use case <select id="usecase"></select></label>
  <label>drift statistic <select id="statistic"></select></label>
  <span id="status"></span></header>
<main>
  <section id="fleet-section" style="display: none"><h2>Fleet <span id="fleet-counts"></span></h2>
    <div id="fleet-map"></div><div id="fleet-member"></div><div id="fleet"></div></section>
  <section><h2>Drift per watched value</h2><div id="drift" class="plot"></div></section>
  <section><h2><span id="predictions-title">Predictions</span>
    <select id="output"></select></h2><div id="predictions" class="plot"></div></section>
  <section><h2>Model performance: realized and estimated (before labels)</h2>
    <div id="performance" class="plot"></div></section>
  <section><h2>Inference latency (ms)</h2><div id="latency" class="plot"></div></section>
  <section><h2>Throughput (records/s)</h2><div id="throughput" class="plot"></div></section>
  <section><h2>Lag and store backlog (records)</h2><div id="lag" class="plot"></div></section>
  <section><h2>Top drifting segments</h2><div id="segments"></div></section>
  <section><h2>Alerts</h2><div id="alerts"></div></section>
</main>
<script>
const COLORS = {warning: "#b26a00", critical: "#b00020"};
const layout = (y, scale) => ({margin: {l: 10, r: 10, t: 10, b: 10},
  yaxis: {title: {text: y}, type: scale || "linear", automargin: true},
  xaxis: {type: "date", automargin: true}, legend: {orientation: "h", y: -0.2}});
let current = null;

function lines(id, series, y, scale, decorate) {
  const traces = Object.entries(series).map(([name, s]) => ({
    x: s.t.map((t) => new Date(t)), y: s.v, name, mode: "lines+markers", type: "scatter",
    connectgaps: false,
    ...(name.startsWith("warning of ") ? {line: {dash: "dot", color: COLORS.warning}} : {})}));
  const lay = layout(y, scale);
  if (decorate) decorate(lay);
  draw(id, traces, lay);
  document.getElementById(id).dataset.scale = scale || "linear";
}

function panel(id, found, y) {
  const scale = (found || {}).scale || "linear";
  lines(id, (found || {}).series || {}, scale === "log" ? y + " (log)" : y, scale);
}

function draw(id, traces, lay) {
  const el = document.getElementById(id);
  const points = traces.reduce((n, t) => n + (t.y || t.x || []).filter((v) => v !== null).length, 0);
  el.dataset.points = points;
  if (!points) { el.innerHTML = '<div class="empty">no data yet</div>'; return; }
  Plotly.newPlot(el, traces, lay, {displaylogo: false, responsive: true});
}

function drift() {
  const stat = document.getElementById("statistic").value;
  const limits = (current.thresholds || {})[stat] || [];
  const varying = Object.entries((current.threshold_series || {})[stat] || {});
  const series = {...((current.drift || {})[stat] || {})};
  for (const [column, s] of varying) series[`warning of ${column} (false-alarm rate)`] = s;
  lines("drift", series, stat, "linear", (lay) => {
    lay.shapes = limits.map((l) => ({type: "line", xref: "paper", x0: 0, x1: 1, y0: l.value,
      y1: l.value, line: {color: COLORS[l.severity], dash: "dash", width: 1.5}}));
    lay.annotations = limits.map((l) => ({xref: "paper", x: 1, xanchor: "right", y: l.value,
      yanchor: "bottom", showarrow: false, text: `${l.severity} ${l.value}`,
      font: {size: 11, color: COLORS[l.severity]}}));
  });
  document.getElementById("drift").dataset.thresholds = limits.length + varying.length;
}

function predictions() {
  const p = current.predictions || {};
  const out = document.getElementById("output").value;
  const versions = (p.outputs || {})[out] || {};
  document.getElementById("predictions-title").textContent =
    out ? `Predictions of ${out}, last ${p.window} window` : "Predictions";
  draw("predictions", Object.entries(versions).map(([v, xs]) => ({
    x: xs, type: "histogram", name: "version " + v, opacity: 0.7})),
    {margin: {l: 10, r: 10, t: 10, b: 10}, barmode: "overlay", legend: {orientation: "h", y: -0.2},
     xaxis: {title: {text: out}, automargin: true},
     yaxis: {title: {text: "samples"}, automargin: true}});
  document.getElementById("predictions").dataset.output = out;
}

function segments(rows) {
  const el = document.getElementById("segments");
  el.dataset.points = rows.length;
  if (!rows.length) { el.innerHTML = '<div class="empty">no segments declared or judged</div>'; return; }
  el.innerHTML = "<table><tr><th>segment</th><th>subject</th><th>statistic</th><th>value</th>" +
    "<th>of threshold</th><th>severity</th></tr>" +
    rows.map((r) => `<tr><td>${r.segment}</td><td>${r.column}</td><td>${r.statistic}</td>` +
      `<td>${r.value.toPrecision(4)}</td><td>${r.of_threshold.toFixed(2)}×</td>` +
      `<td class="${r.severity}">${r.severity || "ok"}</td></tr>`).join("") + "</table>";
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

const fmt = (v, digits) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));

function member(row) {
  document.querySelectorAll(".tile").forEach((t) =>
    t.classList.toggle("chosen", t.dataset.member === row.member));
  const own = (current.alerts || []).filter((a) => a.site === row.member);
  const el = document.getElementById("fleet-member");
  el.dataset.member = row.member;
  el.innerHTML = `<h2>${row.member}: ${row.state}, serves ${row.serves || "-"}` +
    `${row.current_topology === false ? " (another topology)" : ""}</h2>` +
    `<div class="empty">${row.samples} samples, mean prediction ${fmt(row.mean_prediction, 4)}, ` +
    `KS from the fleet ${fmt(row.distance, 3)}, error ${fmt(row.error, 4)} on ${row.labelled} ` +
    `labels, lag ${fmt(row.lag, 0)}, dead letters ${row.deadletter_rate === null ? "-" :
      (100 * row.deadletter_rate).toFixed(2) + "%"}</div>` +
    (own.length ? "<table>" + own.map((a) => `<tr><td>${new Date(a.time).toISOString()}</td>` +
      `<td class="${a.severity}">${a.severity}</td><td>${a.message}</td></tr>`).join("") +
      "</table>" : '<div class="empty">no alerts of its own</div>');
}

async function fleet(name) {
  const f = await (await fetch("/api/fleet?name=" + encodeURIComponent(name))).json();
  const rows = f.members || [];
  const c = f.counts || {};
  document.getElementById("fleet-counts").textContent =
    `${f.fleet}: ${rows.length} members, ${c.online || 0} online, ${c.offline || 0} offline, ` +
    `${c["never seen"] || 0} never seen`;
  const map = document.getElementById("fleet-map");
  map.dataset.members = rows.length;
  map.innerHTML = rows.map((r) => `<div class="tile ${r.state.split(" ")[0]}` +
    `${r.alerts || (r.distance || 0) > 0.3 ? " trouble" : ""}" data-member="${r.member}" ` +
    `title="${r.member}: ${r.state}">${r.member}<br>${r.serves || "-"}</div>`).join("");
  map.querySelectorAll(".tile").forEach((t) =>
    (t.onclick = () => member(rows.find((r) => r.member === t.dataset.member))));
  const el = document.getElementById("fleet");
  el.dataset.points = rows.length;
  el.innerHTML = "<table><tr><th>member</th><th>state</th><th>serves</th><th>samples</th>" +
    `<th>KS of ${f.output || "-"} from the fleet</th><th>${f.metric || "error"}</th>` +
    "<th>alerts</th><th>lag</th></tr>" + rows.map((r) => `<tr><td>${r.member}</td>` +
      `<td>${r.state}</td><td>${r.serves || "-"}</td><td>${r.samples}</td>` +
      `<td>${fmt(r.distance, 3)}</td><td>${fmt(r.error, 4)}</td><td>${r.alerts}</td>` +
      `<td>${fmt(r.lag, 0)}</td></tr>`).join("") + "</table>";
  if (rows.length) member(rows.find((r) => r.alerts) || rows[0]);
}

async function load(name) {
  document.getElementById("status").textContent = "loading…";
  current = await (await fetch("/api/usecase?name=" + encodeURIComponent(name))).json();
  const stats = Object.keys(current.drift || {});
  const sel = document.getElementById("statistic");
  sel.innerHTML = stats.map((s) => `<option>${s}</option>`).join("");
  if (stats.includes("psi")) sel.value = "psi";
  drift();
  const outputs = Object.keys((current.predictions || {}).outputs || {});
  const osel = document.getElementById("output");
  osel.innerHTML = outputs.map((o) => `<option>${o}</option>`).join("");
  osel.style.display = outputs.length > 1 ? "" : "none";
  predictions();
  panel("performance", current.performance, "error");
  panel("latency", current.latency, "ms");
  panel("throughput", current.throughput, "records/s");
  panel("lag", current.lag, "records");
  segments(current.segments || []);
  alerts(current.alerts || []);
  const isFleet = (overview.fleets || []).includes(name);
  document.getElementById("fleet-section").style.display = isFleet ? "" : "none";
  if (isFleet) await fleet(name);
  document.getElementById("status").textContent = "";
  document.body.dataset.loaded = name;
}

let overview = {};
(async () => {
  overview = await (await fetch("/api/overview")).json();
  const sel = document.getElementById("usecase");
  sel.innerHTML = overview.usecases.map((u) => `<option>${u}</option>`).join("");
  sel.onchange = () => load(sel.value);
  document.getElementById("statistic").onchange = drift;
  document.getElementById("output").onchange = predictions;
  if (overview.usecases.length) await load(overview.usecases[0]);
  else document.getElementById("status").textContent = "no monitored use case on this site";
})();
</script>
</body>
</html>
"""
