"""Warm a GPU up to its steady state before timing steps (benchmarks/train_step.py, benchmarks/reference.py).

A few warm-up steps compile, capture the CUDA graphs and fill the caches, but they do not bring the card to the
clocks it keeps under load: an H100 at its 700 W cap lowers its clocks about a second into full load. In the
H100 runs T and U (2026-12-07/08) the model alone's 12 timed steps came after 4 warm-up steps, and the last three
were 2-5 ms slower than the first nine (73.3 -> 76.6 ms; the clock sampler saw the SM clock fall from 1980 MHz to
1710-1815 with "software power cap" as the power reached 700 W), while the median, taken over the cool steps,
reported 73.5. The command, timed over 40 steps after its warm-up, ran at the capped clocks (74.5-75.5 ms). So both
scripts run steps back to back for ``seconds`` before they time any. Run V, the first so timed, put the model alone
at 74.9 ms beside the command's 75.1 in the same call."""

from __future__ import annotations

import time
from typing import Callable

WARM_SECONDS = 5.0  # the default of --warm-seconds: several times the second an H100 took to reach its power cap
SYNC_EVERY = 4  # steps between the warm-up's synchronisations (the host must not run far ahead of the clock)


def warm_up(step: Callable[[], object], steps: int, seconds: float, sync: Callable[[], None] = lambda: None,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run ``steps`` steps (compilation, graph capture), wait for them, then steps back to back until ``seconds``
    of them have run on the device (``sync`` waits for it every :data:`SYNC_EVERY` steps, so the clock measures
    the device's time, not the host's queueing). Returns the steps run after the first ``steps`` and their seconds
    (``warm_steps``, ``warm_s``) for the results."""
    for _ in range(steps):
        step()
    sync()
    t0, n = clock(), 0
    while clock() - t0 < seconds:
        for _ in range(SYNC_EVERY):
            step()
        sync()
        n += SYNC_EVERY
    return {"warm_steps": n, "warm_s": round(clock() - t0, 2)}


def add_warm_option(ap) -> None:
    """``--warm-seconds`` on an argparse parser (one definition for both scripts)."""
    ap.add_argument("--warm-seconds", type=float, default=WARM_SECONDS, metavar="S",
                    help="after --warmup steps, run steps back to back for this long before timing, so the card "
                         "is at the clocks it keeps under load (an H100 at its 700 W cap slows about 1 s in; "
                         f"default {WARM_SECONDS:g})")


def check_warm_option(ap, seconds: float) -> None:
    if not seconds >= 0:  # rejects NaN too
        ap.error(f"--warm-seconds must be 0 or more, got {seconds}")
