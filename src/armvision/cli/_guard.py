"""The one guard every ``armvision`` command runs under.

* a :class:`~armvision.errors.UserError` (bad input: a flag, a file, a checkpoint, data) prints one line,
  ``armvision COMMAND: error: MESSAGE``, and exits 2 -- the status and the form of argparse's own errors;
  under ``--debug`` it keeps its Python traceback instead;
* a stop signal that ended a run after a checkpoint (:class:`~armvision.errors.Preempted`) exits 75
  (:data:`~armvision.train.preemption.EXIT_PREEMPTED`): start the job again;
* Ctrl-C exits 130;
* anything else is a bug and keeps its traceback.

Log records of the ``armvision`` logger go to stderr (rank 0 from INFO, other ranks from WARNING), and a
process group a command joined is always left.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from ..errors import Preempted, UserError

__all__ = ["guarded", "user_error", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. by a test harness)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging() -> None:
    from ..train.distributed import process_rank

    rank = process_rank()
    root = logging.getLogger("armvision")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
        root.addHandler(handler)
    # other ranks only speak when something is wrong
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logging.getLogger("timm").setLevel(logging.WARNING)


def _user_message(e: BaseException) -> str:
    msg = str(e)
    # an error raised inside a DataLoader worker arrives wrapped with the worker's traceback
    marker = f"{type(e).__module__}.{type(e).__name__}: "
    if "Original Traceback" in msg and marker in msg:
        msg = msg.rsplit(marker, 1)[-1].strip()
    return msg


def user_error(command: str, message: str) -> int:
    """Print a user error of ``command`` as its one line on stderr; returns the exit status, 2."""
    print(f"armvision {command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def guarded(command: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``fn`` (a command's work) and turn what it raises into the command's exit status (see the module)."""
    from ..train import distributed
    from ..train.preemption import EXIT_PREEMPTED

    _setup_logging()
    try:
        return int(fn() or 0)
    except UserError as e:
        if debug:
            raise
        return user_error(command, _user_message(e))
    except Preempted as e:
        if distributed.is_main_process():
            print(f"armvision {command}: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print(f"armvision {command}: interrupted; completed checkpoints are intact (resume with --resume auto)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        distributed.teardown()
