"""``torchrun ... benchmarks/_dist_peak.py PREFIX ARMVISION-ARGS...``: run ``armvision ARMVISION-ARGS`` in each
process torchrun starts, then write that process's peak CUDA memory to PREFIX.rankR.json. Used by
benchmarks/scaling.py (the trainer does not record peak memory itself).

ARMVISION_BENCH_MEM_GIB=40 caps each process's CUDA memory at 40 GiB first
(torch.cuda.set_per_process_memory_fraction), to stand in for a smaller card. Running out of memory
writes ``"oom": true`` and exits 3 at once, so torchrun stops the other processes instead of leaving
them waiting in a collective."""

import json
import os
import sys
from pathlib import Path

import torch

from armvision.cli import main


def _write(prefix: str, **rec) -> None:
    rank = int(os.environ.get("RANK", "0"))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    Path(f"{prefix}.rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_gib": peak, **rec}))


def _exit_at_oom(prefix: str) -> None:
    """Out of memory inside Trainer.fit exits this process at once: unwinding would leave the process group
    (a collective the other processes, still waiting in the step, would never join)."""
    from armvision.train import trainer

    fit = trainer.Trainer.fit

    def guarded_fit(self):
        try:
            return fit(self)
        except torch.OutOfMemoryError as e:
            _write(prefix, exit_code=3, oom=True, error=str(e)[:300])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)

    trainer.Trainer.fit = guarded_fit


if __name__ == "__main__":
    prefix = sys.argv[1]
    _exit_at_oom(prefix)
    cap = os.environ.get("ARMVISION_BENCH_MEM_GIB")
    if cap and torch.cuda.is_available():
        dev = int(os.environ.get("LOCAL_RANK", "0"))
        total = torch.cuda.get_device_properties(dev).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) / total), dev)
    try:
        code = main(sys.argv[2:])
    except torch.OutOfMemoryError as e:
        _write(prefix, exit_code=3, oom=True, error=str(e)[:300])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)
    _write(prefix, exit_code=code, oom=False)
    sys.exit(code)
