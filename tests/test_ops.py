"""The plain-PyTorch ops against the float64 step-by-step loops that specify them."""

import pytest
import torch
import torch.nn as nn

import armvision.ops.scan as scan_module
from armvision import ops
from armvision.ops import causal_conv1d_ref, causal_conv1d_torch, selective_scan_ref, selective_scan_torch
from conftest import rel_err

SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(b, t, e, n, dtype=torch.float64, with_z=True, with_D=True, with_bias=True):
    """Random inputs in the ranges a trained Mamba sees: dt = softplus(...) mostly in 1e-3..1."""
    inp = dict(
        u=torch.randn(b, t, e),
        delta=torch.randn(b, t, e) * 0.5 - 1.0,
        A=-torch.exp(torch.randn(e, n) * 0.5),
        B=torch.randn(b, t, n),
        C=torch.randn(b, t, n),
        D=torch.randn(e) if with_D else None,
        z=torch.randn(b, t, e) if with_z else None,
        delta_bias=torch.randn(e) * 0.3 if with_bias else None,
    )
    act_dtype = {"u", "delta", "B", "C", "z"}
    return {k: (None if v is None else v.to(dtype if k in act_dtype else torch.float64 if dtype == torch.float64
                                            else torch.float32).requires_grad_())
            for k, v in inp.items()}


def call(fn, inp, softplus=True):
    return fn(*(inp[k] for k in SCAN_ARGS), delta_softplus=softplus)


def grads(out, inp, dout):
    keys = [k for k in SCAN_ARGS if inp[k] is not None]
    g = torch.autograd.grad(out, [inp[k] for k in keys], dout)
    return dict(zip(keys, g))


def detached64(inp):
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in inp.items()}


@pytest.fixture(params=[(1 << 20, True), (40, True), (1 << 20, False), (40, False)],
                ids=["one-chunk", "many-chunks", "one-chunk-recompute", "many-chunks-recompute"])
def chunk_elements(request, monkeypatch):
    """Run the torch scan with its default time chunks and with chunks of 1-2 steps (remainders); with the
    states kept from the forward (small scans) and recomputed in the backward (large ones)."""
    elements, keep = request.param
    monkeypatch.setattr(scan_module, "_CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(scan_module, "_KEEP_ELEMENTS", scan_module._KEEP_ELEMENTS if keep else 0)
    return elements


@pytest.mark.parametrize("variant", ["full", "no_z", "no_D_no_bias"])
def test_scan_gradcheck_float64(seed, chunk_elements, variant):
    inp = scan_inputs(2, 7, 3, 4, with_z=variant != "no_z", with_D=variant != "no_D_no_bias",
                      with_bias=variant != "no_D_no_bias")
    keys = [k for k in SCAN_ARGS if inp[k] is not None]

    def f(*args):
        full = dict(inp, **dict(zip(keys, args)))
        return call(selective_scan_torch, full)

    assert torch.autograd.gradcheck(f, [inp[k] for k in keys])


def test_reference_scan_gradcheck_float64(seed):
    inp = scan_inputs(1, 5, 2, 3)
    keys = [k for k in SCAN_ARGS if inp[k] is not None]
    assert torch.autograd.gradcheck(lambda *a: call(selective_scan_ref, dict(inp, **dict(zip(keys, a)))),
                                    [inp[k] for k in keys])


def test_reference_scan_matches_closed_form(seed):
    """One channel, one state, no gate: h_t = sum_s exp(A * sum_{r=s+1..t} dt_r) dt_s B_s u_s."""
    t = 6
    inp = scan_inputs(1, t, 1, 1, with_z=False, with_D=False, with_bias=False)
    y = call(selective_scan_ref, inp).detach()[0, :, 0]
    dt = torch.nn.functional.softplus(inp["delta"].detach()[0, :, 0])
    a, bb, cc, u = inp["A"].item(), inp["B"].detach()[0, :, 0], inp["C"].detach()[0, :, 0], inp["u"].detach()[0, :, 0]
    for i in range(t):
        h = sum(torch.exp(a * dt[s + 1:i + 1].sum()) * dt[s] * bb[s] * u[s] for s in range(i + 1))
        assert torch.allclose(y[i], cc[i] * h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 3, 4), (2, 19, 5, 16), (3, 33, 8, 16)])
def test_scan_fp32_matches_float64_loop(seed, chunk_elements, shape, softplus):
    inp = scan_inputs(*shape, dtype=torch.float32)
    if not softplus:  # dt must stay positive without the softplus
        with torch.no_grad():
            inp["delta"].abs_()
            inp["delta_bias"].abs_()
    out = call(selective_scan_torch, inp, softplus)
    assert out.dtype == torch.float32
    ref_inp = detached64(inp)
    ref = call(selective_scan_ref, ref_inp, softplus)
    assert rel_err(out, ref) < 1e-5
    dout = torch.randn_like(out)
    g, g_ref = grads(out, inp, dout), grads(ref, ref_inp, dout.double())
    for k in g:
        assert g[k].dtype == inp[k].dtype and g[k].shape == inp[k].shape
        assert rel_err(g[k], g_ref[k]) < 1e-4, k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half_inputs(seed, chunk_elements, dtype):
    """Half-precision activations: fp32 state inside, the output and grads in the input dtype."""
    inp = scan_inputs(2, 23, 6, 16, dtype=dtype)
    out = call(selective_scan_torch, inp)
    assert out.dtype == dtype
    ref_inp = detached64(inp)  # the same (rounded) values, in float64
    ref = call(selective_scan_ref, ref_inp)
    assert rel_err(out, ref) < 1e-2
    dout = torch.randn_like(out)
    g, g_ref = grads(out, inp, dout), grads(ref, ref_inp, dout.double())
    for k in g:
        assert g[k].dtype == inp[k].dtype
        assert rel_err(g[k], g_ref[k]) < 2e-2, k


def test_scan_large_delta_uses_softplus_threshold(seed):
    """softplus(x) = x above 20: both implementations must agree there too."""
    inp = scan_inputs(1, 9, 4, 4, dtype=torch.float32)
    with torch.no_grad():
        inp["delta"][:, ::2] += 30.0
        inp["A"].mul_(1e-2)
    out = call(selective_scan_torch, inp)
    ref = call(selective_scan_ref, detached64(inp))
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5


def test_scan_kept_and_recomputed_states_agree_and_backward_twice(seed, monkeypatch):
    """The kept-states backward equals the recomputing one; a second backward (retain_graph) recomputes."""
    inp = scan_inputs(3, 11, 5, 4, dtype=torch.float32)
    grads = []
    for keep in (scan_module._KEEP_ELEMENTS, 0):
        monkeypatch.setattr(scan_module, "_KEEP_ELEMENTS", keep)
        x = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inp.items()}
        out = call(selective_scan_torch, x)
        g1 = torch.autograd.grad(out.square().sum(), [x[k] for k in SCAN_ARGS if x[k] is not None],
                                 retain_graph=True)
        g2 = torch.autograd.grad(out.square().sum(), [x[k] for k in SCAN_ARGS if x[k] is not None])
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
        grads.append(g1)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


# -- causal conv1d ------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_gradcheck_float64(seed, activation, with_bias):
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    args = (x, w) + ((b,) if with_bias else ())
    for fn in (causal_conv1d_torch, causal_conv1d_ref):
        assert torch.autograd.gradcheck(lambda *a: fn(a[0], a[1], a[2] if with_bias else None, activation), args)


@pytest.mark.parametrize("t", [1, 2, 3, 4, 17])
def test_conv_matches_loop_and_nn_conv1d(seed, t):
    e = 5
    x = torch.randn(3, t, e, dtype=torch.float64)
    conv = nn.Conv1d(e, e, 4, groups=e, padding=3, bias=True).double()
    with torch.no_grad():
        conv.bias.normal_()
    expected = conv(x.transpose(1, 2))[..., :t].transpose(1, 2)  # the reference's nn.Conv1d, cut causally
    ref = causal_conv1d_ref(x, conv.weight, conv.bias)
    out = causal_conv1d_torch(x, conv.weight, conv.bias)
    assert torch.allclose(ref, expected, atol=1e-12)
    assert torch.allclose(out, expected, atol=1e-12)
    silu = causal_conv1d_torch(x, conv.weight[:, 0], conv.bias, activation="silu")
    assert torch.allclose(silu, torch.nn.functional.silu(expected), atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_conv_low_precision(seed, dtype, tol):
    x = torch.randn(2, 11, 8).to(dtype).requires_grad_()
    w = torch.randn(8, 4, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    out = causal_conv1d_torch(x, w, b, "silu")
    assert out.dtype == dtype
    x64, w64, b64 = (v.detach().double().requires_grad_() for v in (x, w, b))
    ref = causal_conv1d_ref(x64, w64, b64, "silu")
    assert rel_err(out, ref) < tol
    dout = torch.randn_like(ref)
    gs = torch.autograd.grad(out, (x, w, b), dout.to(dtype))
    gs_ref = torch.autograd.grad(ref, (x64, w64, b64), dout)
    assert gs[0].dtype == dtype
    for g, gr in zip(gs, gs_ref):
        assert rel_err(g, gr) < 2 * tol


def test_conv_rejects_bad_arguments():
    x = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d_torch(x, torch.randn(4, 4), activation="relu")
    with pytest.raises(ValueError, match=r"expected x \(b, t, e\)"):
        causal_conv1d_torch(x, torch.randn(3, 4))


# -- backend switch -----------------------------------------------------------------------------
def test_backend_switch(seed):
    assert "torch" in ops.available_backends() and "auto" in ops.available_backends()
    assert ops.resolve_backend("auto", "cpu").name == "torch"
    inp = scan_inputs(1, 4, 2, 2, dtype=torch.float32)
    a = call(lambda *x, **k: ops.selective_scan(*x, **k, backend="torch"), inp)
    with ops.use_backend("torch"):
        assert ops.get_backend() == "torch"
        b = call(ops.selective_scan, inp)
    assert ops.get_backend() == "auto"
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown ops backend 'cuda_magic'; choose one of"):
        ops.set_backend("cuda_magic")
    with pytest.raises(ValueError, match="unknown ops backend"):
        ops.causal_conv1d(torch.randn(1, 3, 2), torch.randn(2, 4), backend="nope")
