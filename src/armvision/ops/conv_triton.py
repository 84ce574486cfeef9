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
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, out_ptr, T, E, s_xb, s_xt, s_ob, s_ot,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr,
                     BT: tl.constexpr, BE: tl.constexpr):
    pt = tl.program_id(0)
    pe = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)
    s = pt * BT + tl.arange(0, BT)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    acc = tl.zeros((BT, BE), tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e, mask=me, other=0.0)[None, :]
    for k in tl.static_range(K):
        r, m = _rows(idx_ptr, s - (K - 1) + k, T, HAS_IDX)
        xv = tl.load(x_ptr + pb * s_xb + r[:, None] * s_xt + e[None, :], mask=m[:, None] & me[None, :], other=0.0)
        acc += xv.to(tl.float32) * tl.load(w_ptr + e * K + k, mask=me, other=0.0)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    r, m = _rows(idx_ptr, s, T, HAS_IDX)
    tl.store(out_ptr + pb * s_ob + r[:, None] * s_ot + e[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m[:, None] & me[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, go_ptr, dx_ptr, dw_ptr, db_ptr, T, E,
                     s_xb, s_xt, s_gb, s_gt, s_ob, s_ot,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr,
                     BT: tl.constexpr, BE: tl.constexpr):
    """One program per (channel block, batch), looping over time tiles; dw, db as per-batch partials.

    With p = pre-activation and dp = dout * act'(p):  dx[s] = sum_k w[k] dp[s + K - 1 - k],
    dw[k] = sum_s dp[s] x[s - K + 1 + k],  db = sum_s dp[s].
    """
    pe = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    if HAS_BIAS:
        bias = tl.load(b_ptr + e, mask=me, other=0.0)
    taps = tl.arange(0, 4)
    dw_acc = tl.zeros((BE, 4), tl.float32)  # column k: dw[:, k]
    db_acc = tl.zeros((BE,), tl.float32)
    for t0 in range(0, T, BT):
        s = t0 + tl.arange(0, BT)
        dx = tl.zeros((BT, BE), tl.float32)
        for j in tl.static_range(K):  # dp at step s + j, which needs x at s + j - K + 1 .. s + j
            p = tl.zeros((BT, BE), tl.float32)
            if HAS_BIAS:
                p += bias[None, :]
            for k in tl.static_range(K):
                r, m = _rows(idx_ptr, s + j - (K - 1) + k, T, HAS_IDX)
                xv = tl.load(x_ptr + pb * s_xb + r[:, None] * s_xt + e[None, :], mask=m[:, None] & me[None, :],
                             other=0.0).to(tl.float32)
                p += xv * tl.load(w_ptr + e * K + k, mask=me, other=0.0)[None, :]
            r, m = _rows(idx_ptr, s + j, T, HAS_IDX)
            g = tl.load(go_ptr + pb * s_gb + r[:, None] * s_gt + e[None, :], mask=m[:, None] & me[None, :],
                        other=0.0).to(tl.float32)
            if SILU:
                sg = tl.sigmoid(p)
                g = g * sg * (1.0 + p * (1.0 - sg))
            dx += g * tl.load(w_ptr + e * K + (K - 1 - j), mask=me, other=0.0)[None, :]
            if j == 0:  # this tile's own dp: accumulate db and dw[k] = sum_s dp[s] x[s - K + 1 + k]
                db_acc += tl.sum(g, axis=0)
                for k in tl.static_range(K):
                    r, m = _rows(idx_ptr, s - (K - 1) + k, T, HAS_IDX)
                    xv = tl.load(x_ptr + pb * s_xb + r[:, None] * s_xt + e[None, :],
                                 mask=m[:, None] & me[None, :], other=0.0).to(tl.float32)
                    dw_acc += tl.sum(g * xv, axis=0)[:, None] * (taps == k).to(tl.float32)[None, :]
        r, m = _rows(idx_ptr, s, T, HAS_IDX)
        tl.store(dx_ptr + pb * s_ob + r[:, None] * s_ot + e[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=m[:, None] & me[None, :])
    tl.store(dw_ptr + (pb * E + e[:, None]) * K + taps[None, :], dw_acc, mask=me[:, None] & (taps < K)[None, :])
    tl.store(db_ptr + pb * E + e, db_acc, mask=me)


# Launch parameters (BT, BE, num_warps) of each kernel come from armvision.ops.launch (defaults, or a
# ``with ops.conv_config(...)`` scope), read once per call in causal_conv1d_triton and passed down:
# ``launch`` = [fwd BT, fwd BE, fwd warps, bwd BT, bwd BE, bwd warps].
def _launch_list() -> list[int]:
    cfg = current_conv_config()
    return [*(int(v) for v in cfg["fwd"]), *(int(v) for v in cfg["bwd"])]


def conv_launch_config(**updates) -> dict:
    """The conv's launch parameters in effect (see :mod:`armvision.ops.launch`); to change them, use
    ``with armvision.ops.conv_config(**updates):``."""
    if updates:
        raise TypeError("conv_launch_config(...) no longer changes a process-wide setting; wrap the calls in "
                        "`with armvision.ops.conv_config(...):` instead")
    return current_conv_config()


def _conv_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, silu: bool,
              block: Sequence[int] | None = None) -> Tensor:
    b, t, e = x.shape
    k = weight.shape[1]
    BT, BE, warps = block or current_conv_config()["fwd"]
    out = _empty((b, t, e), x.dtype, x.device)
    _conv_fwd_kernel[(triton.cdiv(t, BT), triton.cdiv(e, BE), b)](
        x, weight, bias if bias is not None else weight, index if index is not None else out, out, t, e,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_IDX=index is not None, SILU=silu, BT=BT, BE=BE, num_warps=warps,
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
              silu: bool, block: Sequence[int] | None = None) -> list[Tensor]:
    b, t, e = x.shape
    k = weight.shape[1]
    BT, BE, warps = block or current_conv_config()["bwd"]
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    dx = _empty((b, t, e), x.dtype, x.device)
    dw = _empty((b, e, k), torch.float32, x.device)
    db = _empty((b, e), torch.float32, x.device)
    _conv_bwd_kernel[(triton.cdiv(e, BE), b)](
        x, weight, bias if bias is not None else weight, index if index is not None else dx, dout, dx, dw, db,
        t, e, x.stride(0), x.stride(1), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_IDX=index is not None, SILU=silu, BT=BT, BE=BE, num_warps=warps,
    )
    return [dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)]


@torch.library.custom_op("armvision::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor | None, dout: Tensor,
                 silu: bool, block: Optional[List[int]] = None) -> list[Tensor]:
    return _conv_bwd(x, weight, bias, index, dout, silu, block)


@_conv_bwd_op.register_fake
def _(x, weight, bias, index, dout, silu, block=None):
    return [x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[:1])]


def _setup_context(ctx, inputs, output):
    x, weight, bias, index, silu, launch = inputs
    ctx.silu = silu
    ctx.bwd_block = list(launch or _launch_list())[3:6]
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias, index)


def _backward(ctx, dout):
    x, weight, bias, index = ctx.saved_tensors
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
