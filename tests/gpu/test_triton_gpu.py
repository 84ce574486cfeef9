"""GPU sweep of the Triton kernels against the reference (skipped without CUDA).

Run on a GPU machine with:  python -m pytest tests/gpu -q -rA
Reference: the plain-PyTorch scan (selective_scan_torch, itself checked against the float64 step
loop in tests/test_ops.py) in float64 on the same (rounded) inputs; every output and gradient of
the kernels is allocated full of NaN first, so an element the kernels do not write fails.
"""

import pytest
import torch

from armvision import ops
from armvision.layers import TokenLayout, direction_index
from armvision.ops import conv_triton, scan_triton
from armvision.ops.conv import causal_conv1d_torch
from armvision.ops.scan import selective_scan_torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ACT = ("u", "delta", "B", "C", "z")
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (1e-2, 1e-2)}

# (batch, tokens, channels): t = 1, 7, 128, 197, 1024, 4096; e = 192 .. 1536; batch 1 .. 256
SHAPES = [(2, 1, 192), (3, 7, 384), (256, 128, 768), (128, 128, 1536), (128, 197, 768), (4, 1024, 1024),
          (1, 4096, 192), (2, 4096, 1536)]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    poisoned = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(scan_triton, "_empty", poisoned)
    monkeypatch.setattr(conv_triton, "_empty", poisoned)


def rel(a, b):
    """||a - b|| / ||b||; where the reference is exactly zero (dA at t = 1: there is no earlier
    state), the largest absolute difference instead, which fp32 rounding keeps far below 1e-5."""
    a, b = a.double(), b.double()
    if b.norm() == 0:
        return (a - b).abs().max().item()
    return ((a - b).norm() / b.norm()).item()


def make(b, t, e, dtype, n=16):
    g = torch.Generator(device="cuda").manual_seed(torch.seed() % 2**31)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    inp = dict(u=r(b, t, e), delta=r(b, t, e) * 0.5 - 1.0, A=-torch.exp(r(e, n) * 0.5), B=r(b, t, n),
               C=r(b, t, n), D=r(e), z=r(b, t, e), delta_bias=r(e) * 0.3)
    return {k: v.to(dtype if k in ACT else torch.float32).requires_grad_() for k, v in inp.items()}


def run_and_compare(inp, index=None):
    dtype = inp["u"].dtype
    out = ops.selective_scan(*(inp[k] for k in ARGS), index=index, backend="triton")
    r = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
    g = {k: (v[:, index] if k in ACT and index is not None else v) for k, v in r.items()}
    ref = selective_scan_torch(*(g[k] for k in ARGS))
    if index is not None:
        ref = ref[:, torch.argsort(index)]
    dout = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [inp[k] for k in ARGS], dout.to(dtype))
    grads_ref = torch.autograd.grad(ref, [r[k] for k in ARGS], dout)
    tol_out, tol_grad = TOL[dtype]
    assert torch.isfinite(out).all(), "unwritten or non-finite output"
    errs = {"out": rel(out, ref)}
    for k, gk, gr in zip(ARGS, grads, grads_ref):
        assert torch.isfinite(gk).all(), f"unwritten or non-finite grad of {k}"
        errs[k] = rel(gk, gr)
    print(f"{tuple(inp['u'].shape)} {dtype} index={'yes' if index is not None else 'no'}: "
          + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    assert errs["out"] < tol_out, errs
    assert all(v < tol_grad for k, v in errs.items() if k != "out"), errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_scan_matches_reference(shape, dtype):
    run_and_compare(make(*shape, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 7, 384), (256, 128, 768), (128, 197, 768), (2, 4096, 1536)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("decay", ["recompute", "carry"])
def test_scan_backward_two_channels_per_thread(shape, dtype, decay):
    """The launch candidate bwd_cpt=2 (compiled for the GPU, not the interpreter, at its register cap) against the
    reference, with the adjoint's decays recomputed and carried."""
    with ops.scan_config(bwd_cpt=2, bwd_decay=decay):
        run_and_compare(make(*shape, dtype))


@pytest.mark.parametrize("shape", [(256, 128, 768), (64, 197, 768), (2, 1023, 192)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scan_backward_carried_decays(shape, dtype):
    """Carried decays with the one-channel backward (bwd_cpt=1, a launch variant), compiled at its register cap,
    against the reference (197 and 1023 tokens end in a part-chunk)."""
    with ops.scan_config(bwd_cpt=1, bwd_decay="carry"):
        run_and_compare(make(*shape, dtype))


@pytest.mark.parametrize("shape", [(256, 128, 768), (64, 197, 768), (2, 1023, 192)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("states", ["recompute", "save"])
def test_scan_two_chunk_segments(shape, dtype, states):
    """seg=2 with the default two-channel backward (odd chunks' entering states rebuilt in registers), compiled,
    against the reference."""
    with ops.scan_config(seg=2, states=states):
        run_and_compare(make(*shape, dtype))


@pytest.mark.parametrize("shape", [(3, 7, 384), (256, 128, 768), (128, 197, 768), (2, 1023, 192), (2, 4096, 1536)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("states", ["recompute", "save"])
def test_scan_recurrence_step_by_step(shape, dtype, states):
    """recurrence="step" (a candidate: each chunk's recurrences with one multiply-add per step, the forward's states
    through split / join), compiled, against the reference (197 and 1023 tokens end in a part-chunk)."""
    with ops.scan_config(recurrence="step", states=states):
        run_and_compare(make(*shape, dtype))


@pytest.mark.parametrize("shape", [(256, 128, 768), (128, 128, 1024), (2, 1023, 192)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group", [4, 64])
def test_scan_dbc_groups(shape, dtype, group):
    """dbc_group > 1 (a candidate: dB / dC partial sums added atomically per group of channel blocks), compiled,
    against the reference, and dB / dC against the default's (one partial block per channel block: 48, 64, 12 at
    these shapes) to the fp32 rounding of a reordered sum: an atomic add that counted a value twice would not be."""
    inp = make(*shape, dtype)
    with ops.scan_config(dbc_group=group):
        run_and_compare(inp)
    dout = torch.randn(shape, device="cuda").to(dtype)
    grads = []
    for g in (1, group):
        with ops.scan_config(dbc_group=g):
            out = ops.selective_scan(*(inp[k] for k in ARGS), backend="triton")
            grads.append(torch.autograd.grad(out, [inp["B"], inp["C"]], dout))
    for a, b in zip(*grads):
        assert rel(a.float(), b.float()) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("direction", ["backward", "column", "column_backward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scan_directions(direction, dtype):
    layout = TokenLayout((14, 14), 98)
    index, _ = direction_index(layout, direction, "cuda")
    run_and_compare(make(64, 197, 768, dtype), index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(256, 128, 768), (1, 4096, 192), (64, 197, 1024)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("ordered", [False, True])
def test_conv_matches_reference(shape, dtype, ordered):
    b, t, e = shape
    x = torch.randn(b, t, e, device="cuda").to(dtype).requires_grad_()
    w = torch.randn(e, 1, 4, device="cuda", requires_grad=True)
    bias = torch.randn(e, device="cuda", requires_grad=True)
    index = torch.randperm(t, device="cuda") if ordered else None
    out = ops.causal_conv1d(x, w, bias, "silu", index=index, backend="triton")
    xr, wr, br = (v.detach().double().requires_grad_() for v in (x, w, bias))
    ref = causal_conv1d_torch(xr if index is None else xr[:, index], wr, br, "silu")
    ref = ref if index is None else ref[:, torch.argsort(index)]
    dout = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, w, bias), dout.to(dtype))
    grads_ref = torch.autograd.grad(ref, (xr, wr, br), dout)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.isfinite(out).all() and rel(out, ref) < tol
    for g, gr in zip(grads, grads_ref):
        assert torch.isfinite(g).all() and rel(g, gr) < 2 * tol


def test_torch_compile_traces_without_graph_breaks():
    from armvision.layers import Mamba

    m = Mamba(192, directions=4).cuda()
    layout = TokenLayout((14, 14), 98)
    x = torch.randn(4, 197, 192, device="cuda", requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)  # fails on any graph break
    y = compiled(x, layout)
    y.sum().backward()
    assert torch.allclose(y, m(x, layout), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sums, in_proj_split", [("graph", True), ("op", False)])  # the default, and as before
def test_compiled_mixer_gradients_match_eager(sums, in_proj_split):
    """The mixer compiled by inductor (the backward's partial sums fused into the graph with sums="graph", or added
    up inside the custom ops with "op"; in_proj as two products or one) against the eager mixer: output, input and
    parameter gradients, in float32 so that only the order of the sums differs."""
    from armvision.layers import Mamba

    torch.manual_seed(0)
    m = Mamba(192, directions=4).cuda()
    m.in_proj_split = in_proj_split
    layout = TokenLayout((14, 14), 98)
    x = torch.randn(8, 197, 192, device="cuda", requires_grad=True)

    def grads(module):
        m.zero_grad(set_to_none=True)
        with ops.scan_config(sums=sums), ops.conv_config(sums=sums):
            y = module(x, layout)
        gx, = torch.autograd.grad(y.square().mean(), x, retain_graph=True)
        y.square().mean().backward()
        return [y.detach(), gx] + [p.grad.clone() for p in m.parameters()]

    torch._dynamo.reset()
    compiled, eager = grads(torch.compile(m, fullgraph=True)), grads(m)
    for a, b in zip(compiled, eager):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-4


@pytest.mark.parametrize("shape", [(32768, 2048), (2, 197, 2730), (3, 7, 100)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_swiglu_gate_backward(shape, dtype, monkeypatch):
    """The SwiGLU gate's backward kernel with its biases' sums (ARMVISION_SWIGLU_GATE=kernel; ARM-B's 32,768 tokens x
    2,048 channels, ARM-L's 2,730, a tiny one), compiled, against float64; outputs poisoned with NaN."""
    from armvision.ops import swiglu as sg

    monkeypatch.setattr(sg, "_empty", lambda s, dt, device: torch.full(s, float("nan"), dtype=dt, device=device))
    a, g, dh = (torch.randn(shape, device="cuda").to(dtype) for _ in range(3))
    da, dg, pa, pg = sg.swiglu_gate_bwd(dh, a, g)
    a64, g64, dh64 = a.double(), g.double(), dh.double()
    sa = torch.sigmoid(a64)
    want_da, want_dg = dh64 * g64 * sa * (1 + a64 * (1 - sa)), dh64 * a64 * sa
    n = shape[-1]
    tol = TOL[dtype][1]
    for got, want in ((da, want_da), (dg, want_dg), (pa.sum(0), want_da.reshape(-1, n).sum(0)),
                      (pg.sum(0), want_dg.reshape(-1, n).sum(0))):
        assert torch.isfinite(got).all()
        assert rel(got, want) < (tol if got.dim() > 1 else 1e-5)


def test_swiglu_gate_layer_compiled(monkeypatch):
    """SwiGLU with the gate kernel, compiled as training compiles it, under bf16 autocast: the default layer's values
    and gradients (within bf16 rounding)."""
    from armvision.layers.block import SwiGLU

    torch.manual_seed(0)
    m = SwiGLU(768).cuda()
    x = torch.randn(8, 128, 768, device="cuda")
    got = {}
    for gate in (False, True):
        m.gate_kernel = gate
        m.zero_grad()
        torch._dynamo.reset()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = torch.compile(m)(x)
        y.float().square().mean().backward()
        got[gate] = [y.float()] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(got[True], got[False]):
        assert rel(a, b) < 2e-2
