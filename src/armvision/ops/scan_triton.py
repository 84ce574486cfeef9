"""Selective scan (Mamba-1) in Triton: forward and backward kernels, custom op and autograd.

Same function as :func:`armvision.ops.scan.selective_scan_ref` (read that for the math), for
channels-last (b, t, e) inputs in fp32/fp16/bf16 with an fp32 state, plus an optional ``index``
(t,) that makes the kernel scan the tokens in another order without copying them: sequence step
s reads token row ``index[s]`` and writes its outputs back to that row.

Design (see docs/kernels.md):

* one program per (block of BE channels, batch); time is cut into chunks of BT steps; each chunk
  is a (BT, N, BE) register tile whose recurrence is solved by ``tl.associative_scan`` on
  (decay, input) pairs, and the state entering the chunk is carried in registers. Channels are
  the tiles' last axis, so lanes and warps spread over channels while each thread holds a
  channel's whole (time, state) tile: the scans and the sums over states stay in registers;
* the forward saves only the state at the start of each chunk (b, chunks, N, e), never the
  (b, t, e, N) states; the backward walks the chunks in reverse, recomputes the chunk's states
  from that saved state, and runs the adjoint recurrence g_t = C_t dy_t + dA_{t+1} g_{t+1} as a
  reverse scan (dA_{t+1} recomputed from the next step's delta, so nothing is divided by dA);
* dA_t h_{t-1} is taken as h_t - dt_t B_t u_t (exact, no shift of the state tile needed);
* dB and dC are reduced over the program's channels in registers and written as per-block
  partial sums; dA, dD and d(delta_bias) as per-batch partials; torch sums the partials.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import current_scan_config
from .triton_common import _rows


def _empty(shape, dtype, device) -> Tensor:
    """Output allocation; tests replace it with a NaN-filled one to check every element is written."""
    return torch.empty(shape, dtype=dtype, device=device)

__all__ = ["selective_scan_triton", "scan_launch_config"]

LOG2E = 1.4426950408889634
# registers per thread of the backward unless bwd_maxnreg says otherwise, by (channels per thread, decays carried):
# ptxas (sm_90, BT 2, BE 16, Triton 3.8; python tools/inspect_triton.py 2,16,1,1,CPT,CAP,CARRY) fits each in these
# without spills. Uncapped, the one-channel kernel takes 168 with recomputed decays (12 warps per SM) and 224 with
# carried ones (9; 184 -> 11), the two-channel kernel 190 (152 -> 13) and, carried, 200+ (168 -> 12: the default
# launch since 2026-12-07, 0.53-0.75 of the CUDA kernel's time against 0.58-0.81 for the one-channel kernel with
# recomputed decays in the same H100 run, benchmarks/README.md)
BWD_MAXNREG = {(1, False): None, (1, True): 184, (2, False): 152, (2, True): 168}


def default_bwd_maxnreg(cpt: int, carry: bool) -> int | None:
    """The backward's register cap for ``cpt`` channels per thread and carried (or recomputed) decays."""
    return BWD_MAXNREG[(int(cpt), bool(carry))]


@triton.jit
def _softplus(x):
    # torch's softplus (threshold 20), with exp(x) below -15 where log(1 + exp(x)) rounds to 0
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _delta_dt(dl, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta + bias, dt) of a chunk (BT, BE): dt = softplus(delta + bias) (or delta + bias itself), 0 at masked
    steps (decay 1, input 0: the state passes through). ``bias`` (BE,) is read only when HAS_BIAS."""
    if HAS_BIAS:
        dl += bias[None, :]
    if SOFTPLUS:
        dt = _softplus(dl)
    else:
        dt = dl
    return dl, tl.where(mask, dt, 0.0)


@triton.jit
def _next_step(x, x_after, t, AXIS: tl.constexpr, BT: tl.constexpr):
    """x one step on along its time axis AXIS (held in each thread): out[t] = x[t + 1], and out[BT - 1] = x_after
    (x's first step in the next chunk, with a size-1 axis at AXIS). ``t`` is tl.arange(0, BT) shaped to broadcast
    along AXIS. The selections are over an in-thread axis with constant indices: no shuffles, and the values are exact
    (the masked-out terms are -0.0, which x + -0.0 leaves unchanged); ptxas still emits some of those adds."""
    out = tl.where(t == BT - 1, x_after, 0.0)
    for k in tl.static_range(1, BT):  # step k of x goes to step k - 1
        out = tl.where(t == k - 1, tl.sum(tl.where(t == k, x, -0.0), axis=AXIS, keep_dims=True), out)
    return out


@triton.jit
def _step_at(x, at, AXIS: tl.constexpr):
    """x at the one step of its time axis AXIS where the mask ``at`` holds (the axis removed); exact and in-thread, as
    in :func:`_next_step`."""
    return tl.sum(tl.where(at, x, -0.0), axis=AXIS)


@triton.jit
def _states_by_step(dA, x, h, t, BT: tl.constexpr):
    """h_t = dA_t h_{t-1} + x_t step by step over the in-thread time axis 0 of the forward's (BT, N, BE) tiles dA
    and x, from the entering state ``h`` (N, BE); returns (every step's state (BT, N, BE), the last one (N, BE)).
    One multiply-add per element where :func:`_combine`'s associative scan and its carry-in take two. BT 2: the steps
    taken apart and put together with split / join (the time axis moved last; in-thread, no data movement); other
    BT: in-thread selections with constant indices (``t``: tl.arange(0, BT)[:, None, None])."""
    if BT == 2:
        a0, a1 = tl.split(tl.permute(dA, (1, 2, 0)))
        x0, x1 = tl.split(tl.permute(x, (1, 2, 0)))
        h0 = a0 * h + x0
        h = a1 * h0 + x1
        hs = tl.permute(tl.join(h0, h), (2, 0, 1))
    else:
        hs = tl.zeros_like(x)
        for k in tl.static_range(BT):
            at = t == k
            h = _step_at(dA, at, 0) * h + _step_at(x, at, 0)
            hs = tl.where(at, h[None, :, :], hs)
    return hs, h


@triton.jit
def _adjoint_by_step(dA, b, g, a, t, AXIS: tl.constexpr, BT: tl.constexpr):
    """The adjoint g_t = b_t + dA_{t+1} g_{t+1} step by step backwards over a chunk (in-thread time axis AXIS of dA
    and b), entering with ``g`` and ``a``, the adjoint and the decay of the step after the chunk (AXIS removed);
    returns (every step's g; g and dA of the chunk's first step: what the chunk before enters with). One
    multiply-add per element where the flipped associative scan and its carry-in take two, and no flips or shifted
    copy of the decays. The selections are in-thread with constant indices (``t``: tl.arange(0, BT) shaped to
    broadcast along AXIS). (Split / join, as in :func:`_states_by_step`, cost the 4D tiles of the two-channel
    backward layout conversions and spills: ptxas, 2026-12-08.)"""
    gs = tl.zeros_like(b)
    for kk in tl.static_range(BT):
        at = t == BT - 1 - kk
        g = _step_at(b, at, AXIS) + a * g
        gs = tl.where(at, tl.expand_dims(g, AXIS), gs)
        a = _step_at(dA, at, AXIS)
    return gs, g, a


@triton.jit
def _kahan_add(acc, comp, term):
    """acc + term with Kahan compensation: returns the new (acc, comp)."""
    y = term - comp
    t = acc + y
    return t, (t - acc) - y


@triton.jit
def _store_channel_sum(ptr, idx_ptr, c, T, N, p, BT: tl.constexpr, NP: tl.constexpr, HAS_IDX: tl.constexpr):
    """Store sum_e p[t, n, e] to ptr[row(c * BT + t) * N + n], for p of shape (BT, NP, BE)."""
    t = tl.arange(0, BT)
    n = tl.arange(0, NP)
    row, ms = _rows(idx_ptr, c * BT + t, T, HAS_IDX)
    tl.store(ptr + row[:, None] * N + n[None, :], tl.sum(p, axis=2), mask=ms[:, None] & (n < N)[None, :])


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2; over a time-flipped tile the same scan
    # yields the adjoint recurrence g_t = a_t * g_{t+1} + b_t.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_fwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, c, T, pb, e, me, n, mn,
                    s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt,
                    HAS_Z: tl.constexpr, HAS_IDX: tl.constexpr, BT: tl.constexpr):
    """Inputs of chunk c as fp32 tiles: rows, step mask, u, delta (BT, BE); B, C (BT, N, 1); z."""
    row, ms = _rows(idx_ptr, c * BT + tl.arange(0, BT), T, HAS_IDX)
    m2 = ms[:, None] & me[None, :]
    u = tl.load(u_ptr + pb * s_ub + row[:, None] * s_ut + e[None, :], mask=m2, other=0.0).to(tl.float32)
    dl = tl.load(dl_ptr + pb * s_db + row[:, None] * s_dt + e[None, :], mask=m2, other=0.0).to(tl.float32)
    mbn = ms[:, None] & mn[None, :]
    Bm = tl.load(B_ptr + pb * s_Bb + row[:, None] * s_Bt + n[None, :], mask=mbn, other=0.0).to(tl.float32)
    Cm = tl.load(C_ptr + pb * s_Cb + row[:, None] * s_Ct + n[None, :], mask=mbn, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + pb * s_zb + row[:, None] * s_zt + e[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        zz = u
    return row, ms, u, dl, Bm[:, :, None], Cm[:, :, None], zz


@triton.jit
def _load_bwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, go_ptr, c, nchunks, T, E, N, pb, e, me,
                    n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb, s_gt,
                    HAS_Z: tl.constexpr, HAS_IDX: tl.constexpr, BT: tl.constexpr, SEG: tl.constexpr,
                    CARRY_DA: tl.constexpr):
    """What the backward reads for chunk c (c < 0: nothing): the forward inputs, delta of the next steps (unless
    CARRY_DA: (ms1, dl1) are then unused stand-ins), dout, and (SEG == 1) the state saved at the chunk's start."""
    row, ms, u, dl, Bm, Cm, zz = _load_fwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, c, T, pb, e, me, n,
                                                 mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt,
                                                 HAS_Z, HAS_IDX, BT)
    m2 = ms[:, None] & me[None, :]
    if CARRY_DA:
        ms1, dl1 = ms, dl
    else:
        row1, ms1 = _rows(idx_ptr, c * BT + 1 + tl.arange(0, BT), T, HAS_IDX)
        dl1 = tl.load(dl_ptr + pb * s_db + row1[:, None] * s_dt + e[None, :], mask=ms1[:, None] & me[None, :],
                      other=0.0).to(tl.float32)
    go = tl.load(go_ptr + pb * s_gb + row[:, None] * s_gt + e[None, :], mask=m2, other=0.0).to(tl.float32)
    if SEG == 1:
        h0 = tl.load(st_ptr + ((pb * nchunks + c) * N + n[:, None]) * E + e[None, :],
                     mask=mn[:, None] & me[None, :] & (c >= 0), other=0.0).to(tl.float32)
    else:  # rebuilt from the segment's checkpoint by _segment_states, read in the chunk's iteration
        h0 = tl.zeros((n.shape[0], e.shape[0]), tl.float32)
    return row, ms, ms1, u, dl, dl1, Bm, Cm, zz, go, h0


@triton.jit
def _channel_params(At_ptr, D_ptr, bias_ptr, a_off, a_mask, c_off, c_mask, HAS_D: tl.constexpr,
                    HAS_BIAS: tl.constexpr):
    """A program's per-channel parameters in its tiles' own layout: A from At (A transposed, (N, E)) at offsets
    ``a_off``, D and the dt bias at channel offsets ``c_off`` (zeros of that shape when absent, then never read).
    Reading A (E, N) in place instead put the load in another layout than the tile's, and Triton's conversion
    through shared memory took the backward from 168 to 226 registers."""
    A = tl.load(At_ptr + a_off, mask=a_mask, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + c_off, mask=c_mask, other=0.0)
    else:
        Dv = tl.zeros(c_off.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c_off, mask=c_mask, other=0.0)
    else:
        bias = tl.zeros(c_off.shape, tl.float32)
    return A, Dv, bias


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dl_ptr, At_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, idx_ptr, out_ptr, st_ptr,
    T, E, N,
    s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_ob, s_ot,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr,
    SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, WRITE_OUT: tl.constexpr,
    NP: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, SEG: tl.constexpr, STEPWISE: tl.constexpr = False,
):
    # Tiles are (time, state, channel) with channels last: Triton spreads lanes and warps over the
    # channels and keeps the time and state axes inside each thread, so the scan over time and the
    # sums over states need no shuffles.
    pe = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    n = tl.arange(0, NP)
    mn = n < N
    mne = mn[:, None] & me[None, :]
    A, Dv, bias = _channel_params(At_ptr, D_ptr, bias_ptr, n[:, None] * E + e[None, :], mne, e, me, HAS_D, HAS_BIAS)
    A2 = A * 1.4426950408889634  # (N, BE)
    last = (tl.arange(0, BT) == BT - 1)[:, None, None]
    h = tl.zeros((NP, BE), tl.float32)
    nchunks = tl.cdiv(T, BT)
    # software pipelining by hand: the next chunk's loads are issued before this chunk's math
    nxt = _load_fwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, 0, T, pb, e, me, n, mn,
                          s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, HAS_Z, HAS_IDX, BT)
    for c in range(0, nchunks):
        row, ms, u, dl, Bm, Cm, zz = nxt
        nxt = _load_fwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, c + 1, T, pb, e, me, n, mn,
                              s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, HAS_Z, HAS_IDX, BT)
        m2 = ms[:, None] & me[None, :]
        dl, dt = _delta_dt(dl, bias, m2, HAS_BIAS, SOFTPLUS)
        if SAVE:  # the state entering every SEG-th chunk (SEG == 1: every chunk)
            nseg = tl.cdiv(nchunks, SEG)
            tl.store(st_ptr + ((pb * nseg + c // SEG) * N + n[:, None]) * E + e[None, :],
                     h.to(st_ptr.dtype.element_ty), mask=mne & (c % SEG == 0))
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])  # (BT, N, BE)
        x = Bm * (dt * u)[:, None, :]
        if STEPWISE:
            hs, h_end = _states_by_step(dA, x, h, tl.arange(0, BT)[:, None, None], BT)
        else:
            ac, hl = tl.associative_scan((dA, x), axis=0, combine_fn=_combine)
            hs = hl + ac * h[None, :, :]
        if WRITE_OUT:
            y = tl.sum(hs * Cm, axis=1)  # (BT, BE)
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_ptr + pb * s_ob + row[:, None] * s_ot + e[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=m2)
        if STEPWISE and not (SAVE and WRITE_OUT):
            # (saving and writing the output, the forward with the last state taken from the joined tile is 32 SASS
            # instructions shorter than with h_end: Triton otherwise rematerialises the chunk's exp2 in a second
            # layout; ptxas, sm_90, 2026-12-08)
            h = h_end
        else:
            h = tl.sum(tl.where(last, hs, 0.0), axis=0)


@triton.jit
def _segment_states(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, scr_ptr, sg, nseg, T, E, N, pb, e, me, n, mn,
                    A2, bias, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt,
                    HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SOFTPLUS: tl.constexpr,
                    NP: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, SEG: tl.constexpr):
    """Backward with SEG > 1: from the fp32 checkpoint of segment sg (the state entering its first
    chunk), re-run the forward over the segment's SEG chunks and write each chunk's entering state
    to this program's scratch (SEG, NP, BE) (small: it stays in L2), instead of reading a state per
    chunk from HBM. Chunks past the end see masked (zero-dt) steps: the state passes through."""
    last = (tl.arange(0, BT) == BT - 1)[:, None, None]
    h = tl.load(st_ptr + ((pb * nseg + sg) * N + n[:, None]) * E + e[None, :], mask=mn[:, None] & me[None, :],
                other=0.0)
    j = tl.arange(0, BE)
    for k in range(0, SEG):
        tl.store(scr_ptr + (k * NP + n[:, None]) * BE + j[None, :], h)
        row, ms, u, dl, Bm, Cm, zz = _load_fwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, sg * SEG + k, T, pb,
                                                     e, me, n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct,
                                                     s_zb, s_zt, False, HAS_IDX, BT)
        dl, dt = _delta_dt(dl, bias, ms[:, None] & me[None, :], HAS_BIAS, SOFTPLUS)
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
        ac, hl = tl.associative_scan((dA, Bm * (dt * u)[:, None, :]), axis=0, combine_fn=_combine)
        h = tl.sum(tl.where(last, hl + ac * h[None, :, :], 0.0), axis=0)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dl_ptr, At_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, idx_ptr, st_ptr, go_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, scr_ptr,
    T, E, N,
    s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb, s_gt, s_ob, s_ot,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    NP: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, SEG: tl.constexpr, CARRY_DA: tl.constexpr,
):
    pe = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    n_eb = tl.num_programs(0)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    n = tl.arange(0, NP)
    mn = n < N
    mne = mn[:, None] & me[None, :]
    A, Dv, bias = _channel_params(At_ptr, D_ptr, bias_ptr, n[:, None] * E + e[None, :], mne, e, me, HAS_D, HAS_BIAS)
    A2 = A * 1.4426950408889634  # (N, BE)
    t_ax = tl.arange(0, BT)
    first = (t_ax == 0)[:, None, None]
    g_next = tl.zeros((NP, BE), tl.float32)  # g at the first step of the chunk after this one
    # dA at the first step of the chunk after this one (after the last chunk it meets g_next = 0: any finite value)
    dA_next = tl.full((NP, BE), 1.0, tl.float32)
    # dD and d(delta_bias) sum one term per chunk over up to T / BT chunks: Kahan-compensated, so that a long
    # sequence's sum is as accurate as a pairwise one (plain accumulation of dD was 1.6x the fp32 baseline's error
    # at t = 4096, e = 4). dA (NP x BE per program) stays plain: its error was within 0.85x there, and compensating
    # it cost 30 registers per thread in the default backward launch
    dA_acc = tl.zeros((NP, BE), tl.float32)
    dD_acc = tl.zeros((BE,), tl.float32)
    dD_cmp = tl.zeros((BE,), tl.float32)
    db_acc = tl.zeros((BE,), tl.float32)
    db_cmp = tl.zeros((BE,), tl.float32)
    nchunks = tl.cdiv(T, BT)
    nseg = tl.cdiv(nchunks, SEG)
    scr = scr_ptr + (pb * n_eb + pe) * (SEG * NP * BE)  # this program's scratch (SEG > 1)
    nxt = _load_bwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, go_ptr, nchunks - 1, nchunks, T, E,
                          N, pb, e, me, n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb,
                          s_gt, HAS_Z, HAS_IDX, BT, SEG, CARRY_DA)
    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        row, ms, ms1, u, dl, dl1, Bm, Cm, zz, go, h0 = nxt
        nxt = _load_bwd_chunk(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, go_ptr, c - 1, nchunks, T, E,
                              N, pb, e, me, n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb,
                              s_gt, HAS_Z, HAS_IDX, BT, SEG, CARRY_DA)
        if SEG > 1:
            if (c == nchunks - 1) | (c % SEG == SEG - 1):  # entering a segment from its end: rebuild its states
                _segment_states(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, scr, c // SEG, nseg, T, E, N, pb,
                                e, me, n, mn, A2, bias, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb,
                                s_Ct, s_zb, s_zt, HAS_BIAS, HAS_IDX, SOFTPLUS, NP, BT, BE, SEG)
                tl.debug_barrier()  # the scratch is read back below, maybe by other threads
            h0 = tl.load(scr + ((c % SEG) * NP + n[:, None]) * BE + tl.arange(0, BE)[None, :])
        m2 = ms[:, None] & me[None, :]
        dl, dt = _delta_dt(dl, bias, m2, HAS_BIAS, SOFTPLUS)
        if not CARRY_DA:
            dl1, dt1 = _delta_dt(dl1, bias, ms1[:, None] & me[None, :], HAS_BIAS, SOFTPLUS)
        # recompute this chunk's states
        dtu = dt * u
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])  # (BT, N, BE)
        x = Bm * dtu[:, None, :]
        ac, hl = tl.associative_scan((dA, x), axis=0, combine_fn=_combine)
        hs = hl + ac * h0[None, :, :]
        if HAS_Z:
            sz = tl.sigmoid(zz)
            y = tl.sum(hs * Cm, axis=1)
            if HAS_D:
                y += Dv[None, :] * u
            dy = go * zz * sz
            dzv = go * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + pb * s_ob + row[:, None] * s_ot + e[None, :], dzv.to(dz_ptr.dtype.element_ty), mask=m2)
        else:
            dy = go
        # adjoint: g_t = C_t dy_t + dA_{t+1} g_{t+1}, entering from the next chunk's first g. dA_{t+1}: CARRY_DA,
        # this chunk's dA one step on and, at its last step, the next chunk's first (the previous iteration's);
        # else recomputed from the next steps' delta
        if CARRY_DA:
            dA1 = _next_step(dA, dA_next[None, :, :], t_ax[:, None, None], 0, BT)
            dA_next = _step_at(dA, first, 0)
        else:
            dA1 = tl.exp2(dt1[:, None, :] * A2[None, :, :])
        # reverse scan as flip -> forward scan -> flip: associative_scan(reverse=True) reverses the
        # lane order with shuffles even when the time axis is held in-thread (Triton 3.6-3.8)
        ag, gl = tl.associative_scan((tl.flip(dA1, 0), tl.flip(Cm * dy[:, None, :], 0)), axis=0, combine_fn=_combine)
        ag = tl.flip(ag, 0)
        gl = tl.flip(gl, 0)
        gs = gl + ag * g_next[None, :, :]
        g_next = tl.sum(tl.where(first, gs, 0.0), axis=0)
        gB = tl.sum(gs * Bm, axis=1)  # (BT, BE): sum_n g B
        duv = gB * dt
        if HAS_D:
            duv += Dv[None, :] * dy
        W = gs * (hs - x)  # g_t * dA_t * h_{t-1}
        ddt = gB * u + tl.sum(W * A[None, :, :], axis=1)
        if SOFTPLUS:
            ddl = ddt * tl.sigmoid(dl)
        else:
            ddl = ddt
        ddl = tl.where(m2, ddl, 0.0)
        tl.store(du_ptr + pb * s_ob + row[:, None] * s_ot + e[None, :], duv.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddl_ptr + pb * s_ob + row[:, None] * s_ot + e[None, :], ddl.to(ddl_ptr.dtype.element_ty), mask=m2)
        # per-block partial sums over this program's channels: (BT, N)
        part = (pb * n_eb + pe) * T * N
        _store_channel_sum(dB_ptr + part, idx_ptr, c, T, N, gs * dtu[:, None, :], BT, NP, HAS_IDX)
        _store_channel_sum(dC_ptr + part, idx_ptr, c, T, N, hs * dy[:, None, :], BT, NP, HAS_IDX)
        dA_acc += tl.sum(W * dt[:, None, :], axis=0)
        dD_acc, dD_cmp = _kahan_add(dD_acc, dD_cmp, tl.sum(dy * u, axis=0))
        db_acc, db_cmp = _kahan_add(db_acc, db_cmp, tl.sum(ddl, axis=0))
    tl.store(dA_ptr + (pb * N + n[:, None]) * E + e[None, :], dA_acc, mask=mne)  # (b, N, E) partials
    tl.store(dD_ptr + pb * E + e, dD_acc, mask=me)
    tl.store(dbias_ptr + pb * E + e, db_acc, mask=me)


# ---------------------------------------------------------------------------------------------
# the backward with two channels per thread (launch key bwd_cpt=2)
# ---------------------------------------------------------------------------------------------
# Tiles are (2, BT, N, H) for a block of BE = 2H channels, channel pe * BE + k * H + j at (k, ., ., j): Triton's
# default layout puts the lanes on the last axes (H lanes on channels, 32 / H on states) and keeps the leading
# pair of channels in each thread, so the dB/dC sums over channels first add the thread's two channels, then
# reduce over H lanes: half the values of the (BT, N, BE) tiles' butterflies over BE lanes. The sums over states
# (y, sum_n g B, sum_n W A) cross 32 / H lanes instead of 2. Same arithmetic otherwise.
@triton.jit
def _load3(ptr, pb, s_b, s_t, row, e2, m3):
    """(2, BT, H) fp32 tile of a (b, t, e) tensor at rows ``row`` and channels ``e2`` (2, H)."""
    return tl.load(ptr + pb * s_b + row[None, :, None] * s_t + e2[:, None, :], mask=m3, other=0.0).to(tl.float32)


@triton.jit
def _load_bwd_chunk2(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, go_ptr, c, nchunks, T, E, N, pb, e2, me2,
                     n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb, s_gt,
                     HAS_Z: tl.constexpr, HAS_IDX: tl.constexpr, BT: tl.constexpr, CARRY_DA: tl.constexpr,
                     SEG: tl.constexpr):
    """:func:`_load_bwd_chunk` in the two-channels-per-thread tiles; h0 is the saved state entering chunk
    SEG * (c // SEG) (SEG 1 or 2: with 2, an odd chunk's entering state is rebuilt by the kernel)."""
    row, ms = _rows(idx_ptr, c * BT + tl.arange(0, BT), T, HAS_IDX)
    m3 = ms[None, :, None] & me2[:, None, :]
    u = _load3(u_ptr, pb, s_ub, s_ut, row, e2, m3)
    dl = _load3(dl_ptr, pb, s_db, s_dt, row, e2, m3)
    mbn = ms[:, None] & mn[None, :]
    Bm = tl.load(B_ptr + pb * s_Bb + row[:, None] * s_Bt + n[None, :], mask=mbn, other=0.0).to(tl.float32)
    Cm = tl.load(C_ptr + pb * s_Cb + row[:, None] * s_Ct + n[None, :], mask=mbn, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = _load3(z_ptr, pb, s_zb, s_zt, row, e2, m3)
    else:
        zz = u
    if CARRY_DA:
        ms1, dl1 = ms, dl
    else:
        row1, ms1 = _rows(idx_ptr, c * BT + 1 + tl.arange(0, BT), T, HAS_IDX)
        dl1 = _load3(dl_ptr, pb, s_db, s_dt, row1, e2, ms1[None, :, None] & me2[:, None, :])
    go = _load3(go_ptr, pb, s_gb, s_gt, row, e2, m3)
    h0 = tl.load(st_ptr + ((pb * tl.cdiv(nchunks, SEG) + c // SEG) * N + n[None, :, None]) * E + e2[:, None, :],
                 mask=mn[None, :, None] & me2[:, None, :] & (c >= 0), other=0.0).to(tl.float32)
    return row, ms, ms1, u, dl, dl1, Bm[None, :, :, None], Cm[None, :, :, None], zz, go, h0


@triton.jit
def _scan_bwd_kernel2(
    u_ptr, dl_ptr, At_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, idx_ptr, st_ptr, go_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    T, E, N,
    s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb, s_gt, s_ob, s_ot,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    NP: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, CARRY_DA: tl.constexpr, SEG: tl.constexpr,
    GROUP: tl.constexpr = 1, STEPWISE: tl.constexpr = False,
):
    H: tl.constexpr = BE // 2
    pe = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    n_eb = tl.num_programs(0)
    e2 = pe * BE + tl.arange(0, 2)[:, None] * H + tl.arange(0, H)[None, :]  # (2, H)
    me2 = e2 < E
    n = tl.arange(0, NP)
    mn = n < N
    mne = mn[None, :, None] & me2[:, None, :]  # (2, NP, H)
    A, Dv, bias = _channel_params(At_ptr, D_ptr, bias_ptr, n[None, :, None] * E + e2[:, None, :], mne, e2, me2, HAS_D,
                                  HAS_BIAS)
    A2 = A * 1.4426950408889634  # (2, NP, H)
    t_ax = tl.arange(0, BT)
    first = (t_ax == 0)[None, :, None, None]
    last = (t_ax == BT - 1)[None, :, None, None]
    g_next = tl.zeros((2, NP, H), tl.float32)
    dA_next = tl.full((2, NP, H), 1.0, tl.float32)
    dA_acc = tl.zeros((2, NP, H), tl.float32)
    dD_acc = tl.zeros((2, H), tl.float32)
    dD_cmp = tl.zeros((2, H), tl.float32)
    db_acc = tl.zeros((2, H), tl.float32)
    db_cmp = tl.zeros((2, H), tl.float32)
    nchunks = tl.cdiv(T, BT)
    nxt = _load_bwd_chunk2(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, go_ptr, nchunks - 1, nchunks, T, E,
                           N, pb, e2, me2, n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt, s_gb,
                           s_gt, HAS_Z, HAS_IDX, BT, CARRY_DA, SEG)
    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        row, ms, ms1, u, dl, dl1, Bm, Cm, zz, go, h0 = nxt
        nxt = _load_bwd_chunk2(u_ptr, dl_ptr, B_ptr, C_ptr, z_ptr, idx_ptr, st_ptr, go_ptr, c - 1, nchunks, T, E,
                               N, pb, e2, me2, n, mn, s_ub, s_ut, s_db, s_dt, s_Bb, s_Bt, s_Cb, s_Ct, s_zb, s_zt,
                               s_gb, s_gt, HAS_Z, HAS_IDX, BT, CARRY_DA, SEG)
        if SEG == 2:
            if c % 2 == 1:
                # only even chunks' entering states are saved: run the chunk before this one (its inputs are the
                # prefetched nxt) forward from its saved state, h0, to this chunk's entering state
                pms, pu, pdl, pB = nxt[1], nxt[3], nxt[4], nxt[6]
                pdl, pdt = _delta_dt3(pdl, bias, pms[None, :, None] & me2[:, None, :], HAS_BIAS, SOFTPLUS)
                pac, phl = tl.associative_scan((tl.exp2(pdt[:, :, None, :] * A2[:, None, :, :]),
                                                pB * (pdt * pu)[:, :, None, :]), axis=1, combine_fn=_combine)
                h0 = _step_at(phl + pac * h0[:, None, :, :], last, 1)
        m3 = ms[None, :, None] & me2[:, None, :]
        dl, dt = _delta_dt3(dl, bias, m3, HAS_BIAS, SOFTPLUS)
        if not CARRY_DA:
            dl1, dt1 = _delta_dt3(dl1, bias, ms1[None, :, None] & me2[:, None, :], HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        dA = tl.exp2(dt[:, :, None, :] * A2[:, None, :, :])  # (2, BT, NP, H)
        x = Bm * dtu[:, :, None, :]
        # (the states stay an associative scan under STEPWISE: step by step they cost this kernel a layout conversion
        # of h0, more than the scan's extra products; ptxas, 2026-12-08)
        ac, hl = tl.associative_scan((dA, x), axis=1, combine_fn=_combine)
        hs = hl + ac * h0[:, None, :, :]
        if HAS_Z:
            sz = tl.sigmoid(zz)
            y = tl.sum(hs * Cm, axis=2)
            if HAS_D:
                y += Dv[:, None, :] * u
            dy = go * zz * sz
            dzv = go * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + pb * s_ob + row[None, :, None] * s_ot + e2[:, None, :], dzv.to(dz_ptr.dtype.element_ty),
                     mask=m3)
        else:
            dy = go
        if STEPWISE:
            # entering from the step after the chunk: its g and its decay (carried, or recomputed from its delta)
            if not CARRY_DA:
                dA_next = tl.exp2(_step_at(dt1, (t_ax == BT - 1)[None, :, None], 1)[:, None, :] * A2)
            gs, g_next, dA_next = _adjoint_by_step(dA, Cm * dy[:, :, None, :], g_next, dA_next,
                                                   t_ax[None, :, None, None], 1, BT)
        else:
            if CARRY_DA:
                dA1 = _next_step(dA, dA_next[:, None, :, :], t_ax[None, :, None, None], 1, BT)
                dA_next = _step_at(dA, first, 1)
            else:
                dA1 = tl.exp2(dt1[:, :, None, :] * A2[:, None, :, :])
            ag, gl = tl.associative_scan((tl.flip(dA1, 1), tl.flip(Cm * dy[:, :, None, :], 1)), axis=1,
                                         combine_fn=_combine)
            ag = tl.flip(ag, 1)
            gl = tl.flip(gl, 1)
            gs = gl + ag * g_next[:, None, :, :]
            g_next = tl.sum(tl.where(first, gs, 0.0), axis=1)
        gB = tl.sum(gs * Bm, axis=2)  # (2, BT, H)
        duv = gB * dt
        if HAS_D:
            duv += Dv[:, None, :] * dy
        W = gs * (hs - x)
        ddt = gB * u + tl.sum(W * A[:, None, :, :], axis=2)
        if SOFTPLUS:
            ddl = ddt * tl.sigmoid(dl)
        else:
            ddl = ddt
        ddl = tl.where(m3, ddl, 0.0)
        tl.store(du_ptr + pb * s_ob + row[None, :, None] * s_ot + e2[:, None, :], duv.to(du_ptr.dtype.element_ty),
                 mask=m3)
        tl.store(ddl_ptr + pb * s_ob + row[None, :, None] * s_ot + e2[:, None, :], ddl.to(ddl_ptr.dtype.element_ty),
                 mask=m3)
        # per-block partial sums over this program's channels: the thread's pair first, then across lanes; GROUP > 1:
        # added atomically into the partial block of GROUP channel blocks (zeroed by the launcher)
        part = (pb * tl.cdiv(n_eb, GROUP) + pe // GROUP) * T * N
        mbn = ms[:, None] & mn[None, :]
        pB = tl.sum(tl.sum(gs * dtu[:, :, None, :], axis=0), axis=2)
        pC = tl.sum(tl.sum(hs * dy[:, :, None, :], axis=0), axis=2)
        if GROUP == 1:
            tl.store(dB_ptr + part + row[:, None] * N + n[None, :], pB, mask=mbn)
            tl.store(dC_ptr + part + row[:, None] * N + n[None, :], pC, mask=mbn)
        else:
            tl.atomic_add(dB_ptr + part + row[:, None] * N + n[None, :], pB, mask=mbn, sem="relaxed")
            tl.atomic_add(dC_ptr + part + row[:, None] * N + n[None, :], pC, mask=mbn, sem="relaxed")
        dA_acc += tl.sum(W * dt[:, :, None, :], axis=1)
        dD_acc, dD_cmp = _kahan_add(dD_acc, dD_cmp, tl.sum(dy * u, axis=1))
        db_acc, db_cmp = _kahan_add(db_acc, db_cmp, tl.sum(ddl, axis=1))
    tl.store(dA_ptr + (pb * N + n[None, :, None]) * E + e2[:, None, :], dA_acc, mask=mne)
    tl.store(dD_ptr + pb * E + e2, dD_acc, mask=me2)
    tl.store(dbias_ptr + pb * E + e2, db_acc, mask=me2)


@triton.jit
def _delta_dt3(dl, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """:func:`_delta_dt` for (2, BT, H) tiles, ``bias`` (2, H)."""
    if HAS_BIAS:
        dl += bias[:, None, :]
    if SOFTPLUS:
        dt = _softplus(dl)
    else:
        dt = dl
    return dl, tl.where(mask, dt, 0.0)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
# Launch parameters come from armvision.ops.launch (defaults, or a ``with ops.scan_config(...)``
# scope), read once per call in selective_scan_triton and passed down as arguments: ``launch`` =
# [BT, fwd BE, fwd warps, fwd stages, bwd BE, bwd warps, bwd stages, seg, sums in the graph, states BE, states
# warps, states stages, bwd channels per thread, bwd register cap (0: the kernel's own), bwd decays carried, dbc_group,
# recurrences step by step (recurrence "step")].
def _launch_list(cfg: dict | None = None) -> list[int]:
    cfg = cfg or current_scan_config()
    states_block = cfg.get("states_block") or cfg["fwd"]
    return [int(cfg["BT"]), *(int(v) for v in cfg["fwd"]), *(int(v) for v in cfg["bwd"]), int(cfg.get("seg", 1)),
            int(cfg.get("sums", "graph") == "graph"), *(int(v) for v in states_block), int(cfg.get("bwd_cpt", 1)),
            int(cfg.get("bwd_maxnreg") or 0), int(cfg.get("bwd_decay", "recompute") == "carry"),
            _dbc_group(cfg), int(cfg.get("recurrence", "scan") == "step")]


def _stepwise(launch: Sequence[int]) -> int:
    """1 where a launch list asks for the recurrences step by step (recurrence "step"); 0 for the shorter lists of
    before."""
    return int(launch[16]) if len(launch) > 16 else 0


def _fwd_block(launch: Sequence[int]) -> list[int]:
    """(BE, warps, stages, step by step) of the forward kernel from a launch list."""
    return [*launch[1:4], _stepwise(launch)]


def _full_fwd_block(block: Sequence[int]) -> list[int]:
    """(BE, warps, stages, step by step) from a forward block that may stop after its first three (associative
    scan)."""
    return [int(v) for v in (*block, *(0,)[len(block) - 3:])][:4]


def _dbc_group(cfg: dict) -> int:
    """The configured dbc_group, or 1 (a partial block per channel block, no atomic adds: the same bits on every
    run) while ``torch.use_deterministic_algorithms(True)`` is on."""
    return 1 if torch.are_deterministic_algorithms_enabled() else int(cfg.get("dbc_group", 1))


def _full_bwd_block(block: Sequence[int]) -> list[int]:
    """(BE, warps, stages, channels per thread, register cap or 0, decays carried, dbc_group, adjoint step by step)
    from a block that may stop after any of its first three: 1 channel per thread, the kernel's own cap, recomputed
    decays, a dB/dC partial sum per channel block and the associative scan where it stops."""
    return [int(v) for v in (*block, *(1, 0, 0, 1, 0)[len(block) - 3:])]


def _bwd_block(launch: Sequence[int]) -> list[int]:
    """The backward kernel's block (see :func:`_full_bwd_block`) from a launch list, the shorter ones of before too."""
    return _full_bwd_block([*launch[4:7], *launch[12:17]])


class _BwdPlan(NamedTuple):
    """How :func:`scan_bwd` launches for a number of channels (:func:`_bwd_plan`)."""

    BE: int
    warps: int
    stages: int
    cpt: int  # channels per thread: 2 runs _scan_bwd_kernel2
    carry: bool  # decays carried
    maxnreg: int  # the register cap (0: none)
    blocks: int  # channel blocks (programs per batch element)
    group: int  # channel blocks per dB/dC partial block (dbc_group)
    partial_blocks: int  # dB/dC partial blocks
    stepwise: bool  # the adjoint step by step (two-channel kernel only)


def _bwd_plan(e: int, block: Sequence[int], seg: int) -> _BwdPlan:
    """The backward's launch for ``e`` channels from ``block`` (see :func:`_full_bwd_block`). Two channels per thread
    need seg 1 or 2 and an even BE (the two-channel kernel rebuilds at most one chunk's entering state and splits
    the block in halves): elsewhere the one-channel kernel runs, in its measured-best form (decays recomputed), with a
    partial sum per channel block; the two-channel kernel adds ``dbc_group`` channel blocks into one partial block
    (at most all of them). The register cap is the block's, else the kernel's own (:func:`default_bwd_maxnreg`)."""
    BE, warps, stages, cpt, cap, carry, group, stepwise = _full_bwd_block(block)
    carry = bool(carry)
    if cpt == 2 and (seg > 2 or BE % 2):
        cpt, carry, group = 1, False, 1
    n_eb = triton.cdiv(e, BE)
    group = min(max(group, 1), n_eb) if cpt == 2 else 1
    return _BwdPlan(BE, warps, stages, cpt, carry, cap or default_bwd_maxnreg(cpt, carry) or 0, n_eb, group,
                    triton.cdiv(n_eb, group), bool(stepwise) and cpt == 2)


def _states_block(launch: Sequence[int]) -> list[int]:
    """(BE, warps, stages, step by step) of the backward's states recomputation; the forward's for shorter launch
    lists."""
    return [*(launch[9:12] if len(launch) > 11 else launch[1:4]), _stepwise(launch)]


def _seg(launch: Sequence[int]) -> int:
    """The segment length (chunks per saved state) of a launch list; 1 for the 7-entry lists of before."""
    return int(launch[7]) if len(launch) > 7 else 1


def _sums_in_graph(launch: Sequence[int]) -> bool:
    """Whether the backward's partial sums are added up by the autograd formula (``sums="graph"``, traced
    by torch.compile) rather than inside the custom op (``"op"``); launch lists without the entry: in the op."""
    return bool(launch[8]) if len(launch) > 8 else False


def scan_launch_config(**updates) -> dict:
    """The scan's launch parameters in effect (see :mod:`armvision.ops.launch`). Setting them here is
    gone: use ``with armvision.ops.scan_config(**updates):`` for the code that should run with them."""
    if updates:
        raise TypeError(f"scan_launch_config({', '.join(f'{k}={v!r}' for k, v in updates.items())}) no longer "
                        "changes a process-wide setting; wrap the calls in `with armvision.ops.scan_config("
                        f"{', '.join(f'{k}={v!r}' for k, v in updates.items())}):` instead")
    return current_scan_config()


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the chunk states saved for the backward: always fp32. (They restart the fp32
    recomputation of the states in the backward; an earlier version stored them in bf16 for half
    inputs, which put a bf16 rounding into every state the backward used: for fp16 inputs the
    gradients of z, C, delta, A and delta_bias were then 3-14x further from float64 than fp32
    arithmetic rounded once at the end.)"""
    return torch.float32


def _contiguous_last(x: Tensor | None) -> Tensor | None:
    """The kernels take any batch/time strides but need unit stride over channels / states."""
    if x is None:
        return None
    return x if x.stride(-1) == 1 else x.contiguous()


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, index, softplus: bool, save_states: bool,
             write_out: bool = True, chunk: int | None = None, block: Sequence[int] | None = None, seg: int = 1):
    """Launch the forward kernel with chunk length ``chunk`` and ``block`` = (BE, num_warps, num_stages[, step by
    step]) (None: the active :func:`~armvision.ops.scan_config`). Returns (out (b, t, e) in u.dtype (left
    unwritten without write_out), states (b, ceil(chunks / seg), N, e) fp32 (the state entering every
    seg-th chunk) or an empty tensor, chunk length). ``seg`` > 1 must be passed to :func:`scan_bwd` too."""
    b, t, e = u.shape
    n = A.shape[1]
    BT = chunk or current_scan_config()["BT"]
    BE, warps, stages, stepwise = _full_fwd_block(block or _fwd_block(_launch_list()))
    nchunks = triton.cdiv(t, BT)
    out = _empty((b, t, e), u.dtype, u.device)
    states = _empty((b, triton.cdiv(nchunks, seg), n, e) if save_states else (0,), _state_dtype(u.dtype), u.device)
    zs = z if z is not None else u
    _scan_fwd_kernel[(triton.cdiv(e, BE), b)](
        u, delta, A.t().contiguous(), B, C,
        D if D is not None else out, zs, delta_bias if delta_bias is not None else out,
        index if index is not None else out, out, states,
        t, e, n,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
        C.stride(0), C.stride(1), zs.stride(0), zs.stride(1), out.stride(0), out.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_IDX=index is not None,
        SOFTPLUS=softplus, SAVE=save_states, WRITE_OUT=write_out, NP=triton.next_power_of_2(n), BT=BT, BE=BE,
        SEG=seg, STEPWISE=bool(stepwise), num_warps=warps,
        num_stages=stages,
    )
    return out, states, BT


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, index, states, dout, softplus: bool, chunk: int,
             block: Sequence[int] | None = None, seg: int = 1, reduce: bool = True):
    """Launch the backward kernel; ``states`` and ``chunk`` come from :func:`scan_fwd` (with ``seg``);
    ``block`` = (BE, num_warps, num_stages[, channels per thread[, register cap (0: :func:`default_bwd_maxnreg`)[,
    decays carried[, dbc_group]]]]) (None: the active :func:`~armvision.ops.scan_config`); 2 channels per thread runs
    :func:`_scan_bwd_kernel2` where it can (seg 1 or 2, even BE), elsewhere the one-channel kernel with recomputed
    decays (:func:`_bwd_plan`).

    seg > 1 (for long sequences): ``states`` holds one checkpoint per seg chunks and the kernel
    rebuilds the other chunk states per segment in a small per-program scratch.

    Returns the gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in the inputs' dtypes; with
    ``reduce=False`` dA, dB, dC, dD and ddelta_bias are the kernel's fp32 partial sums instead
    ((b, n, e), (b, blocks, t, n) twice (blocks: the channel blocks, or their dbc_groups), (b, e) twice), which
    :func:`finish_scan_grads` adds up.
    """
    b, t, e = u.shape
    n = A.shape[1]
    if block is None:
        block = _bwd_block(_launch_list())
    BE, warps, stages, cpt, carry, maxnreg, n_eb, group, n_pb, stepwise = _bwd_plan(e, block, seg)
    dout = _contiguous_last(dout)
    du = _empty((b, t, e), u.dtype, u.device)
    ddelta = _empty((b, t, e), delta.dtype, u.device)
    dz = _empty((b, t, e), z.dtype, u.device) if z is not None else None
    f32 = (torch.float32, u.device)
    # dB, dC: one partial block per channel block, or per dbc_group of them added atomically (zeroed first)
    partial = _empty if group == 1 else (lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))
    dB_part = partial((b, n_pb, t, n), *f32)
    dC_part = partial((b, n_pb, t, n), *f32)
    dA_part = _empty((b, n, e), *f32)
    dD_part = _empty((b, e), *f32)
    dbias_part = _empty((b, e), *f32)
    zs = z if z is not None else u
    pointers = (u, delta, A.t().contiguous(), B, C, D if D is not None else du, zs,
                delta_bias if delta_bias is not None else du, index if index is not None else du, states, dout,
                du, ddelta, dz if dz is not None else du, dB_part, dC_part, dA_part, dD_part, dbias_part)
    sizes = (t, e, n, u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
             C.stride(0), C.stride(1), zs.stride(0), zs.stride(1), dout.stride(0), dout.stride(1),
             du.stride(0), du.stride(1))
    np2 = triton.next_power_of_2(n)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 HAS_IDX=index is not None, SOFTPLUS=softplus, NP=np2, BT=chunk, BE=BE, CARRY_DA=carry,
                 num_warps=warps, num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    if cpt == 2:
        _scan_bwd_kernel2[(n_eb, b)](*pointers, *sizes, **flags, SEG=seg, GROUP=group, STEPWISE=stepwise)
    else:
        scratch = torch.empty((b * n_eb * seg * np2 * BE,) if seg > 1 else (1,), dtype=torch.float32,
                              device=u.device)
        _scan_bwd_kernel[(n_eb, b)](*pointers, scratch, *sizes, **flags, SEG=seg)
    parts = (du, ddelta, dA_part, dB_part, dC_part, dD_part, dz, dbias_part)
    return finish_scan_grads(parts, A, B, C, D, delta_bias) if reduce else parts


def finish_scan_grads(parts, A, B, C, D, delta_bias):
    """The gradients from :func:`scan_bwd`'s ``reduce=False`` output: the partial sums added up over the batch
    (dA, dD, ddelta_bias) and over the channel blocks (dB, dC), in the inputs' dtypes. Plain torch ops: inside a
    compiled backward, inductor fuses them with their casts and with what consumes them (the cat of x_proj's
    output gradient), instead of running them as separate kernels inside the custom op."""
    du, ddelta, dA_part, dB_part, dC_part, dD_part, dz, dbias_part = parts
    dA = dA_part.sum(0).t().contiguous().to(A.dtype)
    dB = dB_part.sum(1).to(B.dtype)
    dC = dC_part.sum(1).to(C.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias


# ---------------------------------------------------------------------------------------------
# custom ops (opaque to torch.compile: traced without a graph break) and autograd
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("armvision::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                 delta_bias: Tensor | None, index: Tensor | None, softplus: bool,
                 save_states: bool, launch: Optional[List[int]] = None) -> tuple[Tensor, Tensor]:
    launch = launch or _launch_list()
    out, states, _ = scan_fwd(u, delta, A, B, C, D, z, delta_bias, index, softplus, save_states, chunk=launch[0],
                              block=_fwd_block(launch), seg=_seg(launch))
    return out, states


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, index, softplus, save_states, launch=None):
    b, t, e = u.shape
    launch = launch or _launch_list()
    nsaved = triton.cdiv(triton.cdiv(t, launch[0]), _seg(launch))
    states = u.new_empty((b, nsaved, A.shape[1], e) if save_states else (0,), dtype=_state_dtype(u.dtype))
    return u.new_empty((b, t, e)), states


@torch.library.custom_op("armvision::selective_scan_states", mutates_args=())
def _scan_states_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                    delta_bias: Tensor | None, index: Tensor | None, softplus: bool, chunk: int,
                    block: Optional[List[int]] = None, seg: int = 1) -> Tensor:
    return scan_fwd(u, delta, A, B, C, D, z, delta_bias, index, softplus, True, write_out=False, chunk=chunk,
                    block=block, seg=seg)[1]


@_scan_states_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, index, softplus, chunk, block=None, seg=1):
    b, t, e = u.shape
    return u.new_empty((b, triton.cdiv(triton.cdiv(t, chunk), seg), A.shape[1], e), dtype=_state_dtype(u.dtype))


@torch.library.custom_op("armvision::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                 delta_bias: Tensor | None, index: Tensor | None, states: Tensor, dout: Tensor, softplus: bool,
                 chunk: int, block: Optional[List[int]] = None, seg: int = 1) -> list[Tensor]:
    grads = scan_bwd(u, delta, A, B, C, D, z, delta_bias, index, states, dout, softplus, chunk, block, seg)
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, index, states, dout, softplus, chunk, block=None, seg=1):
    def like(x):
        return x.new_empty(x.shape) if x is not None else u.new_empty(0)

    return [like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias)]


@torch.library.custom_op("armvision::selective_scan_bwd_parts", mutates_args=())
def _scan_bwd_parts_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                       z: Tensor | None, delta_bias: Tensor | None, index: Tensor | None, states: Tensor, dout: Tensor,
                       softplus: bool, chunk: int, block: Optional[List[int]] = None, seg: int = 1) -> list[Tensor]:
    """The backward kernel alone: (du, ddelta, dz or an empty tensor) and the fp32 partial sums (dA, dB, dC, dD,
    d(delta_bias)) that :func:`finish_scan_grads` adds up (see :func:`scan_bwd`'s ``reduce=False``)."""
    du, ddelta, dA_p, dB_p, dC_p, dD_p, dz, db_p = scan_bwd(u, delta, A, B, C, D, z, delta_bias, index, states, dout,
                                                            softplus, chunk, block, seg, reduce=False)
    return [du, ddelta, dA_p, dB_p, dC_p, dD_p, dz if dz is not None else u.new_empty(0), db_p]


@_scan_bwd_parts_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, index, states, dout, softplus, chunk, block=None, seg=1):
    b, t, e = u.shape
    n = A.shape[1]
    blocks = _bwd_plan(e, block or _bwd_block(_launch_list()), seg).partial_blocks
    f32 = dict(dtype=torch.float32)
    return [u.new_empty(u.shape), delta.new_empty(delta.shape), u.new_empty((b, n, e), **f32),
            u.new_empty((b, blocks, t, n), **f32), u.new_empty((b, blocks, t, n), **f32), u.new_empty((b, e), **f32),
            z.new_empty(z.shape) if z is not None else u.new_empty(0), u.new_empty((b, e), **f32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, index, softplus, save_states, launch = inputs
    launch = list(launch or _launch_list())
    ctx.softplus = softplus
    ctx.chunk, ctx.fwd_block, ctx.bwd_block, ctx.seg = launch[0], _fwd_block(launch), _bwd_block(launch), _seg(launch)
    ctx.states_block = _states_block(launch)
    ctx.sums_in_graph = _sums_in_graph(launch)
    # the states output gets no gradient: without this autograd would fill a zero tensor the size of
    # the saved states (hundreds of MB) for it on every backward
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, index, output[1])


def _backward(ctx, dout, dstates):
    if dout is None:  # the output was not used
        return (None,) * 12
    u, delta, A, B, C, D, z, delta_bias, index, states = ctx.saved_tensors
    if states.numel() == 0:  # states="recompute": rebuild the chunk states now
        states = _scan_states_op(u, delta, A, B, C, D, z, delta_bias, index, ctx.softplus, ctx.chunk, ctx.states_block,
                                 ctx.seg)
    if ctx.sums_in_graph:  # the partial sums become ops of the traced backward graph (fused by inductor)
        parts = _scan_bwd_parts_op(u, delta, A, B, C, D, z, delta_bias, index, states, dout, ctx.softplus,
                                   ctx.chunk, ctx.bwd_block, ctx.seg)
        grads = finish_scan_grads(parts, A, B, C, D, delta_bias)
    else:
        grads = _scan_bwd_op(u, delta, A, B, C, D, z, delta_bias, index, states, dout, ctx.softplus, ctx.chunk,
                             ctx.bwd_block, ctx.seg)
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, None, None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _ScanFunction(torch.autograd.Function):
    """Eager-mode autograd over the same launchers as the custom ops, without the dispatcher's
    per-call work (custom ops cost the host tens of microseconds per call in eager mode, enough to
    leave the GPU idle at small shapes). ``torch.compile`` traces the custom ops instead."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, index, softplus, save_states, launch):
        out, states, chunk = scan_fwd(u, delta, A, B, C, D, z, delta_bias, index, softplus, save_states,
                                      chunk=launch[0], block=_fwd_block(launch), seg=_seg(launch))
        ctx.softplus, ctx.chunk, ctx.fwd_block, ctx.bwd_block = softplus, chunk, _fwd_block(launch), _bwd_block(launch)
        ctx.states_block = _states_block(launch)
        ctx.seg = _seg(launch)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, index, states)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, index, states = ctx.saved_tensors
        if states.numel() == 0:  # states="recompute": rebuild the chunk states now
            states = scan_fwd(u, delta, A, B, C, D, z, delta_bias, index, ctx.softplus, True, write_out=False,
                              chunk=ctx.chunk, block=ctx.states_block, seg=ctx.seg)[1]
        grads = scan_bwd(u, delta, A, B, C, D, z, delta_bias, index, states, dout, ctx.softplus, ctx.chunk,
                         ctx.bwd_block, seg=ctx.seg)
        return (*grads, None, None, None, None)


def _use_custom_op(x: Tensor) -> bool:
    """Trace the custom op (torch.compile, fake tensors); run the eager autograd.Function otherwise."""
    return torch.compiler.is_compiling() or torch._subclasses.fake_tensor.is_fake(x)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                          index: Tensor | None = None) -> Tensor:
    """Selective scan on the Triton kernels; arguments as :func:`armvision.ops.selective_scan`.

    ``index`` (t,) int: scan the tokens in the order ``index`` (e.g. reversed, column-major); the
    output is still in the input's token order.
    """
    u, delta, B, C, z = (_contiguous_last(x) for x in (u, delta, B, C, z))
    A = A.float().contiguous()
    D = D.float().contiguous() if D is not None else None
    delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
    if index is not None:
        index = index.to(device=u.device, dtype=torch.int32).contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (u, delta, A, B, C, D, z, delta_bias))
    cfg = current_scan_config()  # the active ops.scan_config scope, read once; passed down from here
    launch = _launch_list(cfg)
    save = needs_grad and cfg["states"] == "save"
    if _use_custom_op(u):
        return _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, index, delta_softplus, save, launch)[0]
    if not needs_grad:
        return scan_fwd(u, delta, A, B, C, D, z, delta_bias, index, delta_softplus, False, chunk=launch[0],
                        block=_fwd_block(launch))[0]
    return _ScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, index, delta_softplus, save, launch)
