"""Python reduction packages: a wheel or an archive made importable, checked by sha256.

A python reduction may name the package that holds its code (``reduction.package``:
a ``.whl``, ``.zip``, ``.tar.gz`` or ``.tgz``, optionally pinned by ``reduction.sha256``)
instead of relying on what is installed. :func:`activate` unpacks it once into a
directory named by its sha256 (``MLEXEC_PACKAGES_DIR``, default
``~/.cache/mlexec/packages``) and puts that directory first on ``sys.path``, so the
entry point imports from it. The same bytes always land in the same directory, two
versions never share one, and an unpacked directory appears whole or not at all (it is
unpacked beside it, then renamed). Only pure-Python code runs so: a package with
compiled modules must match the machine that unpacks it.

A process imports one version of a module: a part that must serve another version of
the package is restarted (``mlexec up``, and ``mlexec follow`` when the cloud
publishes one).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from mlexec.errors import MlexecError

__all__ = ["PackageError", "activate", "packages_dir"]

_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz")


class PackageError(MlexecError):
    """A reduction package that cannot be made importable: missing, tampered, unreadable."""


def packages_dir() -> Path:
    """Where packages are unpacked, one directory per sha256."""
    found = os.environ.get("MLEXEC_PACKAGES_DIR")
    return Path(found) if found else Path.home() / ".cache" / "mlexec" / "packages"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def activate(package: str | Path, sha256: str | None = None) -> Path:
    """Make ``package`` importable in this process; the directory it is unpacked in.

    Refuses (:class:`PackageError`) a file that is missing, of an unknown kind, whose
    sha256 is not the pinned one, or that cannot be unpacked.
    """
    path = Path(package)
    if not path.name.endswith(_SUFFIXES):
        msg = f"package {path}: a wheel or an archive ({', '.join(_SUFFIXES)}), found {path.name!r}"
        raise PackageError(msg)
    try:
        found = sha256_of(path)
    except OSError as exc:
        msg = f"cannot read package {path}: {exc.strerror or exc}"
        raise PackageError(msg) from exc
    if sha256 is not None and found != sha256.lower():
        msg = f"package {path} has sha256 {found}, the topology pins {sha256}: not the same file"
        raise PackageError(msg)
    target = packages_dir() / found
    if not target.is_dir():
        _unpack(path, target)
    entry = str(target)
    if entry not in sys.path:
        sys.path.insert(0, entry)
        importlib.invalidate_caches()
    return target


def _unpack(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}-", dir=target.parent))
    try:
        if path.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():  # nothing may land outside the directory
                    if name.startswith("/") or ".." in Path(name).parts:
                        msg = f"package {path}: member {name!r} points outside the package"
                        raise PackageError(msg)
                archive.extractall(work)  # noqa: S202 - every member checked above
        else:
            with tarfile.open(path) as archive:
                archive.extractall(work, filter="data")
        try:
            work.rename(target)
        except OSError:  # another process unpacked the same bytes first
            if not target.is_dir():
                raise
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        msg = f"cannot unpack package {path}: {exc}"
        raise PackageError(msg) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
