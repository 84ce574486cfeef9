"""Where the time of the scan *op* goes, next to the bare kernel launchers (torch.profiler, one GPU).

    python benchmarks/profile_op.py [--shape 128 1024 128]

For each path (the launchers alone; the op through autograd with states recomputed or saved, in
eager mode and through the torch.library custom ops that torch.compile traces) it
prints the time per forward+backward measured three ways: CUDA events around a loop (what
benchmarks/scan.py reports), the CPU time per call with the GPU synchronised after the loop, and the
sum of the GPU kernel times from the profiler. A path whose loop time is above its kernel time is
bound by the host (Python, dispatch, launches) or by gaps between its kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import autograd_fns, make_inputs, op_fns, triton_fns  # noqa: E402

from armvision.ops import scan_triton as st  # noqa: E402


def loop_ms(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    cpu = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n, cpu


def kernel_ms(fn, n=20):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) / 1e3 / n
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:6]
    return total, [(e.key[:60], e.self_device_time_total / 1e3 / n, e.count // n) for e in top]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, action="append", help="b e t (repeatable)")
    args = ap.parse_args()
    shapes = args.shape or [[256, 768, 128], [128, 1024, 128], [64, 768, 1024]]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for b, e, t in shapes:
        inp = make_inputs(b, e, t)
        dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)

        def via_custom_op(*a):  # what torch.compile traces, here run eagerly
            orig = st._use_custom_op
            st._use_custom_op = lambda x: True
            try:
                return st.selective_scan_triton(*a, delta_softplus=True)
            finally:
                st._use_custom_op = orig

        paths = {"launchers": (triton_fns(st, inp, dout)[1], None),
                 "op recompute": (op_fns(inp, dout)[1], "recompute"),
                 "op save": (op_fns(inp, dout, "save")[1], "save"),
                 "custom op recompute": (autograd_fns(via_custom_op, inp, dout)[1], "recompute"),
                 "custom op save": (autograd_fns(via_custom_op, inp, dout)[1], "save")}
        print(f"\nb={b} e={e} t={t}: forward+backward")
        print(f"  {'path':<22} {'loop ms':>8} {'cpu ms/call':>11} {'kernels ms':>10}   "
              "top kernels (ms per call, launches)")
        for name, (fn, states) in paths.items():
            if states:
                st.scan_launch_config(states=states)
            loop, cpu = loop_ms(fn)
            kern, top = kernel_ms(fn)
            print(f"  {name:<22} {loop:>8.3f} {cpu:>11.3f} {kern:>10.3f}   "
                  + "; ".join(f"{k} {ms:.3f} x{c}" for k, ms, c in top))
        st.scan_launch_config(states="recompute")


if __name__ == "__main__":
    main()
