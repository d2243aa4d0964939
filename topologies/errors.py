"""The exceptions every mlexec package raises."""

from __future__ import annotations

__all__ = ["MlexecError", "TopologyError"]


class MlexecError(Exception):
    """Base of every error mlexec raises on purpose."""


class TopologyError(MlexecError):
    """A topology is wrong: the message names the file, YAML path, expected and found."""
