"""Compile armvision's Triton scan and conv kernels for sm_90 WITHOUT a GPU and print ptxas's resource report.

Usage: python tools/inspect_triton.py BT,BE,WARPS[,SEG[,CPT[,MAXNREG[,CARRY[,GROUP[,STEP]]]]]] [...]   (e.g. 2,32,1
       2,16,1,1,2,0,1: the default forward and backward (two channels per thread, launch key bwd_cpt=2, with carried
       decays, bwd_decay "carry"); 2,16,1: the backward with one channel per thread and recomputed decays (the
       default before 2026-12-07); MAXNREG: the backward's register cap, launch key bwd_maxnreg, 0 for the launch's
       own; GROUP: the two-channel backward's dB/dC partial sums added atomically per GROUP channel blocks, launch
       key dbc_group, 1 (default) for a store per block); STEP 1: the recurrences step by step, launch key
       recurrence "step" (the forward's and the recomputation's states, the two-channel backward's adjoint))
       python tools/inspect_triton.py conv:BE,WARPS [...]      (e.g. conv:128,1: the causal conv's default)
Prints registers, spills, the warps per SM those registers leave room for, and per-iteration instruction counts
(shuffles, exp2, shared memory; the layout conversions of the time loop's TTGIR and the SASS barriers they cost) of
the forward (``fwd``: keeping its states, as under states="save"; ``fwd nosave``: training's default, the states
recomputed later), the recomputation (``states``) and the backward: the cheapest way to compare launch
configurations before a GPU run. For the conv, also the SASS instructions of the time loop's body per (step,
channel) element.
"""

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from armvision.ops import conv_triton as ct
from armvision.ops import scan_triton as st

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
BF, F32 = "*bf16", "*fp32"
PTRS = dict(u_ptr=BF, dl_ptr=BF, At_ptr=F32, B_ptr=BF, C_ptr=BF, D_ptr=F32, z_ptr=BF, bias_ptr=F32, idx_ptr="*i32",
            out_ptr=BF, st_ptr=F32, go_ptr=BF, du_ptr=BF, ddl_ptr=BF, dz_ptr=BF, dB_ptr=F32, dC_ptr=F32, dA_ptr=F32,
            dD_ptr=F32, dbias_ptr=F32, scr_ptr=F32, x_ptr=BF, w_ptr=F32, b_ptr=F32, dx_ptr=BF, part_ptr=F32)


# what Triton's runtime specialisation would see for the usual shapes: 16-byte aligned pointers
# and strides that are multiples of 16 (E, 2E, t*E ...); T and N are left unspecialised
ALIGNED_INTS = {"E", "s_ub", "s_ut", "s_db", "s_dt", "s_zb", "s_zt", "s_ob", "s_ot", "s_gb", "s_gt", "s_Bb", "s_Cb",
                "s_xb", "s_xt"}


def compile_kernel(fn, consts, warps, **options):
    sig = {nm: "constexpr" if nm in consts else PTRS.get(nm, "i32") for nm in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, nm in enumerate(fn.arg_names)
             if nm in PTRS or nm in ALIGNED_INTS}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=1, **options))


def resident_warps(registers: int, warps: int) -> int:
    """Warps per SM that ``registers`` per thread leave room for on sm_90: each of the SM's 4 quadrants has 16,384
    registers, given to a warp in units of 256 (per thread rounded up to 8); at most 32 programs of ``warps`` warps
    and 64 warps per SM. Shared memory can lower it further; the scan kernels use little."""
    per_warp = -(-registers // 8) * 8 * 32
    by_registers = 4 * (16384 // per_warp)
    return min(64, min(32, by_registers // warps) * warps)


def report(k):
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    info = [ln.split("info    : ")[-1] for ln in r.stderr.splitlines() if "registers" in ln or "spill" in ln]
    ptx = k.asm["ptx"]
    counts = {op: ptx.count(op) for op in ("ld.global", "shfl.sync", "ex2.approx", "st.shared", "ld.shared",
                                           "bar.sync")}
    used = re.search(r"Used (\d+) registers", r.stderr)
    occupancy = f" | {resident_warps(int(used.group(1)), k.metadata.num_warps)} warps per SM by registers" if used else ""
    return " | ".join(info) + occupancy + " | " + " ".join(f"{k}={v}" for k, v in counts.items())


def sass_mix(sass: str, top=12):
    """Instruction mix of a kernel's SASS text (static counts)."""
    import collections

    instr = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", re.M)
    ops = collections.Counter(m.group(1).split(".")[0] for m in instr.finditer(sass))
    return ", ".join(f"{op} {n}" for op, n in ops.most_common(top))


def _disassemble(k) -> str:
    """The kernel's SASS, via nvdisasm (run once per kernel: the counts below all read this text)."""
    nvdisasm = os.path.join(os.path.dirname(PTXAS), "nvdisasm")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True).stdout


def loop_body(sass: str) -> list[str]:
    """The SASS lines of the kernel's longest block that ends in a branch: the time loop's body."""
    body, cur = [], []
    for line in sass.splitlines():
        if re.match(r"^\.L_x_\d+:", line):
            cur = []
        elif re.match(r"\s+/\*[0-9a-f]+\*/", line):
            cur.append(line)
            if "BRA" in line and len(cur) > len(body):
                body = cur
    return body


def loop_conversions(ttgir: str) -> int:
    """Layout conversions (``ttg.convert_layout``) in the body of the kernel's first ``scf.for`` (the time loop) in
    its TTGIR: a conversion between two register layouts goes through shared memory (a store, a barrier, a load) or
    shuffles, on the loop's critical path."""
    depth, n = None, 0
    for line in ttgir.splitlines():
        if depth is None:
            if "scf.for" not in line:
                continue
            depth = 0
        n += "ttg.convert_layout" in line
        depth += line.count("{") - line.count("}")
        if depth <= 0:
            break
    return n


def conv_report(BE, W):
    for which, fn in (("conv fwd", ct._conv_fwd_kernel), ("conv bwd", ct._conv_bwd_kernel)):
        k = compile_kernel(fn, dict(K=4, HAS_BIAS=True, HAS_IDX=False, SILU=True, BE=BE), W)
        sass = _disassemble(k)
        per = len(loop_body(sass)) / (4 * max(BE // (32 * W), 1))  # 4 steps per iteration
        print(f"{which} BE={BE} warps={W}: {report(k)} | loop instructions per element {per:.1f}")
        print("     ", sass_mix(sass, 14))


def _ints(text: str, arg: str, most: int) -> list[int]:
    try:
        given = [int(v) for v in text.split(",")]
    except ValueError:
        given = []
    if not 2 <= len(given) <= most:
        sys.exit(f"inspect_triton: error: {arg!r} is not a launch (see --help)")
    return given


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    for arg in sys.argv[1:] or ["16,32,1"]:
        if arg.startswith("conv:"):
            conv_report(*_ints(arg[5:], arg, 2))
            continue
        given = _ints(arg, arg, 9)
        if len(given) < 3:
            sys.exit(f"inspect_triton: error: {arg!r} is not a launch: BT,BE,WARPS at least (see --help)")
        BT, BE, W, SEG, CPT, CAP, CARRY, GROUP, STEP = (given + [1, 1, 0, 0, 1, 0][max(0, len(given) - 3):])[:9]
        # fwd: the forward saving its states (states="save"); fwd nosave: the forward of training's default (states
        # recomputed later); states: the backward's recomputation (no output written)
        bwd = ("bwd cpt=2", st._scan_bwd_kernel2) if CPT == 2 else ("bwd", st._scan_bwd_kernel)
        for which, fn in (("fwd", st._scan_fwd_kernel), ("fwd nosave", st._scan_fwd_kernel),
                          ("states", st._scan_fwd_kernel), bwd):
            consts = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_IDX=False, SOFTPLUS=True, NP=16, BT=BT, BE=BE,
                          SEG=SEG)
            if which != "bwd":  # the one-channel backward has no step-by-step form
                consts["STEPWISE"] = bool(STEP)
            if which.startswith("bwd"):
                consts["CARRY_DA"] = bool(CARRY)
            if which == "bwd cpt=2":
                consts["GROUP"] = max(1, GROUP)
            if not which.startswith("bwd"):
                consts["SAVE"] = which != "fwd nosave"
                consts["WRITE_OUT"] = which != "states"
            try:
                # the backward's default register cap (scan_triton.default_bwd_maxnreg) unless MAXNREG is given
                cap = CAP or (st.default_bwd_maxnreg(CPT, bool(CARRY)) or 0)
                extra = dict(maxnreg=cap) if cap and which.startswith("bwd") else {}
                k = compile_kernel(fn, consts, W, **extra)
                sass = _disassemble(k)
                body = loop_body(sass)
                bars = sum(" BAR" in ln for ln in body)
                step = " STEP" if STEP and which != "bwd" else ""
                print(f"{which} BT={BT} BE={BE} warps={W} SEG={SEG}{step}: {report(k)}, loop {len(body)} instructions, "
                      f"{loop_conversions(k.asm['ttgir'])} layout conversions, {bars} barriers")
                print("     ", sass_mix(sass, 14))
            except Exception as ex:  # noqa: BLE001 - a report tool: show the failure and go on
                print(f"{which} BT={BT} BE={BE} warps={W}: FAILED {type(ex).__name__}: {str(ex)[:200]}")

