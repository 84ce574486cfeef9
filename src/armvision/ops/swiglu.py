"""The SwiGLU gate's backward with its input biases' gradients, in one kernel.

ARM's channel mixer is ``w3(silu(a) * g)`` with ``a = w1 x + b1`` and ``g = w2 x + b2``. Its backward forms
``da = dh * g * silu'(a)`` and ``dg = dh * silu(a)``, and the gradients of b1 and b2 are the column sums of da and
dg over every token. Left to inductor, each bias gradient is a reduction kernel of its own that reads its
gradient again: in ARM-B pretraining (32,768 tokens x 2,048 channels, bf16, 134 MB each) 24 such sums a step, 47 us
each on an H100 (run U's profile of ``armvision pretrain``: 1.1 ms of the 75 ms step). :func:`swiglu_gate` forms da
and dg in one kernel and adds each tile's columns as it goes, writing per-row-block fp32 partial sums (1 MB per bias)
that a torch sum adds up (inside a compiled backward, fused with the cast into the parameter's gradient).

The forward is unchanged: ``a`` and ``g`` come from the layer's own products with their biases (detached there, so
that the biases' gradients come from here instead), and the gate is ``F.silu(a) * g`` as before, which inductor fuses
as before. The backward computes in fp32 and rounds da and dg once, as inductor's fused backward does; the biases'
gradients are sums of the fp32 values (eager PyTorch sums the bf16-rounded ones).

The kernel is in :mod:`armvision.ops.swiglu_triton`, imported only where the Triton backend runs (Triton is
optional); elsewhere (a CPU without ``TRITON_INTERPRET=1``) the same backward runs as torch ops with the same partial
sums.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["swiglu_gate", "swiglu_gate_bwd", "swiglu_gate_bwd_ref", "GATE_BLOCK"]

# (rows per program = rows per partial sum, rows per step, channels, warps). Chosen with ptxas's counts (sm_90), not
# yet by a GPU sweep: 128 bf16 channels (256 bytes) per row keep the loads coalesced (128-bit), 16 rows a step keep the
# thread's tile at 16 elements (124 registers, no spills; 32 rows or 256 channels take 247-249), and 256 rows per
# program give 128 partial rows at 32,768 tokens (1 MB of partial sums per bias at 2,048 channels)
GATE_BLOCK = (256, 16, 128, 4)


def _empty(shape, dtype, device) -> Tensor:
    """Output allocation; tests replace it with a NaN-filled one to check every element is written."""
    return torch.empty(shape, dtype=dtype, device=device)


def _grads32(dh: Tensor, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """(da, dg) of ``h = silu(a) * g`` in fp32, before rounding."""
    a32, g32, dh32 = a.float(), g.float(), dh.float()
    sa = torch.sigmoid(a32)
    return dh32 * g32 * sa * (1 + a32 * (1 - sa)), dh32 * a32 * sa


def swiglu_gate_bwd_ref(dh: Tensor, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """(da, dg) of ``h = silu(a) * g`` in plain torch ops, in the inputs' dtypes (the specification)."""
    da, dg = _grads32(dh, a, g)
    return da.to(a.dtype), dg.to(g.dtype)


def _rows2d(x: Tensor) -> Tensor:
    """``x`` as (rows, channels) with unit channel stride (a view where the strides allow, e.g. a chunk of a wider
    product's output; a copy otherwise)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def _triton_runs(device: torch.device) -> bool:
    from . import backend_available

    return backend_available("triton", device.type)


def swiglu_gate_bwd(dh: Tensor, a: Tensor, g: Tensor, block: Sequence[int] | None = None) -> list[Tensor]:
    """[da, dg, partial sums of da, partial sums of dg]: da and dg in a's and g's shapes and dtypes; the partial sums
    fp32, (row blocks, channels), one row per ``block[0]`` rows of the flattened tokens. ``block``: (rows per program,
    rows per step, channels, warps), default :data:`GATE_BLOCK` (the custom op always runs that: its partial sums'
    shape depends on it; benchmarks/swiglu_gate.py --sweep times others)."""
    n = a.shape[-1]
    dh2, a2, g2 = _rows2d(dh), _rows2d(a), _rows2d(g)
    m = a2.shape[0]
    block = tuple(block or GATE_BLOCK)
    ROWS = block[0]
    blocks = -(-m // ROWS)
    if not _triton_runs(a.device):  # the same arithmetic and partial sums as torch ops
        da32, dg32 = _grads32(dh2, a2, g2)
        pad = blocks * ROWS - m
        pa, pg = (F.pad(v, (0, 0, 0, pad)).view(blocks, ROWS, n).sum(1) for v in (da32, dg32))
        return [da32.to(a.dtype).view(a.shape), dg32.to(g.dtype).view(g.shape), pa, pg]
    da = _empty((m, n), a.dtype, a.device)
    dg = _empty((m, n), g.dtype, g.device)
    pa = _empty((blocks, n), torch.float32, a.device)
    pg = _empty((blocks, n), torch.float32, a.device)
    if blocks == 0 or n == 0:  # no tokens (or channels): nothing to launch
        return [da.view(a.shape), dg.view(g.shape), pa, pg]
    from .swiglu_triton import launch_gate_bwd

    launch_gate_bwd(dh2, a2, g2, da, dg, pa, pg, block)
    return [da.view(a.shape), dg.view(g.shape), pa, pg]


@torch.library.custom_op("armvision::swiglu_gate_bwd", mutates_args=())
def _gate_bwd_op(dh: Tensor, a: Tensor, g: Tensor) -> list[Tensor]:
    return swiglu_gate_bwd(dh, a, g)


@_gate_bwd_op.register_fake
def _(dh, a, g):
    blocks = -(-(a.numel() // a.shape[-1]) // GATE_BLOCK[0])
    return [a.new_empty(a.shape), g.new_empty(g.shape), a.new_empty((blocks, a.shape[-1]), dtype=torch.float32),
            a.new_empty((blocks, a.shape[-1]), dtype=torch.float32)]


class _SwiGLUGate(torch.autograd.Function):
    """h = silu(a) * g; the backward returns the gradients of a and g and, for the biases b1 and b2 that were added
    into a and g (detached there), their column sums, all from one kernel (:func:`swiglu_gate_bwd`)."""

    @staticmethod
    def forward(ctx, a, g, b1, b2):
        ctx.save_for_backward(a, g)
        ctx.bias_dtypes = (None if b1 is None else b1.dtype, None if b2 is None else b2.dtype)
        return F.silu(a) * g

    @staticmethod
    def backward(ctx, dh):
        a, g = ctx.saved_tensors
        da, dg, pa, pg = _gate_bwd_op(dh, a, g)
        d1, d2 = ctx.bias_dtypes
        return da, dg, None if d1 is None else pa.sum(0).to(d1), None if d2 is None else pg.sum(0).to(d2)


def swiglu_gate(a: Tensor, g: Tensor, b1: Tensor | None = None, b2: Tensor | None = None) -> Tensor:
    """``silu(a) * g`` whose backward also gives the gradients of the biases b1 and b2 that ``a`` and ``g`` already
    contain: compute ``a = F.linear(x, w1, b1.detach())`` (and g likewise), then ``swiglu_gate(a, g, b1, b2)``. The
    values are those of ``F.silu(a) * g``; b1 and b2 are used for their gradients only."""
    return _SwiGLUGate.apply(a, g, b1, b2)
