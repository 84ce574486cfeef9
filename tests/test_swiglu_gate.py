"""The SwiGLU gate's backward with its biases' gradients in one kernel (armvision.ops.swiglu, the kernel in
armvision.ops.swiglu_triton; the layer switch ARMVISION_SWIGLU_GATE=kernel): the kernel (Triton's interpreter on the
CPU) and its torch fallback against the float64 formula, the layer's values and gradients against the default layer,
the custom op's registration, and the layer under torch.compile."""

import pytest
import torch

from armvision.layers.block import SwiGLU
from armvision.ops import swiglu as sg
from conftest import compile_keeping_backward_graphs, rel_err


@pytest.fixture(params=["triton", "torch"])
def path(request, monkeypatch):
    """The Triton kernel (interpreted on the CPU) and the torch fallback; outputs allocated full of NaN, so that an
    element the kernel does not write fails."""
    if request.param == "torch":
        monkeypatch.setattr(sg, "_triton_runs", lambda device: False)
    elif not sg._triton_runs(torch.device("cpu")):
        pytest.skip("the Triton backend cannot run here")
    monkeypatch.setattr(sg, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                                device=device))
    return request.param


def expected(dh, a, g):
    """float64: (da, dg) and their column sums over every token."""
    a64, g64, dh64 = a.double(), g.double(), dh.double()
    sa = torch.sigmoid(a64)
    da, dg = dh64 * g64 * sa * (1 + a64 * (1 - sa)), dh64 * a64 * sa
    return da, dg, da.reshape(-1, a.shape[-1]).sum(0), dg.reshape(-1, a.shape[-1]).sum(0)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (2, 150, 130), (300, 9)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("strided", [False, True])
def test_gate_backward_and_bias_sums(seed, path, shape, dtype, strided):
    """da, dg and the per-row-block partial sums of both, against float64: token counts that do not fill the last
    block of 256 rows and channel counts that do not fill the last block of 128 (both more than one block), a and g as
    the two halves of one wider product's output (strided rows, as under ARMVISION_SWIGLU=fused), fp32 and bf16."""
    n = shape[-1]
    if strided:
        ag = torch.randn(*shape[:-1], 2 * n).to(dtype)
        a, g = ag.chunk(2, dim=-1)
    else:
        a, g = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    dh = torch.randn(shape).to(dtype)
    da, dg, pa, pg = sg.swiglu_gate_bwd(dh, a, g)
    rows = a.numel() // n
    assert da.shape == a.shape and dg.shape == g.shape and da.dtype == dg.dtype == dtype
    assert pa.shape == pg.shape == (-(-rows // sg.GATE_BLOCK[0]), n) and pa.dtype == torch.float32
    for t in (da, dg, pa, pg):
        assert torch.isfinite(t).all()
    want = expected(dh, a, g)
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: da and dg are rounded once; the sums are of fp32 values
    for got, w, name in ((da, want[0], "da"), (dg, want[1], "dg"), (pa.sum(0), want[2], "db1"),
                         (pg.sum(0), want[3], "db2")):
        assert rel_err(got, w) < (tol if name in ("da", "dg") else 1e-5), name


def test_kernel_and_fallback_agree(seed, monkeypatch):
    """The Triton kernel and the torch fallback compute the same fp32 arithmetic: equal to rounding."""
    if not sg._triton_runs(torch.device("cpu")):
        pytest.skip("the Triton backend cannot run here")
    a, g, dh = (torch.randn(300, 140) for _ in range(3))
    kernel = sg.swiglu_gate_bwd(dh, a, g)
    monkeypatch.setattr(sg, "_triton_runs", lambda device: False)
    for x, y in zip(kernel, sg.swiglu_gate_bwd(dh, a, g)):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_layer_with_the_gate_kernel_keeps_values_and_gradients(seed, path, fused):
    """SwiGLU.gate_kernel: the same forward, bit for bit (the products keep their biases), and the same gradients of
    the input and every parameter (the biases' from the kernel's sums), with one or two input products."""
    m = SwiGLU(12, hidden=20)
    m.fused = fused
    x = torch.randn(3, 7, 12, requires_grad=True)
    got = {}
    for gate in (False, True):
        m.gate_kernel = gate
        m.zero_grad()
        y = m(x)
        gx, = torch.autograd.grad(y.square().sum(), x, retain_graph=True)
        y.square().sum().backward()
        got[gate] = [y.detach(), gx] + [p.grad.clone() for p in m.parameters()]
    assert torch.equal(got[True][0], got[False][0])
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, got[True][1:], got[False][1:]):
        assert rel_err(a, b) < 1e-5, name


def test_layer_under_bf16_autocast(seed, path):
    """Under bf16 autocast (as training runs): the gate's bf16 inputs, fp32 bias gradients close to the default
    layer's (which sums the bf16-rounded gradients; the kernel sums them before rounding)."""
    m = SwiGLU(16, hidden=24)
    x = torch.randn(2, 9, 16)
    grads = {}
    for gate in (False, True):
        m.gate_kernel = gate
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.float().square().sum().backward()
        grads[gate] = {n: p.grad.clone() for n, p in m.named_parameters()}
    for name, g in grads[True].items():
        assert g.dtype == torch.float32 and rel_err(g, grads[False][name]) < 3e-2, name


def test_custom_op_passes_opcheck(seed, path):
    a, g, dh = (torch.randn(300, 20) for _ in range(3))
    torch.library.opcheck(torch.ops.armvision.swiglu_gate_bwd.default, (dh, a, g))


def test_compiled_layer_uses_the_op_and_matches_eager(seed, monkeypatch):
    """torch.compile of the layer with the gate kernel: no graph break, the backward graph calls the op and sums no
    (tokens, hidden) gradient over its tokens (the biases' gradients are sums of the op's partials), and the values and
    gradients are eager's, through AOT autograd's graphs and through inductor."""
    monkeypatch.setattr(sg, "_triton_runs", lambda device: False)  # keep the compiled run quick
    m = SwiGLU(12, hidden=20)
    m.gate_kernel = True
    x = torch.randn(2, 150, 12, requires_grad=True)
    y = m(x)
    eager = [y.detach(), *torch.autograd.grad(y.square().sum(), [x, *m.parameters()])]
    compiled, graphs = compile_keeping_backward_graphs(m)
    y = compiled(x)
    got = [y.detach(), *torch.autograd.grad(y.square().sum(), [x, *m.parameters()])]
    for a, b in zip(got, eager):
        assert rel_err(a, b) < 1e-6
    targets = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert torch.ops.armvision.swiglu_gate_bwd.default in targets
    sums = [n for g in graphs for n in g.graph.nodes if n.target == torch.ops.aten.sum.dim_IntList]
    assert all(tuple(n.args[0].meta["val"].shape) != (300, 20) for n in sums)
    torch._dynamo.reset()
    # inductor on the CPU compiles and runs it too
    y = torch.compile(m, fullgraph=True)(x)
    got = [y.detach(), *torch.autograd.grad(y.square().sum(), [x, *m.parameters()])]
    for a, b in zip(got, eager):
        assert rel_err(a, b) < 1e-5
    torch._dynamo.reset()


def test_benchmark_ways_agree_and_it_refuses_without_a_gpu(seed):
    """benchmarks/swiglu_gate.py: its two ways (inductor's formula and the kernel's with summed partial rows) give the
    same gradients, here on the CPU, also under another block of its sweep; without a GPU it stops with one line."""
    import subprocess
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    import swiglu_gate

    a, g, dh = (torch.randn(300, 140) for _ in range(3))
    want = swiglu_gate.inductor_way(dh, a, g)
    for block in (None, swiglu_gate.SWEEP[-1]):
        for got, w in zip(swiglu_gate.kernel_way(dh, a, g, block), want):
            assert rel_err(got, w) < 1e-5
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(bench_dir / "swiglu_gate.py")], capture_output=True, text=True)
        assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_the_layer_runs_where_triton_is_not_installed(tmp_path):
    """Triton is optional: with it unimportable, armvision imports, and an ARM model with the gate kernel switched on
    trains a step on the CPU through the torch fallback."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, armvision\n"
        "m = armvision.create_model('arm_tiny_pz16', pretraining=True, img_size=32, patch_size=4, depth=4,\n"
        "                           memory_layers=(1, 2, 3, 4))\n"
        "assert m.layers[0].mlp.gate_kernel\n"
        "loss = m(torch.randn(2, 3, 32, 32)); loss.backward()\n"
        "assert m.layers[0].mlp.w1.bias.grad is not None and 'triton' not in {k for k, v in sys.modules.items() if v}\n"
        "print('ok')\n")
    env = {**os.environ, "ARMVISION_SWIGLU_GATE": "kernel"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
