"""Integrity of a saved model or checkpoint directory: ``manifest.json`` lists every file's size and SHA-256.

A checkpoint writes its manifest last (:func:`write_manifest`), so a directory whose files do not match it
was damaged after the save (a truncated copy, a full disk, a bad block). :func:`verify_file` checks one
file against the manifest of its directory (or of the parent, for ``ema/model.safetensors``);
:func:`verify_dir` checks all of them. A directory without a manifest (older checkpoints, hand-made model
directories) is not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["MANIFEST_NAME", "write_manifest", "read_manifest", "verify_dir", "verify_file", "file_digest"]

MANIFEST_NAME = "manifest.json"
_CHUNK = 8 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike) -> dict:
    """Record size and SHA-256 of every file under ``directory`` (relative paths) in its manifest.json."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            rel = p.relative_to(directory).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": file_digest(p)}
    manifest = {"format": 1, "files": files}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of ``directory``, None when it has none; ValueError when it cannot be read."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["files"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is damaged ({e})") from None
    return manifest


def _check(path: Path, entry: dict) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != entry.get("size"):
        return f"{path} has {size} bytes, the checkpoint's manifest says {entry.get('size')} (truncated or damaged)"
    if file_digest(path) != entry.get("sha256"):
        return f"{path} does not match the SHA-256 in the checkpoint's manifest (damaged)"
    return None


def verify_dir(directory: str | os.PathLike) -> str | None:
    """None when every file the manifest of ``directory`` lists is intact (or there is no manifest), else
    a message naming the first damaged file."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except ValueError as e:
        return str(e)
    if manifest is None:
        return None
    for rel, entry in manifest["files"].items():
        problem = _check(directory / rel, entry)
        if problem:
            return problem
    return None


def verify_file(path: str | os.PathLike) -> str | None:
    """None when ``path`` matches the manifest of its directory or of the parent directory (or neither has
    a manifest that lists it), else a message naming the file and what is wrong."""
    path = Path(path)
    for root in (path.parent, path.parent.parent):
        try:
            manifest = read_manifest(root)
        except ValueError as e:
            return str(e)
        if manifest is None:
            continue
        rel = Path(os.path.relpath(path, root)).as_posix()
        entry = manifest["files"].get(rel)
        if entry is not None:
            return _check(path, entry)
    return None
