"""Depthwise causal conv1d (Mamba's width-4 conv, optional SiLU) in Triton, forward and backward.

Same function as :func:`armvision.ops.conv.causal_conv1d_ref`, channels-last (b, t, e), plus an
optional ``index`` (t,) that convolves along another token order without copying: sequence step
s reads token row ``index[s]``, and its output goes back to that row.

Why the conv is not fused into the scan: the scan's input u = silu(conv(x)) also feeds x_proj
(which produces the scan's dt, B and C), so u must exist in memory before the scan runs; fusing
would only trade one read of u for a re-read of x.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import current_conv_config
from .triton_common import _rows


def _empty(shape, dtype, device) -> Tensor:
    """Output allocation; tests replace it with a NaN-filled one to check every element is written."""
    return torch.empty(shape, dtype=dtype, device=device)

__all__ = ["causal_conv1d_triton"]


@triton.jit
def _row(ptr, s_t, idx_ptr, n, lim, e, me, HAS_IDX: tl.constexpr):
    """Row of sequence step n (a scalar) of a (BE,) channel block, zeros unless 0 <= n < lim."""
    r, m = _rows(idx_ptr, n, lim, HAS_IDX)
    return tl.load(ptr + r * s_t + e, mask=m & me, other=0.0)


@triton.jit
def _taps(w_ptr, b_ptr, e, me, K: tl.constexpr, HAS_BIAS: tl.constexpr, BE: tl.constexpr):
    """v_d = w[:, K - 1 - d], the tap d steps back (0 where d >= K), and the bias (or 0), in fp32."""
    zero = tl.zeros((BE,), tl.float32)
    v1, v2, v3, bias = zero, zero, zero, zero
    v0 = tl.load(w_ptr + e * K + (K - 1), mask=me, other=0.0).to(tl.float32)
    if K >= 2:
        v1 = tl.load(w_ptr + e * K + (K - 2), mask=me, other=0.0).to(tl.float32)
    if K >= 3:
        v2 = tl.load(w_ptr + e * K + (K - 3), mask=me, other=0.0).to(tl.float32)
    if K >= 4:
        v3 = tl.load(w_ptr + e * K + (K - 4), mask=me, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + e, mask=me, other=0.0).to(tl.float32)
    return v0, v1, v2, v3, bias


@triton.jit
def _pre(xn, x1, x2, x3, v0, v1, v2, v3, bias, K: tl.constexpr):
    """Pre-activation at step n from x[n], x[n-1..n-3]: the bias, then the taps from the oldest step to
    the newest (the forward and the backward add in the same order, so the backward's p is the forward's)."""
    p = bias
    if K >= 4:
        p += x3 * v3
    if K >= 3:
        p += x2 * v2
    if K >= 2:
        p += x1 * v1
    return p + xn * v0


@triton.jit
def _fwd_step(xn, n, t1, x1, x2, x3, v0, v1, v2, v3, bias, out_ptr, s_ot, idx_ptr, e, me,
              K: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr):
    """One sequence step n of the forward: out[n] from x[n] and the window x1..x3 = x[n-1..n-3]."""
    xn = xn.to(tl.float32)
    p = _pre(xn, x1, x2, x3, v0, v1, v2, v3, bias, K)
    if SILU:
        p = p * tl.sigmoid(p)
    r, ok = _rows(idx_ptr, n, t1, HAS_IDX)
    tl.store(out_ptr + r * s_ot + e, p.to(out_ptr.dtype.element_ty), mask=ok & me)
    return xn, x1, x2


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, out_ptr, T, E, CH, s_xb, s_xt, s_ob, s_ot,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr,
                     BE: tl.constexpr):
    """One program per (time chunk of CH steps, channel block of BE, batch element), walking its chunk
    one step at a time with x[n-1..n-3] in registers: each row of x is read once (plus 3 before the
    chunk). Four steps per loop iteration, their rows loaded one iteration ahead."""
    pt = tl.program_id(0)
    pe = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    t0 = pt * CH
    t1 = tl.minimum(t0 + CH, T)
    xb = x_ptr + pb * s_xb
    ob = out_ptr + pb * s_ob
    v0, v1, v2, v3, bias = _taps(w_ptr, b_ptr, e, me, K, HAS_BIAS, BE)
    x1 = _row(xb, s_xt, idx_ptr, t0 - 1, T, e, me, HAS_IDX).to(tl.float32)
    x2 = _row(xb, s_xt, idx_ptr, t0 - 2, T, e, me, HAS_IDX).to(tl.float32)
    x3 = _row(xb, s_xt, idx_ptr, t0 - 3, T, e, me, HAS_IDX).to(tl.float32)
    nx0 = _row(xb, s_xt, idx_ptr, t0, t1, e, me, HAS_IDX)
    nx1 = _row(xb, s_xt, idx_ptr, t0 + 1, t1, e, me, HAS_IDX)
    nx2 = _row(xb, s_xt, idx_ptr, t0 + 2, t1, e, me, HAS_IDX)
    nx3 = _row(xb, s_xt, idx_ptr, t0 + 3, t1, e, me, HAS_IDX)
    for i in range(0, t1 - t0, 4):
        n = t0 + i
        cx0, cx1, cx2, cx3 = nx0, nx1, nx2, nx3
        nx0 = _row(xb, s_xt, idx_ptr, n + 4, t1, e, me, HAS_IDX)
        nx1 = _row(xb, s_xt, idx_ptr, n + 5, t1, e, me, HAS_IDX)
        nx2 = _row(xb, s_xt, idx_ptr, n + 6, t1, e, me, HAS_IDX)
        nx3 = _row(xb, s_xt, idx_ptr, n + 7, t1, e, me, HAS_IDX)
        x1, x2, x3 = _fwd_step(cx0, n, t1, x1, x2, x3, v0, v1, v2, v3, bias, ob, s_ot, idx_ptr, e, me,
                               K, HAS_IDX, SILU)
        x1, x2, x3 = _fwd_step(cx1, n + 1, t1, x1, x2, x3, v0, v1, v2, v3, bias, ob, s_ot, idx_ptr, e, me,
                               K, HAS_IDX, SILU)
        x1, x2, x3 = _fwd_step(cx2, n + 2, t1, x1, x2, x3, v0, v1, v2, v3, bias, ob, s_ot, idx_ptr, e, me,
                               K, HAS_IDX, SILU)
        x1, x2, x3 = _fwd_step(cx3, n + 3, t1, x1, x2, x3, v0, v1, v2, v3, bias, ob, s_ot, idx_ptr, e, me,
                               K, HAS_IDX, SILU)


@triton.jit
def _bwd_step(xn, gn, n, t0, t1, T, x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab, v0, v1, v2, v3, bias,
              dx_ptr, s_ot, idx_ptr, e, me, K: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr):
    """One sequence step n of the backward: x[n] and dout[n] come in (xn, gn), dx[n - 3] goes out.

    x1..x3 = x[n-1..n-3] and d1..d3 = dp[n-1..n-3] are the sliding windows; v_d = w[K - 1 - d] is
    the tap d steps back; a_d accumulates dw[K - 1 - d] and ab db over the program's own steps [t0, t1).
    """
    xn = xn.to(tl.float32)
    p = _pre(xn, x1, x2, x3, v0, v1, v2, v3, bias, K)
    dp = gn.to(tl.float32)
    if SILU:
        sg = tl.sigmoid(p)
        dp = dp * sg * (1.0 + p * (1.0 - sg))
    dx = d3 * v0  # dx[m] = sum_d w[K - 1 - d] dp[m + d] at m = n - 3
    if K >= 2:
        dx += d2 * v1
    if K >= 3:
        dx += d1 * v2
    if K >= 4:
        dx += dp * v3
    m = n - 3
    r, ok = _rows(idx_ptr, m, T, HAS_IDX)
    tl.store(dx_ptr + r * s_ot + e, dx.to(dx_ptr.dtype.element_ty), mask=ok & (m >= t0) & (m < t1) & me)
    own = tl.where(n < t1, dp, 0.0)
    return (xn, x1, x2, dp, d1, d2, a0 + own * xn, a1 + own * x1, a2 + own * x2, a3 + own * x3, ab + own)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, go_ptr, dx_ptr, part_ptr, T, E, CH,
                     s_xb, s_xt, s_gb, s_gt, s_ob, s_ot,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr,
                     BE: tl.constexpr):
    """One program per (time chunk of CH steps, channel block of BE, batch element), walking its
    chunk one step at a time with the taps' x and dp in sliding register windows, so each row of x
    and dout is read once (plus a 3-step halo at each end of the chunk).

    With p = pre-activation and dp = dout * act'(p):  dx[s] = sum_k w[k] dp[s + K - 1 - k],
    dw[k] = sum_s dp[s] x[s - K + 1 + k],  db = sum_s dp[s].  dx of step n - 3 is written at step n;
    four steps are unrolled per loop iteration and their rows loaded one iteration ahead. db and dw
    go to part (b * chunks, 1 + K, E) fp32: row 0 db, row 1 + k dw[:, k]; the launcher sums them.
    """
    pt = tl.program_id(0)
    pe = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    t0 = pt * CH
    t1 = tl.minimum(t0 + CH, T)
    lim = tl.minimum(t1 + 3, T)  # the last row this chunk needs (dp three steps past its end)
    xb = x_ptr + pb * s_xb
    gb = go_ptr + pb * s_gb
    ob = dx_ptr + pb * s_ob
    v0, v1, v2, v3, bias = _taps(w_ptr, b_ptr, e, me, K, HAS_BIAS, BE)
    zero = tl.zeros((BE,), tl.float32)
    x1 = _row(xb, s_xt, idx_ptr, t0 - 1, T, e, me, HAS_IDX).to(tl.float32)
    x2 = _row(xb, s_xt, idx_ptr, t0 - 2, T, e, me, HAS_IDX).to(tl.float32)
    x3 = _row(xb, s_xt, idx_ptr, t0 - 3, T, e, me, HAS_IDX).to(tl.float32)
    d1, d2, d3 = zero, zero, zero  # dp before t0 only reaches dx rows before t0, which are not written here
    a0, a1, a2, a3, ab = zero, zero, zero, zero, zero
    nx0 = _row(xb, s_xt, idx_ptr, t0, lim, e, me, HAS_IDX)
    nx1 = _row(xb, s_xt, idx_ptr, t0 + 1, lim, e, me, HAS_IDX)
    nx2 = _row(xb, s_xt, idx_ptr, t0 + 2, lim, e, me, HAS_IDX)
    nx3 = _row(xb, s_xt, idx_ptr, t0 + 3, lim, e, me, HAS_IDX)
    ng0 = _row(gb, s_gt, idx_ptr, t0, lim, e, me, HAS_IDX)
    ng1 = _row(gb, s_gt, idx_ptr, t0 + 1, lim, e, me, HAS_IDX)
    ng2 = _row(gb, s_gt, idx_ptr, t0 + 2, lim, e, me, HAS_IDX)
    ng3 = _row(gb, s_gt, idx_ptr, t0 + 3, lim, e, me, HAS_IDX)
    for i in range(0, t1 + 3 - t0, 4):
        n = t0 + i
        cx0, cx1, cx2, cx3, cg0, cg1, cg2, cg3 = nx0, nx1, nx2, nx3, ng0, ng1, ng2, ng3
        nx0 = _row(xb, s_xt, idx_ptr, n + 4, lim, e, me, HAS_IDX)  # the next iteration's rows, in flight
        nx1 = _row(xb, s_xt, idx_ptr, n + 5, lim, e, me, HAS_IDX)  # during this one's arithmetic
        nx2 = _row(xb, s_xt, idx_ptr, n + 6, lim, e, me, HAS_IDX)
        nx3 = _row(xb, s_xt, idx_ptr, n + 7, lim, e, me, HAS_IDX)
        ng0 = _row(gb, s_gt, idx_ptr, n + 4, lim, e, me, HAS_IDX)
        ng1 = _row(gb, s_gt, idx_ptr, n + 5, lim, e, me, HAS_IDX)
        ng2 = _row(gb, s_gt, idx_ptr, n + 6, lim, e, me, HAS_IDX)
        ng3 = _row(gb, s_gt, idx_ptr, n + 7, lim, e, me, HAS_IDX)
        x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab = _bwd_step(
            cx0, cg0, n, t0, t1, T, x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab, v0, v1, v2, v3, bias,
            ob, s_ot, idx_ptr, e, me, K, HAS_IDX, SILU)
        x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab = _bwd_step(
            cx1, cg1, n + 1, t0, t1, T, x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab, v0, v1, v2, v3, bias,
            ob, s_ot, idx_ptr, e, me, K, HAS_IDX, SILU)
        x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab = _bwd_step(
            cx2, cg2, n + 2, t0, t1, T, x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab, v0, v1, v2, v3, bias,
            ob, s_ot, idx_ptr, e, me, K, HAS_IDX, SILU)
        x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab = _bwd_step(
            cx3, cg3, n + 3, t0, t1, T, x1, x2, x3, d1, d2, d3, a0, a1, a2, a3, ab, v0, v1, v2, v3, bias,
            ob, s_ot, idx_ptr, e, me, K, HAS_IDX, SILU)
    pp = part_ptr + (pb * tl.num_programs(0) + pt) * (K + 1) * E + e
    tl.store(pp, ab, mask=me)
    tl.store(pp + K * E, a0, mask=me)
    if K >= 2:
        tl.store(pp + (K - 1) * E, a1, mask=me)
    if K >= 3:
        tl.store(pp + (K - 2) * E, a2, mask=me)
    if K >= 4:
        tl.store(pp + (K - 3) * E, a3, mask=me)


# Launch parameters (BT, BE, num_warps) of each kernel come from armvision.ops.launch (defaults, or a
# ``with ops.conv_config(...)`` scope), read once per call in causal_conv1d_triton and passed down:
# ``launch`` = [fwd BT, fwd BE, fwd warps, bwd BT, bwd BE, bwd warps, sums in the graph (1) or in the op (0)].
def _launch_list() -> list[int]:
    cfg = current_conv_config()
    return [*(int(v) for v in cfg["fwd"]), *(int(v) for v in cfg["bwd"]), int(cfg.get("sums", "graph") == "graph")]


def conv_launch_config(**updates) -> dict:
    """The conv's launch parameters in effect (see :mod:`armvision.ops.launch`); to change them, use
    ``with armvision.ops.conv_config(**updates):``."""
    if updates:
        raise TypeError("conv_launch_config(...) no longer changes a process-wide setting; wrap the calls in "
                        "`with armvision.ops.conv_config(...):` instead")
    return current_conv_config()


def _chunks(t: int, most: int) -> tuple[int, int]:
    """(steps per chunk, chunks): t cut into equal time chunks of at most ``most`` steps, one program each."""
    chunk = triton.cdiv(t, triton.cdiv(t, most)) if t else 1
    return chunk, triton.cdiv(t, chunk)


def _conv_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, silu: bool,
              block: Sequence[int] | None = None) -> Tensor:
    b, t, e = x.shape
    k = weight.shape[1]
    BT, BE, warps = block or current_conv_config()["fwd"]
    out = _empty((b, t, e), x.dtype, x.device)
    chunk, chunks = _chunks(t, BT)
    _conv_fwd_kernel[(chunks, triton.cdiv(e, BE), b)](
        x, weight, bias if bias is not None else weight, index if index is not None else out, out, t, e, chunk,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_IDX=index is not None, SILU=silu, BE=BE, num_warps=warps,
    )
    return out


@torch.library.custom_op("armvision::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, silu: bool,
                 launch: Optional[List[int]] = None) -> Tensor:
    return _conv_fwd(x, weight, bias, index, silu, (launch or _launch_list())[:3])


@_conv_fwd_op.register_fake
def _(x, weight, bias, index, silu, launch=None):
    return x.new_empty(x.shape)


def _conv_bwd(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, dout: Tensor,
              silu: bool, block: Sequence[int] | None = None, reduce: bool = True) -> list[Tensor]:
    """[dx, dw (e, k), db (e,)]; with ``reduce=False`` [dx, the kernel's fp32 partial sums (programs, 1 + k, e)],
    which :func:`_finish_conv_grads` adds up."""
    b, t, e = x.shape
    k = weight.shape[1]
    BT, BE, warps = block or current_conv_config()["bwd"]
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    dx = _empty((b, t, e), x.dtype, x.device)
    chunk, chunks = _chunks(t, BT)
    part = _empty((b * chunks, 1 + k, e), torch.float32, x.device)  # per-program db (row 0) and dw (rows 1..k)
    _conv_bwd_kernel[(chunks, triton.cdiv(e, BE), b)](
        x, weight, bias if bias is not None else weight, index if index is not None else dx, dout, dx, part,
        t, e, chunk, x.stride(0), x.stride(1), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_IDX=index is not None, SILU=silu, BE=BE, num_warps=warps,
    )
    return _finish_conv_grads(dx, part, weight) if reduce else [dx, part]


def _finish_conv_grads(dx: Tensor, part: Tensor, weight: Tensor) -> list[Tensor]:
    """[dx, dw, db] from the backward kernel's partial sums (programs, 1 + k, e): one reduction for both. Plain torch
    ops: in a compiled backward, inductor fuses the sum, the cast and the transpose."""
    sums = part.sum(0).to(weight.dtype)
    return [dx, sums[1:].t().clone(memory_format=torch.contiguous_format), sums[0]]


@torch.library.custom_op("armvision::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, dout: Tensor,
                 silu: bool, block: Optional[List[int]] = None) -> list[Tensor]:
    return _conv_bwd(x, weight, bias, index, dout, silu, block)


@_conv_bwd_op.register_fake
def _(x, weight, bias, index, dout, silu, block=None):
    return [x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[:1])]


@torch.library.custom_op("armvision::causal_conv1d_bwd_parts", mutates_args=())
def _conv_bwd_parts_op(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, dout: Tensor,
                       silu: bool, block: Optional[List[int]] = None) -> list[Tensor]:
    """The backward kernel alone: dx and the fp32 partial sums of db and dw (see :func:`_conv_bwd`)."""
    return _conv_bwd(x, weight, bias, index, dout, silu, block, reduce=False)


@_conv_bwd_parts_op.register_fake
def _(x, weight, bias, index, dout, silu, block=None):
    b, t, e = x.shape
    _, chunks = _chunks(t, (block or current_conv_config()["bwd"])[0])
    return [x.new_empty(x.shape), x.new_empty((b * chunks, 1 + weight.shape[1], e), dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, index, silu, launch = inputs
    launch = list(launch or _launch_list())
    ctx.silu = silu
    ctx.bwd_block = launch[3:6]
    ctx.sums_in_graph = bool(launch[6]) if len(launch) > 6 else False
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias, index)


def _backward(ctx, dout):
    x, weight, bias, index = ctx.saved_tensors
    if ctx.sums_in_graph:  # the partial sums become ops of the traced backward graph (fused by inductor)
        dx, part = _conv_bwd_parts_op(x, weight, bias, index, dout, ctx.silu, ctx.bwd_block)
        dx, dw, db = _finish_conv_grads(dx, part, weight)
    else:
        dx, dw, db = _conv_bwd_op(x, weight, bias, index, dout, ctx.silu, ctx.bwd_block)
    return dx, dw, db if ctx.has_bias else None, None, None, None


_conv_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _ConvFunction(torch.autograd.Function):
    """Eager-mode autograd over the same launchers as the custom ops (see scan_triton._ScanFunction)."""

    @staticmethod
    def forward(ctx, x, weight, bias, index, silu, launch):
        ctx.silu, ctx.has_bias, ctx.bwd_block = silu, bias is not None, launch[3:6]
        ctx.save_for_backward(x, weight, bias, index)
        return _conv_fwd(x, weight, bias, index, silu, launch[:3])

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, index = ctx.saved_tensors
        dx, dw, db = _conv_bwd(x, weight, bias, index, dout, ctx.silu, ctx.bwd_block)
        return dx, dw, db if ctx.has_bias else None, None, None, None


def causal_conv1d_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
                         index: Tensor | None = None) -> Tensor:
    """Causal depthwise conv on the Triton kernels; arguments as :func:`armvision.ops.causal_conv1d`."""
    from .conv import _check

    w = _check(x, weight, activation)  # (e, k) view of an (e, 1, k) weight keeps its autograd link
    if w.shape[1] > 4:
        raise ValueError(f"the Triton causal conv supports kernel widths up to 4, got {w.shape[1]}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    if index is not None:
        index = index.to(device=x.device, dtype=torch.int32).contiguous()
    from .scan_triton import _use_custom_op

    args = (x, w.contiguous(), bias, index, activation == "silu")
    launch = _launch_list()  # the active ops.conv_config scope, read once; passed down from here
    if _use_custom_op(x):
        return _conv_fwd_op(*args, launch)
    if torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args[:3]):
        return _ConvFunction.apply(*args, launch)
    return _conv_fwd(*args, launch[:3])
