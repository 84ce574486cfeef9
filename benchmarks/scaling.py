"""Scaling out: FSDP2 vs DDP, activation checkpointing, and resuming on another number of GPUs.

Every measurement is the product's own command, ``torchrun --standalone --nproc_per_node N
benchmarks/_dist_peak.py ... pretrain --config PRESET ...`` (that is ``armvision pretrain`` in each
process, plus its peak CUDA memory), on synthetic JPEGs (benchmarks/data_pipeline.py), for a few steps:

1. ARM-H pretraining at 192px (arm_huge_in1k_pretrain) on 2 GPUs at --h-micro images per GPU (the preset
   leaves micro_batch to the user; 128 is the ARM-L target's batch): parallel fsdp vs ddp, images/s and
   peak GiB per GPU;
2. ARM-H, fsdp + activation checkpointing, each process capped at --cap-gib GiB
   (set_per_process_memory_fraction, a stand-in for a 40 GB card): peaks at two per-GPU batches give
   the memory per image, the largest batch predicted to fit is then run under the cap (and 80% of it if
   that runs out of memory); its images/s;
3. ARM-B pretraining (arm_base_in1k_pretrain) at --b-micro per GPU on 2 GPUs: fsdp vs ddp images/s;
4. compile modes with several processes: ARM-B at --b-micro per GPU on 1 GPU (compile_mode auto = CUDA graphs:
   the per-GPU baseline) and on 2 GPUs under DDP and FSDP2, each with torch's default mode (what compile_mode auto
   picks for several processes) and with CUDA graphs (reduce-overhead); images/s per GPU against the 1-GPU run;
5. resuming: ARM-B, global batch 128, 2 epochs of 8 steps. A: fsdp on 2 GPUs, 16 steps; B: resumes A's
   end-of-epoch checkpoint (step 8, sharded) on 1 GPU. C: fsdp on 1 GPU, 16 steps; D: resumes C's step 8
   on 2 GPUs. The loss curves side by side: deterministic crops (the whole image), so every step sees the same
   images whatever the number of GPUs and the curves should agree up to rounding (bf16 parameters under
   FSDP2 on 2 GPUs, fp32 ones under autocast on 1).

images/s: the median of the logging windows after the first (metrics_train.csv; global images/s).
Prints the tables and writes JSON (--out).

    python benchmarks/scaling.py --out results/scaling.json          # 2 H200s: at most 9-10 minutes (--budget)
    python benchmarks/scaling.py --tiny --out /tmp/scaling_tiny.json  # CPU smoke run (gloo), ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_pipeline import make_synthetic_jpegs  # noqa: E402
from train_cli import _flags, read_windows, steady_rate  # noqa: E402

TINY_ARGS = {"patch_size": 4, "embed_dim": 32, "depth": 6, "d_state": 4, "cluster_size": 2, "decoder_dim": 32}


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.workdir
        self.data = self.work / ("jpegs_tiny" if args.tiny else "jpegs")
        self.records: list[dict] = []
        self.t0 = time.perf_counter()

    def launch(self, name: str, nproc: int, config: str, over: dict, cap_gib: float | None = None,
               fresh: bool = True, gpus: str | None = None, wait: bool = True):
        """Run one torchrun; returns its record, or (wait=False) a function that waits and returns it."""
        a = self.args
        left = a.budget - (time.perf_counter() - self.t0)
        if left < 30:
            rec = {"name": name, "nproc": nproc, "config": config, "cap_gib": cap_gib, "exit_code": None,
                   "skipped": f"the {a.budget:.0f} s budget was spent", "oom": False, "peak_gib": None}
            self.records.append(rec)
            print(f"{name}: skipped ({rec['skipped']})", flush=True)
            return rec if wait else (lambda: rec)
        out_dir = self.work / "runs" / name
        if fresh:
            shutil.rmtree(out_dir, ignore_errors=True)
        prefix = self.work / "peaks" / name
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for f in prefix.parent.glob(f"{name}.rank*.json"):
            f.unlink()
        workers = 0 if a.tiny else max(1, (os.cpu_count() or 2) // nproc - 1)
        base = {"data.root": str(self.data), "output_dir": str(out_dir), "data.workers": workers,
                "data.val_split": None, "eval_every_epochs": 0, "log.progress": "off", "log.tensorboard": False}
        if a.tiny:
            base.update({"device": "cpu", "model.name": "arm_tiny_pz16", "model.img_size": 16,
                         "model.args": TINY_ARGS})
        over = {**base, **over}
        env = {**os.environ, "OMP_NUM_THREADS": "1" if a.tiny else os.environ.get("OMP_NUM_THREADS", "4")}
        if cap_gib:
            env["ARMVISION_BENCH_MEM_GIB"] = str(cap_gib)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(HERE / "_dist_peak.py"), str(prefix), "pretrain", "--config", config, *_flags(over)]
        t = time.perf_counter()
        timeout = min(a.timeout, left)
        log = self.work / "logs" / f"{name}.log"  # a file, not a pipe: a run waited for later never blocks
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def finish() -> dict:
            try:
                proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t)))
                code = proc.returncode
                tail = log.read_text(errors="replace")[-1500:]
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # torchrun and the processes it started
                proc.wait()
                code, tail = 124, f"timed out after {timeout:.0f} s (log: {log})"
            return self._record(name, nproc, config, over, cap_gib, code, tail, t, out_dir, prefix)

        return finish() if wait else finish

    def _record(self, name, nproc, config, over, cap_gib, code, tail, t, out_dir, prefix) -> dict:
        rec = {"name": name, "nproc": nproc, "config": config, "cap_gib": cap_gib, "exit_code": code,
               "wall_s": round(time.perf_counter() - t, 1),
               "command": "torchrun --standalone --nproc_per_node {} -m armvision pretrain --config {} {}".format(
                   nproc, config, " ".join(_flags(over)))}
        peaks = [json.loads(f.read_text()) for f in sorted(prefix.parent.glob(f"{name}.rank*.json"))]
        rec["oom"] = any(p.get("oom") for p in peaks)
        vals = [p["peak_gib"] for p in peaks if p.get("peak_gib") is not None]
        rec["peak_gib"] = max(vals) if vals else None
        if code != 0:
            rec["error"] = tail
        csv = out_dir / "metrics_train.csv"
        if csv.exists():
            rec.update(steady_rate(read_windows(csv)))
        summ = out_dir / "summary.json"
        if code == 0 and summ.exists():
            rec["loss_curve"] = json.loads(summ.read_text())["loss_curve"]
        self.records.append(rec)
        print(f"{name}: exit {code}, {rec['wall_s']:.0f} s, {_f(rec.get('images_per_s'))} images/s, peak "
              f"{_f(rec['peak_gib'], '{:.1f}')} GiB" + (" (out of memory)" if rec["oom"] else "")
              + (f"\n{tail}" if code and not rec["oom"] else ""), flush=True)
        return rec


def throughput(b: Bench, name: str, nproc: int, config: str, micro: int, extra: dict | None = None,
               cap: float | None = None) -> dict:
    a = b.args
    over = {"optim.batch_size": micro * nproc, "optim.micro_batch": micro, "max_steps": a.steps,
            "log.every_steps": a.log_every, "checkpoint.every_epochs": 0, "checkpoint.keep_last": 1,
            **(extra or {})}
    rec = b.launch(name, nproc, config, over, cap_gib=cap)
    rec["micro_batch"] = micro
    shutil.rmtree(b.work / "runs" / name, ignore_errors=True)  # its final checkpoint (ARM-H: ~8 GB)
    return rec


def ac_search(b: Bench, config: str, cap: float) -> dict:
    """The largest per-GPU batch of ARM-H fsdp + activation checkpointing under ``cap`` GiB."""
    a = b.args
    ac = {"parallel": "fsdp", "activation_checkpointing": True}
    lo, hi = a.ac_probe
    r_lo = throughput(b, f"h_fsdp_ac_{lo}", 2, config, lo, ac, cap)
    r_hi = throughput(b, f"h_fsdp_ac_{hi}", 2, config, hi, ac, cap)
    out = {"cap_gib": cap, "probes": [r_lo["name"], r_hi["name"]]}
    if r_lo["exit_code"] or r_hi["exit_code"] or r_lo["peak_gib"] is None or r_hi["peak_gib"] is None:
        fits = [r for r in (r_hi, r_lo) if r["exit_code"] == 0]
        out["largest"] = fits[0]["name"] if fits else None
        return out
    per_image = max(1e-6, (r_hi["peak_gib"] - r_lo["peak_gib"]) / (hi - lo))
    fixed = r_lo["peak_gib"] - per_image * lo
    guess = min(int((0.92 * cap - fixed) / per_image), 4 * hi) // 16 * 16
    out.update(gib_per_image=per_image, fixed_gib=fixed, predicted=guess)
    best = r_hi
    for size in (guess, int(guess * 0.8) // 16 * 16):
        if size <= hi:
            break
        r = throughput(b, f"h_fsdp_ac_{size}", 2, config, size, ac, cap)
        if r["exit_code"] == 0:
            best = r
            break
    out["largest"] = best["name"]
    return out


def compile_modes(b: Bench, config: str) -> None:
    """ARM-B: 1 GPU with CUDA graphs, then 2 GPUs under DDP and FSDP2 in torch's default mode and with CUDA graphs."""
    a = b.args
    throughput(b, f"m_1gpu_graphs_{a.b_micro}", 1, config, a.b_micro, {"compile_mode": "reduce-overhead"})
    for par in ("ddp", "fsdp"):
        for mode, tag in (("default", "default"), ("reduce-overhead", "graphs")):
            throughput(b, f"m_{par}_{tag}_{a.b_micro}", 2, config, a.b_micro, {"parallel": par, "compile_mode": mode})


def resume_runs(b: Bench, config: str) -> list[dict]:
    """A: 16 steps on 2 GPUs; then, at the same time on one GPU each, B: resumes A's step-8 checkpoint and
    C: 16 steps; then D: resumes C's step-8 checkpoint on 2 GPUs."""
    a = b.args
    common = {"parallel": "fsdp", "optim.batch_size": a.resume_batch, "optim.micro_batch": None,
              "optim.epochs": 2, "optim.warmup_epochs": 0.5, "data.train_subset": 8 * a.resume_batch,
              "log.every_steps": 1, "checkpoint.every_epochs": 1, "checkpoint.keep_last": 2,
              # the same pixels whatever the number of processes (random crops follow each process's seed)
              "aug.scale": [1.0, 1.0], "aug.ratio": [1.0, 1.0], "aug.hflip": 0.0}

    def step8(run: str) -> str:
        return str(b.work / "runs" / run / "checkpoints" / "step_00000008")

    one, other = (None, None) if a.tiny else ("0", "1")
    ra = b.launch("resume_A_2gpu", 2, config, common)
    wait_b = b.launch("resume_B_1gpu", 1, config, {**common, "resume": step8("resume_A_2gpu")}, gpus=one,
                      wait=False)
    rc = b.launch("resume_C_1gpu", 1, config, common, gpus=other)
    rb = wait_b()
    rd = b.launch("resume_D_2gpu", 2, config, {**common, "resume": step8("resume_C_1gpu")})
    return [{"first": f["name"], "second": s["name"], "first_nproc": f["nproc"], "second_nproc": s["nproc"],
             "first_curve": f.get("loss_curve"), "second_curve": s.get("loss_curve")} for f, s in ((ra, rb), (rc, rd))]


def _f(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def tables(res: dict) -> str:
    by = {r["name"]: r for r in res["runs"]}
    lines = ["| run | GPUs | parallel | act. ckpt | per-GPU batch | cap GiB | images/s | peak GiB/GPU | exit |",
             "|" + "---|" * 9]
    for r in res["runs"]:
        if r["name"].startswith(("h_", "b_")) and "micro_batch" in r:
            par = "fsdp" if "fsdp" in r["name"] else "ddp"
            lines.append(f"| {r['name']} | {r['nproc']} | {par} | {'yes' if '_ac_' in r['name'] else 'no'} | "
                         f"{r['micro_batch']} | {_f(r['cap_gib'])} | {_f(r.get('images_per_s'))} | "
                         f"{_f(r['peak_gib'], '{:.1f}')} | {'OOM' if r['oom'] else r['exit_code']} |")
    modes = [r for r in res["runs"] if r["name"].startswith("m_") and "micro_batch" in r]
    if modes:
        one = next((r.get("images_per_s") for r in modes if r["nproc"] == 1), None)
        lines += ["", "| compile mode run | GPUs | parallel | mode | images/s | per GPU | of the 1-GPU run "
                  "| peak GiB/GPU | exit |", "|" + "---|" * 9]
        for r in modes:
            ips = r.get("images_per_s")
            per = ips / r["nproc"] if ips else None
            eff = per / one if per and one else None
            par = "-" if r["nproc"] == 1 else ("fsdp" if "_fsdp_" in r["name"] else "ddp")
            mode = "CUDA graphs" if "_graphs_" in r["name"] else "default"
            lines.append(f"| {r['name']} | {r['nproc']} | {par} | {mode}"
                         f" | {_f(ips)} | {_f(per)} | {_f(eff, '{:.2f}')} | {_f(r['peak_gib'], '{:.1f}')} | "
                         f"{'OOM' if r['oom'] else r['exit_code']} |")
    s = res.get("ac_search") or {}
    if s:
        lines.append("")
        lines.append(f"activation checkpointing under {_f(s.get('cap_gib'))} GiB: "
                     f"{_f(s.get('gib_per_image'), '{:.3f}')} GiB per image, predicted largest batch "
                     f"{s.get('predicted', '-')}, largest run that fit: "
                     f"{s.get('largest')} ({_f(by.get(s.get('largest'), {}).get('images_per_s'))} images/s)")
    for pair in res["resume"]:
        lines.append("")
        lines.append(f"| step | {pair['first']} ({pair['first_nproc']} GPU) | {pair['second']} "
                     f"({pair['second_nproc']} GPU, resumed at step 8) |")
        lines.append("|---|---|---|")
        a = dict((int(s), v) for s, v in (pair["first_curve"] or []))
        c = dict((int(s), v) for s, v in (pair["second_curve"] or []))
        for step in sorted(set(a) | set(c)):
            lines.append(f"| {step} | {_f(a.get(step), '{:.4f}')} | {_f(c.get(step), '{:.4f}')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="write the results (JSON) here")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/armvision_scaling"))
    ap.add_argument("--images", type=int, default=8192, help="synthetic JPEGs (256x192)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per throughput run")
    ap.add_argument("--log-every", type=int, default=4)
    ap.add_argument("--h-micro", type=int, default=128, help="ARM-H per-GPU batch of the fsdp/ddp comparison")
    ap.add_argument("--b-micro", type=int, default=256, help="ARM-B per-GPU batch (the target's)")
    ap.add_argument("--cap-gib", type=float, default=40.0, help="per-process memory cap of the search")
    ap.add_argument("--ac-probe", type=int, nargs=2, default=(128, 256), help="two per-GPU batches measured "
                    "under the cap to get the memory per image")
    ap.add_argument("--resume-batch", type=int, default=128, help="global batch of the resume runs")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per launch at most")
    ap.add_argument("--budget", type=float, default=540, help="seconds for everything: launches that would start "
                    "later are skipped (and shown as skipped), so the program ends within the device's 10 minutes")
    ap.add_argument("--skip", nargs="*", default=[], choices=["huge", "search", "base", "modes", "resume"])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run (gloo): tiny model, tiny JPEGs, few steps")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if args.tiny:
        args.images, args.steps, args.log_every, args.h_micro, args.b_micro = 64, 4, 2, 4, 4
        args.ac_probe, args.resume_batch, args.cap_gib = (2, 4), 4, None
    elif torch.cuda.device_count() < 2:
        ap.error("needs 2 CUDA GPUs (or --tiny for a CPU smoke run)")
    t0 = time.perf_counter()
    b = Bench(args)
    make_synthetic_jpegs(b.data, args.images, size=(64, 48) if args.tiny else (256, 192))
    res = {"device": torch.cuda.get_device_name() if cuda and not args.tiny else "cpu", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "gpus": 0 if args.tiny else torch.cuda.device_count(),
           "steps": args.steps, "images": args.images, "tiny": args.tiny, "ac_search": None, "resume": []}
    print(f"{args.images} JPEGs ready in {time.perf_counter() - t0:.0f} s", flush=True)
    huge, base = "arm_huge_in1k_pretrain", "arm_base_in1k_pretrain"
    if "huge" not in args.skip:
        throughput(b, f"h_fsdp_{args.h_micro}", 2, huge, args.h_micro, {"parallel": "fsdp"})
        throughput(b, f"h_ddp_{args.h_micro}", 2, huge, args.h_micro, {"parallel": "ddp"})
    if "search" not in args.skip:
        res["ac_search"] = ac_search(b, huge, args.cap_gib)
    if "base" not in args.skip:
        throughput(b, f"b_fsdp_{args.b_micro}", 2, base, args.b_micro, {"parallel": "fsdp"})
        throughput(b, f"b_ddp_{args.b_micro}", 2, base, args.b_micro, {"parallel": "ddp"})
    if "modes" not in args.skip:
        compile_modes(b, base)
    if "resume" not in args.skip:
        res["resume"] = resume_runs(b, base)
    res["runs"] = b.records
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = tables(res)
    print("\n" + text + f"\n\n{res['device']}, {res['date']}, total {res['total_seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    failed = [r["name"] for r in b.records if r["exit_code"] not in (0, None) and not r["oom"]]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
