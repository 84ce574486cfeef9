"""``python benchmarks/_profile_train.py OUT.json WAIT ACTIVE TASK --config C [--key value ...]``: run
armvision's trainer in this process (the config exactly as ``armvision TASK --config C ...`` builds it),
record ACTIVE optimizer steps with torch.profiler after WAIT steps of warm-up (compilation, loader
start), and write where a step's time goes to OUT.json: the step's wall time (synchronised at each
optimizer step) and the top kernels (CUDA; on the CPU the top operators) with their time per step
and share of the step. Used by ``benchmarks/train_cli.py --profile``."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from armvision.train.config import load_config, parse_cli_overrides
from armvision.train.trainer import Trainer

TOP = 25


def kernel_table(prof, active: int, step_us: float, cuda: bool) -> dict:
    """Top kernels (or CPU operators) by self time, per step and as a share of the step."""
    avg = prof.key_averages()
    if cuda:
        # the kernels themselves (a CPU operator's self device time repeats its kernels')
        rows = [(e.key, e.self_device_time_total, e.count) for e in avg
                if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
        if not rows:  # a profiler that does not tag its kernel events: every event with device time
            rows = [(e.key, e.self_device_time_total, e.count) for e in avg if e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in avg if e.self_cpu_time_total > 0]
    rows = [r for r in rows if not r[0].startswith("ProfilerStep")]  # the profiler's own step ranges
    rows.sort(key=lambda r: -r[1])
    busy = sum(r[1] for r in rows) / active
    top = [{"name": name, "us_per_step": t / active, "share": t / active / step_us, "calls_per_step": n / active}
           for name, t, n in rows[:TOP]]
    return {"step_ms": step_us / 1e3, "busy_ms_per_step": busy / 1e3, "busy_share": busy / step_us,
            "what": "CUDA kernels" if cuda else "CPU operators (self time)", "top": top}


def main(argv: list[str]) -> int:
    out, wait, active, task, rest = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3], argv[4:]
    config = None
    if rest[:1] == ["--config"]:
        config, rest = rest[1], rest[2:]
    overrides = parse_cli_overrides(rest)
    overrides["max_steps"] = wait + 1 + active
    trainer = Trainer(load_config(config, overrides, task=task))
    cuda = trainer.device.type == "cuda"
    stamps: list[float] = []
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, schedule=schedule(wait=wait, warmup=1, active=active)) as prof:
        def after_step(*_):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            prof.step()

        trainer.optimizer.register_step_post_hook(after_step)
        trainer.fit()
    steps = [b - a for a, b in zip(stamps[wait:], stamps[wait + 1:])]  # the active steps' wall times
    step_us = statistics.median(steps) * 1e6
    res = kernel_table(prof, active, step_us, cuda)
    res.update(compiled=trainer.train_module.is_compiled, device=str(trainer.device), wait=wait, active=active)
    out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
