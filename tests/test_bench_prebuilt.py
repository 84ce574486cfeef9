"""benchmarks/_cuda_ext.py keeps a built extension module for the next device call: written compressed under a key
(torch version and GPU architecture), loaded back instead of compiled, ignored when the key differs. A stdlib
extension module (``_csv``) stands in for the CUDA one; the key is patched, since it reads the GPU."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cuda_ext(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _cuda_ext

    monkeypatch.setattr(_cuda_ext, "prebuilt_key", lambda: "torchX-sm90")
    return _cuda_ext


def _extension_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".so"):
        pytest.skip(f"{name} is built into this Python, not an extension file")
    return Path(spec.origin)


def test_saved_module_loads_back_and_wrong_key_is_ignored(cuda_ext, tmp_path, monkeypatch):
    so = _extension_file("_csv")
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(so, build / "_csv.so")
    keep = tmp_path / "out"
    monkeypatch.setenv("ARMVISION_CUDA_EXT_SAVE", str(keep))
    cuda_ext._save_prebuilt("_csv", build)
    packed = keep / "_csv-torchX-sm90.so.xz"
    assert packed.is_file() and packed.stat().st_size < so.stat().st_size
    assert not list(keep.glob("*.tmp"))

    monkeypatch.setenv("ARMVISION_CUDA_EXT_PREBUILT", str(keep))
    monkeypatch.delitem(sys.modules, "_csv", raising=False)
    module = cuda_ext._load_prebuilt("_csv", tmp_path / "fresh")
    assert module is not None and callable(module.reader)
    assert (tmp_path / "fresh" / "_csv.so").read_bytes() == so.read_bytes()

    monkeypatch.setattr(cuda_ext, "prebuilt_key", lambda: "torchY-sm90")  # another torch: build instead
    assert cuda_ext._load_prebuilt("_csv", tmp_path / "other") is None
    monkeypatch.delenv("ARMVISION_CUDA_EXT_PREBUILT")
    assert cuda_ext._load_prebuilt("_csv", tmp_path / "other") is None


def test_nothing_saved_without_the_switch(cuda_ext, tmp_path, monkeypatch):
    build = tmp_path / "build"
    build.mkdir()
    (build / "_csv.so").write_bytes(b"not used")
    monkeypatch.delenv("ARMVISION_CUDA_EXT_SAVE", raising=False)
    cuda_ext._save_prebuilt("_csv", build)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["_csv.so", "build"]


def test_damaged_prebuilt_file_means_a_build(cuda_ext, tmp_path, monkeypatch, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "_csv-torchX-sm90.so.xz").write_bytes(b"\xfd7zXZ\x00 cut short")
    monkeypatch.setenv("ARMVISION_CUDA_EXT_PREBUILT", str(keep))
    assert cuda_ext._load_prebuilt("_csv", tmp_path / "build") is None
    assert "cannot be loaded" in capsys.readouterr().out
    assert not (tmp_path / "build" / "_csv.so").exists()
