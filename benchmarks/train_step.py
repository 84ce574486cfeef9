"""Training-step throughput of ARM models: images/s, ms/step, MFU and peak memory.

The method of benchmarks/reference.py, which times the official ARM code the same way: one process, bf16 autocast,
fused AdamW, gradient clipping at 3.0, random input images (``--images DIR``: one batch of real ones, cropped and
normalised as the pretraining command does; benchmarks/_inputs.py), median of the timed steps after warm-up steps
and ``--warm-seconds`` of steps more (the card at the clocks it keeps under load: benchmarks/_steady.py).
The steps run back to back and their CUDA events are read once at the end (until 2026-12-01 the loop
synchronised after each step, which left the GPU idle while the host launched the next one).
Model only: no data loading (the product path, `armvision pretrain` on JPEGs, is
benchmarks/train_cli.py). Run on a GPU:

    python benchmarks/train_step.py                                 # ARM-B pretrain / fine-tune, ARM-L pretrain
    python benchmarks/train_step.py --workloads pretrain_b --backends triton torch --compile

MFU counts matrix multiplies only: the forward's matmul FLOPs (measured with
torch.utils.flop_counter) x 3 for a training step, over the bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import _inputs
import _steady
import armvision

WORKLOADS = {
    # name: (model, pretraining, batch, image size): the workloads of benchmarks/reference.py
    "pretrain_b": ("arm_base_pz16", True, 256, 192),
    "pretrain_l": ("arm_large_pz16", True, 128, 192),
    "finetune_b": ("arm_base_pz16", False, 128, 224),
}


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (time.perf_counter() - t) / 1e12


def step_fn(model, pretraining, opt, images, labels):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(images) if pretraining else F.cross_entropy(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def forward_flops(model, pretraining, images) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(images[:2])
    return counter.get_total_flops() / 2  # per image


def run(workload: str, backend: str, compile_model: bool, steps: int, warmup: int, peak: float,
        states: str | None = None, mode: str = "default", profile: int = 0, images_dir: Path | None = None,
        warm_s: float = _steady.WARM_SECONDS) -> dict:
    """One workload's training steps, the scan's chunk states kept (``states="save"``) or recomputed (None: as the
    launch defaults in effect say: ``ARMVISION_SCAN_CONFIG``'s, as compare.py's variants set it, or the built-in
    ``recompute``); ``mode``:
    torch.compile's mode (reduce-overhead: CUDA graphs, as the trainer's compile_mode auto on one GPU);
    ``profile``: after the timed steps, that many more steps under torch.profiler (the result's ``profile``);
    ``images_dir``: one batch of those images as the input (benchmarks/_inputs.py) instead of random numbers;
    ``warm_s``: seconds of steps after the ``warmup`` ones and before the timed ones (benchmarks/_steady.py)."""
    if states is None:
        states = armvision.ops.current_scan_config()["states"]
    with armvision.ops.scan_config(states=states):
        return _run(workload, backend, compile_model, steps, warmup, peak, states, mode, profile, images_dir,
                    warm_s)


def _sync(cuda: bool) -> None:
    """Wait for the GPU's queued kernels (nothing on the CPU)."""
    if cuda:
        torch.cuda.synchronize()


def profile_steps(step, active: int, cuda: bool = True) -> dict:
    """``active`` steps back to back under torch.profiler, after one warm-up step: where a step's time goes
    (benchmarks/_profile_train.py's table: top kernels, kernels by kind, busy share; plus kernels per step).
    ``cuda=False``: CPU operators only (tests)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from _profile_train import kernel_table

    # repeat=1: one cycle. With the default (cycles repeating) the profiler starts a new cycle at the last step and
    # clears the recorded one, so the table came out empty (torch 2.11: 0 kernels per step, 2026-12-07)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                 schedule=schedule(wait=0, warmup=1, active=active, repeat=1)) as prof:
        step()
        # the warm-up step's kernels end before the active cycle opens: the GPU runs behind the host, and kernels
        # that ran after prof.step() were counted as the active steps' (2026-12-08, H100: the scan backward 14.4
        # times per 5-step average instead of 12, one warm-up backward too many)
        _sync(cuda)
        prof.step()
        t0 = time.perf_counter()
        for i in range(active):
            step()
            if i == active - 1:  # the last step's kernels end inside the cycle, and inside the timed span
                _sync(cuda)
            prof.step()
        step_us = (time.perf_counter() - t0) / active * 1e6
    res = kernel_table(prof, active, step_us, cuda=cuda)
    res["kernels_per_step"] = sum(k["calls_per_step"] for k in res.get("kinds", []))
    return res


def save_inductor_code(dest: Path) -> list[str]:
    """Copy the wrapper modules inductor generated and loaded in this process (one per compiled graph: the forward's
    and the backward's, with their Triton kernels' sources inline) to ``dest``, in the order they were loaded: which
    ops each kernel of a profile fused, and which it did not, to read without a GPU. Returns the files' names."""
    from torch._inductor.codecache import PyCodeCache

    dest.mkdir(parents=True, exist_ok=True)
    names = []
    # torch 2.14 (and 2.11, the GPU machines') keep the loaded modules in a list; older ones in a dict
    modules = getattr(PyCodeCache, "modules", None) or list(getattr(PyCodeCache, "cache", {}).values())
    for i, mod in enumerate(modules):
        src = Path(getattr(mod, "__file__", "") or "")
        text = src.read_text() if src.is_file() else ""
        if "def call(" in text:
            names.append(f"graph{i:02d}_{src.stem[:12]}.py")
            (dest / names[-1]).write_text(text)
    return names


def _run(workload: str, backend: str, compile_model: bool, steps: int, warmup: int, peak: float,
         states: str, mode: str, profile: int, images_dir: Path | None, warm_s: float) -> dict:
    name, pretraining, batch, size = WORKLOADS[workload]
    torch.manual_seed(0)
    model = armvision.create_model(name, pretraining=pretraining, backend=backend).cuda()
    flops = forward_flops(model, pretraining, torch.randn(2, 3, size, size, device="cuda")) * 3
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    if images_dir is None:
        images = torch.randn(batch, 3, size, size, device="cuda")
    else:
        images = _inputs.image_batch(images_dir, batch, size).cuda()
    labels = torch.randint(0, 1000, (batch,), device="cuda")
    if compile_model:  # as the trainer compiles (train/compiled.py), ARMVISION_INDUCTOR's options included
        from armvision.train.compiled import inductor_options

        options = inductor_options(mode)
        model = (torch.compile(model, options=options) if options is not None
                 else torch.compile(model, mode=None if mode == "default" else mode))
    step = step_fn(model, pretraining, opt, images, labels)
    if compile_model and mode in ("reduce-overhead", "max-autotune"):
        graph_step = step

        def step():  # as the trainer: each step tells the CUDA graphs the last step's outputs are dead
            torch.compiler.cudagraph_mark_step_begin()
            return graph_step()
    torch.cuda.reset_peak_memory_stats()
    warm = _steady.warm_up(step, warmup, warm_s, torch.cuda.synchronize)  # to the clocks kept under load
    # the steps run back to back, as in training: no synchronisation between them (it would leave the GPU idle
    # while the host launches the next step), events around each step, read once at the end
    events = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    step_ms = [start.elapsed_time(end) for start, end in events]
    ms = statistics.median(step_ms)
    ips = batch / ms * 1e3
    prof = profile_steps(step, profile) if profile else None
    res = dict(workload=workload, model=name, backend=backend, states=states, compiled=compile_model,
               compile_mode=mode if compile_model else None, batch=batch, ms=ms,
               images_per_s=ips, mfu=flops * ips / (peak * 1e12), peak_gib=torch.cuda.max_memory_allocated() / 2**30,
               gflop_per_image=flops / 1e9, loss=float(loss.detach()), device=torch.cuda.get_device_name(),
               inputs="random" if images_dir is None else "images",
               step_ms=[round(t, 2) for t in step_ms],  # every timed step: the spread beside the median
               warmup=warmup, **warm)
    if prof is not None:
        res["profile"] = prof
    del model, opt, images
    torch.cuda.empty_cache()
    return res


def print_profile(p: dict) -> None:
    print(f"profiled: {p['step_ms']:.1f} ms per step, kernels busy {p['busy_ms_per_step']:.1f} ms "
          f"({100 * p['busy_share']:.0f}%), {p['kernels_per_step']:.0f} kernels per step")
    print("| kind | ms per step | share | kernels per step |\n|---|---|---|---|")
    for k in p["kinds"]:
        print(f"| {k['kind']} | {k['us_per_step'] / 1e3:.2f} | {100 * k['share']:.1f}% | {k['calls_per_step']:.0f} |")
    print("| kernel | ms per step | share | calls per step |\n|---|---|---|---|")
    for k in p["top"]:
        print(f"| `{k['name'][:90]}` | {k['us_per_step'] / 1e3:.2f} | {100 * k['share']:.1f}% | "
              f"{k['calls_per_step']:.0f} |")
    if p.get("most_launched"):
        from _profile_train import most_launched_table

        print("\n".join(most_launched_table(p)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--backends", nargs="+", default=["triton"], help="ops backends to compare (triton, torch, ...)")
    ap.add_argument("--compile", action="store_true", help="also run each with torch.compile")
    ap.add_argument("--compiled-only", action="store_true", help="run only the compiled steps (implies --compile)")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode of the compiled runs (reduce-overhead: CUDA graphs, as armvision's "
                         "trainer on one GPU)")
    ap.add_argument("--states", nargs="+", choices=["save", "recompute"],
                    help="Triton scan: keep the chunk states for the backward, or recompute them there (default: "
                         "as ARMVISION_SCAN_CONFIG says, else recompute)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    _steady.add_warm_option(ap)
    ap.add_argument("--json", type=Path)
    _inputs.add_images_option(ap)
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after each timed run, profile this many more steps: top kernels, kernels by kind, busy "
                         "share and kernels per step, printed and in the JSON")
    ap.add_argument("--inductor-code", type=Path, metavar="DIR",
                    help="at the end, copy the code inductor generated for the compiled graphs (forward and backward "
                         "wrappers with their Triton kernels) to DIR")
    args = ap.parse_args()
    _inputs.check_images_option(ap, args.images)
    _steady.check_warm_option(ap, args.warm_seconds)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (it times training steps on one); on the CPU, benchmarks/train_cli.py --tiny "
                 "runs the commands end to end")
    peak = matmul_tflops()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; bf16 matmul {peak:.0f} TFLOP/s")
    rows = []
    for w in args.workloads:
        for backend in args.backends:
            for comp in ([True] if args.compiled_only else [False, True] if args.compile else [False]):
                for states in ((args.states or [None]) if backend != "torch" else ["save"]):
                    steps = args.steps if backend != "torch" else 3  # the plain-PyTorch path is slow
                    try:
                        r = run(w, backend, comp, steps, args.warmup if backend != "torch" else 1, peak, states,
                                args.compile_mode, args.profile, args.images,
                                args.warm_seconds if backend != "torch" else 0.0)
                    except torch.cuda.OutOfMemoryError as ex:
                        print(f"{w} {backend} compile={comp}: out of memory ({str(ex)[:80]})")
                        torch.cuda.empty_cache()
                        continue
                    rows.append(r)
                    print(f"{w:>11} {backend:>7} states={r['states']:>9} compile={str(comp):>5}: "
                          f"{r['images_per_s']:8.0f} img/s  {r['ms']:8.1f} ms  MFU {100 * r['mfu']:4.1f}%  "
                          f"peak {r['peak_gib']:5.1f} GiB", flush=True)
                    if "profile" in r:
                        print_profile(r["profile"])
    hdr = "| workload | backend | scan states | compile | batch | images/s | ms/step | MFU | peak GiB |"
    print("\n" + hdr + "\n|" + "---|" * 9)
    for r in rows:
        comp = f"{r['compiled']} ({r['compile_mode']})" if r["compiled"] else "False"
        print(f"| {r['workload']} | {r['backend']} | {r['states']} | {comp} | {r['batch']} "
              f"| {r['images_per_s']:.0f} | "
              f"{r['ms']:.1f} | {100 * r['mfu']:.1f}% | {r['peak_gib']:.1f} |")
    print("ratios against the reference: benchmarks/compare.py times benchmarks/reference.py in the same run")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.inductor_code:
        try:
            names = save_inductor_code(args.inductor_code)
            print(f"inductor's generated code: {len(names)} graphs in {args.inductor_code}")
        except (OSError, AttributeError) as ex:  # the timings above are kept either way
            print(f"inductor's generated code not saved: {type(ex).__name__}: {ex}")


if __name__ == "__main__":
    main()
