"""benchmarks/scan.py's closures without a GPU (Triton's interpreter, tiny shapes): the op compiled as the training
commands run it gives the eager op's output and gradients, and takes the scan_config scope that is active while it
is traced (states saved or recomputed)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armvision import ops
from armvision.ops import selective_scan_ref

if not ops.backend_available("triton", "cpu"):
    pytest.skip("the Triton backend cannot run here (no triton package)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scan  # noqa: E402

from armvision.ops import scan_triton  # noqa: E402

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b=1, t=6, e=8, n=4):
    g = torch.Generator().manual_seed(0)
    inp = dict(u=torch.randn(b, t, e, generator=g), delta=torch.randn(b, t, e, generator=g) * 0.5 - 1.0,
               A=-torch.exp(torch.randn(e, n, generator=g) * 0.5), B=torch.randn(b, t, n, generator=g),
               C=torch.randn(b, t, n, generator=g), D=torch.randn(e, generator=g), z=torch.randn(b, t, e, generator=g),
               delta_bias=torch.randn(e, generator=g) * 0.3)
    return inp, torch.randn(b, t, e, generator=g)


@pytest.mark.parametrize("states", ["recompute", "save"])
def test_compiled_op_matches_the_eager_op_and_the_reference(states, monkeypatch):
    inp, dout = _inputs()
    fwd_calls, bwd_calls = [], []
    fwd, bwd = scan_triton.scan_fwd, scan_triton.scan_bwd

    def recording_fwd(*args, **kw):  # the forward, and with states recomputed the backward's second forward
        fwd_calls.append(kw.get("write_out", True))
        return fwd(*args, **kw)

    def recording_bwd(*args, **kw):
        bwd_calls.append(args[9].shape)
        return bwd(*args, **kw)

    monkeypatch.setattr(scan_triton, "scan_fwd", recording_fwd)
    monkeypatch.setattr(scan_triton, "scan_bwd", recording_bwd)
    with ops.scan_config(BT=2, fwd=(4, 1, 1), bwd=(4, 1, 1)):  # several channel blocks at e = 8
        _, eager = scan.op_fns(inp, dout, states)
        _, compiled = scan.op_fns(inp, dout, states, compiled="aot_eager")
        g_eager, g_compiled = eager(), compiled()
    assert len(bwd_calls) == 2  # eager, then compiled
    # the scope active while tracing reaches the compiled op: with states recomputed each backward runs the forward
    # kernel again without its output
    assert fwd_calls == ([True, False] * 2 if states == "recompute" else [True, True])
    leaves = {k: v.double().requires_grad_() for k, v in inp.items()}
    out = selective_scan_ref(*(leaves[k] for k in ARGS), delta_softplus=True)
    g_ref = torch.autograd.grad(out, [leaves[k] for k in ARGS], dout.double())
    for name, a, b, r in zip(ARGS, g_eager, g_compiled, g_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(b.double(), r, rtol=1e-4, atol=1e-5), name


def test_refuses_without_a_gpu_in_one_line():
    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, scan.__file__, "--compiled-op", "--graphed-op"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
