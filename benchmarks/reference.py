"""The reference's training step: the official ARM code (OliverRensu/ARM) on mamba-ssm's and causal-conv1d's CUDA
kernels, built for this GPU from their source distributions (benchmarks/_cuda_ext.py).

The official code is not part of armvision and is not copied into it: pass a checkout (``--arm-src``, the folder
holding ``models_pretrain.py`` and ``Finetuning/``). It was written against a fork of mamba-ssm 1.1.1 (Vim's);
on mamba-ssm 2.3.2.post1 three of its imports need stand-ins, set up here and nowhere else:

* ``mamba_inner_fn_no_out_proj`` (the fine-tuning mixer's four directions; only in the fork): the fork's function
  computes, for xz (b, 2e, l), the causal conv + SiLU of x, x_proj, dt_proj and the gated selective scan, without
  the output projection. Here it is that composition of the packages' own autograd functions
  (``causal_conv1d_fn``, ``selective_scan_fn``) and two matrix products, on the same CUDA kernels;
* ``bimamba_inner_fn`` (the fork's "v1" mixer, used by no ARM model): a function that raises;
* ``mamba_ssm.ops.triton.layernorm`` (the fork's name of ``mamba_ssm.ops.triton.layer_norm``): that module. ARM's
  blocks use ``nn.LayerNorm``; only the block factory's unused ``norm_cls`` refers to it.

A step as benchmarks/train_step.py times armvision's model (the same method for both sides): bf16 autocast, fused
AdamW, gradient clipping at 3.0, random images and labels (``--images DIR``: one batch of real images, as in
train_step.py), steps back to back with CUDA events read at the end, the median step; peak memory. The pretraining
loss is the model's per-token loss averaged (``loss.mean()`` as its ``engine_pretrain.py``); fine-tuning is
cross-entropy on the classifier's logits (the recipe's mixup and label smoothing change no kernel).

    python benchmarks/reference.py --arm-src ARM --mamba-ssm-src mamba_ssm-2.3.2.post1.tar.gz \\
        --causal-conv1d-src causal_conv1d-1.7.0.tar.gz --build-dir build/ref --workloads pretrain_b --json ref.json

Pretraining and fine-tuning workloads must run in separate processes (the two model files import different
``mamba_simple`` modules under one name): give workloads of one kind per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cuda_ext  # noqa: E402
import _inputs  # noqa: E402
import _steady  # noqa: E402

# name: (task, official model function, batch, image size); the batches and sizes of the project's targets
WORKLOADS = {
    "pretrain_b": ("pretrain", "arm_base_pz16", 256, 192),
    "pretrain_l": ("pretrain", "arm_large_pz16", 128, 192),
    "finetune_b": ("finetune", "arm_base_pz16", 128, 224),
}


def _no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None, C=None, D=None,
                 delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    """Stand-in for the fork's ``mamba_inner_fn_no_out_proj``: xz (b, 2e, l) -> the gated scan output (b, e, l) of
    one direction (B and C from x_proj when not given, as in the fork)."""
    import torch.nn.functional as F
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    b, _, length = xz.shape
    rank, n = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight.reshape(conv1d_weight.shape[0], -1), conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(b * length, -1), x_proj_weight)  # (b l, rank + 2n)
    delta = (delta_proj_weight @ x_dbl[:, :rank].t()).reshape(-1, b, length).transpose(0, 1)  # (b, e, l)

    def per_step(cols, given, bias):
        if given is not None:
            return given
        v = x_dbl[:, cols]
        if bias is not None:
            v = v + bias.to(v.dtype)
        return v.reshape(b, length, n).transpose(1, 2).contiguous()  # (b, n, l)

    B = per_step(slice(rank, rank + n), B, B_proj_bias)
    C = per_step(slice(rank + n, rank + 2 * n), C, C_proj_bias)
    return selective_scan_fn(x, delta, A, B, C, D, z, delta_bias, delta_softplus)


def install_stand_ins() -> None:
    """The three imports of the official code that mamba-ssm 2.3.2.post1 lacks (module docstring)."""
    import mamba_ssm.ops.selective_scan_interface as ssi
    import mamba_ssm.ops.triton.layer_norm as layer_norm

    def bimamba_inner_fn(*args, **kwargs):
        raise NotImplementedError("bimamba v1 is not used by the ARM models")

    ssi.mamba_inner_fn_no_out_proj = _no_out_proj
    ssi.bimamba_inner_fn = bimamba_inner_fn
    alias = types.ModuleType("mamba_ssm.ops.triton.layernorm")
    for name in ("RMSNorm", "layer_norm_fn", "rms_norm_fn"):
        setattr(alias, name, getattr(layer_norm, name))
    sys.modules["mamba_ssm.ops.triton.layernorm"] = alias


def official_model(arm_src: Path, task: str, name: str):
    """The official model ``name`` of ``task`` (pretrain: models_pretrain.py; finetune: Finetuning/models_mamba.py,
    1000 classes), with its own initialisation."""
    folder = arm_src if task == "pretrain" else arm_src / "Finetuning"
    sys.path.insert(0, str(folder))
    module = __import__("models_pretrain" if task == "pretrain" else "models_mamba")
    return getattr(module, name)(**({} if task == "pretrain" else {"num_classes": 1000}))


def time_steps(model, task: str, batch: int, size: int, steps: int, warmup: int, device: str = "cuda",
               images_dir: Path | None = None, warm_s: float = 0.0) -> dict:
    """Median ms of ``steps`` training steps run back to back after ``warmup`` steps and ``warm_s`` seconds more
    (benchmarks/_steady.py: the card at the clocks it keeps under load); peak memory. bf16 autocast on CUDA; on the
    CPU (the tests) float32, since the packages' autograd functions cast for CUDA autocast only. ``images_dir``:
    one batch of those images as the input (benchmarks/_inputs.py) instead of random numbers."""
    import torch
    import torch.nn.functional as F

    cuda = device == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    if images_dir is None:
        images = torch.randn(batch, 3, size, size, device=device)
    else:
        images = _inputs.image_batch(images_dir, batch, size).to(device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            out = model(images)
            loss = out.mean() if task == "pretrain" else F.cross_entropy(out, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warm = _steady.warm_up(step, warmup, warm_s, torch.cuda.synchronize if cuda else lambda: None)
    if not cuda:
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            loss = step()
            times.append((time.perf_counter() - t) * 1e3)
        return {"ms": statistics.median(times), "loss": float(loss.detach()), "peak_gib": None, **warm}
    events = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    step_ms = [s.elapsed_time(e) for s, e in events]
    return {"ms": statistics.median(step_ms), "loss": float(loss.detach()),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "step_ms": [round(t, 2) for t in step_ms], **warm}


def run(workload: str, arm_src: Path, steps: int, warmup: int, device: str = "cuda", batch: int | None = None,
        size: int | None = None, images_dir: Path | None = None, warm_s: float = 0.0) -> dict:
    import torch

    task, name, wl_batch, wl_size = WORKLOADS[workload]
    batch, size = batch or wl_batch, size or wl_size
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = official_model(arm_src, task, name).to(device)
    model.train()
    res = time_steps(model, task, batch, size, steps, warmup, device, images_dir, warm_s)
    res.update(workload=workload, model=f"official {name} ({task})", batch=batch, img_size=size,
               inputs="random" if images_dir is None else "images",
               images_per_s=batch / res["ms"] * 1e3, seconds=time.perf_counter() - t0, steps=steps)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm-src", type=Path, required=True, help="a checkout of OliverRensu/ARM")
    ap.add_argument("--mamba-ssm-src", type=Path, required=True,
                    help="mamba-ssm 2.3.2.post1 sdist (.tar.gz or unpacked)")
    ap.add_argument("--causal-conv1d-src", type=Path, required=True, help="causal-conv1d sdist (.tar.gz or unpacked)")
    ap.add_argument("--build-dir", type=Path, default=Path("build/reference"))
    ap.add_argument("--workloads", nargs="+", default=["pretrain_b", "pretrain_l"], choices=list(WORKLOADS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    _steady.add_warm_option(ap)
    _inputs.add_images_option(ap)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    _inputs.check_images_option(ap, args.images)
    _steady.check_warm_option(ap, args.warm_seconds)
    kinds = {WORKLOADS[w][0] for w in args.workloads}
    if len(kinds) > 1:
        ap.error("give pretraining or fine-tuning workloads, not both, in one call (two model files, one module name)")
    import torch

    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the reference runs on mamba-ssm's CUDA kernels)")
    src = args.build_dir / "src"
    versions = _cuda_ext.install_reference_packages(_cuda_ext.unpacked(args.mamba_ssm_src, src),
                                                    _cuda_ext.unpacked(args.causal_conv1d_src, src), args.build_dir)
    install_stand_ins()
    rows = []
    for w in args.workloads:
        r = dict(run(w, args.arm_src, args.steps, args.warmup, images_dir=args.images, warm_s=args.warm_seconds),
                 device=torch.cuda.get_device_name(), torch=torch.__version__, **versions)
        rows.append(r)
        print(f"reference {w} ({r['inputs']} inputs): {r['images_per_s']:.0f} images/s, {r['ms']:.1f} ms/step, "
              f"peak {r['peak_gib']:.1f} GiB ({r['seconds']:.0f} s)", flush=True)
        if args.json:  # written after each workload: a later failure keeps the earlier rows
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
