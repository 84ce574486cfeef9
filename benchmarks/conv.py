"""Causal depthwise conv1d benchmark: the Triton forward and backward in ms and GB/s, beside cuDNN.

At four ARM shapes (b, t, e) (bf16 x and dout, fp32 width-4 weight and bias, SiLU) it times the Triton
forward, the backward as the op runs it (`conv_triton._conv_bwd`: kernel + the dw/db partial sums), the
same backward through an index order, the previous forward and backward kernels (`_old_conv_fwd_kernel`,
`_old_conv_bwd_kernel` below, kept here only for this comparison), armvision's op forward+backward
through autograd, and torch's cuDNN depthwise conv1d + SiLU forward+backward (channels-first, bf16)
through autograd. GB/s counts the least traffic: forward reads x and writes out, backward reads x and
dout and writes dx. Before any timing the new and old kernels are checked against float32 autograd of
the plain-PyTorch conv.
Times: median of per-call CUDA-event times after warm-up, calls queued behind a GPU sleep so that
host launch time is not counted (no L2 flush; every shape is larger than the L2 cache).

    python benchmarks/conv.py [--json conv.json] [--sweep]    # --sweep: also the kernels' launch configs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from armvision import ops
from armvision.ops import conv_triton as ct
from armvision.ops.conv import causal_conv1d_torch
from armvision.ops.triton_common import _rows

SHAPES = [(256, 144, 1536), (128, 196, 1536), (128, 144, 2048), (64, 1024, 1536)]  # (b, t, e)
SWEEP = [(bt, be, w) for bt in (32, 64, 128, 256) for be, w in ((64, 1), (128, 1), (256, 2), (256, 1))]
OLD = (32, 64, 4)  # the old kernels' (BT, BE, num_warps) default


@triton.jit
def _old_conv_fwd_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, out_ptr, T, E, s_xb, s_xt, s_ob, s_ot,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr,
                         BT: tl.constexpr, BE: tl.constexpr):
    """The forward before 2026-12-01: one program per (BT, BE) tile, K shifted loads of x."""
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


def old_conv_fwd(x, weight, bias, index, silu, block=OLD):
    b, t, e = x.shape
    BT, BE, warps = block
    out = torch.empty_like(x)
    _old_conv_fwd_kernel[(triton.cdiv(t, BT), triton.cdiv(e, BE), b)](
        x, weight, bias if bias is not None else weight, index if index is not None else out, out, t, e,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=weight.shape[1], HAS_BIAS=bias is not None, HAS_IDX=index is not None, SILU=silu, BT=BT, BE=BE,
        num_warps=warps)
    return out


@triton.jit
def _old_conv_bwd_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, go_ptr, dx_ptr, dw_ptr, db_ptr, T, E,
                         s_xb, s_xt, s_gb, s_gt, s_ob, s_ot,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr, SILU: tl.constexpr,
                         BT: tl.constexpr, BE: tl.constexpr):
    """The backward before 2026-12-01: one program per (channel block, batch), a serial loop over time
    tiles, p recomputed at K shifts from K loads of x each; dw, db as per-batch partials."""
    pe = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    e = pe * BE + tl.arange(0, BE)
    me = e < E
    if HAS_BIAS:
        bias = tl.load(b_ptr + e, mask=me, other=0.0)
    taps = tl.arange(0, 4)
    dw_acc = tl.zeros((BE, 4), tl.float32)
    db_acc = tl.zeros((BE,), tl.float32)
    for t0 in range(0, T, BT):
        s = t0 + tl.arange(0, BT)
        dx = tl.zeros((BT, BE), tl.float32)
        for j in tl.static_range(K):
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
            if j == 0:
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


def old_conv_bwd(x, weight, bias, index, dout, silu, block=OLD):
    b, t, e = x.shape
    k = weight.shape[1]
    BT, BE, warps = block
    dx = torch.empty_like(x)
    dw = torch.empty((b, e, k), dtype=torch.float32, device=x.device)
    db = torch.empty((b, e), dtype=torch.float32, device=x.device)
    _old_conv_bwd_kernel[(triton.cdiv(e, BE), b)](
        x, weight, bias if bias is not None else weight, index if index is not None else dx, dout, dx, dw, db,
        t, e, x.stride(0), x.stride(1), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_IDX=index is not None, SILU=silu, BT=BT, BE=BE, num_warps=warps)
    return [dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)]


def bench(fn, warmup=10, reps=50) -> float:
    """Median ms of one call: per-call CUDA events, all calls queued behind a GPU sleep first."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    torch.cuda._sleep(100_000_000)  # ~50 ms of GPU clock: the host queues every call before the first runs
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def make(b, t, e, seed=0, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    return r(b, t, e).bfloat16(), r(e, 4) * 0.5, r(e) * 0.3, r(b, t, e).bfloat16()


def cross_check(x, w, bias, dout, index):
    """out, dx, dw, db of the new kernels (and of the old ones) against float32 autograd of the torch conv;
    exits if any relative error is 1e-2 or more (bf16 out and dx are rounded: about 3e-3 is expected)."""
    xr, wr, br = (v.float().requires_grad_() for v in (x, w, bias))
    ref = causal_conv1d_torch(xr if index is None else xr[:, index], wr, br, "silu")
    ref = ref if index is None else ref[:, torch.argsort(index)]
    want = [ref, *torch.autograd.grad(ref, (xr, wr, br), dout.float())]
    errs = {}
    for name, fwd, bwd in (("new", ct._conv_fwd, ct._conv_bwd), ("old", old_conv_fwd, old_conv_bwd)):
        got = [fwd(x, w, bias, index, True), *bwd(x, w, bias, index, dout, True)]
        errs[name] = [rel(g, r) for g, r in zip(got, want)]
        if not all(err < 1e-2 for err in errs[name]):
            raise SystemExit(f"{name} backward differs from the reference at {tuple(x.shape)} "
                             f"(index={index is not None}): out, dx, dw, db relative errors {errs[name]}")
    return errs


def measure(b, t, e) -> dict:
    x, w, bias, dout = make(b, t, e)
    index = torch.randperm(t, device="cuda").int()
    errs = {"row": cross_check(x, w, bias, dout, None), "index": cross_check(x, w, bias, dout, index)}
    row = dict(b=b, t=t, e=e, rel_err=errs)
    row["fwd_ms"] = bench(lambda: ct._conv_fwd(x, w, bias, None, True))
    row["old_fwd_ms"] = bench(lambda: old_conv_fwd(x, w, bias, None, True))
    row["bwd_ms"] = bench(lambda: ct._conv_bwd(x, w, bias, None, dout, True))
    row["bwd_index_ms"] = bench(lambda: ct._conv_bwd(x, w, bias, index, dout, True))
    row["old_bwd_ms"] = bench(lambda: old_conv_bwd(x, w, bias, None, dout, True))
    xl, wl, bl = (v.detach().requires_grad_() for v in (x, w, bias))

    def op_fwd_bwd():
        out = ops.causal_conv1d(xl, wl, bl, "silu", backend="triton")
        return torch.autograd.grad(out, (xl, wl, bl), dout)

    row["op_fwd_bwd_ms"] = bench(op_fwd_bwd)
    xc = x.transpose(1, 2).contiguous().requires_grad_()  # cuDNN's (b, e, t) layout, made outside the timing
    wc, bc = w.bfloat16()[:, None].requires_grad_(), bias.bfloat16().requires_grad_()
    doutc = dout.transpose(1, 2).contiguous()

    def cudnn_fwd_bwd():
        out = F.silu(F.conv1d(xc, wc, bc, padding=3, groups=e)[..., :t])
        return torch.autograd.grad(out, (xc, wc, bc), doutc)

    row["cudnn_fwd_bwd_ms"] = bench(cudnn_fwd_bwd)
    n = b * t * e * 2  # bytes of one (b, t, e) bf16 tensor
    for key, tensors in (("fwd", 2), ("old_fwd", 2), ("bwd", 3), ("old_bwd", 3)):
        row[f"{key}_GBps"] = tensors * n / row[f"{key}_ms"] / 1e6
    return row


def sweep(b, t, e) -> list[dict]:
    x, w, bias, dout = make(b, t, e)
    n = b * t * e * 2
    out = []
    for cfg in SWEEP:
        fwd = bench(lambda cfg=cfg: ct._conv_fwd(x, w, bias, None, True, cfg))
        bwd = bench(lambda cfg=cfg: ct._conv_bwd(x, w, bias, None, dout, True, cfg))
        out.append(dict(b=b, t=t, e=e, launch=list(cfg), fwd_ms=fwd, bwd_ms=bwd, fwd_GBps=2 * n / fwd / 1e6,
                        bwd_GBps=3 * n / bwd / 1e6))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--sweep", action="store_true", help="also time both kernels at the launch configs in SWEEP")
    args = ap.parse_args()
    cfg = ops.current_conv_config()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"launch {cfg}; old kernels {OLD}")
    head = (f"{'b':>4} {'t':>5} {'e':>5} | {'fwd ms':>7} {'GB/s':>5} {'old fwd':>7} {'GB/s':>5} | {'bwd ms':>7} "
            f"{'GB/s':>5} {'idx ms':>7} {'old bwd':>7} {'GB/s':>5} | {'op f+b':>7} {'cuDNN f+b':>9}")
    print(head + "\n" + "-" * len(head))
    rows = []
    for shape in SHAPES:
        r = measure(*shape)
        rows.append(r)
        print(f"{r['b']:>4} {r['t']:>5} {r['e']:>5} | {r['fwd_ms']:>7.3f} {r['fwd_GBps']:>5.0f} "
              f"{r['old_fwd_ms']:>7.3f} {r['old_fwd_GBps']:>5.0f} | {r['bwd_ms']:>7.3f} {r['bwd_GBps']:>5.0f} "
              f"{r['bwd_index_ms']:>7.3f} {r['old_bwd_ms']:>7.3f} {r['old_bwd_GBps']:>5.0f} | "
              f"{r['op_fwd_bwd_ms']:>7.3f} {r['cudnn_fwd_bwd_ms']:>9.3f}")
        torch.cuda.empty_cache()
    print("bwd = kernel + dw/db sums as the op runs it; idx = the same through a random index order; old = the "
          "kernels before 2026-12-01; op f+b = ops.causal_conv1d forward+backward through autograd; "
          "cuDNN f+b = F.conv1d + SiLU in (b, e, t)")
    swept = []
    if args.sweep:
        print("\nlaunch sweep, (BT, BE, warps): fwd ms / bwd ms")
        for shape in SHAPES:
            res = sweep(*shape)
            swept += res
            print(f"{shape}: " + ", ".join(f"{tuple(r['launch'])} {r['fwd_ms']:.3f}/{r['bwd_ms']:.3f}" for r in res))
            for key in ("fwd", "bwd"):
                best = min(res, key=lambda r, key=key: r[f"{key}_ms"])
                print(f"    best {key} {tuple(best['launch'])} {best[f'{key}_ms']:.3f} ms "
                      f"({best[f'{key}_GBps']:.0f} GB/s)")
    if args.json:
        args.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                             triton=triton.__version__, config={k: list(v) for k, v in cfg.items()},
                                             old=list(OLD), rows=rows, sweep=swept), indent=1))


if __name__ == "__main__":
    main()
