"""librdkafka's log through mlexec's logging: each kind of line once a minute, as a warning.

Left to itself librdkafka writes every failed connection attempt to stderr — about 600
``FAIL … Connection refused`` lines while a broker is away for 30 s, breaking into
whatever the terminal shows. Every client mlexec makes gets :data:`LOGGER` as its
``logger`` (``client_config``): the lines become records of ``mlexec.librdkafka``, a line
of a kind already said (numbers aside) within the last minute is counted instead of
repeated, and librdkafka's errors are warnings — the client retries by itself, and
what mlexec cannot get past (an unreachable broker at start, a failed delivery) it
reports on its own, in one line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

__all__ = ["LOGGER", "REPEATS", "Repeats"]

_DIGITS = re.compile(r"\d+")


class Repeats(logging.Filter):
    """Pass a kind of line once per ``every`` seconds; say how often it came meanwhile."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        #: Lines held back so far, over all kinds.
        self.held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        kind = _DIGITS.sub("#", text)[:300]
        now = self._clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is not None and now - seen[0] < self.every:
                self._seen[kind] = (seen[0], seen[1] + 1)
                self.held_back += 1
                return False
            if len(self._seen) > 1000:  # bounded: old kinds are forgotten
                self._seen.clear()
            self._seen[kind] = (now, 0)
        if seen is not None and seen[1]:
            text = f"{text} (and {seen[1]} more like it in the last {self.every:g} s)"
        record.msg, record.args = text, ()
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: The logger every mlexec Kafka client logs through.
LOGGER = logging.getLogger("mlexec.librdkafka")
REPEATS = Repeats()
LOGGER.addFilter(REPEATS)
