"""benchmarks/scan.py's CUDA-graph closures on CUDA (skipped without it): the eager op replayed from a graph
(``--graphed-op``, the scan as a step under reduce-overhead runs it) computes the eager op's output and gradients
on every replay, from the inputs' current values."""

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_graphed_op_replays_the_eager_op():
    import scan

    inp = scan.make_inputs(2, 64, 37)
    dout = torch.randn(2, 37, 64, device="cuda", dtype=torch.bfloat16)
    fwd, fwd_bwd = scan.op_fns(inp, dout)
    g_fwd, g_fwd_bwd = scan.graphed_op_fns(inp, dout)
    torch.testing.assert_close(g_fwd(), fwd())
    eager = [g.clone() for g in fwd_bwd()]
    replayed = [g.clone() for g in g_fwd_bwd()]
    assert len(replayed) == len(eager) == 8
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), replayed, eager):
        # dB / dC partial sums are added atomically (dbc_group 4): equal up to the order of float additions
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=name)
    with torch.no_grad():  # a replay reads the inputs' current values: twice the upstream gradient, twice du
        dout.mul_(2)
    torch.testing.assert_close(g_fwd_bwd()[0].float(), 2 * eager[0].float(), rtol=2e-2, atol=2e-2)
