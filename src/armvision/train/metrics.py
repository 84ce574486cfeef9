"""Metrics of a run: one JSON line per record (metrics.jsonl: setup, train, eval, summary, ...), a CSV
file for the training and the evaluation records (metrics_train.csv, metrics_eval.csv) and TensorBoard
scalars. Only the main process writes."""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..outputs import guarded_write

__all__ = ["MetricsLogger", "format_duration", "CSV_KINDS", "truncate_records"]

CSV_KINDS = ("train", "eval")
# columns a CSV file always has, whatever its first record holds (a record without one leaves it empty)
_CSV_COLUMNS = {"train": ["kind", "step", "time", "epoch", "loss", "lr", "images_per_s", "grad_norm",
                         "data_wait_ms", "gpu_ms"]}


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def truncate_records(run_dir: str | Path, step: int) -> int:
    """Drop the records of steps after ``step`` from metrics.jsonl and the CSV files (each rewritten
    atomically); returns how many were dropped."""
    from ..models.io import atomic_write

    run_dir, dropped = Path(run_dir), 0
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                ok = int(json.loads(line).get("step", 0)) <= step
            except (ValueError, AttributeError, TypeError):
                ok = False  # a line cut by a kill
            keep.append(line) if ok else None
        if len(keep) != len(lines):
            dropped += len(lines) - len(keep)
            atomic_write(path, lambda p: Path(p).write_text("".join(x + "\n" for x in keep)))
    for kind in CSV_KINDS:
        path = run_dir / f"metrics_{kind}.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "step" not in rows[0]:
            continue
        i = rows[0].index("step")
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[i].isdigit() and int(r[i]) <= step]
        if len(keep) != len(rows):
            dropped += len(rows) - len(keep)

            def write(p, keep=keep):
                with open(p, "w", newline="") as f:
                    csv.writer(f).writerows(keep)

            atomic_write(path, write)
    return dropped


class MetricsLogger:
    """``log("train", step, loss=..., lr=...)`` appends to metrics.jsonl (and metrics_train.csv for
    train/eval records) and writes TensorBoard scalars ``train/loss``, ``train/lr``. Appends on resume.

    ``resume_step``: the step the run continues from; records past it (logged after that checkpoint by the
    interrupted run, and about to be logged again) are dropped from the files, and TensorBoard purges them.
    -1: a new run (nothing kept); None: keep everything.

    A write that fails (disk full, quota, read-only, permission) raises a one-line SaveError naming the file and
    the cause, followed by ``note()`` (the trainer's: which checkpoint stays the latest); after that the logger
    writes nothing more and ``close`` is quiet."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None, note: Callable[[], str] | None = None):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.note = note
        self._csv: dict[str, tuple[Any, csv.DictWriter, list[str]]] = {}
        self._tb = None
        self._jsonl = None
        self._failed = False
        self._hook = None
        if not enabled:
            return
        with self._guard(self.dir / "metrics.jsonl"):
            self.dir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                truncate_records(self.dir, resume_step)
            self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._quiet_writer_threads()
            purge = None if resume_step is None else resume_step + 1
            with self._guard(self.dir / "tensorboard"):
                self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=purge)

    def _guard(self, path: Path):
        return guarded_write(str(path), self._fail_note)

    def _fail_note(self) -> str:
        self._failed = True
        return self.note() if self.note else ""

    def _quiet_writer_threads(self) -> None:
        """TensorBoard writes in a thread; an OSError there (disk full) comes back to the next ``log`` as a
        one-line SaveError: the thread's own traceback is not printed."""
        previous = threading.excepthook

        def hook(args):
            if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
                return
            previous(args)

        self._hook = (previous, hook)
        threading.excepthook = hook

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled or self._failed:
            return
        record = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **values}
        with self._guard(self.dir / "metrics.jsonl"):
            self._jsonl.write(json.dumps(record) + "\n")
        if kind in CSV_KINDS:
            with self._guard(self.dir / f"metrics_{kind}.csv"):
                self._write_csv(kind, record)
        if self._tb is not None:
            with self._guard(self.dir / "tensorboard"):
                for k, v in values.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        self._tb.add_scalar(f"{kind}/{k}", v, int(step))

    def _write_csv(self, kind: str, record: dict) -> None:
        if kind not in self._csv:
            path = self.dir / f"metrics_{kind}.csv"
            fixed = _CSV_COLUMNS.get(kind, [])
            columns = fixed + [k for k in record if k not in fixed]
            if path.is_file() and path.stat().st_size > 0:  # resumed run: keep the file's columns
                with open(path, newline="") as f:
                    header = next(csv.reader(f), None)
                columns = header or columns
                f = open(path, "a", newline="", buffering=1)
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            else:
                f = open(path, "w", newline="", buffering=1)
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
            self._csv[kind] = (f, writer, columns)
        f, writer, _ = self._csv[kind]
        writer.writerow({k: v for k, v in record.items() if not isinstance(v, (dict, list))})

    def flush(self) -> None:
        if self._tb is not None and not self._failed:
            with self._guard(self.dir / "tensorboard"):
                self._tb.flush()

    def close(self) -> None:
        """Close the files (a write that fails here raises SaveError; after a failure, closes quietly)."""
        files = ([(self.dir / "metrics.jsonl", self._jsonl)] if self._jsonl is not None else []) + \
            [(self.dir / f"metrics_{k}.csv", f) for k, (f, _, _) in self._csv.items()] + \
            ([(self.dir / "tensorboard", self._tb)] if self._tb is not None else [])
        self._jsonl, self._tb = None, None
        self._csv.clear()
        failed_before, error = self._failed, None
        for path, f in files:
            try:
                with self._guard(path):
                    f.close()
            except Exception as e:  # close them all; report the first failure unless one was reported already
                error = error or e
        if self._hook is not None:
            if threading.excepthook is self._hook[1]:
                threading.excepthook = self._hook[0]
            self._hook = None
        if error is not None and not failed_before:
            raise error
