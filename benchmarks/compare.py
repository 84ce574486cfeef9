"""armvision against the reference, in one run on one card: the table of ratios benchmarks/README.md reports.

One command (about 8-9 minutes on one H100/H200 with 16 cores) that:

1. builds the reference's CUDA kernels from their sdists for this GPU (mamba-ssm's ``selective_scan_cuda``,
   causal-conv1d's ``causal_conv1d_cuda``; benchmarks/_cuda_ext.py), in two background processes;
2. meanwhile makes the JPEGs and times armvision's training step alone (benchmarks/train_step.py, compiled with
   CUDA graphs) for each ``--variants`` entry: the same model under other switches (environment variables,
   docs/kernels.md), so old and new are timed beside each other (the build takes CPU, not GPU time; a replayed
   graph does not wait for the host); with ``--image-inputs`` also the default's step on one batch of the JPEGs
   instead of random numbers (benchmarks/_inputs.py), and the reference's likewise after its usual run;
3. once built: the scan at the five shapes, mamba-ssm's kernel beside armvision's op (benchmarks/scan.py); the
   official ARM code's training steps (benchmarks/reference.py); ``armvision pretrain`` / ``finetune`` on the
   JPEGs (benchmarks/train_cli.py); then GPU tests (``--tests``) while time is left;
4. prints one table of ratios, each against the reference timed here, with the card's name, and writes everything
   as it goes into ``--out``: compare.json (all results), details.log (every subprocess's output).

    python benchmarks/compare.py --out OUT --arm-src ARM --mamba-ssm-src mamba_ssm-2.3.2.post1.tar.gz \\
        --causal-conv1d-src causal_conv1d-1.7.0.tar.gz

``--budget`` seconds (default 530): a step whose estimated time no longer fits is skipped and marked so. The
official ARM code is not part of armvision: pass a checkout. benchmarks/device_call.sh is the command for a lent
GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _clocks import ClockSampler  # noqa: E402
from _clocks import md_table  # noqa: E402
from _clocks import table_lines as clock_lines  # noqa: E402

# name -> environment of a variant: the switches of docs/kernels.md ("Switches for A/B runs")
VARIANTS = {
    "default": {},
    "before": {"ARMVISION_SCAN_CONFIG": '{"sums": "op", "bwd_cpt": 1, "bwd_decay": "recompute"}',
               "ARMVISION_CONV_CONFIG": '{"sums": "op"}', "ARMVISION_IN_PROJ": "fused"},
    "sums_op": {"ARMVISION_SCAN_CONFIG": '{"sums": "op"}', "ARMVISION_CONV_CONFIG": '{"sums": "op"}'},
    "fused": {"ARMVISION_IN_PROJ": "fused"},
    "combo": {"ARMVISION_INDUCTOR": '{"combo_kernels": true}'},
    "states16": {"ARMVISION_SCAN_CONFIG": '{"states_block": [16, 1, 1]}'},
    "save": {"ARMVISION_SCAN_CONFIG": '{"states": "save"}'},
    "swiglu": {"ARMVISION_SWIGLU": "fused"},
    # the scan backward's kernels: channels per thread and how the adjoint gets its next-step decays (the default
    # since 2026-12-07 is cpt2c; rec1 is the one before)
    "rec1": {"ARMVISION_SCAN_CONFIG": '{"bwd_cpt": 1, "bwd_decay": "recompute"}'},
    "carry": {"ARMVISION_SCAN_CONFIG": '{"bwd_cpt": 1, "bwd_decay": "carry"}'},
    "cpt2": {"ARMVISION_SCAN_CONFIG": '{"bwd_cpt": 2, "bwd_decay": "recompute"}'},
    "cpt2c": {"ARMVISION_SCAN_CONFIG": '{"bwd_cpt": 2, "bwd_decay": "carry"}'},
    "cpt2_r168": {"ARMVISION_SCAN_CONFIG": '{"bwd_cpt": 2, "bwd_decay": "recompute", "bwd_maxnreg": 168}'},
    # the chunk states every second chunk: half the states written and read; the two-channel backward rebuilds an odd
    # chunk's entering state in registers from the chunk before
    "seg2": {"ARMVISION_SCAN_CONFIG": '{"seg": 2}'},
    "save_seg2": {"ARMVISION_SCAN_CONFIG": '{"states": "save", "seg": 2}'},
    "seg2_combo": {"ARMVISION_SCAN_CONFIG": '{"seg": 2}', "ARMVISION_INDUCTOR": '{"combo_kernels": true}'},
    "save_seg2_combo": {"ARMVISION_SCAN_CONFIG": '{"states": "save", "seg": 2}',
                        "ARMVISION_INDUCTOR": '{"combo_kernels": true}'},
    # the backward's dB / dC partial sums added atomically per 4 channel blocks, or all of them into one block (at
    # 256 x 768 x 128: 200 MB of partials written and read again per call, 48 blocks of 16 channels)
    "dbc4": {"ARMVISION_SCAN_CONFIG": '{"dbc_group": 4}'},
    "dbc1": {"ARMVISION_SCAN_CONFIG": '{"dbc_group": 1}'},  # a dB/dC partial block per channel block (as before)
    "dbc_all": {"ARMVISION_SCAN_CONFIG": '{"dbc_group": 1024}'},
    "save_dbc4": {"ARMVISION_SCAN_CONFIG": '{"states": "save", "dbc_group": 4}'},
    # chunks of 4 steps: half the chunk states of BT 2 (the recomputation writes 403 MB instead of 805 at 256 x 768 x
    # 128, the backward reads half), about the same instructions per step (tools/inspect_triton.py, sm_90: 1221 per
    # 4-step iteration against 652 per 2), but 255 registers instead of 168: uncapped, as at the default cap of 168
    # the two-channel backward spills 440 bytes
    "bt4": {"ARMVISION_SCAN_CONFIG": '{"BT": 4, "bwd_maxnreg": 255}'},
    "save_bt4": {"ARMVISION_SCAN_CONFIG": '{"BT": 4, "bwd_maxnreg": 255, "states": "save"}'},  # half save's memory
    # BT 4 with the backward in blocks of 8 channels: 168 registers (an 8-byte spill), so 12 warps per SM as today's
    # default, for more instructions per channel step (752 per 8 x 4 against 1221 per 16 x 4)
    "bt4_be8": {"ARMVISION_SCAN_CONFIG": '{"BT": 4, "bwd": [8, 1, 1]}'},
    # each chunk's recurrences step by step (one multiply-add per step and element) instead of associative scans: the
    # forward, the states' recomputation and the two-channel backward's adjoint; ptxas (sm_90, Triton 3.8) counts 386
    # instead of 423 instructions per forward iteration, 279 instead of 332 for the recomputation (96 registers
    # instead of 121: 20 warps per SM instead of 16), 635 instead of 652 for the backward (2026-12-08, not yet run)
    "step": {"ARMVISION_SCAN_CONFIG": '{"recurrence": "step"}'},
    # the SwiGLU gate's backward with the gradients of w1's and w2's biases in one kernel (ops/swiglu.py): no
    # separate column sums re-reading the two 32,768 x 2,048 bf16 gradients (run U's profile: 24 sums a step, 47 us
    # each); not yet run on a GPU. step_gate: both
    "gate": {"ARMVISION_SWIGLU_GATE": "kernel"},
    "step_gate": {"ARMVISION_SCAN_CONFIG": '{"recurrence": "step"}', "ARMVISION_SWIGLU_GATE": "kernel"},
    "cdt": {"ARMVISION_INDUCTOR": '{"coordinate_descent_tuning": true}'},
    "aggr": {"ARMVISION_INDUCTOR": '{"aggressive_fusion": true}'},  # fusions that share fewer buffers too
    "autotune": {"ARMVISION_INDUCTOR": '{"max_autotune": true}'},
    # inductor times Triton templates against cuBLAS for the matrix products only (no pointwise autotuning)
    "autotune_gemm": {"ARMVISION_INDUCTOR": '{"max_autotune_gemm": true}'},
}
# estimated seconds of each step on one H100/H200 with 16 cores (the longest in the logs of 2026-12-06/07), for the
# budget; the scan took 37-45 s with its compiled op in runs M and N, the rest is room for its graphed op and the bt4
# op variant (not yet run on a GPU); train_step and the reference include --warm-seconds' 5 s since 2026-12-08
ESTIMATE = {"train_step": 100, "scan": 90, "ref_pretrain": 30, "ref_finetune": 25, "pretrain_b": 170,
            "finetune_b": 200, "pretrain_l": 190, "tests": 130, "numerics": 60}
# model-only variants longer than one call may give them: max_autotune times every matrix product's candidate kernels
# while it compiles (ARM-B pretraining on an H100, 2026-12-07: 368 s for the first 29 products, stopped at 480 s;
# autotune_gemm: 353 s for 30 products), coordinate-descent tuning each of inductor's own kernels (cdt: still tuning
# after 240 s). Such a variant runs until --shadow-until if at least LONG_VARIANT_MIN s of it are left; what it tuned
# is kept (_autotune_cache.py), so a later call goes on from there.
LONG_VARIANTS = ("autotune", "autotune_gemm", "cdt")
LONG_VARIANT_MIN = 120
CLI_STEPS = {"pretrain_b": (40, 8), "finetune_b": (30, 6), "pretrain_l": (24, 6)}  # (steps, steps per window)
BEST_MARGIN = 1.01  # --cli-variants best: a variant at least 1 % faster than default, model alone
ENERGY_MIN_SAMPLES = 10  # busy clock samples (250 ms apart) a side needs for its energy per image
TARGET = 2.0  # at least twice the reference's images/s; the scan at most half the CUDA kernel's time


def first_variant_args(args: argparse.Namespace, workload: str, variant: str, index: int) -> list[str]:
    """train_step.py's extra arguments for the ``index``-th model-only variant of a workload: the first one is
    profiled (--profile-steps) and its generated code kept (--inductor-code, in OUT/inductor_code/WORKLOAD_VARIANT)."""
    if index:
        return []
    return (["--profile", str(args.profile_steps)] if args.profile_steps else []) + (
        ["--inductor-code", str(args.out / "inductor_code" / f"{workload}_{variant}")] if args.inductor_code else [])


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and every process of its session (it was started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


class Run:
    """Subprocesses with their output appended to details.log, results kept in compare.json, and the time left."""

    def __init__(self, out: Path, budget: float, work: Path):
        self.out, self.work, self.t0, self.budget = out, work, time.perf_counter(), budget
        self.details = out / "details.log"
        self.res: dict = {"steps": [], "skipped": []}
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def fits(self, what: str, estimate: float) -> bool:
        if self.elapsed() + estimate <= self.budget:
            return True
        self.res["skipped"].append(what)
        print(f"[{self.elapsed():4.0f} s] skipped {what}: about {estimate:.0f} s, {self.budget - self.elapsed():.0f} s "
              "left of the budget", flush=True)
        self.save()
        return False

    def save(self) -> None:
        self.res["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "compare.json").write_text(json.dumps(self.res, indent=1))

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
        env.update(extra or {})
        return env

    def call(self, what: str, cmd: list[str], timeout: float, extra_env: dict | None = None) -> int:
        t = time.perf_counter()
        print(f"[{self.elapsed():4.0f} s] {what}: {' '.join(cmd[1:])[:200]}", flush=True)
        with open(self.details, "a") as log:
            log.write(f"\n===== {what} ({time.strftime('%H:%M:%S')}): {' '.join(cmd)}\n")
            log.flush()
            # a session of its own, so that a timeout stops what it started too (torchrun's workers, pytest's
            # subprocesses), which would otherwise keep the GPU busy for the steps after it
            slug = "".join(ch if ch.isalnum() else "_" for ch in what)
            with ClockSampler(self.work / f"clocks_{slug}.csv") as clocks:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(extra_env), cwd=ROOT,
                                        start_new_session=True)
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    rc = -9
                    log.write(f"\n===== {what}: stopped after {timeout:.0f} s\n")
        if clocks.summary.get("samples"):
            self.res.setdefault("clocks", {})[what] = clocks.summary
        secs = time.perf_counter() - t
        self.res["steps"].append({"what": what, "exit_code": rc, "seconds": round(secs, 1)})
        print(f"[{self.elapsed():4.0f} s] {what}: exit {rc} after {secs:.0f} s", flush=True)
        self.save()
        return rc

    def start(self, what: str, cmd: list[str]) -> subprocess.Popen:
        print(f"[{self.elapsed():4.0f} s] started {what}", flush=True)
        log = open(self.work / f"{what}.log", "w")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT,
                                start_new_session=True)

    def finish(self, what: str, proc: subprocess.Popen, timeout: float) -> int:
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = -9
        with open(self.details, "a") as log:
            log.write(f"\n===== {what}\n" + (self.work / f"{what}.log").read_text())
        self.res["steps"].append({"what": what, "exit_code": rc, "seconds": round(self.elapsed(), 1)})
        print(f"[{self.elapsed():4.0f} s] {what}: exit {rc}", flush=True)
        self.save()
        return rc


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cli_variants(wanted: list[str], measured: dict, variant_workloads: list[str]) -> list[str]:
    """The switch sets the commands run under: ``wanted`` in order, each once, with ``best`` replaced by the fastest
    model-only variant (``measured``: train_step.py's rows by ``workload:variant``) of the first variant workload
    when it beats ``default``, timed in the same call, by at least ``BEST_MARGIN`` (a command run costs minutes: not
    for a tie within the noise, nor against a default this call did not time), else by ``default``; dropped when that
    is already run or not wanted."""
    names = []
    for v in wanted:
        if v == "best":
            w = variant_workloads[0] if variant_workloads else None
            timed = {k.split(":", 1)[1]: r["images_per_s"] for k, r in measured.items()
                     if w and k.startswith(w + ":") and r.get("images_per_s")}
            v = max(timed, key=timed.get) if "default" in timed else "default"
            if v != "default" and timed[v] < BEST_MARGIN * timed["default"]:
                v = "default"
            if v == "default" and "default" not in wanted:
                continue
        if v not in names:
            names.append(v)
    return names


def cli_key(workload: str, variant: str, workers: int, main_workers: int) -> str:
    """A command run's key in compare.json's ``cli``: the workload, then ``:variant`` for a switch set other than
    ``default``, ``:workersN`` for a loader other than ``--workers``'s."""
    key = workload if variant == "default" else f"{workload}:{variant}"
    return key if workers == main_workers else f"{key}:workers{workers}"


def _cli_name(key: str) -> str:
    """The table's name of a command run (:func:`cli_key`)."""
    parts = key.split(":")
    name = parts[0]
    for p in parts[1:]:
        n = p.removeprefix("workers")
        name += f", {n} loader workers" if n != p and n.isdigit() else f" under {p}"
    return name


def _f(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def _step_split(res: dict) -> list[str]:
    """Where each command's step goes (medians of its windows after the first): its wall time, the GPU span of
    its steps (the trainer's CUDA events, from where the GPU reaches the step to its update), the GPU idle between steps
    (the difference) and the host's wait for the loader; beside the model alone's step timed in the same call."""
    alone = {r.get("workload"): r.get("ms") for k, r in res.get("train_step", {}).items() if k.endswith(":default")}
    return md_table(["command's step, ms (medians over windows)", "wall", "GPU span", "GPU idle between steps",
                     "host waiting for the loader", "model alone (train_step.py)"],
                    [[_cli_name(name), f"{r['wall_ms']:.1f}", f"{r['gpu_ms']:.1f}", _f(r.get("idle_ms"), "{:.1f}"),
                      _f(r.get("data_wait_ms"), "{:.1f}"), _f(alone.get(name.split(":", 1)[0]), "{:.1f}")]
                     for name, r in res.get("cli", {}).items() if r.get("wall_ms") and r.get("gpu_ms") is not None])


def _inputs_table(res: dict) -> list[str]:
    """The model alone and the reference on random numbers (the call's usual rows) and on one batch of images
    (``--image-inputs``), each workload timed both ways in the same call."""
    inputs = res.get("inputs") or {}
    alone_img, ref_img = inputs.get("train_step") or {}, {r.get("workload"): r for r in inputs.get("reference") or []}
    ref = {r.get("workload"): r for r in res.get("reference") or []}
    rows = []
    for w in dict.fromkeys([*alone_img, *ref_img]):
        for kind, a, r in (("random numbers", res.get("train_step", {}).get(f"{w}:default", {}), ref.get(w, {})),
                           ("images", alone_img.get(w, {}), ref_img.get(w, {}))):
            ips, base = a.get("images_per_s"), r.get("images_per_s")
            rows.append([w, kind, f"{_f(a.get('ms'), '{:.1f}')} ({_f(ips)})", _f(base),
                         _f(ips / base if ips and base else None, "{:.2f}")])
    return md_table(["inputs, same call", "input", "model alone ms/step (images/s)", "reference images/s",
                     "model alone / reference"], rows)


def ref_step(workload: str) -> str:
    """The compare step that times the reference's ``workload`` (one process per model file: pretraining and
    fine-tuning workloads apart; benchmarks/reference.py)."""
    return "ref_pretrain" if workload.startswith("pretrain") else "ref_finetune"


def _energy_table(res: dict) -> list[str]:
    """Energy per image of each timed side whose clocks were sampled: the busy samples' median power over its images
    per second (approximate: nvidia-smi's power readings, 250 ms apart). At a power cap, a step can only get faster
    by taking less energy: 2x the reference at the cap's watts is at most cap / (2 x the reference's images/s) J per
    image (benchmarks/README.md, runs U and V). Rows need the clock summary and the images/s of the same step; a
    reference step that timed several workloads of one kind has one power for them, so only a lone workload gets a
    row."""
    clocks = res.get("clocks", {})
    refs = [r for r in res.get("reference") or [] if r.get("workload")]
    per_step = Counter(ref_step(r["workload"]) for r in refs)
    sides = [(f"reference {r['workload']}", ref_step(r["workload"]), r.get("images_per_s"), r["workload"])
             for r in refs if per_step[ref_step(r["workload"])] == 1]  # (label, clock key, images/s, workload)
    for key, r in res.get("train_step", {}).items():
        w, v = key.split(":", 1)
        sides.append((f"model alone {w} {v}", f"train_step {w} {v}", r.get("images_per_s"), w))
    for key, r in res.get("cli", {}).items():
        sides.append((f"command {_cli_name(key)}", f"armvision {key}", r.get("images_per_s"), key.split(":", 1)[0]))
    ref_j, rows = {}, []
    for label, ck, ips, w in sides:
        c = clocks.get(ck) or {}
        busy = c.get("busy_samples", 0)
        if not ips or not busy:
            continue
        if busy < ENERGY_MIN_SAMPLES:  # a second or two of steps: the power reading still ramps up (run U)
            rows.append([label, "-", f"{ips:.0f}", f"- ({busy} busy samples)", ""])
            continue
        joules = c["power_w_median"] / ips
        if label.startswith("reference"):
            ref_j[w] = joules
        against = f"{joules / ref_j[w]:.2f}" if w in ref_j and not label.startswith("reference") else ""
        rows.append([label, f"{c['power_w_median']:.0f}", f"{ips:.0f}", f"{joules:.3f}", against])
    return md_table(["energy per image, approximate (busy samples' median power / images per second)", "power W",
                     "images/s", "J per image", "against the reference"], rows)


def table(res: dict) -> str:
    """The report: the card, then the commands', the scan's and the model-only variants' ratios."""
    ref = {r["workload"]: r for r in res.get("reference", [])}
    lines = [f"armvision against the reference on {res.get('device', '?')} ({res.get('software', '')}), "
             f"{res.get('date', '')}; every ratio is to the reference timed in this run", "",
             "| workload | reference: official ARM code on mamba-ssm's CUDA kernels, images/s (peak GiB) | "
             "`armvision` command on JPEGs, images/s (slowest window), peak GiB | ratio (slowest) | target |",
             "|---|---|---|---|---|"]
    for name, r in res.get("cli", {}).items():
        rr = ref.get(name.split(":", 1)[0], {})
        name = _cli_name(name)  # a switch set of VARIANTS, another loader
        ips, low = r.get("images_per_s"), r.get("min_window_images_per_s")
        base = rr.get("images_per_s")
        ratio = f"{ips / base:.2f} ({low / base:.2f})" if ips and low and base else "-"
        lines.append(f"| {name} | {_f(base)} ({_f(rr.get('peak_gib'), '{:.1f}')}) | {_f(ips)} ({_f(low)}), "
                     f"{_f(r.get('peak_gib'), '{:.1f}')} | {ratio} | >= {TARGET:.0f}x |")
    lines += _step_split(res)
    lines += _inputs_table(res)
    scan = res.get("scan") or {}
    rows = {(r["b"], r["e"], r["t"], r["impl"]): r for r in scan.get("results", [])}
    shapes = list(dict.fromkeys((r["b"], r["e"], r["t"]) for r in scan.get("results", [])))
    if shapes:
        compiled = any(i == "op_compiled" for (_, _, _, i) in rows)
        lines += ["", "| scan fwd+bwd, bf16 (b, e, t) | mamba-ssm CUDA ms | armvision op as models call it "
                  "(states recomputed) ms | ratio | " + ("the op compiled (as the commands run it) ms | ratio | "
                                                          if compiled else "") + "kernels alone ms | ratio | target |",
                  "|---|---|---|---|---|---|---|" + ("---|---|" if compiled else "")]
        for b, e, t in shapes:
            c, op, opc, k = (rows.get((b, e, t, i), {}) for i in ("cuda_ref", "triton_op", "op_compiled", "triton"))
            cells = [(op.get("fwd_bwd_ms"), op.get("ratio_to_cuda"))]
            cells += [(opc.get("fwd_bwd_ms"), opc.get("ratio_to_cuda"))] if compiled else []
            cells += [(k.get("fwd_bwd_ms"), k.get("ratio_to_cuda"))]
            lines.append(f"| {b} x {e} x {t} | {_f(c.get('fwd_bwd_ms'), '{:.3f}')} | "
                         + "".join(f"{_f(ms, '{:.3f}')} | {_f(r, '{:.2f}')} | " for ms, r in cells)
                         + f"<= {1 / TARGET:.1f} |")
    others = sorted({i for (_, _, _, i) in rows if i.startswith("op:")})
    for name in others:  # the op under other scan_config settings (--scan-variants)
        cells = [f"{b} x {e} x {t}: {_f(rows.get((b, e, t, name), {}).get('ratio_to_cuda'), '{:.2f}')}"
                 for b, e, t in shapes]
        lines.append(f"\nop variant {name[3:]}, ratio to the CUDA kernel: " + ", ".join(cells))
    variants = res.get("train_step", {})
    if variants:
        lines += ["", "| model alone (train_step.py, compiled, CUDA graphs) | variant | images/s | ms/step | peak GiB "
                  "| ratio to the reference |", "|---|---|---|---|---|---|"]
        for key, r in variants.items():
            base = ref.get(r.get("workload"), {}).get("images_per_s")
            ips = r.get("images_per_s")
            lines.append(f"| {r.get('workload')} | {key.split(':', 1)[1]} | {_f(ips)} | {_f(r.get('ms'), '{:.1f}')} | "
                         f"{_f(r.get('peak_gib'), '{:.1f}')} | {_f(ips / base if ips and base else None, '{:.2f}')} |")
    for key, r in variants.items():
        p = r.get("profile")
        if not p:
            continue
        lines += ["", f"where the step goes, {key} (torch.profiler, {p['step_ms']:.1f} ms per profiled step, kernels "
                  f"busy {100 * p['busy_share']:.0f}%, {p['kernels_per_step']:.0f} kernels per step)", "",
                  "| kind | ms per step | share | kernels per step |", "|---|---|---|---|"]
        lines += [f"| {k['kind']} | {k['us_per_step'] / 1e3:.2f} | {100 * k['share']:.1f}% | "
                  f"{k['calls_per_step']:.0f} |" for k in p["kinds"]]
    lines += clock_lines(res.get("clocks", {}))
    lines += _energy_table(res)
    if res.get("skipped"):
        lines += ["", "skipped (time budget): " + ", ".join(res["skipped"])]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for compare.json and details.log")
    ap.add_argument("--arm-src", type=Path, required=True, help="a checkout of OliverRensu/ARM")
    ap.add_argument("--mamba-ssm-src", type=Path, required=True, help="mamba_ssm-2.3.2.post1.tar.gz (or unpacked)")
    ap.add_argument("--causal-conv1d-src", type=Path, required=True, help="causal_conv1d-1.7.0.tar.gz (or unpacked)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/armvision_compare"),
                    help="builds, JPEGs and run folders (a later run reuses the builds and the JPEGs)")
    ap.add_argument("--budget", type=float, default=530, help="seconds; steps that no longer fit are skipped")
    ap.add_argument("--workloads", nargs="+", default=["pretrain_b", "pretrain_l", "finetune_b"],
                    choices=["pretrain_b", "finetune_b", "pretrain_l"])
    ap.add_argument("--variants", nargs="*", default=["default", "save", "dbc1"],
                    choices=list(VARIANTS),
                    help="model-only runs of ARM-B pretraining under these switches (during the build)")
    ap.add_argument("--cli-variants", nargs="*", default=["default", "best"], choices=["best", *VARIANTS],
                    help="run the commands under these switches ('best': the fastest model-only variant of the "
                         "first --variant-workloads entry, once, when it beats 'default' timed in this call; none: "
                         "no command runs)")
    ap.add_argument("--cli-workers-also", nargs="*", type=int, default=[], metavar="N",
                    help="also run each workload's command under default switches with N loader workers (after "
                         "the runs above, while the budget lasts; the default command with --workers runs too): "
                         "does the loader's share of the cores slow the step?")
    ap.add_argument("--variant-workloads", nargs="*", default=["pretrain_b"],
                    choices=["pretrain_b", "finetune_b", "pretrain_l"])
    ap.add_argument("--profile-steps", type=int, default=5, metavar="N",
                    help="profile N steps of each workload's first variant (train_step.py --profile): kernels by kind")
    ap.add_argument("--inductor-code", action="store_true",
                    help="also copy the code inductor generated for each workload's first variant (its forward and "
                         "backward graphs, Triton kernels inline) to OUT/inductor_code/: what each profiled kernel "
                         "fused, to read without a GPU")
    ap.add_argument("--image-inputs", action="store_true",
                    help="also time the model alone (default switches) and the reference on one batch of the JPEGs "
                         "instead of random numbers (benchmarks/_inputs.py): does the input's content change the "
                         "card's speed (power cap) for either side?")
    ap.add_argument("--shadow-until", type=float, default=210,
                    help="seconds: a model-only variant starts only if it should end by then (the build's shadow)")
    ap.add_argument("--scan-variants", nargs="*",
                    default=[f"{v}={VARIANTS[v]['ARMVISION_SCAN_CONFIG']}" for v in ("dbc1", "save", "step")],
                    metavar="NAME=JSON", help="the scan op also timed under these ops.scan_config settings")
    ap.add_argument("--autotune-seed", type=Path, default=HERE / "autotune", metavar="DIR",
                    help="inductor's GEMM timings (inductor_autotune-*.json from an earlier call's --out) merged into "
                         "this machine's cache before the runs, and its coordinate-descent configs "
                         "(inductor_coordesc.json) put in place; new ones are written to --out (_autotune_cache.py)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="loader workers")
    ap.add_argument("--tests", nargs="*",
                    default=["tests/gpu/test_triton_gpu.py", "tests/gpu/test_train_compiled_gpu.py",
                             "tests/gpu/test_data_gpu_decode.py", "tests/gpu/test_bench_scan_gpu.py",
                             "tests/gpu/test_ddp_cudagraphs_gpu.py"],
                    help="GPU test files run after the measurements, while time is left")
    ap.add_argument("--numerics", default="bfloat16", help="-k expression of tests/gpu/test_scan_numerics_gpu.py run "
                                                      "against the built kernel ('' to skip)")
    args = ap.parse_args()
    if any(n < 0 for n in [args.workers, *args.cli_workers_also]):
        ap.error("loader workers are 0 or more (--workers, --cli-workers-also)")

    import torch

    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU: it times the reference's CUDA kernels and armvision on one card")
    for p in (args.arm_src / "models_pretrain.py", args.arm_src / "Finetuning" / "models_mamba.py",
              args.mamba_ssm_src, args.causal_conv1d_src):
        if not p.exists():
            ap.error(f"{p} not found")
    import triton

    import _autotune_cache
    import _cuda_ext

    run = Run(args.out, args.budget, args.workdir)
    res = run.res
    tuned = _autotune_cache.local_cache_folder()  # sets TORCHINDUCTOR_CACHE_DIR: the subprocesses share it
    seeded = _autotune_cache.seed(args.autotune_seed, tuned)
    res["autotune_seed"] = seeded
    if seeded:
        print(f"inductor GEMM timings from {args.autotune_seed} (products per system): {seeded}", flush=True)
    seeded_cd = res["coordesc_seed"] = _autotune_cache.seed_coordesc(args.autotune_seed, tuned.parent)
    if seeded_cd:
        print(f"inductor coordinate-descent configs from {args.autotune_seed}: {seeded_cd} kernels", flush=True)

    def bring_back_tuning() -> None:
        """What inductor tuned since the seed (GEMM timings, coordinate-descent configs), written to --out."""
        res["autotune_out"] = _autotune_cache.export(tuned, args.out, seeded) or res.get("autotune_out")
        res["coordesc_out"] = (_autotune_cache.export_coordesc(tuned.parent, args.out, seeded_cd)
                               or res.get("coordesc_out"))

    res.update(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), cores=os.cpu_count(),
               software=f"torch {torch.__version__}, Triton {triton.__version__}", workers=args.workers)
    print(f"device: {res['device']}, {res['software']}, {res['cores']} cores", flush=True)
    py, build = sys.executable, args.workdir / "build"
    srcs = {k: _cuda_ext.unpacked(p, build / "src") for k, p in
            (("mamba_ssm", args.mamba_ssm_src), ("causal_conv1d", args.causal_conv1d_src))}
    res["versions"] = {k: _cuda_ext.package_version(v) for k, v in srcs.items()}
    builds = {k: run.start(f"build_{k}", [py, str(HERE / "_cuda_ext.py"), "--mamba-ssm-src", str(srcs["mamba_ssm"]),
                                          "--causal-conv1d-src", str(srcs["causal_conv1d"]), "--build-dir", str(build),
                                          "--only", k]) for k in srcs}

    # in the build's shadow: the JPEGs, then the model-only variants (GPU-bound: graph replays)
    from data_pipeline import make_synthetic_jpegs

    t = time.perf_counter()
    data_root = args.workdir / "jpegs"
    make_synthetic_jpegs(data_root, 8192)
    print(f"[{run.elapsed():4.0f} s] 8192 JPEGs under {data_root} ({time.perf_counter() - t:.0f} s)", flush=True)
    res["train_step"] = {}

    def train_step_cmd(w: str, out: Path, *extra: str) -> list[str]:
        """train_step.py for workload ``w``, compiled with CUDA graphs as the trainer runs it, results to ``out``."""
        return [py, str(HERE / "train_step.py"), "--workloads", w, "--compiled-only", "--compile-mode",
                "reduce-overhead", "--steps", "12", "--warmup", "4", "--json", str(out), *extra]

    for w in args.variant_workloads:
        for vi, v in enumerate(args.variants):
            what = f"train_step {w} {v}"
            long, estimate = v in LONG_VARIANTS, ESTIMATE["train_step"]
            left = args.shadow_until - run.elapsed()
            if left < (LONG_VARIANT_MIN if long else estimate):  # the measurements below come first
                res["skipped"].append(what)
                print(f"[{run.elapsed():4.0f} s] skipped {what}: would end after --shadow-until", flush=True)
                continue
            out = args.workdir / f"ts_{w}_{v}.json"
            out.unlink(missing_ok=True)
            run.call(f"train_step {w} {v}", train_step_cmd(w, out, *first_variant_args(args, w, v, vi)),
                     timeout=left if long else max(240, estimate + 60),
                     extra_env={**VARIANTS[v], "TORCHINDUCTOR_COMPILE_THREADS": "8"})  # leave nvcc cores
            rows = _read(out) or [{}]
            res["train_step"][f"{w}:{v}"] = dict(rows[0], workload=w, variant=v, env=VARIANTS[v])
            bring_back_tuning()
            run.save()
    res["inputs"] = {"train_step": {}, "reference": []}
    for w in args.variant_workloads if args.image_inputs else []:
        what = f"train_step {w} default on images"
        if not run.fits(what, ESTIMATE["train_step"]):
            continue
        out = args.workdir / f"ts_{w}_images.json"
        out.unlink(missing_ok=True)
        run.call(what, train_step_cmd(w, out, "--images", str(data_root / "train")),
                 timeout=max(240, ESTIMATE["train_step"] + 60),
                 extra_env={**VARIANTS["default"], "TORCHINDUCTOR_COMPILE_THREADS": "8"})
        res["inputs"]["train_step"][w] = (_read(out) or [{}])[0]
        run.save()
    for k, proc in builds.items():
        run.finish(f"build_{k}", proc, timeout=run.budget - run.elapsed())

    # the scan beside mamba-ssm's kernel, then the reference's steps
    if run.fits("scan", ESTIMATE["scan"]):
        out = args.workdir / "scan.json"
        out.unlink(missing_ok=True)
        run.call("scan", [py, str(HERE / "scan.py"), "--no-torch", "--no-save", "--compiled-op", "--graphed-op",
                          "--mamba-ssm-src", str(srcs["mamba_ssm"]), "--build-dir", str(build), "--json", str(out),
                          "--op-config", *args.scan_variants], timeout=240)
        res["scan"] = _read(out)
        run.save()
    res["reference"] = []
    ref_sets = [(step, [w for w in args.workloads if ref_step(w) == step]) for step in ("ref_pretrain", "ref_finetune")]
    reference_cmd = [py, str(HERE / "reference.py"), "--arm-src", str(args.arm_src), "--mamba-ssm-src",
                     str(srcs["mamba_ssm"]), "--causal-conv1d-src", str(srcs["causal_conv1d"]), "--build-dir",
                     str(build)]
    for what, workloads in ref_sets:
        if not workloads or not run.fits(what, ESTIMATE[what]):
            continue
        out = args.workdir / f"{what}.json"
        out.unlink(missing_ok=True)
        run.call(what, reference_cmd + ["--workloads", *workloads, "--json", str(out)], timeout=240)
        res["reference"] += _read(out) or []
        run.save()
        on_images = [w for w in workloads if w in args.variant_workloads] if args.image_inputs else []
        if on_images and run.fits(what + " on images", ESTIMATE[what]):  # the model alone's workloads, on images
            out = args.workdir / f"{what}_images.json"
            out.unlink(missing_ok=True)
            run.call(what + " on images", reference_cmd + ["--workloads", *on_images, "--images",
                                                           str(data_root / "train"), "--json", str(out)], timeout=240)
            res["inputs"]["reference"] += _read(out) or []
            run.save()

    # the product path: the commands on the JPEGs, compiled as a user's run is
    res["cli"] = {}
    names = cli_variants(args.cli_variants, res["train_step"], args.variant_workloads)
    if args.cli_workers_also and "default" not in names:  # the other loaders compare with this call's own default
        names.insert(0, "default")
    runs = [(w, v, args.workers) for w in args.workloads for v in names]
    runs += [(w, "default", n) for w in args.workloads for n in args.cli_workers_also if n != args.workers]
    for w, v, workers in runs:
        key = cli_key(w, v, workers, args.workers)
        if not run.fits(f"armvision {key}", ESTIMATE[w]):
            continue
        out = args.workdir / f"cli_{key.replace(':', '_')}.json"
        out.unlink(missing_ok=True)
        steps, every = CLI_STEPS[w]
        run.call(f"armvision {key}", [py, str(HERE / "train_cli.py"), "--workloads", w, "--skip", "pipeline",
                                      "train_step", "--steps", str(steps), "--log-every", str(every), "--workers",
                                      str(workers), "--workdir", str(args.workdir), "--out", str(out)],
                 timeout=min(300, run.budget - run.elapsed()), extra_env=VARIANTS[v])
        got = _read(out) or {}
        res["cli"][key] = dict((got.get("cli") or [{}])[0], variant=v, env=VARIANTS[v], workers=workers)
        run.save()

    # GPU tests of the changed kernels and paths, and the scan's numerics against the built kernel
    for path in args.tests:
        if run.fits(f"tests {path}", ESTIMATE["tests"]):
            run.call(f"tests {path}", [py, "-m", "pytest", "-q", "-x", path], timeout=run.budget - run.elapsed())
    if args.numerics and run.fits("numerics", ESTIMATE["numerics"]):
        run.call("numerics", [py, "-m", "pytest", "-q", "-s", "tests/gpu/test_scan_numerics_gpu.py", "-k",
                              args.numerics], timeout=run.budget - run.elapsed(),
                 extra_env={"ARMVISION_MAMBA_SSM_SRC": str(srcs["mamba_ssm"]),
                            "ARMVISION_MAMBA_SSM_BUILD": str(build)})
    bring_back_tuning()
    if res.get("autotune_out"):
        print(f"inductor GEMM timings written to {args.out} (products per system): {res['autotune_out']}; copy the "
              "inductor_autotune-*.json files into benchmarks/autotune/ for the next call", flush=True)
    if res.get("coordesc_out"):
        print(f"inductor coordinate-descent configs written to {args.out}/{_autotune_cache.COORDESC} "
              f"({res['coordesc_out']} kernels); copy it into benchmarks/autotune/ for the next call", flush=True)
    text = table(res)
    res["table"] = text
    run.save()
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
