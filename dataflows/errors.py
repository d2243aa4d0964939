"""The exceptions every mlexec package raises: one base, one subclass per domain.

``MlexecError`` is the base of every error mlexec raises on purpose; the CLI prints its
message in one line and exits 2 for a :class:`TopologyError` (configuration and usage)
and 1 for the others (runtime). Each domain has its class, and the modules of that
domain subclass it for their own cases (``SampleStoreError`` is a :class:`StoreError`,
``KafkaDeliveryError`` a :class:`ConnectorError`, …).
"""

from __future__ import annotations

__all__ = [
    "ConnectorError",
    "MlexecError",
    "RecordError",
    "RegistryError",
    "StoreError",
    "TopologyError",
]


class MlexecError(Exception):
    """Base of every error mlexec raises on purpose."""


class TopologyError(MlexecError):
    """A topology is wrong: the message names the file, YAML path, expected and found."""


class ConnectorError(MlexecError):
    """Something outside failed: a broker, a source, an output, a link."""


class StoreError(MlexecError):
    """The sample store (ClickHouse server or chDB) refused or could not be reached."""


class RegistryError(MlexecError):
    """A model version or routing on the registry is missing, tampered with or unfit."""


class RecordError(MlexecError):
    """A record (or a batch of them) could not be processed; it becomes a dead letter."""
