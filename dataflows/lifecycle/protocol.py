"""The model registry's contract on ``mlexec.models``, and how traffic is split.

The topic is compacted and has one partition, so its latest value per key is the
registry and its order is the order things happened in. Three kinds of message:

- ``chunk:<uc>:<version>:<i>`` — bytes ``i`` of an ONNX artifact, at most
  :data:`CHUNK_SIZE` each (the broker's default message limit is 1 MB);
- ``manifest:<uc>:<version>`` — JSON: use case, model name, version, sha256 and size of
  the artifact, its chunk count, input and output names and shapes, the stage and
  traffic it was published with, when;
- ``routing:<uc>`` — JSON: which versions serve and how (:class:`Routing`). A publisher
  writes the chunks, then the manifest, then the routing, so a reader never sees a
  routing that names an artifact it has not been sent;
- ``routing:<uc>@<member>`` — a fleet member's own routing (a pin, or the wave of a
  rollout that reached it), in place of the use case's; ``{"follow": true}`` ends it;
- ``rollout:<uc>`` — JSON: a rollout in waves and how far it is
  (:mod:`mlexec.lifecycle.rollout`).

Traffic goes by a stable hash of the record key: a key lands in the same variant on
every worker, site and restart while the routing stays the same.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from mlexec.errors import RegistryError
from mlexec.operators.records import splitmix64

__all__ = [
    "CHUNK_SIZE",
    "STAGES",
    "Assembler",
    "Manifest",
    "RegistryError",
    "Routing",
    "artifact_messages",
    "follow_message",
    "key_shares",
    "manifest_of",
    "routing_message",
]

#: Bytes per chunk message.
CHUNK_SIZE = 512 * 1024
#: What a published version can be asked to do.
STAGES = ("candidate", "shadow", "canary", "production")


@dataclass(frozen=True)
class Manifest:
    """What a version is: identity, integrity, interface, and how it was published."""

    usecase: str
    name: str
    version: str
    sha256: str
    size: int
    chunks: int
    #: (name, shape) of the input; (name, element type, shape) of each output
    inputs: tuple[tuple[str, tuple[Any, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[Any, ...]], ...]
    stage: str = "candidate"
    traffic: float = 0.0
    published_at: int = 0

    def value(self) -> bytes:
        return orjson.dumps(
            {
                "usecase": self.usecase,
                "name": self.name,
                "version": self.version,
                "sha256": self.sha256,
                "size": self.size,
                "chunks": self.chunks,
                "inputs": [{"name": n, "shape": list(s)} for n, s in self.inputs],
                "outputs": [{"name": n, "type": t, "shape": list(s)} for n, t, s in self.outputs],
                "stage": self.stage,
                "traffic": self.traffic,
                "published_at": self.published_at,
            }
        )

    @classmethod
    def parse(cls, value: bytes) -> Manifest:
        doc = orjson.loads(value)
        return cls(
            usecase=doc["usecase"],
            name=doc["name"],
            version=doc["version"],
            sha256=doc["sha256"],
            size=int(doc["size"]),
            chunks=int(doc["chunks"]),
            inputs=tuple((i["name"], tuple(i["shape"])) for i in doc["inputs"]),
            outputs=tuple((o["name"], o["type"], tuple(o["shape"])) for o in doc["outputs"]),
            stage=doc.get("stage", "candidate"),
            traffic=float(doc.get("traffic", 0.0)),
            published_at=int(doc.get("published_at", 0)),
        )


def artifact_messages(manifest: Manifest, data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of ``data``, then its manifest, as (key, value) messages."""
    uc, version = manifest.usecase, manifest.version
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    out = [(f"chunk:{uc}:{version}:{i}".encode(), c) for i, c in enumerate(chunks)]
    out.append((f"manifest:{uc}:{version}".encode(), manifest.value()))
    return out


def manifest_of(
    usecase: str,
    name: str,
    version: str,
    data: bytes,
    inputs: Sequence[tuple[str, Sequence[Any]]],
    outputs: Sequence[tuple[str, str, Sequence[Any]]],
    stage: str,
    traffic: float,
) -> Manifest:
    """The manifest of ``data`` (an ONNX model) as published now."""
    return Manifest(
        usecase=usecase,
        name=name,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunks=max(1, -(-len(data) // CHUNK_SIZE)),
        inputs=tuple((n, tuple(s)) for n, s in inputs),
        outputs=tuple((n, t, tuple(s)) for n, t, s in outputs),
        stage=stage,
        traffic=traffic,
        published_at=int(time.time() * 1000),
    )


@dataclass(frozen=True)
class Routing:
    """Which versions of a use case serve, and how the keys are split between them.

    ``production`` serves every key no other variant takes; ``canary`` takes a share of
    the keys; ``ab`` splits keys between named variants (the rest stays on production);
    ``shadow`` versions see every record but their predictions only go to the sample
    store. ``history`` is the production versions before, latest last (rollback).
    """

    usecase: str
    production: str | None = None
    canary: tuple[str, float] | None = None
    ab: tuple[tuple[str, str, float], ...] = ()
    shadow: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    #: What the last change was, for people.
    change: str = ""
    #: The fleet member this routing is meant for; ``""``: every site of the use case.
    member: str = ""
    #: A member's routing that a rollout must leave alone (``mlexec model pin``).
    pinned: bool = False

    # ----------------------------------------------------------------- changes

    def serving(self) -> set[str]:
        """Every version this routing runs."""
        out = {v for v in (self.production,) if v}
        out |= {self.canary[0]} if self.canary else set()
        out |= {v for _, v, _ in self.ab} | set(self.shadow)
        return out

    def stage_of(self, version: str) -> str:
        if version == self.production:
            return "production"
        if self.canary and self.canary[0] == version:
            return f"canary {self.canary[1]:.0%}"
        for variant, v, share in self.ab:
            if v == version:
                return f"{variant} {share:.0%}"
        if version in self.shadow:
            return "shadow"
        if version in self.retired:
            return "retired"
        return "candidate"

    def _without(self, version: str) -> Routing:
        return replace(
            self,
            canary=None if self.canary and self.canary[0] == version else self.canary,
            ab=tuple(a for a in self.ab if a[1] != version),
            shadow=tuple(v for v in self.shadow if v != version),
            retired=tuple(v for v in self.retired if v != version),
        )

    def publish(self, version: str, stage: str, traffic: float) -> Routing:
        """The routing once ``version`` is published at ``stage``."""
        if stage not in STAGES:
            msg = f"a stage of {list(STAGES)}, found {stage!r}"
            raise RegistryError(msg)
        base = self._without(version)
        if stage == "production":
            if self.production is None:
                return replace(base, production=version, change=f"{version} serves production")
            return self.promote(version)
        if stage == "canary":
            if not 0.0 < traffic < 1.0:
                msg = f"a canary needs --traffic between 0 and 1 (a share of keys), found {traffic}"
                raise RegistryError(msg)
            return replace(
                base, canary=(version, traffic), change=f"{version} canary {traffic:.0%}"
            )
        if stage == "shadow":
            return replace(base, shadow=(*base.shadow, version), change=f"{version} shadow")
        return replace(base, change=f"{version} published as a candidate")

    def promote(self, version: str) -> Routing:
        """``version`` serves production; the one before goes to the history."""
        if version == self.production:
            msg = f"version {version} already serves production"
            raise RegistryError(msg)
        base = self._without(version)
        history = (*base.history, self.production) if self.production else base.history
        return replace(
            base, production=version, history=history, change=f"{version} promoted to production"
        )

    def rollback(self) -> Routing:
        """The previous production serves again; the current one is retired, canaries end."""
        if not self.history:
            msg = f"{self.usecase} has no earlier production version to roll back to"
            raise RegistryError(msg)
        back = self.history[-1]
        current = self.production
        return replace(
            self._without(back),
            production=back,
            history=self.history[:-1],
            canary=None,
            retired=(*self.retired, *([current] if current else [])),
            change=f"rolled back from {current} to {back}",
        )

    def retire(self, version: str) -> Routing:
        """``version`` serves nothing any more."""
        if version == self.production:
            msg = f"version {version} serves production: promote another or roll back first"
            raise RegistryError(msg)
        base = self._without(version)
        return replace(
            base,
            history=tuple(v for v in base.history if v != version),
            retired=(*base.retired, version),
            change=f"{version} retired",
        )

    def split(self, variants: Sequence[tuple[str, str, float]]) -> Routing:
        """A/B: named variants (name, version, share of keys); the rest stays on production."""
        names = [name for name, _, _ in variants]
        total = sum(share for _, _, share in variants)
        if len(set(names)) != len(names) or "production" in names or "shadow" in names:
            msg = f"distinct variant names other than production and shadow, found {names}"
            raise RegistryError(msg)
        if not 0.0 < total <= 1.0 or any(share <= 0 for _, _, share in variants):
            msg = f"positive shares that add up to at most 1, found {total:g}"
            raise RegistryError(msg)
        base = replace(self, canary=None, ab=tuple(variants))
        text = ", ".join(f"{n}={v} {s:.0%}" for n, v, s in variants)
        return replace(base, change=f"A/B: {text}")

    # ------------------------------------------------------------------ JSON

    def value(self) -> bytes:
        return orjson.dumps(
            {
                "usecase": self.usecase,
                "production": self.production,
                "canary": {"version": self.canary[0], "share": self.canary[1]}
                if self.canary
                else None,
                "ab": [{"variant": n, "version": v, "share": s} for n, v, s in self.ab],
                "shadow": list(self.shadow),
                "history": list(self.history),
                "retired": list(self.retired),
                "change": self.change,
                "at": int(time.time() * 1000),
                **({"member": self.member, "pinned": self.pinned} if self.member else {}),
            }
        )

    @classmethod
    def parse(cls, value: bytes) -> Routing:
        doc = orjson.loads(value)
        canary = doc.get("canary")
        return cls(
            usecase=doc["usecase"],
            production=doc.get("production"),
            canary=(canary["version"], float(canary["share"])) if canary else None,
            ab=tuple((a["variant"], a["version"], float(a["share"])) for a in doc.get("ab", [])),
            shadow=tuple(doc.get("shadow", [])),
            history=tuple(doc.get("history", [])),
            retired=tuple(doc.get("retired", [])),
            change=doc.get("change", ""),
            member=doc.get("member", ""),
            pinned=bool(doc.get("pinned", False)),
        )


def routing_message(routing: Routing) -> tuple[bytes, bytes]:
    """The (key, value) message that makes ``routing`` the use case's (or its member's) routing."""
    at = f"@{routing.member}" if routing.member else ""
    return f"routing:{routing.usecase}{at}".encode(), routing.value()


def follow_message(usecase: str, member: str) -> tuple[bytes, bytes]:
    """The message that ends a member's own routing: it serves the use case's again."""
    doc = {"usecase": usecase, "member": member, "follow": True, "at": int(time.time() * 1000)}
    return f"routing:{usecase}@{member}".encode(), orjson.dumps(doc)


def key_shares(keys: Sequence[str]) -> np.ndarray:
    """A stable number in [0, 1) per record key (CRC-32 of the key, mixed by splitmix64)."""
    crc = np.fromiter((zlib.crc32(k.encode()) for k in keys), dtype=np.uint64, count=len(keys))
    return (splitmix64(crc) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class Assembler:
    """Collects a registry topic's messages: manifests, chunks and routings, latest wins."""

    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    chunks: dict[tuple[str, str], dict[int, bytes]] = field(default_factory=dict)
    #: By ``<uc>`` (the use case's) and ``<uc>@<member>`` (a member's own).
    routings: dict[str, Routing] = field(default_factory=dict)
    #: ``rollout:<uc>`` messages as they were sent (:class:`mlexec.lifecycle.rollout.Rollout`).
    rollouts: dict[str, bytes] = field(default_factory=dict)

    def routing_for(self, usecase: str, site: str) -> Routing | None:
        """What ``site`` serves of ``usecase``: its own routing, else the use case's."""
        return self.routings.get(f"{usecase}@{site}") or self.routings.get(usecase)

    def add(self, key: bytes | None, value: bytes | None) -> tuple[str, str] | None:
        """Take one message; returns ``(kind, usecase)`` for a manifest or routing."""
        if key is None or value is None:
            return None
        kind, _, rest = key.decode(errors="replace").partition(":")
        if kind == "chunk":
            uc, version, index = rest.rsplit(":", 2)
            self.chunks.setdefault((uc, version), {})[int(index)] = value
        elif kind == "manifest":
            manifest = Manifest.parse(value)
            self.manifests[(manifest.usecase, manifest.version)] = manifest
            return ("manifest", manifest.usecase)
        elif kind == "routing":
            usecase, _, member = rest.partition("@")
            if orjson.loads(value).get("follow"):
                self.routings.pop(rest, None)
                return ("routing", usecase)
            routing = Routing.parse(value)
            if (routing.usecase, routing.member) != (usecase, member):
                msg = f"registry message {rest!r} holds the routing of {routing.usecase}@{routing.member}"
                raise RegistryError(msg)
            self.routings[rest] = routing
            return ("routing", usecase)
        elif kind == "rollout":
            self.rollouts[rest] = value
            return ("rollout", rest)
        return None

    def artifact(self, usecase: str, version: str) -> bytes:
        """The verified bytes of a version; :class:`RegistryError` if missing or tampered."""
        manifest = self.manifests.get((usecase, version))
        if manifest is None:
            msg = f"no manifest of {usecase} version {version} on the registry"
            raise RegistryError(msg)
        parts = self.chunks.get((usecase, version), {})
        missing = [i for i in range(manifest.chunks) if i not in parts]
        if missing:
            msg = f"{usecase} version {version} lacks chunks {missing[:5]} of {manifest.chunks}"
            raise RegistryError(msg)
        data = b"".join(parts[i] for i in range(manifest.chunks))
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.sha256 or len(data) != manifest.size:
            msg = (
                f"{usecase} version {version}: the artifact's sha256 is {digest[:12]}…, "
                f"its manifest says {manifest.sha256[:12]}… — refused"
            )
            raise RegistryError(msg)
        return data
