"""A topology's fleets, made into sites: each member of a fleet is a site of its own.

Runs in the loader, on the parsed YAML after ``${ENV}`` expansion and before
validation, so every command sees a member as the site it is (``--site plant-017``).
A fleet declares a site template whose strings name ``${site.name}`` and
``${site.<var>}``, and its members — inline and/or from an inventory file:

- CSV, one member a row: a ``name`` column, an optional ``labels`` column
  (``region=eu;line=2``), and every other column a variable;
- YAML, a list of ``{name, labels, vars}`` (or ``{members: [...]}``).

Each member gets the template with its values filled in as ``sites.<member>``, and,
when the fleet declares a ``link``, a link of its own to the link's target. Errors name
the inventory file and its line, or the template's YAML path and the member.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["FleetError", "expand_fleets", "read_inventory"]

_VAR = re.compile(r"\$\{site\.([A-Za-z_][A-Za-z0-9_]*)\}")
_MEMBER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class FleetError(Exception):
    """A fleet that cannot be expanded: ``path`` in the topology, and why."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _labels(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(";")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"{where}: labels as key=value;key=value, found {text!r}"
            raise ValueError(msg)
        out[key.strip()] = value.strip()
    return out


def _member(raw: Any, where: str) -> dict[str, Any]:
    """One member as the schema takes it; refuses what it cannot be."""
    if not isinstance(raw, dict):
        msg = f"{where}: a member {{name, labels, vars}}, found {raw!r}"
        raise ValueError(msg)
    unknown = set(raw) - {"name", "labels", "vars"}
    if unknown:
        msg = f"{where}: a member has name, labels and vars, found {sorted(unknown)}"
        raise ValueError(msg)
    name = raw.get("name")
    if not isinstance(name, str) or not _MEMBER_NAME.match(name):
        msg = (
            f"{where}: name: a site name (a letter, then letters, digits, '_' or '-'; "
            f"at most 63), found {name!r}"
        )
        raise ValueError(msg)
    for part in ("labels", "vars"):
        value = raw.get(part, {})
        if not isinstance(value, dict):
            msg = f"{where}: {part}: a mapping of names to values, found {value!r}"
            raise ValueError(msg)
    return {
        "name": name,
        "labels": {str(k): str(v) for k, v in raw.get("labels", {}).items()},
        "vars": {str(k): str(v) for k, v in raw.get("vars", {}).items()},
    }


def read_inventory(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, member)`` of every member the file lists; ``where`` is ``file:line``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read the inventory: {exc.strerror or exc}"
        raise ValueError(msg) from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "name" not in reader.fieldnames:
            msg = f"{path}:1: an inventory CSV with a 'name' column, found {reader.fieldnames}"
            raise ValueError(msg)
        out = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                msg = f"{where}: more values than the header has columns"
                raise ValueError(msg)
            labels = _labels(row.pop("labels", "") or "", where)
            name = (row.pop("name") or "").strip()
            values = {k.strip(): v.strip() for k, v in row.items() if v is not None and v.strip()}
            out.append((where, _member({"name": name, "labels": labels, "vars": values}, where)))
        return out
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        msg = f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"
        raise ValueError(msg) from exc
    if isinstance(doc, dict) and "members" in doc:
        doc = doc["members"]
    if not isinstance(doc, list):
        msg = f"{path}: an inventory: a list of members {{name, labels, vars}}, found {doc!r:.80}"
        raise ValueError(msg)
    return [(f"{path}: members.{i}", _member(m, f"{path}: members.{i}")) for i, m in enumerate(doc)]


def _fill(value: Any, member: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, member, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, member, (*path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    values = {**member["vars"], "name": member["name"]}

    def one(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in values:
            msg = (
                f"${{site.{var}}}: member {member['name']!r} has no variable {var!r} "
                f"(it has: {sorted(values)})"
            )
            raise FleetError(path, msg)
        return str(values[var])

    return _VAR.sub(one, value)


def expand_fleets(raw: dict[str, Any], base_dir: Path | None) -> dict[str, str]:
    """Add every fleet member to ``raw['sites']`` (and its link to ``raw['links']``).

    ``raw['fleets'][f]['members']`` becomes the full list (inventory, then inline).
    Returns member → fleet, for naming a member's errors by its fleet's template.
    """
    fleets = raw.get("fleets")
    if not fleets:
        return {}
    if not isinstance(fleets, dict):
        raise FleetError(("fleets",), f"a mapping of fleet names to fleets, found {fleets!r:.80}")
    sites = raw.setdefault("sites", {})
    if not isinstance(sites, dict):
        return {}  # the schema names what sites should be
    links = raw.setdefault("links", [])
    member_of: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, fleet in fleets.items():
        if not isinstance(fleet, dict):
            continue  # the schema says what a fleet is
        listed: list[tuple[str, dict[str, Any]]] = []
        inventory = fleet.get("inventory")
        if isinstance(inventory, str):
            path = Path(inventory)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                listed += read_inventory(path)
            except ValueError as exc:
                raise FleetError(("fleets", name, "inventory"), str(exc)) from exc
        inline = fleet.get("members", [])
        if not isinstance(inline, list):
            raise FleetError(
                ("fleets", name, "members"), f"a list of members, found {inline!r:.80}"
            )
        for i, m in enumerate(inline):
            try:
                listed.append((f"fleets.{name}.members.{i}", _member(m, "a member")))
            except ValueError as exc:
                raise FleetError(("fleets", name, "members", i), str(exc)) from exc
        template = fleet.get("site")
        link = fleet.get("link")
        members = []
        for where, member in listed:
            m = member["name"]
            if m in seen:
                msg = f"{where}: member {m!r} is listed twice (first at {seen[m]})"
                raise FleetError(("fleets", name, "members"), msg)
            if m in sites or m in fleets:
                msg = f"{where}: member {m!r} has the name of a site or fleet of the topology"
                raise FleetError(("fleets", name, "members"), msg)
            seen[m] = where
            members.append(member)
            member_of[m] = name
            if isinstance(template, dict):
                sites[m] = _fill(template, member, ("fleets", name, "site"))
            if isinstance(link, dict) and isinstance(links, list):
                links.append({"source": m, **link})
        fleet["members"] = members
    return member_of
