"""benchmarks/reference.py on the CPU: the official ARM code imports on mamba-ssm 2.3.2.post1's and causal-conv1d's
Python code with the harness's stand-ins, and its training step runs, with the two CUDA extension modules replaced
by the plain-PyTorch references (armvision's float64-tested ``selective_scan_ref`` / ``causal_conv1d_ref``).

Needs what the project does not ship or commit: a checkout of the official code (``ARMVISION_ARM_SRC``), the two
sdists (``ARMVISION_MAMBA_SSM_SRC``, ``ARMVISION_CAUSAL_CONV1D_SRC``: unpacked or .tar.gz) and einops; skipped
otherwise. Run in a subprocess, since the harness installs modules into ``sys.modules``.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("ARMVISION_ARM_SRC", "ARMVISION_MAMBA_SSM_SRC", "ARMVISION_CAUSAL_CONV1D_SRC")
pytestmark = pytest.mark.skipif(not all(os.environ.get(v) for v in NEEDED) or
                                importlib.util.find_spec("einops") is None,
                                reason="needs the official ARM checkout, the two sdists (" + ", ".join(NEEDED) +
                                       ") and einops")

SCRIPT = r'''
import sys, types, json
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
import _cuda_ext, reference
from armvision.ops import causal_conv1d_ref, selective_scan_ref

def _ref_scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    """(b, e, l) activations and (b, n, l) or (b, 1, n, l) B, C as the CUDA kernel takes them -> (b, e, l)."""
    t = lambda v: None if v is None else v.transpose(-1, -2)
    bc = lambda v: t(v[:, 0] if v.dim() == 4 else v)
    y = selective_scan_ref(t(u), t(delta), A, bc(B), bc(C), D, None, delta_bias, softplus)
    out = t(y).to(u.dtype)
    return out, (out * torch.nn.functional.silu(z.float())).to(u.dtype) if z is not None else None

scan = types.ModuleType("selective_scan_cuda")
def fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
    calls.append("scan_fwd")
    out, out_z = _ref_scan(u, delta, A, B, C, D, z, delta_bias, softplus)
    x = torch.zeros(u.shape[0], u.shape[1], 1, 2 * A.shape[1], dtype=torch.float32)
    return [out, x] + ([out_z] if z is not None else [])
def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute_out_z):
    calls.append("scan_bwd")
    ins = [v if v is None else v.detach().requires_grad_() for v in (u, delta, A, B, C, D, z, delta_bias)]
    with torch.enable_grad():
        y, y_z = _ref_scan(*ins, softplus)
        live = [v for v in ins if v is not None]
        g = dict(zip([i for i, v in enumerate(ins) if v is not None], torch.autograd.grad(y_z, live, dout)))
    gr = [g.get(i) for i in range(8)]
    res = [gr[0], gr[1], gr[2], gr[3], gr[4], gr[5], gr[7]] + ([gr[6]] if z is not None else [])
    return res + ([y_z.detach()] if recompute_out_z else [])
scan.fwd, scan.bwd = fwd, bwd

conv = types.ModuleType("causal_conv1d_cuda")
def _ref_conv(x, weight, bias, silu):
    return causal_conv1d_ref(x.transpose(1, 2), weight, bias, "silu" if silu else None).transpose(1, 2)
def conv_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu):
    calls.append("conv_fwd")
    out.copy_(_ref_conv(x, weight, bias, silu))
def conv_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinitial, silu):
    # called inside a custom op, below autograd: the gradients by hand (torch.nn.grad), not by autograd
    calls.append("conv_bwd")
    e, k = weight.shape
    xp = torch.nn.functional.pad(x, (k - 1, 0))
    p = torch.nn.functional.conv1d(xp, weight[:, None], bias, groups=e)
    dp = dout * (torch.sigmoid(p) * (1 + p * (1 - torch.sigmoid(p)))) if silu else dout
    dx.copy_(torch.nn.grad.conv1d_input(xp.shape, weight[:, None], dp, groups=e)[..., k - 1:])
    dweight.copy_(torch.nn.grad.conv1d_weight(xp, (e, 1, k), dp, groups=e)[:, 0])
    if dbias is not None:
        dbias.copy_(dp.sum((0, 2)))
conv.causal_conv1d_fwd, conv.causal_conv1d_bwd = conv_fwd, conv_bwd

calls = []
build = Path(sys.argv[3])
versions = _cuda_ext.install_reference_packages(_cuda_ext.unpacked(Path(sys.argv[4]), build),
                                                _cuda_ext.unpacked(Path(sys.argv[5]), build), build,
                                                scan_ext=scan, conv_ext=conv)
reference.install_stand_ins()
r = reference.run(sys.argv[2], Path(sys.argv[6]), steps=1, warmup=0, device="cpu", batch=1)
print(json.dumps(dict(r, versions=versions, calls=sorted(set(calls)))))
'''


@pytest.mark.parametrize("workload", ["pretrain_b", "finetune_b"])
def test_official_code_runs_a_training_step_on_the_stand_ins(tmp_path, workload):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "benchmarks"), workload, str(tmp_path),
                          os.environ["ARMVISION_MAMBA_SSM_SRC"], os.environ["ARMVISION_CAUSAL_CONV1D_SRC"],
                          os.environ["ARMVISION_ARM_SRC"]], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["versions"] == {"mamba_ssm": "2.3.2.post1", "causal_conv1d": "1.7.0"}
    assert r["calls"] == ["conv_bwd", "conv_fwd", "scan_bwd", "scan_fwd"]  # the kernels, forward and backward
    assert r["ms"] > 0 and r["loss"] == r["loss"] and r["batch"] == 1
