"""``mlexec run --until-end`` on a terminal: records done of total and the rate, per use case."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from mlexec.runtime.health import RuntimeHealth
from mlexec.topologies.plan import Plan

__all__ = ["until_end_progress"]

#: Seconds between updates of the bars.
_EVERY = 0.25


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f}/{task.fields[of]} records"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    )


@contextmanager
def until_end_progress(
    console: Console, plan: Plan, site: str, usecase: str | None
) -> Iterator[None]:
    """Show the pipeline's progress while the block runs, when ``console`` is a terminal.

    Done is what this process has read; the total is that plus what its partitions
    still hold (known once each partition has been fetched from).
    """
    if not console.is_terminal:
        yield
        return
    health = RuntimeHealth(plan, site, "pipeline")
    stop = threading.Event()
    with _bars(console) as bars:
        tasks: dict[str, TaskID] = {}

        def update() -> None:
            values = health.values()
            for (uc, measure), read in values.items():
                if measure != "records_in" or usecase not in (None, uc):
                    continue
                total = read + values.get((uc, "lag"), 0.0)
                if uc not in tasks:
                    tasks[uc] = bars.add_task(uc, total=None, of="?", rate="")
                task = bars.tasks[tasks[uc]]
                rate = f"{task.speed:,.0f} records/s" if task.speed else ""
                bars.update(tasks[uc], completed=read, total=total, of=f"{total:,.0f}", rate=rate)

        def follow() -> None:
            while not stop.wait(_EVERY):
                update()

        thread = threading.Thread(target=follow, name="mlexec-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5.0)
            update()
