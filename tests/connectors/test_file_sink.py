"""The file output on its own: rotation by size and by time (a test clock), restart cut-back."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from mlexec.connectors.outputs import Action, FileSink
from mlexec.topologies.schema import FileOutput


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _actions(first: int, count: int) -> list[Action]:
    out = []
    for i in range(first, first + count):
        p = {"id": f"t:0:{i}", "key": f"k{i % 3}", "outputs": {"y": i / 10}}
        out.append(Action(p["id"], p["key"], p, orjson.dumps(p)))
    return out


def _config(tmp_path: Path, **extra: object) -> FileOutput:
    return FileOutput.model_validate({"kind": "file", "path": str(tmp_path / "out"), **extra})


def _ids(folder: Path) -> list[str]:
    return [
        orjson.loads(line)["id"]
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]


def test_jsonl_rotates_by_time_on_the_clock(tmp_path):
    clock = Clock()
    sink = FileSink(_config(tmp_path, every="10s"), None, clock=clock)
    sink.deliver(_actions(0, 5))
    assert sink.commit() and not sink.tick()
    clock.now += 10
    assert sink.tick()  # the file is done
    sink.deliver(_actions(5, 5))
    clock.now += 3
    assert not sink.tick()
    sink.close()
    files = sorted((tmp_path / "out").glob("*.jsonl"))
    assert len(files) == 2
    assert [len(f.read_bytes().splitlines()) for f in files] == [5, 5]
    assert _ids(tmp_path / "out") == [f"t:0:{i}" for i in range(10)]


def test_jsonl_restart_cuts_back_to_the_checkpoint_and_removes_later_files(tmp_path):
    clock = Clock()
    config = _config(tmp_path, max_size=400)
    sink = FileSink(config, None, clock=clock)
    sink.deliver(_actions(0, 3))
    assert sink.commit()
    saved = sink.state()  # the checkpoint
    sink.deliver(_actions(3, 20))  # more lines and a rotation, then a crash before the checkpoint
    sink.commit()
    assert len(_ids(tmp_path / "out")) == 23
    FileSink(config, saved, clock=clock)  # the restart
    assert _ids(tmp_path / "out") == ["t:0:0", "t:0:1", "t:0:2"]


def test_parquet_is_written_by_rows_and_by_time_and_commits_only_whole_files(tmp_path):
    clock = Clock()
    sink = FileSink(_config(tmp_path, format="parquet", max_size=4, every="1m"), None, clock=clock)
    sink.deliver(_actions(0, 6))
    assert not sink.commit()  # two rows wait in memory
    clock.now += 60
    assert sink.tick() and sink.commit()
    frame = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert sorted(frame["id"].to_list()) == [f"t:0:{i}" for i in range(6)]
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 2
