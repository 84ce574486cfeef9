"""Error of a selective-scan implementation against float64, compared with a baseline's error.

The numerics criterion: for each output and gradient, its relative error against a float64 run of the
same math on the same (rounded) inputs must be at most 1.5x that of mamba-ssm's CUDA kernel. The
CUDA kernel does all arithmetic in fp32 and rounds only what it writes; :func:`proxy_scan` does the
same on any device (fp32 math on the rounded inputs, one rounding at the end) and stands in for it
where mamba-ssm is not importable. Used by tests/test_triton_kernels.py (CPU, interpreter) and
tests/gpu/test_scan_numerics_gpu.py.
"""

from __future__ import annotations

import torch

from armvision.ops.scan import selective_scan_ref

ACT = ("u", "delta", "B", "C", "z")
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# errors below this are fp32 summation noise, counted as equal (fp32 unit roundoff 6e-8, times a margin)
FLOOR = 1e-6


def make_inputs(b: int, t: int, e: int, dtype: torch.dtype, n: int = 16, device="cpu", seed: int = 0) -> dict:
    """Inputs as the model produces them: u, delta, B, C, z (b, t, e / n) in ``dtype``; A, D, delta_bias fp32."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    inp = dict(u=r(b, t, e), delta=r(b, t, e) * 0.5 - 1.0, A=-torch.exp(r(e, n) * 0.5), B=r(b, t, n),
               C=r(b, t, n), D=r(e), z=r(b, t, e), delta_bias=r(e) * 0.3)
    return {k: v.to(dtype if k in ACT else torch.float32) for k, v in inp.items()}


def run(fn, inp: dict, dout: torch.Tensor) -> dict:
    """Output and gradients of every argument of ``fn(*args)`` (same dtypes as the inputs)."""
    x = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    out = fn(*(x[k] for k in ARGS))
    grads = torch.autograd.grad(out, [x[k] for k in ARGS], dout.to(out.dtype))
    return {"out": out.detach(), **{f"d{k}": g for k, g in zip(ARGS, grads)}}


def proxy_scan(*args):
    """fp32 arithmetic on the (rounded) inputs (the step loop of selective_scan_ref, as the CUDA kernel
    runs the recurrence), output and gradients rounded once to the inputs' dtypes."""
    return _RoundOnce.apply(*args)


class _RoundOnce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *args):
        ctx.save_for_backward(*args)
        return selective_scan_ref(*(a.float() for a in args)).to(args[0].dtype)

    @staticmethod
    def backward(ctx, dout):
        args = [a.detach().float().requires_grad_() for a in ctx.saved_tensors]
        with torch.enable_grad():
            out = selective_scan_ref(*args)
            grads = torch.autograd.grad(out, args, dout.float())
        return tuple(g.to(a.dtype) for g, a in zip(grads, ctx.saved_tensors))


def reference64(inp: dict, dout: torch.Tensor) -> dict:
    """The float64 reference: the step loop of selective_scan_ref on the same (rounded) inputs."""
    return run(selective_scan_ref, {k: v.double() for k, v in inp.items()}, dout.double())


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 (the largest absolute difference where ref is exactly zero)."""
    a, ref = a.double().cpu(), ref.double().cpu()
    if ref.norm() == 0:
        return (a - ref).abs().max().item()
    return ((a - ref).norm() / ref.norm()).item()


def error_ratios(fn, baseline, inp: dict, seed: int = 0) -> dict:
    """{name: (error of fn, error of baseline, ratio)} for the output and every gradient, errors
    against float64; ratio = err_fn / max(err_baseline, FLOOR)."""
    g = torch.Generator(device=inp["u"].device).manual_seed(seed + 1)
    dout = torch.randn(inp["u"].shape, device=inp["u"].device, generator=g).to(inp["u"].dtype)
    ref = reference64(inp, dout)
    got, base = run(fn, inp, dout), run(baseline, inp, dout)
    res = {}
    for k in ref:
        ef, eb = rel_err(got[k], ref[k]), rel_err(base[k], ref[k])
        res[k] = (ef, eb, ef / max(eb, FLOOR))
    return res
