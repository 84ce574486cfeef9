"""The numerics criterion on a GPU (skipped without CUDA):

for fp32, bf16 and fp16 inputs, lengths 1 to 4096 and widths 4 to 1536 (d_state 8 and 16), the
relative error of the Triton scan's output and of every gradient against a float64 run of the same
math on the same rounded inputs is at most 1.5x the error of mamba-ssm's CUDA kernel on the same
inputs. Where mamba-ssm is not importable the baseline is what that kernel does: fp32 arithmetic on
the rounded inputs, rounded once at the end (``scan_numerics.proxy_scan``). Errors below 1e-6 (fp32
summation noise) count as equal. Prints one line per case (run with ``-s`` to see them):

    python -m pytest tests/gpu/test_scan_numerics_gpu.py -q -s

To compare with mamba-ssm's own kernel without installing it, point ARMVISION_MAMBA_SSM_SRC at an unpacked
mamba-ssm sdist: its ``selective_scan_cuda`` extension is then built for this GPU as
``benchmarks/scan.py --mamba-ssm-src`` builds it (a few minutes; ARMVISION_MAMBA_SSM_BUILD names the build
directory to reuse, default /tmp/armvision_mamba_ssm_build).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scan_numerics import error_ratios, make_inputs, proxy_scan  # noqa: E402

from armvision import ops  # noqa: E402
from armvision.ops import scan_triton  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (batch, tokens, channels, d_state): t = 1 .. 4096, e = 4 .. 1536
SHAPES = [(2, 1, 4, 16), (3, 7, 4, 8), (2, 128, 768, 16), (4, 197, 1536, 16), (2, 1024, 64, 8),
          (1, 4096, 4, 16), (1, 4096, 768, 16), (2, 4096, 1536, 16)]


def _built_selective_scan_fn():
    """mamba-ssm's selective_scan_fn built from ARMVISION_MAMBA_SSM_SRC (None when the variable is not set)."""
    src = os.environ.get("ARMVISION_MAMBA_SSM_SRC")
    if not src or not torch.cuda.is_available():
        return None
    spec = importlib.util.spec_from_file_location("_bench_scan", ROOT / "benchmarks" / "scan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    build = Path(os.environ.get("ARMVISION_MAMBA_SSM_BUILD", "/tmp/armvision_mamba_ssm_build"))
    return bench.build_mamba_ssm(Path(src), build)


def mamba_ssm_baseline():
    """mamba-ssm's selective_scan_fn in armvision's (b, t, e) layout, or None where it is not importable
    (nor built from ARMVISION_MAMBA_SSM_SRC)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - not installed, or built for another torch
        selective_scan_fn = _built_selective_scan_fn()  # a build error fails the run: the variable asked for it
        if selective_scan_fn is None:
            return None

    def fn(u, delta, A, B, C, D, z, delta_bias):
        tr = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
        out = selective_scan_fn(tr(u), tr(delta), A, tr(B), tr(C), D, tr(z), delta_bias, delta_softplus=True)
        return out.transpose(1, 2)

    return fn


BASELINE = mamba_ssm_baseline()


@pytest.mark.parametrize("recurrence", ["scan", "step"])
@pytest.mark.parametrize("states", ["recompute", "save"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_scan_error_vs_float64_within_1p5x_of_cuda_kernel(shape, dtype, states, recurrence):
    if states == "save" and recurrence == "step":
        pytest.skip("recurrence 'step' is checked with states recomputed (the saving forward steps the same way)")
    if states == "save" and shape[1] < 4096:
        pytest.skip("states='save' is checked at the longest sequences only (same kernels, same numerics)")
    b, t, e, n = shape
    inp = make_inputs(b, t, e, dtype, n=n, device="cuda", seed=t + e)
    baseline = BASELINE or proxy_scan
    # forward and backward both run inside the scope; recurrence "step": the chunks' recurrences step by step
    with ops.scan_config(states=states, recurrence=recurrence):
        res = error_ratios(scan_triton.selective_scan_triton, baseline, inp, seed=t + e)
    name = "mamba-ssm" if BASELINE else "fp32-proxy"
    print(f"\n{shape} {dtype} {recurrence} vs {name}: " + " ".join(f"{k} {r:.2f}" for k, (_, _, r) in res.items()))
    bad = {k: f"{err:.2e} vs {eb:.2e} ({r:.2f}x)" for k, (err, eb, r) in res.items() if r > 1.5}
    assert not bad, bad
