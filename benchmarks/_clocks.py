"""The GPU's clocks, power and slowdown reasons while a benchmark step runs (nvidia-smi sampled in the background).

A ratio is only fair if both sides ran at the same clocks: a card that reaches its power cap or heats up lowers its
SM clock, and a phase that runs later in a call (or longer) can pay for it. :class:`ClockSampler` runs
``nvidia-smi --query-gpu=... -lms PERIOD`` beside one step and :func:`summarize` reduces its lines to what a table
shows, over the busy samples (the GPU at least ``BUSY_UTIL`` % busy in the sample's period, and not idle by its
slowdown reasons): the SM clock's median and minimum, the share of them held back by a power limit, the power's
median and maximum, the hottest temperature, and the slowdown reasons seen (``clocks_event_reasons.active``, a bit
mask). A step's compilation or data preparation keeps the clocks up at low power and low utilisation; counting
those samples (as the first version of this module did, 2026-12-07 run T) puts the power median near 120 W. Every
sample is kept too (``trace``: clock, power, utilisation, reasons), to set beside a run's log windows.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

QUERY = "clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active"
IDLE = 0x1
BUSY_UTIL = 50  # percent of the sample period with a kernel running
POWER_LIMITED = 0x4 | 0x80  # software power cap, hardware power brake
# nvidia-smi's clocks_event_reasons bits (nvml's nvmlClocksEventReason*), the idle bit left out of the names
REASONS = {0x2: "applications clocks setting", 0x4: "software power cap", 0x8: "hardware slowdown", 0x10: "sync boost",
           0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown", 0x80: "hardware power brake",
           0x100: "display clock setting"}


def parse_line(line: str) -> dict | None:
    """One sample ``MHz, W, C, %, 0xMASK`` -> dict, or None for a line that is not one (a header, an error, a field
    nvidia-smi could not read such as ``[N/A]``)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 5:
        return None
    try:
        return {"sm_mhz": float(parts[0]), "power_w": float(parts[1]), "temp_c": float(parts[2]),
                "util": float(parts[3]), "reasons": int(parts[4], 16)}
    except ValueError:
        return None


def summarize(lines: list[str]) -> dict:
    """The samples of one step: counts, the figures over the busy ones (all of them when none was busy) and every
    sample as ``trace`` rows ``[MHz, W, utilisation %, reasons mask]``."""
    samples = [s for s in map(parse_line, lines) if s is not None]
    if not samples:
        return {"samples": 0}
    busy = [s for s in samples if not s["reasons"] & IDLE and s["util"] >= BUSY_UTIL]
    used = busy or samples
    mhz = [s["sm_mhz"] for s in used]
    watts = [s["power_w"] for s in used]
    mask = 0
    for s in used:
        mask |= s["reasons"]
    return {"samples": len(samples), "busy_samples": len(busy),
            "sm_mhz_median": statistics.median(mhz), "sm_mhz_min": min(mhz),
            "power_limited_share": sum(1 for s in used if s["reasons"] & POWER_LIMITED) / len(used),
            "power_w_median": statistics.median(watts), "power_w_max": max(watts),
            "temp_c_max": max(s["temp_c"] for s in used),
            "reasons": [name for bit, name in REASONS.items() if mask & bit],
            "trace": [[s["sm_mhz"], s["power_w"], s["util"], s["reasons"]] for s in samples]}


class ClockSampler:
    """``with ClockSampler(path) as s: ...`` samples the first GPU every ``period_ms`` into ``path``; ``s.summary``
    afterwards (empty without nvidia-smi, or when it failed). ``command`` replaces nvidia-smi (tests)."""

    def __init__(self, path: Path, period_ms: int = 250, command: list[str] | None = None):
        self.path, self.summary = Path(path), {}
        exe = shutil.which("nvidia-smi")
        self.command = command or ([exe, "--id=0", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                    "-lms", str(period_ms)] if exe else None)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ClockSampler":
        if self.command:
            self._out = open(self.path, "w")
            try:
                self.proc = subprocess.Popen(self.command, stdout=self._out, stderr=subprocess.DEVNULL)
            except OSError:
                self._out.close()
                self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self.summary = summarize(self.path.read_text().splitlines())


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (with a blank line before it) as lines; no rows: no lines."""
    if not rows:
        return []
    return ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                               for r in rows]


def table_lines(clocks: dict) -> list[str]:
    """The table of what each step ran at (steps without samples left out)."""
    return md_table([f"clocks during each step (nvidia-smi every 250 ms; samples with the GPU at least {BUSY_UTIL} % "
                     "busy)", "busy samples", "SM MHz, median (min)", "held by a power limit", "power W, median (max)",
                     "hottest, C", "slowdown reasons seen"],
                    [[what, f"{c.get('busy_samples', 0)} of {c['samples']}",
                      f"{c['sm_mhz_median']:.0f} ({c['sm_mhz_min']:.0f})",
                      f"{100 * c['power_limited_share']:.0f} %" if "power_limited_share" in c else "",
                      f"{c['power_w_median']:.0f} ({c['power_w_max']:.0f})", f"{c['temp_c_max']:.0f}",
                      ", ".join(c["reasons"]) or "none"] for what, c in clocks.items() if c.get("samples")])
