"""A site's pipeline as a bytewax cluster: which process this is, and where its peers are.

The same conventions as ``python -m bytewax.run`` and bytewax's own Kubernetes tooling,
so a StatefulSet starts ``mlexec run --part pipeline`` exactly as it starts bytewax:

- ``--process-id`` / ``BYTEWAX_PROCESS_ID``, or the pod's ordinal: ``BYTEWAX_POD_NAME``
  (``pipeline-2``) less ``BYTEWAX_STATEFULSET_NAME`` (``pipeline``) and a dash;
- ``--addresses "h0:p;h1:p"`` / ``BYTEWAX_ADDRESSES``, or ``BYTEWAX_HOSTFILE_PATH``, a
  file of one ``host:port`` per line, in process order.

Every process runs the same dataflow; each reads the Kafka partitions bytewax gives its
workers, and all of them share the site's recovery directory (on Kubernetes a volume
every pod mounts), so a cluster resumes from recovery with another process count.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlexec.errors import TopologyError

__all__ = ["Cluster", "cluster_from"]


@dataclass(frozen=True)
class Cluster:
    """One process's place in a cluster of ``len(addresses)`` processes."""

    process_id: int
    addresses: tuple[str, ...]

    @property
    def processes(self) -> int:
        return len(self.addresses)


def _ordinal(env: Mapping[str, str]) -> int | None:
    pod, statefulset = env.get("BYTEWAX_POD_NAME"), env.get("BYTEWAX_STATEFULSET_NAME")
    if not pod or not statefulset:
        return None
    ordinal = pod.removeprefix(statefulset + "-")
    if ordinal == pod or not ordinal.isdigit():
        msg = (
            f"BYTEWAX_POD_NAME {pod!r} is not <BYTEWAX_STATEFULSET_NAME>-<ordinal> "
            f"(BYTEWAX_STATEFULSET_NAME is {statefulset!r})"
        )
        raise TopologyError(msg)
    return int(ordinal)


def _hostfile(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        msg = f"BYTEWAX_HOSTFILE_PATH {path}: cannot be read ({exc.strerror})"
        raise TopologyError(msg) from exc
    return [line.strip() for line in lines if line.strip()]


def cluster_from(
    process_id: int | None,
    addresses: str | None,
    env: Mapping[str, str] | None = None,
) -> Cluster | None:
    """The cluster the flags (else the environment) describe; ``None``: one process."""
    env = os.environ if env is None else env
    if process_id is None and env.get("BYTEWAX_PROCESS_ID"):
        text = env["BYTEWAX_PROCESS_ID"]
        if not text.isdigit():
            msg = f"BYTEWAX_PROCESS_ID: a process number (0, 1, …), found {text!r}"
            raise TopologyError(msg)
        process_id = int(text)
    if process_id is None:
        process_id = _ordinal(env)
    if addresses is None and env.get("BYTEWAX_ADDRESSES"):
        addresses = env["BYTEWAX_ADDRESSES"]
    listed = [a.strip() for a in addresses.split(";") if a.strip()] if addresses else None
    if listed is None and env.get("BYTEWAX_HOSTFILE_PATH") and process_id is not None:
        listed = _hostfile(env["BYTEWAX_HOSTFILE_PATH"])
    if process_id is None and listed is None:
        return None
    if process_id is None or not listed:
        missing = (
            "--process-id (or BYTEWAX_PROCESS_ID, or a pod ordinal)"
            if process_id is None
            else ("--addresses (or BYTEWAX_ADDRESSES, or BYTEWAX_HOSTFILE_PATH)")
        )
        msg = f"a pipeline cluster needs {missing}"
        raise TopologyError(msg)
    for address in listed:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            msg = f"--addresses: host:port per process, separated by ';', found {address!r}"
            raise TopologyError(msg)
    if not 0 <= process_id < len(listed):
        msg = (
            f"--process-id {process_id}: a cluster of {len(listed)} processes "
            f"({';'.join(listed)}) numbers them 0…{len(listed) - 1}"
        )
        raise TopologyError(msg)
    return Cluster(process_id, tuple(listed))
