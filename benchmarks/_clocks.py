"""The GPU's clocks, power and slowdown reasons while a benchmark step runs (nvidia-smi sampled in the background).

A ratio is only fair if both sides ran at the same clocks: a card that reaches its power cap or heats up lowers its
SM clock, and a phase that runs later in a call (or longer) can pay for it. :class:`ClockSampler` runs
``nvidia-smi --query-gpu=... -lms PERIOD`` beside one step and :func:`summarize` reduces its lines to what a table
shows: the SM clock's median and minimum, the power's median and maximum and the hottest temperature over the
samples where the GPU was not idle, and the slowdown reasons seen (``clocks_event_reasons.active``, a bit mask).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"
IDLE = 0x1
# nvidia-smi's clocks_event_reasons bits (nvml's nvmlClocksEventReason*), the idle bit left out of the names
REASONS = {0x2: "applications clocks setting", 0x4: "software power cap", 0x8: "hardware slowdown", 0x10: "sync boost",
           0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown", 0x80: "hardware power brake",
           0x100: "display clock setting"}


def parse_line(line: str) -> dict | None:
    """One sample ``MHz, W, C, 0xMASK`` -> dict, or None for a line that is not one (a header, an error)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 4:
        return None
    try:
        return {"sm_mhz": float(parts[0]), "power_w": float(parts[1]), "temp_c": float(parts[2]),
                "reasons": int(parts[3], 16)}
    except ValueError:
        return None


def summarize(lines: list[str]) -> dict:
    """The samples of one step: counts, and the figures over the busy ones (all of them when every one was idle)."""
    samples = [s for s in map(parse_line, lines) if s is not None]
    if not samples:
        return {"samples": 0}
    busy = [s for s in samples if not s["reasons"] & IDLE]
    used = busy or samples
    mhz = [s["sm_mhz"] for s in used]
    watts = [s["power_w"] for s in used]
    mask = 0
    for s in used:
        mask |= s["reasons"]
    return {"samples": len(samples), "busy_samples": len(busy),
            "sm_mhz_median": statistics.median(mhz), "sm_mhz_min": min(mhz),
            "power_w_median": statistics.median(watts), "power_w_max": max(watts),
            "temp_c_max": max(s["temp_c"] for s in used),
            "reasons": [name for bit, name in REASONS.items() if mask & bit]}


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
    return md_table(["clocks during each step (nvidia-smi every 250 ms, idle samples left out)", "SM MHz, median (min)",
                     "power W, median (max)", "hottest, C", "slowdown reasons seen"],
                    [[what, f"{c['sm_mhz_median']:.0f} ({c['sm_mhz_min']:.0f})",
                      f"{c['power_w_median']:.0f} ({c['power_w_max']:.0f})", f"{c['temp_c_max']:.0f}",
                      ", ".join(c["reasons"]) or "none"] for what, c in clocks.items() if c.get("samples")])
