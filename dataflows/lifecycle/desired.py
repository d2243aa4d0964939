"""A fleet's desired state on the registry: the topology and every file it names, versioned.

``mlexec fleet publish`` puts on the cloud's ``mlexec.models`` (the registry its
members' links already reach) two kinds of message:

- ``blob:<sha256>:<i>`` — bytes ``i`` of a file (at most
  :data:`~mlexec.lifecycle.protocol.CHUNK_SIZE` each); a file's key is its content, so
  a file that did not change is not sent again;
- ``desired:<topology>`` — JSON (:class:`Desired`): the version (one more than the last
  published), the topology file's name and every file of the bundle by its path
  relative to the topology (the topology, fleet inventories, models, ONNX pre-models,
  python reduction packages, monitoring references) with sha256, size and chunk count,
  the sites it declares, when. Written after the blobs, so a reader never sees a
  version whose files it has not been sent.

A member started with only its name and its cloud link (``mlexec follow``,
:mod:`mlexec.runtime.follow`) reads them, rebuilds the bundle in its state directory,
checks it and applies it — or refuses it and keeps serving the last good one.
Paths that are absolute or use ``${...}`` are the member's own (a device's
``/models``) and are not sent; a relative path that leaves the topology's directory
(``..``) is refused, as the bundle could not rebuild it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from mlexec.connectors.kafka import ensure_topics, produce_records
from mlexec.connectors.reading import read_topic
from mlexec.errors import RegistryError, TopologyError
from mlexec.lifecycle.protocol import CHUNK_SIZE
from mlexec.topologies.plan import MODELS_TOPIC, Plan

__all__ = [
    "Desired",
    "DesiredReader",
    "FileRef",
    "bundle_files",
    "named_files",
    "publish_desired",
]


@dataclass(frozen=True)
class FileRef:
    """One file of a bundle, by content."""

    sha256: str
    size: int
    chunks: int


@dataclass(frozen=True)
class Desired:
    """One published version of a topology, and what it takes to run it."""

    topology: str
    version: int
    #: the topology file, relative to the bundle's directory
    entry: str
    files: dict[str, FileRef]
    #: every site the topology declares (a fleet's members included)
    sites: tuple[str, ...] = ()
    published_at: int = 0
    #: sha256 over the files' paths and contents: the same bundle, the same digest
    digest: str = field(default="")

    def value(self) -> bytes:
        return orjson.dumps(
            {
                "topology": self.topology,
                "version": self.version,
                "entry": self.entry,
                "files": {
                    p: {"sha256": f.sha256, "size": f.size, "chunks": f.chunks}
                    for p, f in sorted(self.files.items())
                },
                "sites": list(self.sites),
                "published_at": self.published_at,
                "digest": self.digest,
            }
        )

    @classmethod
    def parse(cls, value: bytes) -> Desired:
        doc = orjson.loads(value)
        return cls(
            topology=str(doc["topology"]),
            version=int(doc["version"]),
            entry=str(doc["entry"]),
            files={
                str(p): FileRef(str(f["sha256"]), int(f["size"]), int(f["chunks"]))
                for p, f in doc["files"].items()
            },
            sites=tuple(doc.get("sites", ())),
            published_at=int(doc.get("published_at", 0)),
            digest=str(doc.get("digest", "")),
        )


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()


def _named_paths(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(YAML path, file) of every file the raw topology names."""
    found: list[tuple[str, str]] = []
    for name, fleet in (raw.get("fleets") or {}).items():
        if isinstance(fleet, dict) and isinstance(fleet.get("inventory"), str):
            found.append((f"fleets.{name}.inventory", fleet["inventory"]))
    for name, uc in (raw.get("usecases") or {}).items():
        if not isinstance(uc, dict):
            continue
        monitoring = uc.get("monitoring") if isinstance(uc.get("monitoring"), dict) else {}
        reference = monitoring.get("reference") if isinstance(monitoring, dict) else None
        for where, part, key in (
            ("model.path", uc.get("model"), "path"),
            ("reduction.path", uc.get("reduction"), "path"),
            ("reduction.package", uc.get("reduction"), "package"),
            ("monitoring.reference.path", reference, "path"),
        ):
            if isinstance(part, dict) and isinstance(part.get(key), str):
                found.append((f"usecases.{name}.{where}", part[key]))
    return found


def named_files(topology: Path) -> list[Path]:
    """The files a topology names by a relative path (those a bundle carries), existing or not."""
    raw = yaml.safe_load(topology.read_bytes()) or {}
    return [
        topology.parent / named
        for _where, named in _named_paths(raw if isinstance(raw, dict) else {})
        if "${" not in named and not Path(named).is_absolute()
    ]


def bundle_files(topology: Path) -> dict[str, bytes]:
    """The topology file and every file it names by a relative path, by relative path.

    Refuses (:class:`TopologyError`, naming the file and YAML path) a named file that
    is missing or lies outside the topology's directory.
    """
    text = topology.read_bytes()
    raw = yaml.safe_load(text) or {}
    files = {topology.name: text}
    for where, named in _named_paths(raw if isinstance(raw, dict) else {}):
        if "${" in named or Path(named).is_absolute():
            continue  # the member's own file
        if ".." in Path(named).parts:
            msg = (
                f"{topology}: {where}: {named!r} leaves the topology's directory; a member "
                "rebuilds the bundle from paths inside it (move the file beside the topology)"
            )
            raise TopologyError(msg)
        path = topology.parent / named
        try:
            files[Path(named).as_posix()] = path.read_bytes()
        except OSError as exc:
            msg = f"{topology}: {where}: cannot read {path}: {exc.strerror or exc}"
            raise TopologyError(msg) from exc
    return files


class DesiredReader:
    """The desired states and files on a registry, message by message."""

    def __init__(self) -> None:
        self.desired: dict[str, Desired] = {}
        self._chunks: dict[str, dict[int, bytes]] = {}
        #: messages that could not be read, as (key, reason)
        self.unreadable: list[tuple[str, str]] = []

    def add(self, key: bytes | None, value: bytes | None) -> Desired | None:
        """Take one message; returns the :class:`Desired` it announces, if any."""
        if key is None or value is None:
            return None
        kind, _, rest = key.decode(errors="replace").partition(":")
        if kind == "blob":
            sha, _, index = rest.rpartition(":")
            self._chunks.setdefault(sha, {})[int(index)] = value
        elif kind == "desired":
            try:
                found = Desired.parse(value)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self.unreadable.append((rest, f"{type(exc).__name__}: {exc}"))
                return None
            self.desired[rest] = found
            return found
        return None

    def has(self, sha: str) -> bool:
        return sha in self._chunks

    def file(self, ref: FileRef) -> bytes:
        """The verified bytes of a file; :class:`RegistryError` if missing or tampered."""
        parts = self._chunks.get(ref.sha256, {})
        missing = [i for i in range(ref.chunks) if i not in parts]
        if missing:
            msg = f"file {ref.sha256[:12]} lacks chunks {missing[:5]} of {ref.chunks}"
            raise RegistryError(msg)
        data = b"".join(parts[i] for i in range(ref.chunks))
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            msg = f"file {ref.sha256[:12]} on the registry is not the one published (sha256)"
            raise RegistryError(msg)
        return data

    def materialize(self, desired: Desired, root: Path) -> Path:
        """Write the bundle under ``root`` (once; whole or not at all); its topology file."""
        target = root / f"v{desired.version}-{desired.digest[:12]}"
        if not target.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root))
            try:
                for rel, ref in desired.files.items():
                    if Path(rel).is_absolute() or ".." in Path(rel).parts:
                        msg = f"desired v{desired.version}: file {rel!r} leaves the bundle"
                        raise RegistryError(msg)
                    path = work / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(self.file(ref))
                os.replace(work, target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return target / desired.entry


def publish_desired(
    plan: Plan, topology: Path, conf: dict[str, Any], *, clock: Any = time.time
) -> Desired:
    """Publish ``topology`` (planned as ``plan``) and its files on the registry at ``conf``.

    The version is one more than the one the registry holds for the topology's name;
    the same bundle again publishes nothing and returns that version. Files
    already on the registry (by sha256) are not sent again.
    """
    files = bundle_files(topology)
    ensure_topics(conf, [plan.topic_spec(MODELS_TOPIC)])
    reader = DesiredReader()
    for key, value, *_ in read_topic(conf, MODELS_TOPIC):
        reader.add(key, value)
    name = plan.topology.name
    previous = reader.desired.get(name)
    if previous is not None and previous.digest == _digest(files):
        return previous  # the same bundle: its version stays
    refs: dict[str, FileRef] = {}
    messages: list[tuple[bytes | None, bytes]] = []
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
        refs[rel] = FileRef(sha, len(data), len(chunks))
        if not reader.has(sha):
            messages += [(f"blob:{sha}:{i}".encode(), c) for i, c in enumerate(chunks)]
    desired = Desired(
        topology=name,
        version=(previous.version if previous else 0) + 1,
        entry=topology.name,
        files=refs,
        sites=tuple(plan.topology.sites),
        published_at=int(clock() * 1000),
        digest=_digest(files),
    )
    messages.append((f"desired:{name}".encode(), desired.value()))
    produce_records(conf, MODELS_TOPIC, messages)
    return desired
