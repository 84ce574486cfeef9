"""``python benchmarks/_cli_peak.py PEAK.json ARMVISION-ARGS...``: run the ``armvision`` command line
(exactly ``armvision ARMVISION-ARGS``) in this process, then write its peak CUDA memory to PEAK.json.
Used by benchmarks/train_cli.py, because the trainer does not record peak memory itself."""

import json
import sys
from pathlib import Path

import torch

from armvision.cli import main

if __name__ == "__main__":
    code = main(sys.argv[2:])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    Path(sys.argv[1]).write_text(json.dumps({"exit_code": code, "peak_gib": peak}))
    sys.exit(code)
