"""CSV and log-file sources on real files: parsing, coercion, resumption, rotation."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from mlexec.connectors.sources import RecordShaper, open_source
from mlexec.connectors.sources.base import SourceRecord
from mlexec.topologies.schema import Input, UseCase

INPUT = Input.model_validate(
    {
        "key": "machine",
        "time": "ts",
        "schema": {"machine": "str", "ts": "timestamp", "value": "float"},
    }
)


def source(config: dict[str, Any], state: dict[str, Any] | None = None, *, once: bool = True):
    usecase = UseCase.model_validate(
        {
            "input": INPUT.model_dump(by_alias=True),
            "connectors": [config],
            "dispatch": {"kind": "microbatch"},
            "model": {"name": "m", "version": "1", "path": "m.onnx"},
        }
    )
    return open_source(usecase.connectors[0], usecase.input, state, kafka_conf={}, once=once)


def values(records: list[SourceRecord]) -> list[Any]:
    return [orjson.loads(r.value) if r.error is None and r.value else r.error for r in records]


def drain(src, limit: int = 1000) -> list[SourceRecord]:
    out: list[SourceRecord] = []
    while batch := src.read(limit):
        out += batch
    return out


# ------------------------------------------------------------------------ shaper


def test_shaper_coerces_text_and_typed_values_and_names_the_bad_field():
    shaper = RecordShaper(
        {"id": "str", "n": "int", "x": "float", "ok": "bool", "ts": "timestamp"}, "id"
    )
    key, value = shaper.shape(
        {"id": 7, "n": "3", "x": "2.5", "ok": "yes", "ts": "1700000000000", "extra": "kept"}
    )
    assert key == b"7"
    assert orjson.loads(value) == {
        "id": "7",
        "n": 3,
        "x": 2.5,
        "ok": True,
        "ts": 1700000000000,
        "extra": "kept",
    }
    key, value = shaper.shape(
        {"id": "a", "n": 4.0, "x": 1, "ok": 0, "ts": "2026-01-02T03:04:05+00:00"}
    )
    assert orjson.loads(value)["ts"] == "2026-01-02T03:04:05+00:00"
    for bad, reason in [
        ({"n": "3.5"}, "field 'n': expected int"),
        ({"x": "nan"}, "field 'x': expected a finite float"),
        ({"ok": "maybe"}, "field 'ok': expected bool"),
        ({"ts": "yesterday"}, "field 'ts': expected an epoch number or ISO 8601"),
        ({"x": ""}, "field 'x': expected float, found nothing"),
    ]:
        row = {"id": "a", "n": 1, "x": 1.0, "ok": True, "ts": 1, **bad}
        with pytest.raises(ValueError, match=reason):
            shaper.shape(row)


# --------------------------------------------------------------------------- CSV


def test_csv_header_mapping_options_quoted_newlines_and_bad_rows(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_bytes(
        "Maschine;Zeit;Wert;Notiz\n"
        "m1;1000;1,5;plain\n"  # decimal comma is not a float: refused
        'm2;2000;2.5;"two\nlines; and ""quotes"""\n'
        "m3;3000;3.5\n"
        "m\xe4;4000;4.5;latin-1\n".encode("latin-1")
    )
    src = source(
        {
            "kind": "csv",
            "path": str(path),
            "delimiter": ";",
            "encoding": "latin-1",
            "rename": {"Maschine": "machine", "Zeit": "ts", "Wert": "value"},
        }
    )
    got = drain(src)
    assert values(got) == [
        "field 'value': expected float, found '1,5'",
        {"machine": "m2", "ts": 2000, "value": 2.5, "Notiz": 'two\nlines; and "quotes"'},
        "expected 4 fields (machine, ts, value, Notiz), found 3",
        {"machine": "mä", "ts": 4000, "value": 4.5, "Notiz": "latin-1"},
    ]
    assert [r.where for r in got] == [f"{path} line {n}" for n in (2, 3, 5, 6)]
    assert got[0].value == b"m1;1000;1,5;plain\n"  # the original bytes, for the dead letter
    assert len({r.position for r in got}) == 4


def test_csv_without_header_and_an_unterminated_last_line(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_text("m1,1,1.0\nm2,2,2.0")
    config = {
        "kind": "csv",
        "path": str(path),
        "header": False,
        "columns": ["machine", "ts", "value"],
    }
    live = source(config, once=False)
    assert [v["machine"] for v in values(drain(live))] == ["m1"]  # the last line may go on
    with path.open("a") as f:
        f.write("5\n")
    assert values(drain(live)) == [{"machine": "m2", "ts": 2, "value": 2.05}]
    assert (
        values(drain(source(config, {"files": {}}, once=True))) != []
    )  # a fresh once-pass reads all


def test_csv_appended_rows_new_files_and_resume_from_state(tmp_path: Path):
    (tmp_path / "a.csv").write_text("machine,ts,value\nm1,1,1\n")
    config = {"kind": "csv", "path": str(tmp_path / "*.csv")}
    first = source(config)
    assert [v["ts"] for v in values(drain(first))] == [1]
    state = first.state()
    with (tmp_path / "a.csv").open("a") as f:
        f.write("m1,2,2\n")
    time.sleep(0.01)
    (tmp_path / "b.csv").write_text("machine,ts,value\nm2,3,3\nm2,4,4\n")
    again = source(config, state)
    got = drain(again)
    assert [v["ts"] for v in values(got)] == [2, 3, 4]
    assert again.behind() == 0
    assert drain(source(config, again.state())) == []


def test_csv_file_rewritten_in_place_is_read_again_from_the_start(tmp_path: Path):
    path = tmp_path / "a.csv"
    path.write_text("machine,ts,value\nm1,1,1\nm1,2,2\n")
    config = {"kind": "csv", "path": str(path)}
    first = source(config)
    assert len(drain(first)) == 2
    path.write_text("machine,ts,value\nm9,7,7\nm9,8,8\nm9,9,9\n")  # same inode, new content
    assert [v["ts"] for v in values(drain(source(config, first.state())))] == [7, 8, 9]


# ---------------------------------------------------------------------- log files

LOG_PATTERN = r"(?P<ts>\d+) (?P<machine>\S+) value=(?P<value>\S+)"


def test_logfile_regex_jsonl_and_reasons(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_text("1 m1 value=0.5\ngarbage line\n2 m2 value=x\n")
    got = drain(source({"kind": "logfile", "path": str(log), "pattern": LOG_PATTERN}))
    assert values(got) == [
        {"ts": 1, "machine": "m1", "value": 0.5},
        f"does not match the pattern {LOG_PATTERN!r}",
        "field 'value': expected float, found 'x'",
    ]
    jl = tmp_path / "app.jsonl"
    jl.write_text('{"machine": "m1", "ts": 5, "value": 1}\n[1, 2]\n{"machine": "m1"\n')
    got = drain(source({"kind": "logfile", "path": str(jl), "format": "jsonl"}))
    assert values(got)[0] == {"machine": "m1", "ts": 5, "value": 1.0}
    assert values(got)[1] == "expected a JSON object, found list"
    assert values(got)[2].startswith("not valid JSON")


def test_logfile_multiline_records_wait_for_the_next_start(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_text(
        "1 m1 value=1 ok\n"
        "2 m1 value=2 Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
        "ValueError: boom\n"
    )
    config = {
        "kind": "logfile",
        "path": str(log),
        "pattern": r"(?P<ts>\d+) (?P<machine>\S+) value=(?P<value>\S+) (?P<message>.*)",
        "multiline": {"start": r"\d+ ", "timeout": "1h"},
    }
    live = source(config, once=False)
    got = values(drain(live))
    assert [g["message"] for g in got] == ["ok"]  # the traceback may go on
    with log.open("a") as f:
        f.write("3 m1 value=3 next\n")
    got = values(drain(live))
    assert (
        got[0]["message"]
        == 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom'
    )
    # a once-pass (or a quiet file) completes the last record
    assert [g["message"] for g in values(drain(source(config, live.state())))] == ["next"]


def _writer(path: Path, start: int, count: int) -> None:
    with path.open("a") as f:
        for i in range(start, start + count):
            f.write(f"{i} m1 value={i}\n")


def _seq(records: list[SourceRecord]) -> list[int]:
    return [orjson.loads(r.value)["ts"] for r in records if r.error is None and r.value]


def test_logfile_rotation_by_rename_finishes_the_old_file_and_late_lines(tmp_path: Path):
    log = tmp_path / "app.log"
    _writer(log, 0, 10)
    config = {"kind": "logfile", "path": str(log), "pattern": LOG_PATTERN, "rotate_wait": "1h"}
    # rotate as a logging handler does: rename, then a new file
    got = []
    live = source(config, once=False)
    got += live.read(3)
    os.rename(log, tmp_path / "app.log.1")
    _writer(tmp_path / "app.log.1", 10, 2)  # written to the old file before the writer reopens
    _writer(log, 12, 5)
    got += drain(live)
    _writer(tmp_path / "app.log.1", 17, 1)  # a late line, still within rotate_wait
    got += drain(live)
    _writer(log, 18, 2)
    got += drain(source(config, live.state(), once=False))  # a restart resumes both files
    assert sorted(_seq(got)) == list(range(20))
    assert len(_seq(got)) == 20


def test_logfile_copy_truncate_reads_the_rest_from_the_copy(tmp_path: Path):
    log = tmp_path / "app.log"
    _writer(log, 0, 10)
    config = {"kind": "logfile", "path": str(log), "pattern": LOG_PATTERN}
    live = source(config, once=False)
    got = live.read(4)
    _writer(log, 10, 3)
    shutil.copyfile(log, tmp_path / "app.log.1")
    with log.open("r+") as f:
        f.truncate(0)
    _writer(log, 13, 30)  # longer than before: truncation is seen by content, not size
    state = live.state()
    got += drain(source(config, state, once=False))
    assert _seq(got) == list(range(43))


def test_a_csv_path_that_matches_nothing_is_said_once_and_is_an_error_for_one_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    from mlexec.errors import ConnectorError

    config = {"kind": "csv", "path": str(tmp_path / "nothing-*.csv")}
    with pytest.raises(ConnectorError, match=r"nothing-\*\.csv matches no file: check"):
        source(config, once=True).read(10)
    following = source(config, once=False)
    assert following.read(10) == [] and following.read(10) == []
    said = [r.getMessage() for r in caplog.records if "matches no file" in r.getMessage()]
    assert len(said) == 1 and "as soon as one appears" in said[0]


def test_a_csv_header_without_the_schemas_fields_says_which_and_dead_letters_each_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "pumps.csv"
    path.write_text("pump,time,value\np1,1700000000000,1.5\np2,1700000000001,2.5\n")
    records = drain(source({"kind": "csv", "path": str(path)}))
    assert len(records) == 2 and all(r.error for r in records)  # nothing lost: dead letters
    (said,) = [r.getMessage() for r in caplog.records if "no column for" in r.getMessage()]
    assert "no column for the schema's machine, ts" in said
    assert "its columns: pump, time, value" in said and "rename:" in said
