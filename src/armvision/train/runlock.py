"""One run per output folder: a lock on ``OUTPUT_DIR/.armvision.lock``, held while the run lives.

The lock is ``fcntl.flock`` on that file, taken by the main process (rank 0 under torchrun: the other ranks
write nothing of their own there). The kernel drops it when the process ends, however it ends (exit, crash,
SIGKILL), so a lock file left by a dead run never blocks the next one; the file itself stays, holding the
pid, host and start time of the last run that took it, which is how a refused run names the one it met.
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

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _describe_holder(fd)
                os.close(fd)
                raise ConfigError(f"{self.path.parent} is in use by another run ({holder}); two runs in one "
                                  "--output_dir would mix their records and checkpoints: wait for it to end, "
                                  "or choose another --output_dir") from None
            os.close(fd)  # ENOLCK, EOPNOTSUPP...: no locking on this file system
            _logger.warning("cannot lock %s (%s): nothing stops a second run from using this --output_dir",
                            self.path, os.strerror(e.errno or 0))
            return self
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock

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
