"""Selective-scan benchmark: forward and forward+backward milliseconds and effective GB/s.

Compares armvision's Triton kernels with mamba-ssm's CUDA kernel (its ``selective_scan_fn``), built from the
mamba-ssm sdist for this GPU in the same run, and optionally the plain-PyTorch path, at the five anchor shapes
(bf16, N = 16, softplus and z gate; docs/kernels.md explains the kernels). Every ratio is against the CUDA kernel
timed in the same run on the same card; without it there is no ratio. Run on a GPU:

    python benchmarks/scan.py --no-torch --mamba-ssm-src mamba_ssm-2.3.2.post1.tar.gz --json scan.json
    python benchmarks/scan.py --sweep --json sweep.json   # the candidates (CANDIDATES) at the five shapes
    python benchmarks/scan.py --config-sweep       # launch-config sweep at one shape first, then the table

``--mamba-ssm-src`` takes the sdist (.tar.gz or unpacked) and compiles only its ``selective_scan_cuda`` for this
GPU's architecture (about 2 minutes, reused from ``--build-dir`` by a later run). Without it, mamba-ssm is used if
it is importable.

Times are medians of triton.testing.do_bench (CUDA events). "GB/s" counts the fewest bytes the
op must move: forward reads u, delta, z, B, C and writes out; backward reads u, delta, z, B, C,
dout and writes du, ddelta, dz, dB, dC.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cuda_ext.py, when imported from elsewhere

import _cuda_ext  # noqa: E402

from armvision.ops import scan as scan_ref_module  # noqa: E402

# (b, e, t): ARM-B/L pretraining (128-144 tokens), fine-tuning (197), a long sequence
SHAPES = [(256, 768, 128), (128, 1024, 128), (128, 1536, 128), (128, 768, 197), (64, 768, 1024)]
N = 16
TARGET_RATIO = 0.5  # the project's target: at most half the CUDA kernel's time


def make_inputs(b, e, t, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x_dbl = r(b, t, 48 + 2 * N).to(dtype)  # B and C as slices of x_proj's output, as in the model
    return dict(
        u=r(b, t, e).to(dtype), delta=(r(b, t, e) * 0.5 - 1).to(dtype), A=-torch.exp(r(e, N) * 0.5),
        B=x_dbl[..., 48:48 + N], C=x_dbl[..., 48 + N:], D=r(e), z=r(b, t, e).to(dtype), delta_bias=r(e) * 0.3,
    )


def bytes_moved(b, e, t, elem=2):
    fwd = b * t * (4 * e + 2 * N) * elem
    bwd = b * t * (7 * e + 4 * N) * elem
    return fwd, fwd + bwd


def bench(fn, ms_budget=200):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=ms_budget, return_mode="median")


def triton_fns(mod, inp, dout):
    """Forward and forward+backward closures over a kernel module's launchers (no autograd)."""
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def fwd():
        return mod.scan_fwd(*args, None, True, True)

    def fwd_bwd():
        out, states, chunk = mod.scan_fwd(*args, None, True, True)
        return mod.scan_bwd(*args, None, states, dout, True, chunk)

    return fwd, fwd_bwd


def autograd_fns(scan_fn, inp, dout, before=None):
    """Closures through autograd; the backward returns the gradients (torch.autograd.grad) instead of
    accumulating them into .grad, as inside a model, where these inputs are not leaves."""
    leaves = {k: v.detach().requires_grad_() for k, v in inp.items()}
    args = [leaves[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def fwd():
        if before:
            before()
        return scan_fn(*args)

    def fwd_bwd():
        out = fwd()
        return torch.autograd.grad(out, args, dout)

    return fwd, fwd_bwd


def op_fns(inp, dout, states="recompute", config=None, compiled: bool | str = False):
    """armvision's public op on the Triton backend, through autograd (what a model pays), with the
    chunk states recomputed in the backward (the default) or saved by the forward; ``config``: other
    ops.scan_config keys. ``compiled``: the op inside torch.compile, as the training commands run it: inductor then
    fuses the backward's sums of per-block partials (``finish_scan_grads``) and casts into a few kernels instead of
    running each as its own (eager: about a dozen small kernels per backward); a string names torch.compile's
    backend (the tests use "aot_eager")."""
    from armvision import ops

    def op(*a):
        return ops.selective_scan(*a, delta_softplus=True, backend="triton")

    if compiled:
        op = torch.compile(op, dynamic=False, **({"backend": compiled} if isinstance(compiled, str) else {}))

    def scan(*a):
        with ops.scan_config(**{"states": states, **(config or {})}):  # read at the forward (compiled: at tracing)
            return op(*a)

    return autograd_fns(scan, inp, dout)


def graphed(fn):
    """``fn`` captured once in a CUDA graph (after a warm-up on a side stream, as torch's own capture helpers do);
    returns a closure that replays the graph and returns ``fn``'s outputs (the same buffers, rewritten each time)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


def graphed_op_fns(inp, dout):
    """The eager op (states recomputed), forward and forward + backward each replayed from a CUDA graph: what a
    training step compiled with CUDA graphs (``compile_mode`` reduce-overhead, the one-GPU default) pays for it,
    without the host's launch and autograd time that the eager op's timing can include at small shapes."""
    fwd, fwd_bwd = op_fns(inp, dout)
    return graphed(fwd), graphed(fwd_bwd)


def build_mamba_ssm(src: Path, build_dir: Path):
    """mamba-ssm's ``selective_scan_fn`` on its ``selective_scan_cuda`` built for this GPU from the sdist ``src``
    (.tar.gz or unpacked; benchmarks/_cuda_ext.py)."""
    src = _cuda_ext.unpacked(src, build_dir / "src")
    versions = _cuda_ext.install_reference_packages(src, None, build_dir)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    print(f"mamba-ssm {versions['mamba_ssm']} selective_scan_cuda ready")
    return selective_scan_fn


def mamba_ssm_native_fns(selective_scan_fn, inp, dout):
    """The official kernel in its own layout: (b, e, t) activations, (b, N, t) B and C, contiguous
    (copies made once, outside the timing), through its autograd function."""
    def native(x):
        return x.detach().transpose(1, 2).contiguous().requires_grad_()

    u, delta, z, B, C = (native(inp[k]) for k in ("u", "delta", "z", "B", "C"))
    A, D, delta_bias = (inp[k].detach().clone().requires_grad_() for k in ("A", "D", "delta_bias"))
    d = dout.transpose(1, 2).contiguous()

    def fwd():
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, True)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), (u, delta, A, B, C, D, z, delta_bias), d)

    return fwd, fwd_bwd


def cross_check(selective_scan_fn, shape=(8, 256, 197)):
    """Largest relative difference of outputs and gradients, armvision Triton vs mamba-ssm CUDA (bf16)."""
    from armvision import ops

    b, e, t = shape
    inp = make_inputs(b, e, t, seed=1)
    dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    ours = {k: inp[k].detach().clone().requires_grad_() for k in names}
    out = ops.selective_scan(*[ours[k] for k in names], delta_softplus=True, backend="triton")
    out.backward(dout)
    theirs = {k: (inp[k].detach().transpose(1, 2).contiguous() if inp[k].dim() == 3 else inp[k].detach().clone())
              .requires_grad_() for k in names}
    ref = selective_scan_fn(*[theirs[k] for k in names], True)
    ref.backward(dout.transpose(1, 2).contiguous())

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()

    diffs = {"out": rel(out, ref.transpose(1, 2))}
    for k in names:
        g = theirs[k].grad.transpose(1, 2) if inp[k].dim() == 3 else theirs[k].grad
        diffs["d" + k] = rel(ours[k].grad, g)
    print(f"cross-check at b={b} e={e} t={t} (bf16), relative L2 difference, Triton vs mamba-ssm CUDA: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


def sweep(shape, configs_fwd, configs_bwd, chunk_lengths):
    """Time the Triton kernels over launch configurations; returns the best (BT, fwd, bwd)."""
    from armvision.ops import scan_triton as st

    b, e, t = shape
    inp = make_inputs(b, e, t)
    dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    rows, best = [], None
    for BT in chunk_lengths:
        fwd_times = {}
        for cfg in configs_fwd:
            try:
                fwd_times[cfg] = bench(lambda: st.scan_fwd(*args, None, True, True, chunk=BT, block=cfg), 100)
            except Exception as ex:  # noqa: BLE001 - a sweep reports failing configs and goes on
                print(f"  BT={BT} fwd={cfg}: {type(ex).__name__}: {str(ex)[:120]}")
        if not fwd_times:
            continue
        best_fwd = min(fwd_times, key=fwd_times.get)
        _, states, chunk = st.scan_fwd(*args, None, True, True, chunk=BT, block=best_fwd)
        for cfg in configs_bwd:
            try:
                tb = bench(lambda: st.scan_bwd(*args, None, states, dout, True, chunk, cfg), 100)
            except Exception as ex:  # noqa: BLE001
                print(f"  BT={BT} bwd={cfg}: {type(ex).__name__}: {str(ex)[:120]}")
                continue
            total = fwd_times[best_fwd] + tb
            rows.append((BT, best_fwd, cfg, fwd_times[best_fwd], tb, total))
            if best is None or total < best[-1]:
                best = (BT, best_fwd, cfg, total)
        for cfg, tf in sorted(fwd_times.items(), key=lambda kv: kv[1]):
            print(f"  BT={BT:3d} fwd (BE, warps)={cfg}: {tf:.3f} ms")
    print(f"\nsweep at b={b} e={e} t={t} (bf16): BT, fwd cfg, bwd cfg -> fwd ms, bwd ms, total")
    for r in sorted(rows, key=lambda r: r[-1]):
        print(f"  BT={r[0]:3d} fwd={r[1]} bwd={r[2]}: {r[3]:.3f} + {r[4]:.3f} = {r[5]:.3f} ms")
    return best


# Candidates for the long-sequence gap: (name, BT, fwd (BE, warps, stages), bwd (...), seg).
# seg > 1: the forward checkpoints the fp32 state every seg chunks and the backward rebuilds each
# segment's chunk states in a per-program scratch (L2-resident) instead of reading one fp32 state per
# chunk (32 bytes per (b, t, e) element at BT 2, N 16) from HBM. "base" is the current default.
CANDIDATES = [
    ("base", 2, (32, 1, 1), (16, 1, 1), 1),
    ("seg4", 2, (32, 1, 1), (16, 1, 1), 4),
    ("seg8", 2, (32, 1, 1), (16, 1, 1), 8),
    ("seg16", 2, (32, 1, 1), (16, 1, 1), 16),
    ("seg32", 2, (32, 1, 1), (16, 1, 1), 32),
    ("seg8_bwd32", 2, (32, 1, 1), (32, 1, 1), 8),
    ("bt4", 4, (32, 1, 1), (16, 1, 1), 1),
    ("bt4_seg8", 4, (32, 1, 1), (16, 1, 1), 8),
    ("bt4_seg8_bwd8", 4, (32, 1, 1), (8, 1, 1), 8),
]
def candidate_sweep(json_path: Path | None = None) -> list[dict]:
    """Forward+backward ms of each candidate at the five shapes, as a model runs it (states recomputed in the
    backward: forward, states pass, backward) and with the states saved by the forward; prints one table per mode
    with each candidate's ratio to "base" (the default) timed in the same run, and the best candidate per shape."""
    from armvision.ops import scan_triton as st

    rows = []
    for b, e, t in SHAPES:
        inp = make_inputs(b, e, t)
        dout = torch.randn(b, t, e, device=inp["u"].device, dtype=torch.bfloat16)
        a = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        for name, BT, fwd_cfg, bwd_cfg, seg in CANDIDATES:
            def save_mode(BT=BT, fwd_cfg=fwd_cfg, bwd_cfg=bwd_cfg, seg=seg, a=a, dout=dout):
                _, states, _ = st.scan_fwd(*a, None, True, True, chunk=BT, block=fwd_cfg, seg=seg)
                return st.scan_bwd(*a, None, states, dout, True, BT, block=bwd_cfg, seg=seg)

            def recompute_mode(BT=BT, fwd_cfg=fwd_cfg, bwd_cfg=bwd_cfg, seg=seg, a=a, dout=dout):
                st.scan_fwd(*a, None, True, False, chunk=BT, block=fwd_cfg)
                states = st.scan_fwd(*a, None, True, True, write_out=False, chunk=BT, block=fwd_cfg, seg=seg)[1]
                return st.scan_bwd(*a, None, states, dout, True, BT, block=bwd_cfg, seg=seg)

            try:
                r = dict(b=b, e=e, t=t, candidate=name, BT=BT, fwd=fwd_cfg, bwd=bwd_cfg, seg=seg,
                         save_ms=bench(save_mode, 100), recompute_ms=bench(recompute_mode, 100))
            except Exception as ex:  # noqa: BLE001 - a sweep reports failing candidates and goes on
                print(f"  {b}x{e}x{t} {name}: {type(ex).__name__}: {str(ex)[:160]}", flush=True)
                continue
            rows.append(r)
            print(f"  {b}x{e}x{t} {name:>14}: save {r['save_ms']:.3f} ms, recompute {r['recompute_ms']:.3f} ms",
                  flush=True)
        del inp, dout, a
        torch.cuda.empty_cache()
    by = {(r["b"], r["e"], r["t"], r["candidate"]): r for r in rows}
    for mode in ("recompute", "save"):
        print(f"\nfwd+bwd ms, states {mode} (ratio to the default launch, 'base', in this run)")
        print("| candidate | " + " | ".join(f"{b}x{e}x{t}" for b, e, t in SHAPES) + " |")
        print("|---|" + "---|" * len(SHAPES))
        for name, *_ in CANDIDATES:
            cells = []
            for b, e, t in SHAPES:
                r, base = by.get((b, e, t, name)), by.get((b, e, t, "base"))
                cells.append("-" if r is None else f"{r[f'{mode}_ms']:.3f}" +
                             (f" ({r[f'{mode}_ms'] / base[f'{mode}_ms']:.2f})" if base else ""))
            print(f"| {name} | " + " | ".join(cells) + " |")
        for b, e, t in SHAPES:
            cand = [r for r in rows if (r["b"], r["e"], r["t"]) == (b, e, t)]
            if cand:
                best = min(cand, key=lambda r: r[f"{mode}_ms"])
                print(f"  best at {b}x{e}x{t}: {best['candidate']} {best[f'{mode}_ms']:.3f} ms")
    if json_path:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        json_path.write_text(json.dumps(dict(device=device, candidates=CANDIDATES, rows=rows), indent=1))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="time the candidates (CANDIDATES) at the five anchor shapes "
                                                         "and stop (with --json: write them there)")
    ap.add_argument("--config-sweep", action="store_true", help="sweep launch configs at one shape first, use the best")
    ap.add_argument("--no-torch", action="store_true", help="skip the (slow) plain-PyTorch baseline")
    ap.add_argument("--no-save", action="store_true", help="skip the op with states='save' (op_save)")
    ap.add_argument("--compiled-op", action="store_true",
                    help="also time the op inside torch.compile, as the training commands run it (op_compiled)")
    ap.add_argument("--graphed-op", action="store_true",
                    help="also time the eager op replayed from CUDA graphs, as a step under reduce-overhead runs it "
                         "(op:graphed)")
    ap.add_argument("--op-config", nargs="*", default=[], metavar="NAME=JSON",
                    help="also time the op (as triton_op) inside ops.scan_config(**JSON), as impl op:NAME, e.g. "
                         "states16='{\"states_block\": [16, 1, 1]}'")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--mamba-ssm-src", type=Path, help="mamba-ssm sdist (.tar.gz or unpacked): build its CUDA scan "
                                                       "kernel for this GPU and time it in the same run")
    ap.add_argument("--build-dir", type=Path, default=Path("build/mamba_ssm_cuda"),
                    help="where --mamba-ssm-src builds (reused when up to date)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU: it times the scan kernels (and mamba-ssm's, with --mamba-ssm-src) on one card")

    from armvision import ops
    from armvision.ops import scan_triton as st

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {importlib.import_module('triton').__version__}")
    launch = {}
    if args.sweep:
        candidate_sweep(args.json)
        return
    if args.config_sweep:
        best = sweep((256, 768, 128), [(32, 1), (64, 2), (128, 4)], [(32, 1), (64, 2), (16, 1)], [4, 8])
        if best:
            launch = dict(BT=best[0], fwd=best[1], bwd=best[2])
    with ops.scan_config(**launch):  # the sweep's best (or the defaults) for the rest of the run
        _measure(args, st)


def _measure(args, st):
    print(f"launch config: {st.scan_launch_config()}")
    device = torch.cuda.get_device_name()

    impls = {"triton": lambda inp, dout: triton_fns(st, inp, dout), "triton_op": op_fns}
    if not args.no_save:
        impls["op_save"] = lambda inp, dout: op_fns(inp, dout, "save")
    if args.compiled_op:
        impls["op_compiled"] = lambda inp, dout: op_fns(inp, dout, compiled=True)
    if args.graphed_op:
        impls["op:graphed"] = graphed_op_fns
    for item in args.op_config:
        name, _, text = item.partition("=")
        cfg = json.loads(text)
        impls[f"op:{name}"] = lambda inp, dout, cfg=cfg: op_fns(inp, dout, config=cfg)
    if args.mamba_ssm_src:
        scan_fn = build_mamba_ssm(args.mamba_ssm_src, args.build_dir)
        cross_check(scan_fn)
        impls["cuda_ref"] = lambda inp, dout: mamba_ssm_native_fns(scan_fn, inp, dout)
    else:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            impls["cuda_ref"] = lambda inp, dout: mamba_ssm_native_fns(selective_scan_fn, inp, dout)
        except ImportError:
            pass
    if not args.no_torch:
        impls["torch"] = lambda inp, dout: autograd_fns(scan_ref_module.selective_scan_torch, inp, dout)

    results = []
    header = (f"{'b':>4} {'e':>5} {'t':>5} | {'impl':>10} | {'fwd ms':>8} {'fwd+bwd ms':>10} | {'fwd GB/s':>8} "
              f"{'f+b GB/s':>8} | {'vs CUDA':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    for b, e, t in SHAPES:
        inp = make_inputs(b, e, t)
        dout = torch.randn(b, t, e, device="cuda", dtype=torch.bfloat16)
        fb, fbb = bytes_moved(b, e, t)
        ref = None
        for name, make in sorted(impls.items(), key=lambda kv: kv[0] != "cuda_ref"):  # the reference first
            budget = 50 if name == "torch" else 200
            try:
                fwd, fwd_bwd = make(inp, dout)
                tf, tfb = bench(fwd, budget), bench(fwd_bwd, budget)
            except Exception as err:  # noqa: BLE001 - an optional variant's failure must not cost the table
                if name in ("cuda_ref", "triton", "triton_op"):
                    raise
                print(f"{b:>4} {e:>5} {t:>5} | {name:>10} | failed: {type(err).__name__}: {err}"[:300], flush=True)
                results.append(dict(b=b, e=e, t=t, impl=name, error=f"{type(err).__name__}: {err}"[:300]))
                continue
            ref = tfb if name == "cuda_ref" else ref
            ratio = tfb / ref if ref else None
            results.append(dict(b=b, e=e, t=t, impl=name, fwd_ms=tf, fwd_bwd_ms=tfb, ratio_to_cuda=ratio))
            print(f"{b:>4} {e:>5} {t:>5} | {name:>10} | {tf:>8.3f} {tfb:>10.3f} | {fb / tf / 1e6:>8.0f} "
                  f"{fbb / tfb / 1e6:>8.0f} | {'-' if ratio is None else f'{ratio:.2f}':>7}", flush=True)
            if args.json:  # written as it goes: a later failure keeps the rows measured
                args.json.write_text(json.dumps(dict(config=st.scan_launch_config(), device=device,
                                                     results=results), indent=1))
        del inp, dout
        torch.cuda.empty_cache()
    print("\nimpl: triton = the kernel launchers alone (forward saving the chunk states, backward); triton_op = "
          "armvision's op through autograd as a model calls it (states recomputed in the backward: the default); "
          "op_save = the same inside ops.scan_config(states='save'); op_compiled = triton_op inside torch.compile "
          "(the backward's partial sums fused by inductor, as in a compiled model); op:graphed = triton_op replayed "
          "from CUDA graphs (no host time, as in a step under reduce-overhead); op:NAME = triton_op under --op-config "
          "NAME; cuda_ref = mamba-ssm's selective_scan_fn through autograd in its own (b, e, t) layout")
    if "cuda_ref" in impls:
        print(f"vs CUDA = fwd+bwd time / cuda_ref's fwd+bwd at the same shape in this run, on {device}; "
              f"target <= {TARGET_RATIO}")
    else:
        print("no ratios: mamba-ssm's kernel was not available (pass --mamba-ssm-src)")

if __name__ == "__main__":
    main()
