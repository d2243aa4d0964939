"""Load a topology file: YAML → ``${ENV}`` expansion → pydantic validation.

Every error names the file, the line, the YAML path of the key, what was expected
and what was found, so a user can fix a topology without reading mlexec's code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlexec.errors import TopologyError
from mlexec.topologies.fleets import FleetError, expand_fleets
from mlexec.topologies.schema import Topology

__all__ = ["expand_env", "load_topology", "parse_topology"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_IN_MESSAGE = re.compile(r"^([A-Za-z0-9_.-]+): (.*)$", re.DOTALL)


def expand_env(
    value: Any, path: tuple[str | int, ...] = (), builtins: dict[str, str] | None = None
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree.

    Expansion runs on parsed scalars (not on the raw text) so a secret holding YAML
    syntax cannot change the document's structure. Defaults may nest
    (``${A:-${B:-x}}``); a value taken from the environment is used as it is.
    ``builtins`` are names the file defines whatever the environment says
    (``TOPOLOGY_DIR``, the folder of the topology file).
    """
    if isinstance(value, dict):
        return {k: expand_env(v, (*path, k), builtins) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*path, i), builtins) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    return _expand(value, path, builtins or {})


def _expand(text: str, path: tuple[str | int, ...], builtins: dict[str, str]) -> str:
    out: list[str] = []
    i = 0
    while (start := text.find("${", i)) >= 0:
        out.append(text[i:start])
        name = _NAME.match(text, start + 2)
        if name is None:
            out.append("${")
            i = start + 2
            continue
        after = name.end()
        if text.startswith("}", after):
            default, i = None, after + 1
        elif text.startswith(":-", after) and (close := _closing(text, after + 2)) >= 0:
            default, i = text[after + 2 : close], close + 1
        else:
            out.append(text[start:after])
            i = after
            continue
        var = name.group(0)
        if var in builtins:
            out.append(builtins[var])
        elif var in os.environ:
            out.append(os.environ[var])
        elif default is not None:
            out.append(_expand(default, path, builtins))
        else:
            msg = f"environment variable {var} is not set (write ${{{var}:-default}} for a default)"
            raise _EnvError(path, msg)
    out.append(text[i:])
    return "".join(out)


def _closing(text: str, at: int) -> int:
    """Index of the ``}`` closing a default that starts at ``at`` (nested ``${…}`` allowed)."""
    depth = 0
    for j in range(at, len(text)):
        if text.startswith("${", j):
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return j
            depth -= 1
    return -1


class _EnvError(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def load_topology(path: str | Path) -> Topology:
    """Read and validate the topology at ``path``; raise :class:`TopologyError` if bad."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{file}: cannot read the topology: {exc.strerror or exc}"
        raise TopologyError(msg) from exc
    return parse_topology(text, source=str(file), base_dir=file.parent)


def parse_topology(text: str, source: str = "<string>", base_dir: Path | None = None) -> Topology:
    """Validate topology YAML ``text``; ``source`` names it in errors.

    Relative model (and pre-model) paths are resolved against ``base_dir`` (the
    topology's folder), which ``${TOPOLOGY_DIR}`` names in any value.
    """
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        msg = f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"
        raise TopologyError(msg) from exc
    if not isinstance(raw, dict):
        msg = f"{source}: expected a mapping with sites and usecases, found {type(raw).__name__}"
        raise TopologyError(msg)
    try:
        here = {"TOPOLOGY_DIR": str(base_dir.resolve())} if base_dir is not None else {}
        raw = expand_env(raw, builtins=here)
    except _EnvError as exc:
        raise TopologyError(_describe(source, root, exc.path, exc.message)) from exc
    try:
        members = expand_fleets(raw, base_dir)
    except FleetError as exc:
        raise TopologyError(_describe(source, root, exc.path, exc.message)) from exc
    if base_dir is not None:
        raw = _resolve_model_paths(raw, base_dir)
    try:
        topology = Topology.model_validate(raw)
    except ValidationError as exc:
        lines = list(
            dict.fromkeys(  # a template's error, once: not once per member
                _describe_pydantic(source, root, raw, _at_template(err, members))
                for err in exc.errors()
            )
        )
        raise TopologyError("\n".join(lines)) from exc
    if base_dir is not None:
        topology._directory = str(base_dir.resolve())
    return topology


def _at_template(err: Any, members: dict[str, str]) -> Any:
    """A member site's error, placed at its fleet's template (the YAML the user wrote)."""
    loc = tuple(err["loc"])
    if len(loc) >= 2 and loc[0] == "sites" and loc[1] in members:
        return {**err, "loc": ("fleets", members[str(loc[1])], "site", *loc[2:])}
    return err


def _resolve_model_paths(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    usecases = raw.get("usecases")
    if not isinstance(usecases, dict):
        return raw
    for uc in usecases.values():
        if not isinstance(uc, dict):
            continue
        monitoring = uc.get("monitoring")
        reference = monitoring.get("reference") if isinstance(monitoring, dict) else None
        # the model, an ONNX pre-model, a monitoring reference file
        for part, field in (
            (uc.get("model"), "path"),
            (uc.get("reduction"), "path"),
            (uc.get("reduction"), "package"),  # a python reduction's wheel or archive
            (reference, "path"),
        ):
            if isinstance(part, dict) and isinstance(part.get(field), str):
                path = Path(part[field])
                if not path.is_absolute():
                    part[field] = str((base_dir / path).resolve())
    return raw


def _describe_pydantic(source: str, root: yaml.Node | None, raw: Any, err: Any) -> str:
    loc = _yaml_loc(raw, tuple(err["loc"]))
    message = str(err["msg"]).removeprefix("Value error, ")
    if (match := _PATH_IN_MESSAGE.match(message)) is not None:
        loc = (*loc, *_split_path(match.group(1)))
        message = match.group(2)
    if err["type"] == "missing":
        return _describe(source, root, loc, "a value is required, found nothing")
    if err["type"] == "extra_forbidden":
        return _describe(source, root, loc, "found an unknown key (misspelt or misplaced?)")
    if err["type"] in {"value_error", "assertion_error"}:
        return _describe(source, root, loc, f"expected {message}")
    found = err.get("input")
    return _describe(source, root, loc, f"expected: {message.lower()}; found {found!r}")


def _yaml_loc(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop what pydantic adds to ``loc`` that is not a YAML key.

    Discriminated unions add their tag (``microbatch``); walking the document along
    the path tells tags from keys.
    """
    out: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
            elif part == "schema_" and "schema" in node:
                out.append("schema")
                node = node["schema"]
            elif isinstance(part, str) and out and not _is_field_of(node, part):
                continue  # a discriminated-union tag
            else:
                out.append(part)
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            out.append(part)
            node = None
    return tuple(out)


def _is_field_of(node: dict[str, Any], part: str) -> bool:
    """Whether ``part`` names a key that could live in ``node`` (not a union tag)."""
    return node.get("kind") != part


def _split_path(text: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def _describe(source: str, root: yaml.Node | None, loc: tuple[Any, ...], message: str) -> str:
    path = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {path}: {message}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node along ``loc``."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    line = key.start_mark.line + 1
                    child = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                child = node.value[part]
                line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
