"""``python benchmarks/_profile_train.py OUT.json WAIT ACTIVE TASK --config C [--key value ...]``: run
armvision's trainer in this process (the config exactly as ``armvision TASK --config C ...`` builds it),
record ACTIVE optimizer steps with torch.profiler after WAIT steps of warm-up (compilation, loader
start), and write where a step's time goes to OUT.json: the step's wall time (the active steps' span,
synchronised only at its two ends, so the host runs ahead as in an unprofiled run), the top kernels
(CUDA; on the CPU the top operators) with their time per step and share of the step, and the kernels
summed by kind (scan, conv, matrix products, inductor's fused kernels, ...). Used by
``benchmarks/train_cli.py --profile``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from armvision.train.config import load_config, parse_cli_overrides
from armvision.train.trainer import Trainer

TOP = 40
MOST_LAUNCHED = 20  # the kernels launched most often per step: where the launch gaps come from

# kinds of CUDA kernels, by name (first match wins); what matches none is "other ATen kernels"
KINDS = (
    ("selective scan (armvision Triton)", ("_scan_fwd_kernel", "_scan_bwd_kernel")),
    ("causal conv (armvision Triton)", ("_conv_fwd_kernel", "_conv_bwd_kernel")),
    ("attention (SDPA)", ("flash", "fmha", "attention", "sdpa")),
    ("matrix products (cuBLAS, cuDNN, CUTLASS)", ("nvjet", "gemm", "cutlass", "xmma", "splitk", "cublas", "cudnn")),
    ("inductor's fused kernels (elementwise, norms, reductions)", ("triton_",)),
    ("optimizer and EMA (fused AdamW, foreach)", ("multi_tensor_apply", "fused_adam", "foreach")),
    ("ATen reductions (sums of per-block partials, norms)", ("reduce_kernel",)),
    ("copies and fills", ("memcpy", "memset", "copy_kernel", "fill")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other ATen kernels")


def kernel_table(prof, active: int, step_us: float, cuda: bool) -> dict:
    """Top kernels (or CPU operators) by self time, per step and as a share of the step; on CUDA also the
    kernels summed by kind (:data:`KINDS`)."""
    avg = prof.key_averages()
    if cuda:
        # the kernels themselves (a CPU operator's self device time repeats its kernels'; user annotations such
        # as Optimizer.step#AdamW.step span kernels listed on their own)
        rows = [(e.key, e.self_device_time_total, e.count) for e in avg
                if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
                and not getattr(e, "is_user_annotation", False)]
        if not rows:  # a profiler that does not tag its kernel events: every event with device time
            rows = [(e.key, e.self_device_time_total, e.count) for e in avg if e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in avg if e.self_cpu_time_total > 0]
    # the profiler's own step ranges, and annotations a profiler does not flag as such
    rows = [r for r in rows if not r[0].startswith("ProfilerStep") and "#" not in r[0]]
    rows.sort(key=lambda r: -r[1])
    busy = sum(r[1] for r in rows) / active
    top = [{"name": name, "us_per_step": t / active, "share": t / active / step_us, "calls_per_step": n / active}
           for name, t, n in rows[:TOP]]
    res = {"step_ms": step_us / 1e3, "busy_ms_per_step": busy / 1e3, "busy_share": busy / step_us,
           "what": "CUDA kernels" if cuda else "CPU operators (self time)", "top": top}
    # the most launched: each launch leaves a gap of a few microseconds even in a CUDA graph, so many small kernels
    # (fills, casts, split-K reductions) cost more than their own time; the time column says how small they are
    res["most_launched"] = [{"name": name, "us_per_step": t / active, "calls_per_step": n / active,
                             "us_per_call": t / n} for name, t, n in
                            sorted(rows, key=lambda r: (-r[2], -r[1]))[:MOST_LAUNCHED]]
    if cuda:
        kinds: dict[str, list[float]] = {}
        for name, t, n in rows:
            k = kinds.setdefault(kernel_kind(name), [0.0, 0.0])
            k[0], k[1] = k[0] + t / active, k[1] + n / active
        res["kinds"] = [{"kind": k, "us_per_step": t, "share": t / step_us, "calls_per_step": n}
                        for k, (t, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])]
    return res


def most_launched_table(p: dict, top: int | None = None) -> list[str]:
    """Markdown lines of ``p["most_launched"]`` (from :func:`kernel_table`; none for an older result): the kernels
    launched most often per step, with their time per call."""
    if not p.get("most_launched"):
        return []
    lines = ["| most launched | calls per step | ms per step | us per call |", "|---|---|---|---|"]
    for r in p["most_launched"][:top]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        lines.append(f"| `{name}` | {r['calls_per_step']:.0f} | {r['us_per_step'] / 1e3:.2f} | "
                     f"{r['us_per_call']:.1f} |")
    return lines


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
    done = [0]
    # repeat=1: a single cycle (repeating cycles clear the recorded one when the next starts: an empty table)
    with profile(activities=acts, schedule=schedule(wait=wait, warmup=1, active=active, repeat=1)) as prof:
        def after_step(*_):
            done[0] += 1
            # the span of the active steps, from the end of the warm-up step to the end of the last active one:
            # synchronised only there, so the host queues work ahead within it as in a run without the profiler
            if done[0] in (wait + 1, wait + 1 + active):
                if cuda:
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())
            prof.step()

        trainer.optimizer.register_step_post_hook(after_step)
        trainer.fit()
    if len(stamps) != 2:
        raise SystemExit(f"the run ended after {done[0]} steps, before the {active} profiled ones")
    step_us = (stamps[1] - stamps[0]) / active * 1e6
    res = kernel_table(prof, active, step_us, cuda)
    res.update(compiled=trainer.train_module.is_compiled, device=str(trainer.device), wait=wait, active=active)
    out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
