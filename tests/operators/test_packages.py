"""Reduction packages: a wheel or archive made importable, pinned by sha256, never escaping."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile

import pytest

from mlexec.operators.packages import PackageError, activate
from mlexec.operators.reduce import Reducer, ReductionError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLEXEC_PACKAGES_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))


def _wheel(path, module, body="def f(frame):\n    return frame\n"):
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{module}/__init__.py", body)
    return path


def test_a_wheel_is_unpacked_once_by_content_and_imports(tmp_path):
    wheel = _wheel(tmp_path / "pkg_a-1-py3-none-any.whl", "pkg_a_mlexec")
    where = activate(wheel)
    assert where.name == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert activate(wheel) == where and sys.path.count(str(where)) == 1
    Reducer("uc", entrypoint="pkg_a_mlexec:f", columns=["x"])  # the entry point imports


def test_a_tar_gz_archive_works_too(tmp_path):
    body = b"def g(frame):\n    return frame\n"
    path = tmp_path / "pkg_b.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("pkg_b_mlexec/__init__.py")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    Reducer("uc", entrypoint="pkg_b_mlexec:g", columns=["x"], package=str(path))


def test_other_bytes_than_the_pinned_ones_are_refused(tmp_path):
    wheel = _wheel(tmp_path / "pkg_c-1-py3-none-any.whl", "pkg_c_mlexec")
    with pytest.raises(PackageError, match="the topology pins"):
        activate(wheel, "0" * 64)
    with pytest.raises(ReductionError, match="the topology pins"):
        Reducer(
            "uc", entrypoint="pkg_c_mlexec:f", columns=["x"], package=str(wheel), sha256="1" * 64
        )


def test_a_member_outside_the_package_missing_files_and_unknown_kinds_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../outside.py", "x = 1\n")
    with pytest.raises(PackageError, match="points outside"):
        activate(evil)
    assert not (tmp_path / "outside.py").exists()
    with pytest.raises(PackageError, match="cannot read package"):
        activate(tmp_path / "gone.whl")
    (tmp_path / "code.py").write_text("x = 1\n")
    with pytest.raises(PackageError, match="a wheel or an archive"):
        activate(tmp_path / "code.py")
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="cannot unpack"):
        activate(broken)
