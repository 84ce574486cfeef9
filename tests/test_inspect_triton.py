"""tools/inspect_triton.py: the scan kernels compiled for sm_90 without a GPU (Triton's bundled ptxas).

The launch defaults promise that the backward's register cap (``scan_triton.default_bwd_maxnreg``) is one ptxas
fits without spilling; a spill in the default kernels would cost time on every GPU, so it fails here first.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from armvision.ops.launch import SCAN_DEFAULTS  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "inspect_triton.py"
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
# the tool compiles real sm_90 code: not under the interpreter that conftest turns on
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=ENV, timeout=600)


def test_help_and_a_malformed_launch_are_one_message_each():
    res = _tool("--help")
    assert res.returncode == 0 and "Usage:" in res.stdout
    for bad in ("2,x", "2,16", "conv:1,2,3"):
        res = _tool(bad)
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert res.stderr.strip() == f"inspect_triton: error: {bad!r} is not a launch" + (
            ": BT,BE,WARPS at least (see --help)" if bad == "2,16" else " (see --help)")


@pytest.mark.skipif(not PTXAS.is_file(), reason="this Triton build has no bundled ptxas")
def test_the_default_scan_kernels_compile_for_sm90_without_spills():
    # the default launch, as the tool spells it: BT, the backward's BE and warps, seg, channels per thread, the
    # launch's own register cap, carried decays
    d = SCAN_DEFAULTS
    assert (d["BT"], d["bwd"][:2], d["seg"], d["bwd_cpt"], d["bwd_maxnreg"], d["bwd_decay"]) == \
        (2, (16, 1), 1, 2, None, "carry"), "the defaults changed: update the launch below"
    assert d["dbc_group"] == 4
    # with dB / dC partial sums stored per channel block (dbc_group 1), and added atomically per 4 (the default)
    res = _tool("2,16,1,1,2,0,1", "2,16,1,1,2,0,1,4")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if "registers" in ln]
    kernels = [ln.split(" BT=")[0] for ln in lines]
    assert kernels == ["fwd", "fwd nosave", "states", "bwd cpt=2"] * 2, res.stdout
    for ln in lines:
        assert "0 bytes spill stores, 0 bytes spill loads" in ln, ln
    for ln in (lines[3], lines[7]):
        regs = int(re.search(r"Used (\d+) registers", ln).group(1))
        assert regs <= 168  # scan_triton.BWD_MAXNREG[(2, True)]: 12 warps per SM with one-warp programs
        warps = int(re.search(r"(\d+) warps per SM by registers", ln).group(1))
        assert warps == (12 if regs > 160 else 4 * (16384 // (-(-regs // 8) * 256))), ln
    # the time loop's layout conversions (TTGIR) and barriers (SASS) are counted; in these one-warp kernels the
    # reductions stay in shuffles, so the barriers are the conversions' that go through shared memory
    for ln in lines:
        loop, conversions, bars = map(int, re.search(
            r"loop (\d+) instructions, (\d+) layout conversions, (\d+) barriers", ln).groups())
        assert loop > 100 and 0 < bars <= conversions < loop, ln


def test_resident_warps_follow_the_register_file_of_an_sm90_quadrant():
    sys.path.insert(0, str(TOOL.parent))
    try:
        import inspect_triton
    finally:
        sys.path.remove(str(TOOL.parent))
    w = inspect_triton.resident_warps
    # 168 registers (the backward's cap): 5,376 per warp, 3 warps in each quadrant's 16,384; 255 rounds up to 256
    assert [w(r, 1) for r in (168, 255, 256, 128, 200, 82, 32)] == [12, 8, 8, 16, 8, 20, 32]
    assert w(64, 4) == 32 and w(32, 4) == 64  # 64 warps per SM at most; 32 programs per SM at most
    assert w(206, 2) == 8
