"""The SwiGLU gate's backward with its biases' gradients (ARMVISION_SWIGLU_GATE=kernel) against what inductor does.

At the SwiGLU shapes of ARM's steps (tokens x hidden, bf16) it times, on one GPU:

- ``backward alone``: the gradients of a and g and the biases' gradients from the gate's output gradient. Inductor's
  way: da, dg and their column sums, compiled (torch.compile of the plain formula), as in today's step. The kernel's
  way: ``swiglu_gate_bwd`` and the sum of its partial rows. Also the least traffic (read dh, a, g; write da, dg) in
  GB/s.
- ``layer``: the whole SwiGLU layer (three products) forward and backward, compiled as training compiles it, under
  bf16 autocast, with the gate as inductor's graph and as the kernel: what a step gains per layer.
- ``--sweep``: the kernel under other blocks (rows per program, rows per step, channels, warps).

Times: triton.testing.do_bench medians (ms). Before timing, the kernel's outputs are checked against the plain
formula.

    python benchmarks/swiglu_gate.py [--json gate.json] [--sweep]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from armvision.layers.block import SwiGLU
from armvision.ops import swiglu as sg

# (name, tokens, channels in, hidden): ARM-B pretraining (256 x 128 tokens), ARM-B fine-tuning (128 x 197), ARM-L
# pretraining (128 x 128, hidden 2730)
SHAPES = [("ARM-B pretrain", 32768, 768, 2048), ("ARM-B finetune", 25216, 768, 2048),
          ("ARM-L pretrain", 16384, 1024, 2730)]
SWEEP = [(rows, bm, bn, w) for rows in (128, 256, 512) for bm, bn, w in ((16, 128, 4), (8, 256, 4), (32, 64, 4),
                                                                         (16, 256, 8), (32, 128, 8))]


def inductor_way(dh, a, g):
    """The plain formula (compiled by the caller, as inductor compiles today's step): da, dg, then their sums."""
    da, dg = sg.swiglu_gate_bwd_ref(dh, a, g)
    return da, dg, da.float().sum(0), dg.float().sum(0)


def kernel_way(dh, a, g, block=None):
    da, dg, pa, pg = sg.swiglu_gate_bwd(dh, a, g, block)
    return da, dg, pa.sum(0), pg.sum(0)


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100)


def layer_ms(tokens: int, dim: int, hidden: int, gate: bool) -> float:
    torch._dynamo.reset()
    m = SwiGLU(dim, hidden).cuda()
    m.gate_kernel = gate
    x = torch.randn(tokens // 128, 128, dim, device="cuda", requires_grad=True)
    f = torch.compile(m)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = f(x)
        y.backward(torch.ones_like(y))

    return bench(step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--sweep", action="store_true", help="also the kernel under the blocks of SWEEP")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (it times kernels on one)")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; default block {sg.GATE_BLOCK}")
    compiled = torch.compile(inductor_way)
    rows = []
    for name, tokens, dim, hidden in SHAPES:
        a, g, dh = (torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        want = inductor_way(dh, a, g)
        for got, w in zip(kernel_way(dh, a, g), want):
            assert torch.allclose(got.float(), w.float(), rtol=2e-2, atol=2e-2 * w.float().abs().max().item())
        gb = 5 * tokens * hidden * 2 / 1e9
        r = dict(shape=name, tokens=tokens, hidden=hidden, inductor_ms=bench(lambda: compiled(dh, a, g)),
                 kernel_ms=bench(lambda: kernel_way(dh, a, g)))
        r["kernel_gb_s"] = gb / r["kernel_ms"] * 1e3
        r["inductor_gb_s"] = gb / r["inductor_ms"] * 1e3
        r["layer_graph_ms"] = layer_ms(tokens, dim, hidden, False)
        r["layer_kernel_ms"] = layer_ms(tokens, dim, hidden, True)
        if args.sweep:
            r["sweep"] = {str(blk): bench(lambda blk=blk: kernel_way(dh, a, g, blk)) for blk in SWEEP}
        rows.append(r)
        print(f"{name}: backward alone {r['inductor_ms']:.3f} ms (inductor) vs {r['kernel_ms']:.3f} (kernel); layer "
              f"fwd+bwd {r['layer_graph_ms']:.3f} vs {r['layer_kernel_ms']:.3f}", flush=True)
    print("\n| shape (tokens x hidden) | backward alone, inductor: ms (GB/s) | kernel: ms (GB/s) | layer fwd+bwd "
          "compiled, gate as graph: ms | gate kernel: ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} ({r['tokens']} x {r['hidden']}) | {r['inductor_ms']:.3f} ({r['inductor_gb_s']:.0f}) "
              f"| {r['kernel_ms']:.3f} ({r['kernel_gb_s']:.0f}) | {r['layer_graph_ms']:.3f} | "
              f"{r['layer_kernel_ms']:.3f} |")
    if args.sweep:
        print("\n| block (rows, step rows, channels, warps) | " + " | ".join(r["shape"] for r in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for blk in SWEEP:
            print(f"| {blk} | " + " | ".join(f"{r['sweep'][str(blk)]:.3f}" for r in rows) + " |")
    if args.json:
        args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
