"""The Triton kernel of :mod:`armvision.ops.swiglu`: the SwiGLU gate's backward with its biases' partial sums.

Imported only where the Triton backend runs (a CUDA GPU, or the CPU under ``TRITON_INTERPRET=1``): Triton is
optional, and the layer that uses the kernel imports :mod:`armvision.ops.swiglu` alone.
"""

from __future__ import annotations

from typing import Sequence

import triton
import triton.language as tl
from torch import Tensor

__all__ = ["launch_gate_bwd"]


@triton.jit
def _gate_bwd_kernel(dh_ptr, a_ptr, g_ptr, da_ptr, dg_ptr, pa_ptr, pg_ptr, M, N, s_dh, s_a, s_g, s_da, s_dg,
                     ROWS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """One program: ROWS rows (tokens) of BN channels, BM rows at a time; the columns' sums of da and dg are kept per
    element of the (BM, BN) tile (no cross-thread work in the loop) and reduced over the tile's rows at the end."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    cols = pn * BN + tl.arange(0, BN)
    mc = cols < N
    acc_a = tl.zeros((BM, BN), tl.float32)
    acc_g = tl.zeros((BM, BN), tl.float32)
    for i in range(0, ROWS, BM):
        rows = pm.to(tl.int64) * ROWS + i + tl.arange(0, BM)
        m = (rows < M)[:, None] & mc[None, :]
        dh = tl.load(dh_ptr + rows[:, None] * s_dh + cols[None, :], mask=m, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + rows[:, None] * s_a + cols[None, :], mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + rows[:, None] * s_g + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sa = tl.sigmoid(a)
        dg = dh * (a * sa)
        da = dh * g * sa * (1.0 + a * (1.0 - sa))  # masked elements: dh = 0, so da = dg = 0 and the sums unchanged
        tl.store(da_ptr + rows[:, None] * s_da + cols[None, :], da.to(da_ptr.dtype.element_ty), mask=m)
        tl.store(dg_ptr + rows[:, None] * s_dg + cols[None, :], dg.to(dg_ptr.dtype.element_ty), mask=m)
        acc_a += da
        acc_g += dg
    tl.store(pa_ptr + pm * N + cols, tl.sum(acc_a, axis=0), mask=mc)
    tl.store(pg_ptr + pm * N + cols, tl.sum(acc_g, axis=0), mask=mc)


def launch_gate_bwd(dh: Tensor, a: Tensor, g: Tensor, da: Tensor, dg: Tensor, pa: Tensor, pg: Tensor,
                    block: Sequence[int]) -> None:
    """Fill da, dg (rows, channels) and the partial sums pa, pg (row blocks, channels) from the (rows, channels)
    views dh, a, g (unit channel stride); ``block`` = (rows per program, rows per step, channels, warps)."""
    ROWS, BM, BN, warps = block
    m, n = a.shape
    _gate_bwd_kernel[(triton.cdiv(m, ROWS), triton.cdiv(n, BN))](
        dh, a, g, da, dg, pa, pg, m, n, dh.stride(0), a.stride(0), g.stride(0), da.stride(0), dg.stride(0),
        ROWS=ROWS, BM=BM, BN=BN, num_warps=warps)
