"""Throughput through the product's own commands: `armvision pretrain` / `finetune` on JPEGs.

In one run, on one GPU:
  1. makes N synthetic ImageNet-like JPEGs (500x375, quality 90, smooth colour fields + shapes +
     noise, 4 classes, ImageFolder layout) unless they already exist under --workdir;
  2. the data pipeline alone (benchmarks/data_pipeline.py: pretraining and fine-tuning transforms
     in the loader workers, and data.decode gpu);
  3. `armvision pretrain --config arm_base_in1k_pretrain` and `armvision finetune --config
     arm_base_in1k_finetune` (and with --large `arm_large_in1k_pretrain`) as subprocesses for
     --steps optimizer steps at the targets' micro-batch (256 for ARM-B pretraining, 128 for ARM-L
     and for fine-tuning; batch_size = micro_batch, so one micro-batch per step), reading the
     steady images/s from metrics_train.csv (the median of the logging windows after the first)
     and the slowest window after the first (an epoch-boundary stall shows there), plus the peak
     CUDA memory of the training process;
  4. with --profile, the first workload's command (ARM-B pretraining by default) under torch.profiler (after warm-up
     steps that include compilation): the step's time and its top kernels with their share;
  5. benchmarks/train_step.py, the model-only ceiling (eager, and compiled unless --no-compile);
and prints one table (the reference beside them, timed in the same run: benchmarks/compare.py).
The commands run as a user runs them: compiled on the GPU (the trainer's ``compile: auto``) unless
--compile false.

    python benchmarks/train_cli.py --profile --out results/train_cli.json    # on one H200, ~10-14 min
    python benchmarks/train_cli.py --tiny --out /tmp/tiny.json               # CPU smoke run, ~1 min

--tiny: a tiny model (--model.args), 32 small JPEGs, a few steps, on the CPU; no train_step.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_pipeline import make_synthetic_jpegs, pipeline_rate  # noqa: E402

# the workloads of benchmarks/reference.py: the preset, and the micro-batch of the project's targets
WORKLOADS = {
    "pretrain_b": dict(task="pretrain", config="arm_base_in1k_pretrain", micro=256, step_workload="pretrain_b"),
    "finetune_b": dict(task="finetune", config="arm_base_in1k_finetune", micro=128, step_workload="finetune_b"),
    "pretrain_l": dict(task="pretrain", config="arm_large_in1k_pretrain", micro=128, step_workload="pretrain_l"),
}
TINY_ARGS = {"patch_size": 4, "embed_dim": 32, "depth": 6, "d_state": 4}


def _flags(over: dict) -> list[str]:
    out = []
    for k, v in over.items():
        out += [f"--{k}", json.dumps(v) if isinstance(v, (dict, list)) else ("null" if v is None else str(v))]
    return out


WINDOW_COLUMNS = ("step", "epoch", "images_per_s", "data_wait_ms", "gpu_ms")


def read_windows(csv_path: Path) -> list[dict]:
    """The logging windows of metrics_train.csv as dicts of floats (``data_wait_ms``: the trainer's wait for the
    loader per step; ``gpu_ms``: its steps' GPU span, on a GPU)."""
    with open(csv_path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k in WINDOW_COLUMNS and v} for row in csv.DictReader(f)]


def steady_windows(windows: list[dict]) -> list[dict]:
    """The windows after the first (warm-up, compilation); all of them when there is only one."""
    return windows[1:] or windows


def steady_rate(windows: list[dict]) -> dict:
    """Steady images/s: the median over the windows after the first (warm-up, compilation), and the
    slowest of those windows relative to it (the issue's target: no window below 90%). Also the medians over the
    same windows of the loader wait and the GPU span per step, where the log has them."""
    steady = steady_windows(windows)
    rates = [w["images_per_s"] for w in steady if "images_per_s" in w]
    if not rates:
        return {"images_per_s": None, "min_window_images_per_s": None, "min_over_steady": None, "windows": 0}
    med = statistics.median(rates)
    out = {"images_per_s": med, "min_window_images_per_s": min(rates), "min_over_steady": min(rates) / med,
           "windows": len(rates)}
    for key in ("data_wait_ms", "gpu_ms"):
        values = [w[key] for w in steady if key in w]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_windows"] = [round(v, 2) for v in values]
    return out


def cli_overrides(spec: dict, data_root: Path, out_dir: Path, steps: int, workers: int, tiny: bool,
                  log_every: int, decode: str = "cpu", compile_model: str = "auto", extra: dict | None = None) -> dict:
    """The config overrides of one workload's command (the preset's model, recipe and augmentation)."""
    micro = 4 if tiny else spec["micro"]
    over = {"data.root": str(data_root), "output_dir": str(out_dir), "max_steps": steps,
            "optim.batch_size": micro, "optim.micro_batch": micro, "data.workers": workers,
            "data.val_split": None, "eval_every_epochs": 0, "checkpoint.every_epochs": 0,
            "log.every_steps": log_every, "log.progress": "off", "log.tensorboard": False}
    if decode != "cpu":  # data.decode gpu: pretraining only (no RandAugment on the GPU)
        over["data.decode"] = decode
    if tiny:
        args = dict(TINY_ARGS, **({"cluster_size": 2, "decoder_dim": 32} if spec["task"] == "pretrain" else {}))
        over.update({"device": "cpu", "model.name": "arm_tiny_pz16", "model.img_size": 16, "model.args": args})
    if compile_model != "auto":
        over["compile"] = compile_model
    over.update(extra or {})
    return over


def step_split(windows: list[dict], batch: int) -> dict:
    """Medians over the windows after the first: ``wall_ms`` a step's wall time (from the window's images/s) and,
    where the log has the GPU span, ``idle_ms``: the wall time minus the span, per window (the GPU waiting between
    steps, for the host or the loader)."""
    steady = [w for w in steady_windows(windows) if w.get("images_per_s")]
    if not steady:
        return {}
    walls = [batch / w["images_per_s"] * 1e3 for w in steady]
    out = {"wall_ms": statistics.median(walls)}
    idle = [wall - w["gpu_ms"] for wall, w in zip(walls, steady) if "gpu_ms" in w]
    if idle:
        out["idle_ms"] = statistics.median(idle)
    return out


def run_cli(name: str, spec: dict, data_root: Path, workdir: Path, steps: int, workers: int, tiny: bool,
            log_every: int, timeout: float, decode: str = "cpu", compile_model: str = "auto",
            extra: dict | None = None) -> dict:
    out_dir = workdir / "runs" / name
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, not a resume of the last one
    over = cli_overrides(spec, data_root, out_dir, steps, workers, tiny, log_every, decode, compile_model, extra)
    peak_file = workdir / f"peak_{name}.json"
    peak_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "_cli_peak.py"), str(peak_file), spec["task"], "--config", spec["config"],
           *_flags(over)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    rec = {"workload": name, "command": "armvision " + " ".join(cmd[3:]), "exit_code": proc.returncode,
           "wall_s": wall}
    if proc.returncode != 0:
        rec["error"] = (proc.stderr or proc.stdout)[-2000:]
        return rec
    windows = read_windows(out_dir / "metrics_train.csv")
    rec.update(steady_rate(windows))
    rec["window_rates"] = [round(w["images_per_s"], 1) for w in windows if "images_per_s" in w]
    rec.update(step_split(windows, over["optim.batch_size"]))
    if peak_file.exists():
        rec["peak_gib"] = json.loads(peak_file.read_text())["peak_gib"]
    return rec


def run_profile(name: str, spec: dict, data_root: Path, workdir: Path, workers: int, tiny: bool, wait: int,
                active: int, timeout: float, decode: str = "cpu", compile_model: str = "auto",
                extra: dict | None = None) -> dict:
    """torch.profiler over ``active`` steps of the workload's trainer after ``wait`` warm-up steps
    (benchmarks/_profile_train.py): the step's time and its top kernels with their share."""
    out_dir = workdir / "runs" / f"profile_{name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    over = cli_overrides(spec, data_root, out_dir, wait + 1 + active, workers, tiny, 1000, decode, compile_model,
                         extra)
    res_file = workdir / f"profile_{name}.json"
    res_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "_profile_train.py"), str(res_file), str(wait), str(active), spec["task"],
           "--config", spec["config"], *_flags(over)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not res_file.exists():
        return {"workload": name, "error": (proc.stderr or proc.stdout)[-2000:]}
    return dict(json.loads(res_file.read_text()), workload=name)


def profile_table(p: dict, top: int = 15) -> str:
    if "error" in p:
        return f"profile of {p['workload']} failed:\n{p['error']}"
    lines = [f"profile of {p['workload']} ({'compiled' if p['compiled'] else 'eager'}, {p['device']}): "
             f"{p['step_ms']:.1f} ms per step (median of {p['active']}), {p['what']} busy "
             f"{p['busy_ms_per_step']:.1f} ms ({100 * p['busy_share']:.0f}% of the step)",
             "", "| kernel | ms per step | share of the step | calls per step |", "|---|---|---|---|"]
    for r in p["top"][:top]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        lines.append(f"| `{name}` | {r['us_per_step'] / 1e3:.2f} | {100 * r['share']:.1f}% | "
                     f"{r['calls_per_step']:.0f} |")
    if p.get("kinds"):  # every kernel, summed by kind, and the time no kernel ran
        lines += ["", "| kernels by kind | ms per step | share of the step | kernels per step |", "|---|---|---|---|"]
        for r in p["kinds"]:
            lines.append(f"| {r['kind']} | {r['us_per_step'] / 1e3:.2f} | {100 * r['share']:.1f}% | "
                         f"{r['calls_per_step']:.0f} |")
        idle = p["step_ms"] - p["busy_ms_per_step"]
        lines.append(f"| step minus the kernels' sum (GPU idle: host, launches, waits) | {idle:.2f} | "
                     f"{100 * idle / p['step_ms']:.1f}% | |")
    if p.get("most_launched"):  # many small kernels: each launch costs a gap beside its own time
        from _profile_train import most_launched_table

        lines += ["", *most_launched_table(p, top)]
    return "\n".join(lines)


def run_train_step(workloads: list[str], compile_model: bool, workdir: Path, timeout: float) -> list[dict]:
    """train_step.py's rows for ``workloads`` (eager, and with ``compile_model`` also compiled, with CUDA graphs
    as the trainer compiles on one GPU)."""
    out = workdir / f"train_step_{'_'.join(workloads)}.json"
    cmd = [sys.executable, str(HERE / "train_step.py"), "--workloads", *workloads, "--steps", "10", "--warmup", "3",
           "--json", str(out)] + (["--compile", "--compile-mode", "reduce-overhead"] if compile_model else [])
    out.unlink(missing_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        return [{"error": (proc.stderr or proc.stdout)[-2000:], "workloads": workloads}]
    return json.loads(out.read_text())


def _fmt(v, spec="{:.0f}"):
    return "-" if v is None else (spec.format(v) if isinstance(v, (int, float)) else str(v))


def table(res: dict) -> str:
    ceil = {(r.get("workload"), r.get("compiled")): r for r in res["train_step"] if "error" not in r}
    lines = [f"on {res['device']}:", "",
             "| workload | armvision CLI images/s (slowest window) | peak GiB | step ms: wall / GPU span / loader wait "
             "| train_step eager | train_step compiled |",
             "|" + "---|" * 6]
    for r in res["cli"]:
        spec = WORKLOADS[r["workload"]]
        e, c = ceil.get((spec["step_workload"], False), {}), ceil.get((spec["step_workload"], True), {})
        cli = (f"{_fmt(r.get('images_per_s'))} ({_fmt(r.get('min_window_images_per_s'))})" if r["exit_code"] == 0
               else f"failed ({r['exit_code']})")
        split = " / ".join(_fmt(r.get(k), "{:.1f}") for k in ("wall_ms", "gpu_ms", "data_wait_ms"))
        lines.append(f"| {r['workload']} | {cli} | {_fmt(r.get('peak_gib'), '{:.1f}')} | {split} | "
                     f"{_fmt(e.get('images_per_s'))} | {_fmt(c.get('images_per_s'))} |")
    lines.append("")
    lines.append("| data pipeline alone | workers | batch | images/s | slowest window |")
    lines.append("|---|---|---|---|---|")
    for p in res["pipeline"]:
        lines.append(f"| {p['mode']} | {p.get('workers', '-')} | {p.get('batch', '-')} | "
                     f"{_fmt(p.get('images_per_s'))} | {_fmt(p.get('min_window_images_per_s'))} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="write the results (JSON) here")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/armvision_train_cli"),
                    help="JPEGs and run folders (the JPEGs are reused by a later run)")
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per command (--max_steps)")
    ap.add_argument("--log-every", type=int, default=10, help="steps per logging window")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="loader workers")
    ap.add_argument("--large", action="store_true", help="also arm_large_in1k_pretrain (~1 min more)")
    ap.add_argument("--workloads", nargs="+", choices=["pretrain_b", "finetune_b", "pretrain_l"],
                    default=["pretrain_b", "finetune_b"],
                    help="the commands to run (split a long run over several calls; pretrain_l = --large)")
    ap.add_argument("--skip", nargs="+", choices=["pipeline", "train_step", "cli"], default=[],
                    help="leave out the data pipeline alone, train_step.py's model-only ceiling and/or the commands' "
                         "timed runs (cli: e.g. with --profile, only the profile)")
    ap.add_argument("--no-compile", action="store_true", help="train_step.py eager only (saves ~2-3 min)")
    ap.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                    help="data.decode of the pretraining runs (gpu: JPEGs decoded and cropped on the GPU)")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                    help="the commands' compile setting (auto: the product default, compiled on a GPU)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the first workload's command (torch.profiler): top kernels, share of a step")
    ap.add_argument("--profile-steps", type=int, nargs=2, default=(15, 5), metavar=("WAIT", "ACTIVE"),
                    help="profile: warm-up steps (compilation), then steps recorded")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="extra config overrides of the commands, e.g. --set data.normalize=workers")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, few small images and steps")
    args = ap.parse_args()
    if args.tiny:
        args.images, args.steps, args.log_every, args.workers = 16, 4, 2, 0
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--set takes KEY=VALUE (a config key of the commands), got {item!r}")
        extra[key] = value
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        ap.error("needs a CUDA GPU (or --tiny for a CPU smoke run)")
    t0 = time.perf_counter()
    data_root = args.workdir / ("jpegs_tiny" if args.tiny else "jpegs")
    make_synthetic_jpegs(data_root, args.images, size=(64, 48) if args.tiny else (500, 375))
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "images": args.images, "steps": args.steps, "workers": args.workers, "tiny": args.tiny,
           "jpeg_seconds": time.perf_counter() - t0, "pipeline": [], "cli": [], "train_step": []}
    print(f"{args.images} JPEGs ready in {res['jpeg_seconds']:.0f} s under {data_root}", flush=True)

    modes = [] if "pipeline" in args.skip else (["pretrain", "pretrain_pillow", "pretrain_float", "finetune",
                                                  "finetune_pillow"] + (["gpu"] if cuda else []))
    for mode in modes:
        kw = dict(batches=4, warmup=1, batch=4, img_size=16) if args.tiny else dict(batches=30, warmup=5)
        try:
            p = pipeline_rate(data_root, mode, args.workers, **kw)
        except Exception as ex:  # noqa: BLE001 - a benchmark reports and goes on
            p = {"mode": mode, "error": f"{type(ex).__name__}: {ex}"}
        res["pipeline"].append(p)
        print(f"data pipeline {mode}: {_fmt(p.get('images_per_s'))} images/s", flush=True)
    if cuda:
        torch.cuda.empty_cache()

    names = list(dict.fromkeys(list(args.workloads) + (["pretrain_l"] if args.large else [])))
    for name in [] if "cli" in args.skip else names:
        decode = args.decode if WORKLOADS[name]["task"] == "pretrain" else "cpu"
        r = run_cli(name, WORKLOADS[name], data_root, args.workdir, args.steps, args.workers, args.tiny,
                    args.log_every, timeout=600, decode=decode, compile_model=args.compile, extra=extra)
        res["cli"].append(r)
        print(f"armvision {name}: {_fmt(r.get('images_per_s'))} images/s, exit {r['exit_code']}, "
              f"{r['wall_s']:.0f} s" + (f"\n{r['error']}" if "error" in r else ""), flush=True)

    if args.profile:
        wait, active = (1, 2) if args.tiny else args.profile_steps
        prof = names[0]  # the first workload given
        decode = args.decode if WORKLOADS[prof]["task"] == "pretrain" else "cpu"
        res["profile"] = run_profile(prof, WORKLOADS[prof], data_root, args.workdir, args.workers,
                                     args.tiny, wait, active, timeout=600, decode=decode,
                                     compile_model=args.compile, extra=extra)
        print(profile_table(res["profile"]), flush=True)
    if cuda and "train_step" not in args.skip:
        steps = [WORKLOADS[n]["step_workload"] for n in names]
        base = [w for w in steps if w != "pretrain_l"]  # ARM-L: eager only (its compiled step: train_step.py)
        res["train_step"] += run_train_step(base, not args.no_compile, args.workdir, timeout=900)
        if "pretrain_l" in steps:
            res["train_step"] += run_train_step(["pretrain_l"], False, args.workdir, timeout=600)
    res["total_seconds"] = time.perf_counter() - t0
    text = table(res)
    print("\n" + text + f"\n\ntotal {res['total_seconds']:.0f} s; ratios against the reference timed in the same run: "
          "benchmarks/compare.py")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    failed = [r["workload"] for r in res["cli"] if r["exit_code"] != 0]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
