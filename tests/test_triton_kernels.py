"""armvision's Triton kernels against the float64 references, values and all gradients.

Without a GPU these run in Triton's interpreter on the CPU (conftest sets TRITON_INTERPRET=1), so
shapes stay tiny. tests/gpu/test_triton_gpu.py runs the large sweep on a GPU.
"""

import pytest
import torch

from armvision import ops
from armvision.layers import Mamba, TokenLayout
from armvision.ops import causal_conv1d_ref, selective_scan_ref
from conftest import compile_keeping_backward_graphs, rel_err

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if not ops.backend_available("triton", DEV):
    pytest.skip("the Triton backend cannot run here (no triton package)", allow_module_level=True)

from armvision.ops import conv_triton, scan_triton  # noqa: E402
ACT = ("u", "delta", "B", "C", "z")
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def small_blocks_and_poisoned_outputs(monkeypatch):
    """Small blocks so that tiny shapes still span several chunks and channel blocks; outputs
    allocated full of NaN so that an element the kernels forget to write fails the test."""
    poisoned = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(scan_triton, "_empty", poisoned)
    monkeypatch.setattr(conv_triton, "_empty", poisoned)
    with ops.scan_config(BT=4, fwd=(4, 1, 1), bwd=(8, 1, 1)), ops.conv_config(fwd=(4, 4, 1), bwd=(4, 8, 1)):
        yield


@pytest.fixture(params=["function", "custom_op"])
def autograd_path(request, monkeypatch):
    """Both ways into the kernels: the eager autograd.Function and the torch.library custom ops
    (what torch.compile traces), forced here as if tracing."""
    if request.param == "custom_op":
        monkeypatch.setattr(scan_triton, "_use_custom_op", lambda x: True)
    return request.param


def scan_inputs(b, t, e, n, dtype, with_z=True, with_D=True, with_bias=True):
    inp = dict(
        u=torch.randn(b, t, e), delta=torch.randn(b, t, e) * 0.5 - 1.0, A=-torch.exp(torch.randn(e, n) * 0.5),
        B=torch.randn(b, t, n), C=torch.randn(b, t, n), D=torch.randn(e) if with_D else None,
        z=torch.randn(b, t, e) if with_z else None, delta_bias=torch.randn(e) * 0.3 if with_bias else None,
    )
    return {k: None if v is None else v.to(DEV, dtype if k in ACT else torch.float32).requires_grad_()
            for k, v in inp.items()}


def reference(inp, index, softplus=True):
    """float64 reference along the index order, result back in row order."""
    r = {k: None if v is None else v.detach().double().requires_grad_() for k, v in inp.items()}
    g = {k: (v[:, index] if (k in ACT and v is not None and index is not None) else v) for k, v in r.items()}
    out = selective_scan_ref(*(g[k] for k in ARGS), delta_softplus=softplus)
    if index is not None:
        out = out[:, torch.argsort(index)]
    return out, r


def check_scan(inp, index=None, softplus=True, tol_out=1e-5, tol_grad=1e-4):
    keys = [k for k in ARGS if inp[k] is not None]
    out = ops.selective_scan(*(inp[k] for k in ARGS), delta_softplus=softplus, index=index, backend="triton")
    ref, r = reference(inp, None if index is None else index.cpu(), softplus)
    assert out.dtype == inp["u"].dtype and torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < tol_out
    dout = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [inp[k] for k in keys], dout.to(out))
    grads_ref = torch.autograd.grad(ref, [r[k] for k in keys], dout)
    for k, g, gr in zip(keys, grads, grads_ref):
        assert g.dtype == inp[k].dtype and g.shape == inp[k].shape, k
        assert torch.isfinite(g).all(), f"grad of {k} has unwritten (NaN) elements"
        assert rel_err(g.cpu(), gr) < tol_grad, k


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (2, 9, 6, 16), (1, 13, 10, 5)])
def test_scan_fp32(seed, shape, autograd_path):
    check_scan(scan_inputs(*shape, torch.float32))


@pytest.mark.parametrize("shape,ordered,seg", [((2, 9, 6, 16), False, 1), ((1, 7, 5, 4), True, 1),
                                               ((2, 11, 6, 4), False, 2), ((1, 2, 3, 4), True, 1)])
def test_scan_two_step_chunks(seed, shape, ordered, seg):
    """BT 2, the default launch (the fixture's BT 4 covers longer chunks), ordered and with segment
    checkpoints; odd lengths end in a half chunk."""
    index = torch.randperm(shape[1], device=DEV).int() if ordered else None
    with ops.scan_config(BT=2, bwd=(4, 1, 1), seg=seg):
        check_scan(scan_inputs(*shape, torch.float32), index=index)


def check_backward_variant(shape, ordered: bool, variant: str, **cfg) -> None:
    """The scan under ops.scan_config(bwd=(4, 1, 1), **cfg) against the reference, states recomputed and saved:
    ``variant`` "all", "no_z", "no_D_no_bias" or "bf16" (inputs in bf16)."""
    index = torch.randperm(shape[1], device=DEV).int() if ordered else None
    dtype = torch.bfloat16 if variant == "bf16" else torch.float32
    tol = dict(tol_out=1e-2, tol_grad=2e-2) if variant == "bf16" else {}
    for states in ("recompute", "save"):
        inp = scan_inputs(*shape, dtype, with_z=variant != "no_z", with_D=variant != "no_D_no_bias",
                          with_bias=variant != "no_D_no_bias")
        with ops.scan_config(bwd=(4, 1, 1), states=states, **cfg):
            check_scan(inp, index=index, **tol)


@pytest.mark.parametrize("shape,ordered,variant", [((2, 9, 6, 16), False, "all"), ((1, 7, 5, 4), True, "all"),
                                                   ((2, 5, 3, 4), False, "no_z"), ((1, 6, 4, 3), True, "no_D_no_bias"),
                                                   ((2, 8, 10, 8), False, "bf16")])
def test_scan_backward_two_channels_per_thread(seed, shape, ordered, variant, autograd_path):
    """bwd_cpt=2 (the backward's (2, BT, N, BE / 2) tiles), here with recomputed decays (the carried ones, the default
    pair, below): the reference's values and gradients, with channels that do not fill the last block (e = 3, 5, 6, 10
    against BE 4), token orders, no z, no D and bias, N below its power of two, bf16 inputs; both autograd paths;
    states saved and recomputed."""
    check_backward_variant(shape, ordered, variant, BT=2, bwd_cpt=2, bwd_decay="recompute")


@pytest.mark.parametrize("cpt,BT,shape,ordered,seg,variant", [
    (1, 2, (2, 9, 6, 16), False, 1, "all"), (1, 2, (1, 7, 5, 4), True, 1, "all"), (1, 4, (2, 11, 6, 4), False, 1, "all"),
    (1, 2, (2, 11, 6, 4), True, 2, "all"), (1, 8, (1, 10, 5, 4), False, 1, "no_z"), (1, 2, (1, 1, 3, 4), False, 1, "all"),
    (2, 2, (2, 9, 6, 16), True, 1, "all"), (2, 4, (1, 13, 10, 8), False, 1, "no_D_no_bias"),
    (2, 2, (2, 8, 10, 8), False, 1, "bf16"), (2, 2, (2, 9, 6, 16), True, 2, "all"), (2, 2, (1, 8, 6, 4), False, 2, "no_z"),
    (2, 4, (2, 13, 10, 8), False, 2, "all"), (2, 2, (1, 1, 4, 4), False, 2, "all"), (2, 2, (2, 12, 6, 4), True, 2, "bf16")])
def test_scan_backward_with_carried_decays(seed, cpt, BT, shape, ordered, seg, variant, autograd_path):
    """bwd_decay="carry" (the default with bwd_cpt=2: the adjoint's dA_{t+1} taken from this chunk's own decays one
    step on, and from the next chunk's first at the chunk's last step, instead of an exp2 of the next step's delta):
    the reference's values and gradients for both backward kernels, chunks of 2, 4 and 8 steps (odd lengths end in a
    part-chunk, t = 1 is a single part-chunk), token orders, segment checkpoints (seg 2 with two channels per thread:
    an odd chunk's entering state rebuilt in registers from the chunk before, 1-7 chunks), no z, no D and bias, bf16;
    both autograd paths, states saved and recomputed."""
    check_backward_variant(shape, ordered, variant, BT=BT, bwd_cpt=cpt, seg=seg, bwd_decay="carry")


@pytest.mark.parametrize("shape,ordered,variant,group", [
    ((2, 9, 10, 16), False, "all", 2), ((1, 7, 12, 4), True, "all", 3), ((2, 8, 10, 8), False, "bf16", 99),
    ((1, 6, 8, 3), True, "no_D_no_bias", 2), ((2, 5, 6, 4), False, "no_z", 4)])
def test_scan_backward_dbc_groups(seed, shape, ordered, variant, group, autograd_path):
    """dbc_group > 1: groups of channel blocks add their dB / dC partial sums atomically into one (b, t, N) block
    (e = 10, 12, 8, 6 against BE 4: 3, 3, 2, 2 channel blocks, so groups that do not divide them, one that holds all
    (99), one larger than the blocks (4)): the reference's values and gradients, token orders, bf16, no D and bias, no
    z; both autograd paths, states saved and recomputed."""
    check_backward_variant(shape, ordered, variant, BT=2, bwd_cpt=2, bwd_decay="carry", dbc_group=group)


@pytest.mark.parametrize("cpt,BT,shape,ordered,seg,variant", [
    (2, 2, (2, 9, 6, 16), False, 1, "all"), (2, 2, (1, 7, 5, 4), True, 1, "all"), (2, 4, (2, 11, 6, 4), False, 1, "all"),
    (2, 8, (1, 10, 6, 4), True, 1, "no_z"), (2, 2, (1, 1, 4, 4), False, 1, "all"), (2, 2, (2, 8, 10, 8), False, 1, "bf16"),
    (2, 2, (2, 9, 6, 16), True, 2, "all"), (2, 2, (1, 6, 4, 3), False, 1, "no_D_no_bias"),
    (1, 2, (2, 9, 6, 16), False, 1, "all"), (1, 4, (1, 11, 5, 4), True, 2, "all")])
@pytest.mark.parametrize("decay", ["carry", "recompute"])
def test_scan_recurrence_step_by_step(seed, cpt, BT, shape, ordered, seg, variant, decay, autograd_path):
    """recurrence="step": the forward kernel (and the backward's recomputation of the states) steps through each
    chunk's states with one multiply-add per step, and the two-channel backward its adjoint, instead of associative
    scans. The reference's values and gradients for chunks of 2 (split / join), 4 and 8 steps (in-thread selections),
    part-chunks and t = 1, token orders, seg 2, no z, no D and bias, bf16, decays carried and recomputed (the entering
    decay then from the next step's delta), the one-channel backward (whose own recurrences stay scans); both autograd
    paths, states saved and recomputed."""
    check_backward_variant(shape, ordered, variant, BT=BT, bwd_cpt=cpt, seg=seg, bwd_decay=decay, recurrence="step")


def test_recurrence_step_reaches_the_kernels_and_matches_the_scan(seed, autograd_path, monkeypatch):
    """The recurrence key reaches the forward kernel (forward and states recomputation) and the two-channel backward
    through both autograd paths; "step" and "scan" compute the same recurrences rounded in another order, so their
    outputs and gradients agree to fp32 rounding. A bad value is refused."""
    launched = record_launches(monkeypatch, ("_scan_fwd_kernel", "_scan_bwd_kernel2"),
                               lambda name, kw: (name, kw["STEPWISE"]))
    inp = scan_inputs(2, 9, 8, 16, torch.float32)
    keys = [k for k in ARGS if inp[k] is not None]
    results = {}
    for recurrence in ("scan", "step"):
        launched.clear()
        with ops.scan_config(BT=2, bwd=(4, 1, 1), recurrence=recurrence):
            out = ops.selective_scan(*(inp[k] for k in ARGS), backend="triton")
            results[recurrence] = (out, *torch.autograd.grad(out, [inp[k] for k in keys], torch.ones_like(out)))
        step = recurrence == "step"
        assert launched == [("_scan_fwd_kernel", step), ("_scan_fwd_kernel", step), ("_scan_bwd_kernel2", step)]
    for k, a, b in zip(["out", *keys], results["scan"], results["step"]):
        assert rel_err(b, a) < 1e-5, k
    with pytest.raises(ValueError, match="recurrence must be 'scan' or 'step'"):
        with ops.scan_config(recurrence="loop"):
            pass


def test_dbc_group_partial_blocks_and_fallbacks(seed, monkeypatch):
    """scan_bwd's dB / dC partials have one block per dbc_group of channel blocks (the last group may be short) and
    add up to the same sums as one block per channel block; the one-channel kernel (bwd_cpt 1, or seg > 2) keeps one
    per channel block whatever dbc_group says. The atomic blocks start from zeros, not from the poisoned _empty."""
    b, t, e, n = 2, 9, 20, 4  # 5 channel blocks of 4
    u, dl = torch.randn(b, t, e, device=DEV), torch.randn(b, t, e, device=DEV) * 0.5 - 1
    A = -torch.exp(torch.randn(e, n, device=DEV))
    B, C = torch.randn(b, t, n, device=DEV), torch.randn(b, t, n, device=DEV)
    dout = torch.randn(b, t, e, device=DEV)
    want = None
    cases = (((4, 1, 1, 2, 0, 1, 1), 1, 5), ((4, 1, 1, 2, 0, 1, 2), 1, 3), ((4, 1, 1, 2, 0, 1, 5), 1, 1),
             ((4, 1, 1, 2, 0, 1, 64), 2, 1), ((4, 1, 1, 1, 0, 0, 2), 1, 5), ((4, 1, 1, 2, 0, 1, 2), 3, 5))
    for block, seg, blocks in cases:  # (block with dbc_group last, seg, dB/dC partial blocks)
        _, states, chunk = scan_triton.scan_fwd(u, dl, A, B, C, None, None, None, None, True, True, chunk=2,
                                                block=(4, 1, 1), seg=seg)
        parts = scan_triton.scan_bwd(u, dl, A, B, C, None, None, None, None, states, dout, True, chunk, block, seg,
                                     reduce=False)
        assert parts[3].shape == parts[4].shape == (b, blocks, t, n), (block, seg)
        got = (parts[3].sum(1), parts[4].sum(1))
        want = want or got
        for g, w in zip(got, want):
            assert torch.isfinite(g).all() and torch.allclose(g, w, rtol=1e-5, atol=1e-5), (block, seg)


def test_carried_decays_equal_recomputed_ones(seed):
    """The two ways of getting dA_{t+1} compute the same products from the same values: the gradients agree to
    rounding (fp32), for both backward kernels."""
    inp = scan_inputs(2, 9, 8, 16, torch.float32)
    keys = [k for k in ARGS if inp[k] is not None]
    grads = {}
    for cpt in (1, 2):
        for decay in ("recompute", "carry"):
            with ops.scan_config(BT=2, bwd=(4, 1, 1), bwd_cpt=cpt, bwd_decay=decay):
                out = ops.selective_scan(*(inp[k] for k in ARGS), backend="triton")
                grads[cpt, decay] = torch.autograd.grad(out, [inp[k] for k in keys], torch.ones_like(out))
        for k, a, b in zip(keys, grads[cpt, "recompute"], grads[cpt, "carry"]):
            assert rel_err(b, a) < 1e-6, (cpt, k)


def record_launches(monkeypatch, names, record) -> list:
    """Wrap the scan_triton kernels ``names`` so that each launch appends ``record(name, launch keywords)`` to the
    returned list, then launches the real kernel."""
    launched = []

    class Recording:
        def __init__(self, name):
            self.name, self.real = name, getattr(scan_triton, name)

        def __getitem__(self, grid):
            def launch(*args, **kw):
                launched.append(record(self.name, kw))
                return self.real[grid](*args, **kw)
            return launch

    for name in names:
        monkeypatch.setattr(scan_triton, name, Recording(name))
    return launched


def test_two_channels_per_thread_falls_back_to_one_where_it_cannot_run(seed, monkeypatch):
    """bwd_cpt=2 (the default) with segment checkpoints of more than 2 chunks or a one-channel block runs the
    one-channel kernel, decays recomputed, and gets the reference's gradients; with seg 1 or 2 and an even block the
    two-channel kernel runs."""
    launched = record_launches(monkeypatch, ("_scan_bwd_kernel", "_scan_bwd_kernel2"),
                               lambda name, kw: (name, kw["CARRY_DA"]))
    for cfg, expect in ((dict(seg=3), ("_scan_bwd_kernel", False)), (dict(bwd=(1, 1, 1)), ("_scan_bwd_kernel", False)),
                        ({}, ("_scan_bwd_kernel2", True)), (dict(seg=2), ("_scan_bwd_kernel2", True))):
        launched.clear()
        with ops.scan_config(BT=2, bwd_cpt=2, bwd_decay="carry", **cfg):
            check_scan(scan_inputs(1, 5, 4, 4, torch.float32))
        assert launched == [expect], cfg


def test_deterministic_algorithms_turn_the_atomic_dbc_sums_off(seed, monkeypatch):
    """The default adds dB / dC partial sums atomically per 4 channel blocks (dbc_group 4: the last bits may vary
    from run to run); under torch.use_deterministic_algorithms(True) the scan launches one partial block per channel
    block (GROUP 1), whose sums have a fixed order, and gets the reference's gradients either way."""
    assert ops.current_scan_config()["dbc_group"] == 4
    launched = record_launches(monkeypatch, ("_scan_bwd_kernel2",), lambda name, kw: kw["GROUP"])
    for deterministic, group in ((False, 4), (True, 1)):
        launched.clear()
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda d=deterministic: d)
        with ops.scan_config(BT=2, bwd=(4, 1, 1)):  # e = 20: 5 channel blocks
            check_scan(scan_inputs(1, 5, 20, 4, torch.float32))
        assert launched == [group], deterministic


def test_bad_scan_launch_values_are_refused():
    for bad, message in ((dict(bwd_cpt=4), "bwd_cpt .* must be 1 or 2"), (dict(bwd_maxnreg=300), "bwd_maxnreg must"),
                         (dict(bwd_maxnreg=True), "bwd_maxnreg must"), (dict(bwd_decay="exp"), "bwd_decay must"),
                         (dict(BT=3), "must be a power of two"), (dict(dbc_group=0), "dbc_group must be a positive"),
                         (dict(dbc_group=2.0), "dbc_group must be a positive")):
        with pytest.raises(ValueError, match=message):
            with ops.scan_config(**bad):
                pass


@pytest.mark.parametrize("cfg, kernel, maxnreg", [
    ({}, "_scan_bwd_kernel2", 168), ({"bwd_decay": "recompute"}, "_scan_bwd_kernel2", 152),
    ({"bwd_maxnreg": 176}, "_scan_bwd_kernel2", 176), ({"bwd_cpt": 1, "bwd_decay": "recompute"}, "_scan_bwd_kernel", None),
    ({"bwd_cpt": 1}, "_scan_bwd_kernel", 184), ({"bwd_cpt": 1, "bwd_maxnreg": 200}, "_scan_bwd_kernel", 200)])
def test_backward_register_cap_reaches_the_launch(seed, autograd_path, monkeypatch, cfg, kernel, maxnreg):
    """bwd_maxnreg (None: the kernel's own cap, scan_triton.default_bwd_maxnreg: 168 for the default two channels per
    thread with carried decays, 152 recomputed; one channel: none recomputed, 184 carried) is the launch's maxnreg,
    through both autograd paths."""
    launches = record_launches(monkeypatch, (kernel,), lambda name, kw: kw.get("maxnreg"))
    with ops.scan_config(BT=2, bwd=(4, 1, 1), **cfg):
        check_scan(scan_inputs(1, 5, 6, 4, torch.float32))
    assert launches == [maxnreg]


@pytest.mark.parametrize("variant", ["no_z", "no_D_no_bias", "no_softplus"])
def test_scan_variants(seed, variant):
    inp = scan_inputs(2, 7, 5, 4, torch.float32, with_z=variant != "no_z", with_D=variant != "no_D_no_bias",
                      with_bias=variant != "no_D_no_bias")
    if variant == "no_softplus":
        with torch.no_grad():
            inp["delta"].abs_()
    check_scan(inp, softplus=variant != "no_softplus")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half(seed, dtype, autograd_path):
    check_scan(scan_inputs(2, 10, 9, 8, dtype), tol_out=1e-2, tol_grad=2e-2)


@pytest.mark.parametrize("recurrence", ["scan", "step"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_scan_error_within_fp32_math_rounded_once(seed, dtype, recurrence):
    """The numerics criterion on a small shape: every output and gradient is within 1.5x of
    the float64 error of fp32 arithmetic on the same rounded inputs rounded once at the end (what
    mamba-ssm's CUDA kernel does). Failed for fp16 while the chunk states were stored in bf16 (dz, dC,
    ddelta 4-12x; dA, d(delta_bias) 1000x). bf16 is checked on the GPU only: the interpreter rounds
    fp32 -> bf16 by truncation (twice the error of the GPU's round-to-nearest)."""
    from scan_numerics import error_ratios, make_inputs, proxy_scan

    inp = make_inputs(1, 32, 8, dtype, device=DEV, seed=seed)
    with ops.scan_config(states="recompute", recurrence=recurrence):
        res = error_ratios(scan_triton.selective_scan_triton, proxy_scan, inp, seed=seed)
    bad = {k: f"{e:.2e} vs {eb:.2e} ({r:.2f}x)" for k, (e, eb, r) in res.items() if r > 1.5}
    assert not bad, bad


@pytest.mark.parametrize("ordered", [False, True])
def test_scan_segment_checkpoints_equal_per_chunk_states(seed, ordered):
    """seg > 1 (launch parameter of scan_fwd / scan_bwd): one fp32 checkpoint per seg chunks, the
    backward rebuilds the rest per segment; same arithmetic, so the same bits as seg = 1 (BT 4 from
    the fixture: 3 chunks, segments of 2 -- the last one partial)."""
    inp = {k: v.detach() for k, v in scan_inputs(2, 9, 6, 4, torch.float32).items()}
    a = [inp[k] for k in ARGS]
    index = torch.randperm(9, device=DEV).int() if ordered else None
    dout = torch.randn(2, 9, 6, device=DEV)
    out1, st1, chunk = scan_triton.scan_fwd(*a, index, True, True)
    out2, st2, _ = scan_triton.scan_fwd(*a, index, True, True, seg=2)
    assert torch.equal(out1, out2) and st2.shape == (2, 2, 4, 6) and torch.equal(st2, st1[:, ::2])
    with ops.scan_config(bwd_cpt=1, bwd_decay="recompute"):  # the kernel that seg > 1 runs, for both
        g1 = scan_triton.scan_bwd(*a, index, st1, dout, True, chunk)
        g2 = scan_triton.scan_bwd(*a, index, st2, dout, True, chunk, seg=2)
    for k, x, y in zip(ARGS, g1, g2):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("kernel", [dict(bwd_cpt=1, bwd_decay="recompute"), dict(bwd_cpt=2, bwd_decay="carry")],
                         ids=["one_channel", "two_channels"])
@pytest.mark.parametrize("states", ["recompute", "save"])
def test_scan_config_seg_equals_seg_1(seed, states, autograd_path, monkeypatch, kernel):
    """ops.scan_config(seg=2) reaches the kernels through both autograd paths (the custom ops that
    torch.compile traces, and the eager Function): values and gradients equal seg=1 bit for bit, for the one-channel
    backward (segments rebuilt through a scratch) and the two-channel one (odd chunks' states rebuilt in registers)."""
    seen = []
    bwd = scan_triton.scan_bwd

    def recording_bwd(*args, **kw):
        seen.append((args[9].shape[1], kw.get("seg", args[14] if len(args) > 14 else 1)))  # (states, seg)
        return bwd(*args, **kw)

    monkeypatch.setattr(scan_triton, "scan_bwd", recording_bwd)
    inp = scan_inputs(2, 9, 6, 4, torch.float32)
    index = torch.randperm(9, device=DEV)
    dout = torch.randn(2, 9, 6, device=DEV)
    results = []
    for seg in (1, 2):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inp.items()}
        with ops.scan_config(states=states, seg=seg, **kernel):
            out = scan_triton.selective_scan_triton(*(leaves[k] for k in ARGS), index=index)
        (out * dout).sum().backward()
        results.append([out] + [leaves[k].grad for k in ARGS])
    assert seen == [(3, 1), (2, 2)]  # 9 steps = 3 chunks of 4: a state per chunk, or per segment of 2
    for name, x, y in zip(["out", *ARGS], *results):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="seg must be a positive integer"):
        with ops.scan_config(seg=0):
            pass


def test_scan_recomputed_states(seed, monkeypatch, autograd_path):
    """states="recompute": the backward rebuilds the chunk states instead of keeping them."""
    with ops.scan_config(states="recompute"):
        check_scan(scan_inputs(2, 9, 6, 4, torch.float32), index=torch.randperm(9, device=DEV))


def test_scan_saved_states(seed, autograd_path):
    """states="save" (inside an ops.scan_config scope): the backward starts from the forward's states."""
    with ops.scan_config(states="save"):
        check_scan(scan_inputs(2, 9, 6, 4, torch.float32), index=torch.randperm(9, device=DEV))


def test_launch_config_is_scoped():
    """A scope changes the launch parameters inside it only; nothing persists; bad keys are errors."""
    outer = ops.current_scan_config()
    with ops.scan_config(states="save", BT=8) as cfg:
        assert cfg["states"] == "save" and cfg["BT"] == 8 and cfg["fwd"] == outer["fwd"]
        with ops.scan_config(BT=2):
            assert ops.current_scan_config()["BT"] == 2 and ops.current_scan_config()["states"] == "save"
        assert ops.current_scan_config()["BT"] == 8
    assert ops.current_scan_config() == outer
    with pytest.raises(KeyError, match="unknown scan launch parameters"):
        with ops.scan_config(chunk=4):
            pass
    with pytest.raises(ValueError, match="states must be 'save' or 'recompute'"):
        with ops.scan_config(states="keep"):
            pass
    assert ops.current_scan_config() == outer
    with pytest.raises(TypeError, match=r"with armvision.ops.scan_config\(states='save'\)"):
        scan_triton.scan_launch_config(states="save")
    assert scan_triton.scan_launch_config() == outer


def test_scan_index_order(seed):
    """A permuted scan order, read and written through the index (no copies)."""
    check_scan(scan_inputs(2, 11, 6, 4, torch.float32), index=torch.randperm(11, device=DEV))


def test_scan_without_grad_saves_no_states(seed, autograd_path):
    inp = {k: None if v is None else v.detach() for k, v in scan_inputs(1, 6, 4, 4, torch.float32).items()}
    out = ops.selective_scan(*(inp[k] for k in ARGS), backend="triton")
    ref, _ = reference(inp, None)
    assert rel_err(out.cpu(), ref) < 1e-5


@pytest.mark.parametrize("activation,with_bias,dtype", [("silu", True, torch.float32), (None, False, torch.float32),
                                                        ("silu", True, torch.bfloat16)])
@pytest.mark.parametrize("ordered", [False, True])
def test_conv(seed, activation, with_bias, dtype, ordered, autograd_path):
    b, t, e = 2, 9, 6
    x = torch.randn(b, t, e, device=DEV).to(dtype).requires_grad_()
    w = torch.randn(e, 1, 4, device=DEV, requires_grad=True)
    bias = torch.randn(e, device=DEV, requires_grad=True) if with_bias else None
    index = torch.randperm(t) if ordered else None
    out = ops.causal_conv1d(x, w, bias, activation, index=index, backend="triton")
    xr, wr = x.detach().cpu().double().requires_grad_(), w.detach().cpu().double().requires_grad_()
    br = bias.detach().cpu().double().requires_grad_() if with_bias else None
    ref = causal_conv1d_ref(xr if index is None else xr[:, index], wr, br, activation)
    ref = ref if index is None else ref[:, torch.argsort(index)]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype and rel_err(out.cpu(), ref) < tol
    dout = torch.randn_like(ref)
    ins, ins_r = [x, w] + ([bias] if with_bias else []), [xr, wr] + ([br] if with_bias else [])
    for g, gr in zip(torch.autograd.grad(out, ins, dout.to(out)), torch.autograd.grad(ref, ins_r, dout)):
        assert torch.isfinite(g).all() and rel_err(g.cpu(), gr) < 2 * tol


# (b, t, e, width, launch (BT, BE, warps)): both kernels walk time chunks of at most BT steps with a
# 3-step halo; t = 1, t < width, chunks shorter than the halo, uneven last chunks, e not a multiple
# of BE, widths 1..4
CONV_EDGES = [(1, 1, 5, 4, (4, 8, 1)), (2, 3, 6, 4, (2, 4, 1)), (2, 11, 5, 3, (5, 4, 1)), (1, 7, 3, 2, (1, 2, 1)),
              (2, 6, 4, 1, (3, 4, 1)), (1, 13, 4, 4, (64, 4, 1)), (2, 10, 9, 4, (3, 8, 1))]


@pytest.mark.parametrize("b,t,e,width,launch", CONV_EDGES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("ordered", [False, True])
def test_conv_chunks(seed, b, t, e, width, launch, ordered):
    """The conv kernels' time chunks, halos and the backward's per-chunk dw/db partials against the reference."""
    x = torch.randn(b, t, e, device=DEV, requires_grad=True)
    w = torch.randn(e, width, device=DEV, requires_grad=True)
    bias = torch.randn(e, device=DEV, requires_grad=True)
    index = torch.randperm(t) if ordered else None
    with ops.conv_config(fwd=launch, bwd=launch):
        out = ops.causal_conv1d(x, w, bias, "silu", index=index, backend="triton")
    xr, wr, br = (v.detach().cpu().double().requires_grad_() for v in (x, w, bias))
    ref = causal_conv1d_ref(xr if index is None else xr[:, index], wr, br, "silu")
    ref = ref if index is None else ref[:, torch.argsort(index)]
    assert rel_err(out.detach().cpu(), ref) < 1e-6
    dout = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, w, bias), dout.to(out))
    for g, gr in zip(grads, torch.autograd.grad(ref, (xr, wr, br), dout)):
        assert g.shape == gr.shape and rel_err(g.cpu(), gr) < 1e-5


def test_conv_benchmark_cross_check(seed, monkeypatch):
    """benchmarks/conv.py's check before timing: the new and the kept old backward kernel against the
    reference, in row order and through an index order (tiny shape, the interpreter on the CPU)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "conv.py"
    spec = importlib.util.spec_from_file_location("bench_conv", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, w, bias, dout = bench.make(2, 9, 6, seed=seed, device=DEV)
    for index in (None, torch.randperm(9, device=DEV).int()):
        errs = bench.cross_check(x, w, bias, dout, index)
        assert all(err < 1e-2 for errs_ in errs.values() for err in errs_)
    bad = dout.clone()
    bad[0, 0, 0] += 100.0  # a wrong dout for the kernels only: the check must stop the benchmark
    right = conv_triton._conv_bwd
    monkeypatch.setattr(conv_triton, "_conv_bwd", lambda x, w, b, i, d, s: right(x, w, b, i, bad, s))
    with pytest.raises(SystemExit, match="new backward differs"):
        bench.cross_check(x, w, bias, dout, None)


def test_four_direction_mixer_matches_torch_backend(seed):
    """The whole four-direction mixer (conv + scan through index maps) on Triton vs plain torch."""
    m = Mamba(8, d_state=4, directions=4).to(DEV)
    layout = TokenLayout((2, 3), 3)
    x = torch.randn(2, 7, 8, device=DEV, requires_grad=True)
    outs = {}
    for backend in ("torch", "triton"):
        m.backend = backend
        m.zero_grad()
        y = m(x, layout)
        gx, = torch.autograd.grad(y.square().sum(), x)
        outs[backend] = (y.detach(), gx)
    assert rel_err(outs["triton"][0], outs["torch"][0]) < 1e-5
    assert rel_err(outs["triton"][1], outs["torch"][1]) < 1e-4


def test_triton_backend_errors():
    with pytest.raises(ValueError, match="kernel widths up to 4"):
        ops.causal_conv1d(torch.randn(1, 3, 2, device=DEV), torch.randn(2, 5, device=DEV), backend="triton")


def test_mixer_compiles_without_graph_breaks(seed):
    """torch.compile(fullgraph=True) traces the mixer on the Triton custom ops (backend resolution
    and the direction maps included); aot_eager keeps the CPU run cheap."""
    m = Mamba(8, d_state=4, directions=4, backend="triton").to(DEV)
    layout = TokenLayout((3, 3), 4)
    x = torch.randn(2, 10, 8, device=DEV, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x, layout)
    y.sum().backward()
    assert torch.allclose(y, m(x, layout), atol=1e-6)


def test_compiled_scan_takes_the_scope_active_while_tracing(seed, monkeypatch):
    """torch.compile reads ops.scan_config when it traces (as the trainer's model.scan scope is around
    its first step): the compiled forward and backward run with states="save" and seg=2."""
    seen = []
    bwd = scan_triton.scan_bwd

    def recording_bwd(*args, **kw):
        seen.append((args[9].shape[1], kw.get("seg", args[14] if len(args) > 14 else 1)))
        return bwd(*args, **kw)

    monkeypatch.setattr(scan_triton, "scan_bwd", recording_bwd)
    inp = scan_inputs(1, 9, 4, 4, torch.float32)
    fn = torch.compile(scan_triton.selective_scan_triton, fullgraph=True, backend="aot_eager")
    with ops.scan_config(states="save", seg=2):
        out = fn(*(inp[k] for k in ARGS))
    out.sum().backward()
    assert seen == [(2, 2)]  # saved in the forward (no recompute), one state per 2 chunks of 4 steps
    ref, _ = reference({k: v for k, v in inp.items()}, None)
    assert rel_err(out.detach().cpu(), ref) < 1e-5


def test_custom_ops_pass_opcheck(seed):
    """Schemas, fake (meta) kernels, autograd registration: what torch.compile relies on."""
    inp = {k: None if v is None else v.detach() for k, v in scan_inputs(2, 5, 4, 4, torch.float32).items()}
    inp["B"] = torch.randn(2, 5, 11, device=DEV)[..., 2:6]  # non-contiguous, as x_proj's output slices are
    args = [inp[k] for k in ARGS]
    index = torch.randperm(5, device=DEV).int()
    ops_ = torch.ops.armvision
    torch.library.opcheck(ops_.selective_scan_fwd.default, (*args, index, True, True))
    out, states = ops_.selective_scan_fwd(*args, index, True, True)
    torch.library.opcheck(ops_.selective_scan_states.default, (*args, index, True, ops.current_scan_config()["BT"]))
    torch.library.opcheck(ops_.selective_scan_bwd.default,
                          (*args, index, states, torch.randn_like(out), True, ops.current_scan_config()["BT"]))
    x = torch.randn(2, 6, 4, device=DEV)
    w, b = torch.randn(4, 4, device=DEV), torch.randn(4, device=DEV)
    torch.library.opcheck(ops_.causal_conv1d_fwd.default, (x, w, b, None, True))
    torch.library.opcheck(ops_.causal_conv1d_bwd.default, (x, w, b, None, torch.randn_like(x), True))


@pytest.mark.parametrize("sums", ["graph", "op"])
def test_backward_partial_sums_in_graph_or_op(seed, sums, monkeypatch):
    """Both places for the backward's partial sums (ops.scan_config / conv_config ``sums``) give the reference's
    gradients through the custom ops, and each runs the custom op it names (the parts op, or the finishing one)."""
    monkeypatch.setattr(scan_triton, "_use_custom_op", lambda x: True)
    called = []
    for mod, name in ((scan_triton, "scan_bwd"), (conv_triton, "_conv_bwd")):
        real = getattr(mod, name)

        def recording(*args, _real=real, _name=name, **kw):
            called.append((_name, kw.get("reduce", True)))
            return _real(*args, **kw)

        monkeypatch.setattr(mod, name, recording)
    with ops.scan_config(sums=sums), ops.conv_config(sums=sums):
        check_scan(scan_inputs(2, 9, 6, 4, torch.float32), index=torch.randperm(9, device=DEV))
        x = torch.randn(2, 7, 5, device=DEV, requires_grad=True)
        w = torch.randn(5, 4, device=DEV, requires_grad=True)
        b = torch.randn(5, device=DEV, requires_grad=True)
        y = ops.causal_conv1d(x, w, b, activation="silu", backend="triton")
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, w, b), dy)
        r = [v.detach().double().requires_grad_() for v in (x, w, b)]
        want = torch.autograd.grad(causal_conv1d_ref(*r, activation="silu"), r, dy.double())
    for g, gr in zip(got, want):
        assert g.dtype == torch.float32 and rel_err(g.cpu(), gr) < 1e-5
    assert called == [("scan_bwd", sums == "op"), ("_conv_bwd", sums == "op")]


def test_partial_sum_ops_pass_opcheck(seed):
    """The backward kernels' custom ops that return partial sums (sums="graph"): schemas and fake kernels."""
    inp = {k: None if v is None else v.detach() for k, v in scan_inputs(2, 5, 12, 4, torch.float32).items()}
    args = [inp[k] for k in ARGS]
    index = torch.randperm(5, device=DEV).int()
    cfg = ops.current_scan_config()
    out, states = torch.ops.armvision.selective_scan_fwd(*args, index, True, True)
    for block in (list(cfg["bwd"]), [4, 1, 1, 2, 0, 1, 2], [4, 1, 1, 2, 0, 1, 99]):  # dbc groups: 3, 2, 1 blocks
        torch.library.opcheck(torch.ops.armvision.selective_scan_bwd_parts.default,
                              (*args, index, states, torch.randn_like(out), True, cfg["BT"], block))
    x = torch.randn(2, 6, 4, device=DEV)
    w, b = torch.randn(4, 4, device=DEV), torch.randn(4, device=DEV)
    torch.library.opcheck(torch.ops.armvision.causal_conv1d_bwd_parts.default,
                          (x, w, b, None, torch.randn_like(x), True, list(ops.current_conv_config()["bwd"])))


def test_launch_defaults_from_environment():
    """ARMVISION_SCAN_CONFIG / ARMVISION_CONV_CONFIG (JSON) replace defaults on first use, for A/B runs of the
    commands; a bad value is the same message as a bad scan_config argument, and one line from the command (as is
    a bad layer switch, ARMVISION_SWIGLU / ARMVISION_IN_PROJ)."""
    import subprocess
    import sys

    code = "from armvision import ops; print(ops.current_scan_config()['sums'], ops.current_conv_config()['sums'])"
    env = dict(__import__("os").environ, ARMVISION_SCAN_CONFIG='{"sums": "op", "BT": 4}',
               ARMVISION_CONV_CONFIG='{"sums": "op"}')
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.split() == ["op", "op"], res.stderr
    env["ARMVISION_SCAN_CONFIG"] = '{"sums": "kernel"}'
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "sums must be 'graph' or 'op'" in res.stderr
    # through the command: one line naming the variable, before any work, no traceback
    env["ARMVISION_SCAN_CONFIG"] = '{"bwd_cpt": 3}'
    res = subprocess.run([sys.executable, "-m", "armvision", "knn", "nowhere"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip() == ("armvision knn: error: ARMVISION_SCAN_CONFIG: bwd_cpt (channels per thread in the "
                                  "backward) must be 1 or 2, got 3"), res.stderr
    env.pop("ARMVISION_SCAN_CONFIG")
    env["ARMVISION_SWIGLU"] = "fuse"
    res = subprocess.run([sys.executable, "-m", "armvision", "knn", "nowhere"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and res.stderr.strip() == ("armvision knn: error: ARMVISION_SWIGLU='fuse': expected one "
                                                          "of 'split', 'fused' (or unset)"), res.stderr


def test_in_proj_split_matches_one_product_and_drops_the_backward_cat(seed):
    """Mamba.in_proj_split: x and z from two products on the weight's halves give the one-product split's values
    and gradients, and the compiled backward then has no concatenation of dx and dz into one (b, t, 2e) tensor
    (the one-product form has it)."""
    m = Mamba(8, d_state=4, backend="triton").to(DEV)
    x = torch.randn(2, 6, 8, device=DEV, requires_grad=True)
    results, cats = {}, {}
    for split in (True, False):
        m.in_proj_split = split
        m.zero_grad()
        y = m(x)
        gx, = torch.autograd.grad(y.square().sum(), x, retain_graph=True)
        y.square().sum().backward()
        results[split] = (y.detach(), gx, m.in_proj.weight.grad.clone())
        compiled, graphs = compile_keeping_backward_graphs(m)
        compiled(x).sum().backward()
        cats[split] = [n for g in graphs for n in g.graph.nodes if n.target == torch.ops.aten.cat.default
                       and tuple(n.meta["val"].shape) == (2, 6, 16)]
    for a, b in zip(results[True], results[False]):
        assert rel_err(a, b) < 1e-6
    assert not cats[True] and cats[False]


def test_states_block_launches_the_recomputation_with_its_own_block(seed, autograd_path, monkeypatch):
    """scan_config(states_block=...): the backward's re-run of the forward (states recomputed) takes that launch
    block, the forward keeps ``fwd``'s, and the gradients are the reference's."""
    blocks = []
    fwd = scan_triton.scan_fwd

    def recording(*args, **kw):
        blocks.append((kw.get("write_out", True), tuple(kw["block"]) if kw.get("block") else None))
        return fwd(*args, **kw)

    monkeypatch.setattr(scan_triton, "scan_fwd", recording)
    with ops.scan_config(states_block=(2, 1, 1)):
        check_scan(scan_inputs(2, 9, 6, 4, torch.float32))
    assert blocks == [(True, (4, 1, 1, 0)), (False, (2, 1, 1, 0))]  # (BE, warps, stages, step by step)
    with pytest.raises(ValueError, match="states_block must be None or 3 positive integers"):
        with ops.scan_config(states_block=(2, 1)):
            pass
