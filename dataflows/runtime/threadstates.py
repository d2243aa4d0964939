"""bytewax's worker threads keep one Python thread state for the whole run.

A cluster's workers, and those of a process with several, run on threads bytewax's
engine spawns; bytewax enters Python through PyO3's ``with_gil`` at every activation
of every step. On a thread Python did not start, nothing holds a thread state between
two such calls, so each one creates a thread state and deletes it on return
(``PyGILState_Ensure`` / ``PyGILState_Release`` with a count of zero in between): the
state, its first frame's data stack (an ``mmap`` and ``munmap`` of 16 KiB), its
thread-local storage and context variables, every time. Measured here: 200,000 items
through six maps in batches of 10 cost 4.45 s of CPU as a cluster of one process and
0.75 s run by ``run_main``, whose one worker is the calling (Python) thread; with the
worker's thread state held, 0.84 s. The same churn also empties ``threading.local``
storage between two activations of one worker.

:func:`holding_thread_states` runs a flow with one more input that bytewax builds on
every worker's own thread, where it takes one more count on that thread's state
(``PyGILState_Ensure``, not matched until the end): PyO3's releases then leave the
state in place. After the run, once bytewax has joined its workers, the states are
deleted; after a failed run (its workers may still be stopping) they are left to the
interpreter's exit, as a thread that never ends leaves its own.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition

__all__ = ["HOLD_STEP", "ThreadStates", "holding_thread_states"]

#: The step of the input that holds the states; it emits nothing.
HOLD_STEP = "mlexec_thread_states"

# Python's C API, called with the GIL held (a PyDLL does not release it)
_CAPI = ctypes.PyDLL(None)
_ensure = _CAPI.PyGILState_Ensure
_ensure.argtypes, _ensure.restype = [], ctypes.c_int
_current = _CAPI.PyThreadState_Get
_current.argtypes, _current.restype = [], ctypes.c_void_p
_clear = _CAPI.PyThreadState_Clear
_clear.argtypes, _clear.restype = [ctypes.c_void_p], None
_delete = _CAPI.PyThreadState_Delete
_delete.argtypes, _delete.restype = [ctypes.c_void_p], None


class ThreadStates:
    """The thread states held for one run, by thread."""

    def __init__(self) -> None:
        self._held: dict[int, int] = {}  # thread ident → its PyThreadState *
        self._lock = threading.Lock()

    def hold(self) -> None:
        """Keep the calling thread's Python state until :meth:`release`."""
        with self._lock:
            if threading.get_ident() not in self._held:
                _ensure()
                self._held[threading.get_ident()] = _current()

    def release(self) -> None:
        """Delete the held states; only once their threads ended (bytewax joined them)."""
        with self._lock:
            held, self._held = self._held, {}
        for state in held.values():
            _clear(state)
            _delete(state)


class _Hold(DynamicSource[None]):
    def __init__(self, states: ThreadStates) -> None:
        self._states = states

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Nothing:
        self._states.hold()  # bytewax builds a dynamic source on every worker's thread
        return _Nothing()


class _Nothing(StatelessSourcePartition[None]):
    def next_batch(self) -> list[None]:
        raise StopIteration


@contextmanager
def holding_thread_states(flow: Dataflow) -> Iterator[Dataflow]:
    """``flow`` with the input that holds its workers' thread states, for one run.

    ``flow`` itself is left as it was: the input goes on a copy of its steps, under
    the same flow id (the recovery state stays the flow's). It holds no state.
    """
    held = Dataflow(flow.flow_id, list(flow.substeps))
    states = ThreadStates()
    op.input(HOLD_STEP, held, _Hold(states))
    yield held
    states.release()  # not reached when the run raised: its workers may still run
