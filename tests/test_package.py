"""One import root: the distribution installs `mlexec` only, and the package has no import cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The repository folders that make up the package, and their import names.
FOLDERS = {
    "dataflows": "mlexec",
    "topologies": "mlexec.topologies",
    "connectors": "mlexec.connectors",
    "operators": "mlexec.operators",
}


def test_the_wheel_installs_mlexec_and_nothing_else(tmp_path):
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # an in-tree build keeps deleted modules
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mlexec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "mlexec",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert "mlexec/topologies/demo.yaml" in names and "mlexec/cli/__init__.py" in names
    assert "mlexec/connectors/sources/kafka.py" in names
    # every module of the source folders is in it: no subpackage left out of pyproject's list
    source = {"/".join(m.split(".")) for m in _modules()}
    shipped = {n.removesuffix(".py").removesuffix("/__init__") for n in names if n.endswith(".py")}
    assert source <= shipped, sorted(source - shipped)


def test_the_version_is_known_to_python_and_the_command():
    shown = subprocess.run(
        [sys.executable, "-c", "import mlexec; print(mlexec.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    from importlib.metadata import version

    assert shown.stdout.strip() == version("mlexec") != "0+unknown"
    cli = subprocess.run(
        [sys.executable, "-m", "mlexec.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.strip() == f"mlexec {version('mlexec')}"


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((name, *parts))] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every mlexec module ``module`` imports, at the top or inside functions."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def test_the_package_has_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) - {"mlexec"} for m, p in modules.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_libraries_never_import_the_application():
    """topologies imports none of the others; operators and connectors not each other.

    All of them may import ``mlexec.errors``, the one base of every error (a leaf module).
    """
    modules = _modules()
    allowed = {
        "mlexec.topologies": ("mlexec.topologies", "mlexec.errors"),
        "mlexec.operators": ("mlexec.operators", "mlexec.topologies", "mlexec.errors"),
        "mlexec.connectors": ("mlexec.connectors", "mlexec.topologies", "mlexec.errors"),
    }
    wrong = []
    for m, p in modules.items():
        for lib, ok in allowed.items():
            if m == lib or m.startswith(lib + "."):
                for n in _imports(m, p, set(modules)):
                    if not n.startswith(ok):
                        wrong.append(f"{m} imports {n}")
    assert wrong == []
