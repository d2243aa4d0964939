"""The tables ``make bench`` prints: every row and ratio of one run of ``benchmarks.e2e``."""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from benchmarks.runners import BATCH, PARTITIONS


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def report(
    args: argparse.Namespace,
    size: float,
    onnx: dict[int, float],
    tree_onnx: dict[int, float],
    runs: dict[str, list[dict[str, float]]],
    lat: dict[str, tuple[float, float]],
    site_runs: list[tuple[float, float]],
    stores: list[dict[str, Any]],
    quix: bool,
) -> None:
    """Print the run's tables and the ratios against their targets."""
    n = args.records
    loop, one, two, window = (_median(runs[k]) for k in ("loop", "one", "two", "window"))
    scale_one = _median(runs["scale-one"])
    tree_loop, tree_site = _median(runs["tree-loop"]), _median(runs["tree-site"])
    qx = _median(runs["quix"]) if quix else None
    cpu = os.cpu_count()
    print(
        f"\n{n:,} records of ~{size:.0f} bytes, {PARTITIONS} partitions, MLP 16→64→64→1, "
        f"batch {BATCH}, median of {args.repeat}, {cpu} cores, local Tansu broker on 127.0.0.1; "
        f"latency at {args.rate:,}/s for {args.latency_seconds:g} s\n"
    )
    base = onnx[256]

    def ms(p: str) -> str:
        return f"{lat[p][0]:.1f} / {lat[p][1]:.1f}" if p in lat else "–"

    print(
        "| pipeline | records/s | ÷ (b) | ÷ (a) @256 | p50 / p99 ms | peak RSS MB "
        "| CPU µs/record: own + broker | cores at that rate |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for b in (1, 32, 256, 2048):
        rate = onnx[b]
        print(
            f"| (a) onnxruntime alone, batch {b} | {rate:,.0f} | {rate / loop['rate']:.2f} "
            f"| {rate / base:.3f} | – | – | – | – |"
        )
    measured = [
        ("(b) hand-written confluent-kafka loop", loop, "loop"),
        *((("(c) Quix Streams 3.28", qx, "quix"),) if qx is not None else ()),
        ("(d) mlexec site, micro-batch, 1 process", one, "site"),
        (f"(d) the same on {args.scale_records:,} records, 1 process", scale_one, ""),
        (f"(d) the same on {args.scale_records:,} records, 2 processes", two, ""),
        (
            f"(d) the same on {args.scale_records:,} records, 3 processes",
            _median(runs["three"]),
            "",
        ),
        ("(e) mlexec site, 10 s tumbling window + aggregation", window, ""),
    ]
    for name, got, key in measured:
        rate = got["rate"]
        cpu_cell = f"{got['cpu_us']:.2f} + {got['broker_us']:.2f}" if "broker_us" in got else "–"
        busy = (
            f"{(got['cpu_us'] + got['broker_us']) * rate / 1e6:.2f}" if "broker_us" in got else "–"
        )
        print(
            f"| {name} | {rate:,.0f} | {rate / loop['rate']:.2f} | {rate / base:.3f} "
            f"| {ms(key) if key else '–'} | {got['rss_mb']:.0f} | {cpu_cell} | {busy} |"
        )
    print(
        "\nWindows: 10 s tumbling windows of event time (1 s lateness) per key, each field's "
        "mean and max,\nscored by an MLP 32→64→64→1; steady records/s: the records read "
        "between the first and the last window out\n"
    )
    print("| pipeline | records/s | ÷ (f) | ÷ (d) | peak RSS MB | CPU µs/record: own + broker |")
    print("|---|---:|---:|---:|---:|---:|")
    win_loop = _median(runs["window-loop"])
    windowed = [
        ("(e) mlexec site, tumbling window + aggregation", window),
        ("(f) hand-written windowed loop (confluent-kafka, orjson, polars)", win_loop),
        *(
            (("(g) Quix Streams 3.28, its tumbling window", _median(runs["quix-window"])),)
            if quix
            else ()
        ),
        ("(h) bytewax 0.21 windowing operators, per record", _median(runs["bytewax-window"])),
    ]
    for name, got in windowed:
        rate = got["rate"]
        print(
            f"| {name} | {rate:,.0f} | {rate / win_loop['rate']:.2f} | {rate / one['rate']:.2f} "
            f"| {got['rss_mb']:.0f} | {got['cpu_us']:.2f} + {got['broker_us']:.2f} |"
        )
    tree_base = tree_onnx[256]
    print("\nTree ensemble (t): LightGBM 100 trees × 31 leaves via onnxmltools, the same records\n")
    print("| pipeline | records/s | ÷ (b) tree | ÷ (a) tree @256 | peak RSS MB | CPU µs/record |")
    print("|---|---:|---:|---:|---:|---:|")
    for b in (1, 32, 256, 2048):
        rate = tree_onnx[b]
        print(
            f"| (a) onnxruntime alone, tree, batch {b} | {rate:,.0f} "
            f"| {rate / tree_loop['rate']:.2f} | {rate / tree_base:.3f} | – | – |"
        )
    for name, got in (
        ("(b) hand-written loop, tree", tree_loop),
        ("(d) mlexec site, micro-batch, tree", tree_site),
    ):
        rate = got["rate"]
        print(
            f"| {name} | {rate:,.0f} | {rate / tree_loop['rate']:.2f} | {rate / tree_base:.3f} "
            f"| {got['rss_mb']:.0f} | {got['cpu_us']:.2f} + {got['broker_us']:.2f} |"
        )
    print()
    print(f"(d) ÷ (b) = {one['rate'] / loop['rate']:.2f}   (target ≥ 1.0)")
    print(f"(d) ÷ (b), tree = {tree_site['rate'] / tree_loop['rate']:.2f}   (target ≥ 1.0)")
    if qx is not None:
        print(f"(d) ÷ (c) = {one['rate'] / qx['rate']:.2f}   (target ≥ 5)")
    else:
        print("(d) ÷ (c): not measured — .venv-quix is missing (make bench makes it)")
    print(f"(d) ÷ (a) = {one['rate'] / base:.3f}")
    print(f"(e) ÷ (f) = {window['rate'] / win_loop['rate']:.2f}   (target ≥ 1.0)")
    if quix:
        qw = _median(runs["quix-window"])
        print(f"(e) ÷ (g) = {window['rate'] / qw['rate']:.2f}   (target ≥ 5)")
    print(f"(d) 2 processes ÷ 1 process = {two['rate'] / scale_one['rate']:.2f}   (target ≥ 1.3)")
    print(
        f"(d) CPU per record, 2 processes ÷ 1 = {two['cpu_us'] / scale_one['cpu_us']:.2f}, "
        f"steady span {two['steady_cpu_us'] / scale_one['steady_cpu_us']:.2f}   "
        "(target ≤ 1.10: it would scale on more cores)"
    )
    p99s = ", ".join(f"{p99:.1f}" for _, p99 in site_runs)
    print(
        f"(d) p99 at {args.rate:,}/s in {len(site_runs)} runs = {p99s} ms   "
        "(target ≤ 30 in every run; max wait 20 ms)"
    )
    print(f"(d) peak RSS = {one['rss_mb']:.0f} MB   (target < 500)")
    if stores:
        store = stores[len(stores) // 2]
        print(
            f"store phase of (d): {store['stored']:,} samples into chDB in "
            f"{store['end'] - store['start']:.2f} s, start-up included"
        )
