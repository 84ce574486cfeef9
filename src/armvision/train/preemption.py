"""Pre-emption: a stop signal ends the run cleanly at the next step boundary.

Schedulers ask a job to stop before they kill it: Slurm sends SIGTERM (or the signal of
``--signal``, e.g. SIGUSR1 120 s ahead) and Kubernetes SIGTERM. While a run trains, those signals
(``preemption_signals`` in the config) only set a flag; every rank finishes the step it is in, the
ranks agree, a checkpoint is saved and :class:`~armvision.errors.Preempted` is raised. The command
line then exits with :data:`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), which a job script can
turn into a requeue; ``--resume auto`` continues exactly where the run stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Iterable

__all__ = ["EXIT_PREEMPTED", "StopSignals", "signal_number"]

EXIT_PREEMPTED = 75
_logger = logging.getLogger("armvision.train")


def signal_number(name: str) -> int:
    """``"SIGTERM"`` / ``"TERM"`` / ``"15"`` -> the signal's number; ValueError for an unknown name."""
    text = str(name).strip().upper()
    if text.isdigit():
        return int(signal.Signals(int(text)))
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


class StopSignals:
    """Context manager: while active, the given signals set :attr:`received` instead of ending the process.

    Installed only in the main thread of the main interpreter (elsewhere signals cannot be caught; the
    manager then does nothing). The previous handlers come back on exit.
    """

    def __init__(self, names: Iterable[str]):
        self.numbers = [signal_number(n) for n in names]
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            _logger.warning("received %s: finishing the current step, then saving a checkpoint and exiting", name)
        self.received = name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for n in self.numbers:
                self._previous[n] = signal.signal(n, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for n, old in self._previous.items():
            signal.signal(n, old)
        self._previous.clear()
