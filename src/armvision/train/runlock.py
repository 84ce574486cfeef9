"""One run per output folder: a lock on ``OUTPUT_DIR/.armvision.lock``, held while the run lives.

The lock is ``fcntl.flock`` on that file, taken by the main process (rank 0 under torchrun: the other ranks
write nothing of their own there). The kernel drops it when the process ends, however it ends (exit, crash,
SIGKILL), so a lock file left by a dead run never blocks the next one. The file holds the pid, host and start
time of the run that holds it (how a refused run names the one it met); the run removes it when it ends, with the
folders it had to create when they are still empty (a run refused by a config error leaves nothing behind). A
file removed while another process waits to lock it is noticed (its inode is no longer the path's) and taken anew.
File systems without working ``flock`` (some NFS mounts) make the lock a no-op there, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import ConfigError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".armvision.lock"
_logger = logging.getLogger("armvision")


class RunLock:
    """``RunLock(run_dir).acquire()`` (ConfigError naming the other run when one holds it), ``release()``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # folders made to hold the lock file, deepest first

    def acquire(self) -> "RunLock":
        missing, where = [], self.path.parent
        while not where.exists() and where != where.parent:
            missing.append(where)
            where = where.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = missing
        while not self._try_lock():  # the file was removed by the run that held it: lock the new one
            pass
        return self

    def _try_lock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _describe_holder(fd)
                os.close(fd)
                self._remove_created()
                raise ConfigError(f"{self.path.parent} is in use by another run ({holder}); two runs in one "
                                  "--output-dir would mix their records and checkpoints: wait for it to end, "
                                  "or choose another --output-dir") from None
            os.close(fd)  # ENOLCK, EOPNOTSUPP...: no locking on this file system
            _logger.warning("cannot lock %s (%s): nothing stops a second run from using this --output-dir",
                            self.path, os.strerror(e.errno or 0))
            return True
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file (still holding the lock), drop the lock, and remove the folders made for it when
        nothing else was written there."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(fd)  # closing drops the flock
            self._remove_created()

    def _remove_created(self) -> None:
        for d in self._created:
            try:
                d.rmdir()
            except OSError:
                break  # not empty: the run wrote there
        self._created = []

    def __del__(self) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"
