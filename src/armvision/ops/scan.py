"""Mamba-1 selective scan in plain PyTorch.

Two implementations of one function live here:

* :func:`selective_scan_ref` -- the specification. A step-by-step loop over time with autograd,
  written to be read, not to be fast. Every other implementation is tested against it.
* :func:`selective_scan_torch` -- the CPU path and the fallback on any device: the same math,
  vectorised over batch, channels and state, with the time recurrence as a loop of one fused
  multiply-add per step and a hand-written backward (the formulas of ``docs/kernels.md``).

Semantics (per batch b, time t, channel e, state n; all arithmetic in at least fp32)::

    dt   = softplus(delta + delta_bias)            (if delta_softplus; else delta + delta_bias)
    dA   = exp(dt * A[e, n])
    h_t  = dA_t * h_{t-1} + dt_t * B_t[n] * u_t    (h_{-1} = 0)
    y_t  = sum_n C_t[n] * h_t[n] + D[e] * u_t
    out  = y * silu(z)                             (if z is given)

Layout is channels-last, as ``nn.Linear`` produces it: u, delta, z are (b, t, e); B, C are
(b, t, n); A is (e, n); D and delta_bias are (e,). The output has the dtype of ``u``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_ref", "selective_scan_torch"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs in: fp32, or fp64 when the inputs are fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Reference selective scan: a plain loop over time (see the module docstring).

    Shapes: u, delta, z (b, t, e); A (e, n); B, C (b, t, n); D, delta_bias (e,).
    Returns (b, t, e) in the dtype of ``u``.
    """
    cdt = _compute_dtype(u.dtype)
    out_dtype = u.dtype
    u, delta, B, C, A = u.to(cdt), delta.to(cdt), B.to(cdt), C.to(cdt), A.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)
    dt = F.softplus(delta) if delta_softplus else delta  # softplus is the identity above 20
    b, t, e = u.shape
    n = A.shape[1]
    h = u.new_zeros(b, e, n)
    ys = []
    for i in range(t):
        dA = torch.exp(dt[:, i, :, None] * A)  # (b, e, n)
        h = dA * h + dt[:, i, :, None] * B[:, i, None, :] * u[:, i, :, None]
        ys.append((h * C[:, i, None, :]).sum(-1))  # (b, e)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.to(cdt) * u
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(out_dtype)


def _time_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(b, t, ...) -> contiguous (t, b, ...) in ``dtype``: each time step is then one dense block."""
    return x.to(dtype).transpose(0, 1).contiguous()


def _batch_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(t, b, ...) -> contiguous (b, t, ...) in ``dtype``."""
    return x.transpose(0, 1).to(dtype).contiguous()


# Elements of one (chunk, b, e, n) block. The CPU allocator returns large blocks to the OS and
# page-faults them back on every use, which costs more than the arithmetic; blocks of a few
# megabytes are recycled instead, and they stay in the cache between the steps of a chunk.
_CHUNK_ELEMENTS = 1 << 20
# Up to this many (t, b, e, n) elements, the forward keeps every chunk's exp(dt * A) and states for the
# backward (two such tensors, 32 MiB in fp32) instead of recomputing them there: small models, CPU runs.
_KEEP_ELEMENTS = 1 << 22


def _chunk_len(b: int, e: int, n: int) -> int:
    return max(1, _CHUNK_ELEMENTS // (b * e * n))


def _chunk_states(dt, A, dtu, B, h0):
    """States of one chunk. dt, dtu (L, b, e) and B (L, b, n); h0 (b, e, n) the state before the chunk.

    Returns dA = exp(dt * A) (L, b, e, n) and hb (L + 1, b, e, n): hb[0] = h0 and hb[i + 1] the state after
    step i, so hb[1:] are the chunk's states and hb[:-1] the states before each step, both views.
    """
    dA = torch.exp(dt.unsqueeze(-1) * A)
    k = dt.shape[0]
    hb = torch.empty((k + 1, *h0.shape), dtype=h0.dtype, device=h0.device)
    hb[0] = h0
    torch.mul(dtu.unsqueeze(-1), B.unsqueeze(2), out=hb[1:])
    for i in range(k):
        torch.addcmul(hb[i + 1], dA[i], hb[i], out=hb[i + 1])
    return dA, hb


class _SelectiveScanTorch(torch.autograd.Function):
    """Scan over time chunks with the analytic backward; time-major (t, b, e, n) tensors inside.

    Large scans: the forward keeps only the state at the start of each chunk, and the backward recomputes
    each chunk's states from it, so no (t, b, e, n) tensor is held. Small ones (up to ``_KEEP_ELEMENTS``)
    keep each chunk's exp(dt * A) and states from the forward instead.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        cdt = _compute_dtype(u.dtype)
        u_ = _time_major(u, cdt)  # (t, b, e)
        delta_ = _time_major(delta, cdt)
        if delta_bias is not None:
            delta_ = delta_ + delta_bias.to(cdt)
        dt = F.softplus(delta_) if delta_softplus else delta_
        A_ = A.to(cdt)
        B_ = _time_major(B, cdt)  # (t, b, n)
        C_ = _time_major(C, cdt)
        t, b, e = u_.shape
        n = A_.shape[1]
        L = _chunk_len(b, e, n)
        keep = t * b * e * n <= _KEEP_ELEMENTS
        dtu = dt * u_
        y = torch.empty_like(u_)
        h = u_.new_zeros(b, e, n)
        starts, kept = [], []
        for s in range(0, t, L):
            starts.append(h)
            sl = slice(s, s + L)
            dA, hb = _chunk_states(dt[sl], A_, dtu[sl], B_[sl], h)
            k = hb.shape[0] - 1
            torch.bmm(hb[1:].view(k * b, e, n), C_[sl].reshape(k * b, n, 1), out=y[sl].view(k * b, e, 1))
            h = hb[-1]
            if keep:
                kept.append((dA, hb))
            else:
                h = h.clone()  # the chunk's blocks are freed; its last state lives on
        if D is not None:
            y = y + D.to(cdt) * u_
        out = y
        if z is not None:
            out = y * F.silu(_time_major(z, cdt))
        ctx.delta_softplus = delta_softplus
        ctx.chunk = L
        ctx.kept = kept  # intermediates of this function alone, never changed after the forward
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype,
                      None if D is None else D.dtype, None if z is None else z.dtype,
                      None if delta_bias is None else delta_bias.dtype)
        ctx.save_for_backward(u_, delta_, dt, A_, B_, C_, D, z, y, torch.stack(starts))
        return _batch_major(out, u.dtype)

    @staticmethod
    def backward(ctx, dout):
        u_, delta_, dt, A_, B_, C_, D, z, y, starts = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None
        has_D, has_z, has_bias = ctx.has
        cdt = u_.dtype
        t, b, e = u_.shape
        n = A_.shape[1]
        L = ctx.chunk
        dout = _time_major(dout, cdt)  # (t, b, e)
        dz = None
        if has_z:
            z_ = _time_major(z, cdt)
            sz = torch.sigmoid(z_)
            dy = dout * z_ * sz
            dz = _batch_major(dout * y * sz * (1 + z_ * (1 - sz)), ctx.dtypes[6])
        else:
            dy = dout
        dtu = dt * u_
        du = torch.empty_like(u_)
        ddt = torch.empty_like(u_)
        dB = torch.empty_like(B_)
        dC = torch.empty_like(C_)
        dA_param = torch.zeros_like(A_)
        carry = u_.new_zeros(b, e, n)  # dA_{s+L} * g_{s+L}: what the next chunk sends back
        for ci in range(len(starts) - 1, -1, -1):
            s = ci * L
            sl = slice(s, s + L)
            dA, hb = kept[ci] if kept else _chunk_states(dt[sl], A_, dtu[sl], B_[sl], starts[ci])
            hs, hs_prev = hb[1:], hb[:-1]  # the states after and before each step
            k = hs.shape[0]
            # adjoint of h, from the end of the chunk: g_i = C_i * dy_i + dA_{i+1} * g_{i+1}
            gs = dy[sl].unsqueeze(-1) * C_[sl].unsqueeze(2)
            gs[-1] += carry
            for i in range(k - 2, -1, -1):
                torch.addcmul(gs[i], dA[i + 1], gs[i + 1], out=gs[i])
            carry = dA[0] * gs[0]
            kb = k * b
            torch.bmm(dy[sl].reshape(kb, 1, e), hs.reshape(kb, e, n), out=dC[sl].view(kb, 1, n))
            torch.bmm(dtu[sl].reshape(kb, 1, e), gs.view(kb, e, n), out=dB[sl].view(kb, 1, n))
            gB = torch.bmm(gs.view(kb, e, n), B_[sl].reshape(kb, n, 1)).view(k, b, e)  # sum_n g*B
            torch.mul(gB, dt[sl], out=du[sl])
            W = gs.mul_(dA).mul_(hs_prev)  # g * dA * h_{i-1}
            torch.addcmul((W * A_).sum(-1), gB, u_[sl], out=ddt[sl])
            dA_param += (W * dt[sl].unsqueeze(-1)).sum((0, 1))
        if has_D:
            du = du + D.to(cdt) * dy
        ddelta = ddt * torch.sigmoid(delta_) if ctx.delta_softplus else ddt
        dD = (dy * u_).sum((0, 1)) if has_D else None
        ddelta_bias = ddelta.sum((0, 1)) if has_bias else None
        dtypes = ctx.dtypes
        return (
            _batch_major(du, dtypes[0]),
            _batch_major(ddelta, dtypes[1]),
            dA_param.to(dtypes[2]),
            _batch_major(dB, dtypes[3]),
            _batch_major(dC, dtypes[4]),
            None if dD is None else dD.to(dtypes[5]),
            dz,
            None if ddelta_bias is None else ddelta_bias.to(dtypes[7]),
            None,
        )


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Selective scan in vectorised PyTorch with an analytic backward (CPU path; any device).

    Same arguments, shapes and result as :func:`selective_scan_ref`. It keeps one state per chunk
    of time steps for the backward, not the (b, t, e, n) states.
    """
    return _SelectiveScanTorch.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
