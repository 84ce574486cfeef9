"""Where the commands write: checks that an output directory or file can be written, made before any work
starts (so nothing is computed and then lost), and OS write errors described in one line (disk full,
read-only, permission). Used by training (``--output_dir``, checkpoint saves), ``eval --output``, ``export``
and ``extract``."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from contextlib import contextmanager
from typing import Callable

from .errors import CheckpointError, ConfigError, SaveError

__all__ = ["describe_os_error", "check_output_dir", "check_output_file", "write_error", "guarded_write"]

_CAUSES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EFBIG: "the file is larger than the file-size limit"}


def describe_os_error(e: BaseException) -> str:
    """The cause of a failed write in words (disk full, read-only, permission...)."""
    if isinstance(e, OSError) and e.errno in _CAUSES:
        return _CAUSES[e.errno]
    text = str(e)
    m = re.search(r"os error (\d+)", text)  # safetensors reports the errno in its message
    if m and int(m.group(1)) in _CAUSES:
        return _CAUSES[int(m.group(1))]
    if "unexpected pos" in text or "inline_container" in text or "file write failed" in text:
        return "the write failed (the disk is full or a file-size limit was reached)"
    return text.splitlines()[0] if text else type(e).__name__


def _nearest_existing(path: Path) -> Path:
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def check_output_dir(path: str | os.PathLike, flag: str = "--output-dir") -> None:
    """Make sure files can be written in the directory ``path`` (or, when it does not exist yet, in the nearest
    folder above it, where it will be created); a UserError naming the cause and ``flag`` (how the user gave
    the path) if not. Leaves nothing behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is an existing file; choose a directory")
    where = _nearest_existing(path)
    if not where.is_dir():
        raise ConfigError(f"{flag} {path}: {where} is a file, not a directory; choose another {flag}")
    probe = where / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"cannot write in the output directory {path}: {describe_os_error(e)}; choose "
                              f"another {flag} or fix its permissions") from None


def check_output_file(path: str | os.PathLike, flag: str = "--output", example: str = "out.json",
                      consequence: str = "nothing was done") -> Path:
    """Make sure the file ``path`` can be written (its folder is created); a UserError naming ``flag``, the
    cause and ``consequence`` if not: a directory where the file should be (``example``: a file name to
    suggest in it), a file where a folder should be, a place that cannot be written. Leaves no file behind."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; pass a file name such as {path / example}")
    where = _nearest_existing(path.parent)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"{flag} {path}: {where} is a file, not a directory; {consequence}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"cannot write {flag} {path}: {describe_os_error(e)}; {consequence}") from None
    return path


def write_error(e: BaseException, what: str, note: str = "") -> SaveError:
    """A failed write as the one-line SaveError every writer raises: ``cannot write WHAT: CAUSE`` + ``note``
    (what became of the run, e.g. which checkpoint stays the latest)."""
    if isinstance(e, SaveError):
        return e
    return SaveError(f"cannot write {what}: {describe_os_error(e)}{note}")


@contextmanager
def guarded_write(what: str, note: Callable[[], str] | None = None):
    """``with guarded_write("runs/x/summary.json"): ...``: an OSError inside becomes :func:`write_error`'s
    SaveError (``note()`` appended); a SaveError passes through unchanged."""
    try:
        yield
    except SaveError:
        raise
    except OSError as e:
        raise write_error(e, what, note() if note else "") from None
