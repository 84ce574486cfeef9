"""Input-pipeline throughput: images/s of armvision's own data path (no model), on ImageNet-like JPEGs.

Modes (each through the trainer's own data path: build_pipeline, the DataLoader and the DeviceFeeder
that prepares batches on the device ahead of the step, with the presets' transforms):
  pretrain        decode + RandomResizedCrop (0.2-1, bicubic) + flip in N loader workers, 8-bit batches
                  normalised on the device (data.normalize auto on a GPU); RGB JPEGs decoded by torchvision
                  and the crop resized by PyTorch (data.resize_backend torch, the default)
  pretrain_pillow the same with data.resize_backend pillow (timm's Pillow pipeline, as the reference code)
  pretrain_float  the same, normalised in the workers (data.normalize workers: float32 batches)
  finetune        timm's training transform (RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1,
                  random erasing 0.25) in the workers, then timm Mixup/CutMix on each batch on the device
  finetune_pillow the same with data.resize_backend pillow
  gpu             data.decode gpu: workers read bytes; batched nvjpeg decode + crop + flip + normalise on
                  the GPU (armvision.data.gpu), needs CUDA

    python benchmarks/data_pipeline.py --make 8192 --root /tmp/jpegs --workers 15
    python benchmarks/data_pipeline.py --root /tmp/jpegs --modes pretrain finetune gpu --json out.json

Images/s counts the timed batches after ``--warmup`` batches (workers starting), across epoch
boundaries (the loop starts a new epoch when one ends, as the trainer does); ``min_window`` is the
slowest window of ``--window`` batches, which shows an epoch-boundary stall.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from armvision.train import load_config

PRESETS = {"pretrain": "arm_base_in1k_pretrain", "pretrain_pillow": "arm_base_in1k_pretrain",
           "pretrain_float": "arm_base_in1k_pretrain", "finetune": "arm_base_in1k_finetune",
           "finetune_pillow": "arm_base_in1k_finetune", "gpu": "arm_base_in1k_pretrain"}
MODE_OVERRIDES = {"pretrain_float": {"data.normalize": "workers"}, "gpu": {"data.decode": "gpu"},
                  "pretrain_pillow": {"data.resize_backend": "pillow"},
                  "finetune_pillow": {"data.resize_backend": "pillow"}}
# the micro-batches of the targets (benchmarks/reference.py), by preset
BATCH = {mode: 256 if preset == "arm_base_in1k_pretrain" else 128 for mode, preset in PRESETS.items()}


def _synthetic_image(args) -> None:
    """One natural-looking JPEG: a smooth random colour field, a few soft shapes, sensor-like noise."""
    path, seed, cls, size, quality = args
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.random((rng.integers(3, 7), rng.integers(3, 7), 3)) * 255
    low[..., cls % 3] = low[..., cls % 3] * 0.5 + 110  # a faint colour cast per class
    img = Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)


def make_synthetic_jpegs(root: Path, n: int, classes: int = 4, size=(500, 375), quality: int = 90, seed: int = 0,
                         workers: int | None = None, split: str = "train") -> Path:
    """``n`` JPEGs in ImageFolder layout ROOT/SPLIT/class_K/*.jpg (kept if already there)."""
    root = Path(root)
    jobs = []
    for i in range(n):
        d = root / split / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img_{i:06d}.jpg"
        if not p.exists():
            jobs.append((p, seed * 1_000_003 + i, i % classes, tuple(size), quality))
    if jobs:
        with Pool(workers or os.cpu_count()) as pool:
            pool.map(_synthetic_image, jobs, chunksize=16)
    return root


def pipeline_rate(root: Path, mode: str, workers: int, batches: int = 40, warmup: int = 5, window: int = 5,
                  batch: int | None = None, device: str | None = None, img_size: int | None = None) -> dict:
    """Images/s of one mode (see the module docstring) through the trainer's own data path
    (``build_pipeline`` + :class:`~armvision.data.DeviceFeeder` + ``Pipeline.to_device``, as
    ``armvision pretrain``/``finetune`` run it, without the model); returns a record."""
    from armvision.data import DeviceFeeder
    from armvision.train.data import build_pipeline

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    over = {"data.root": str(root), "data.val_split": None, "data.workers": workers}
    over.update(MODE_OVERRIDES.get(mode, {}))
    if img_size:
        over["model.img_size"] = img_size
    cfg = load_config(PRESETS[mode], over)
    a = cfg.aug
    batch = batch or BATCH[mode]
    pipe = build_pipeline(cfg, cfg.data.train_split, True, batch, device=device, persistent_workers=True)
    mixup = None
    if cfg.task == "finetune" and (a.mixup > 0 or a.cutmix > 0):
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
                      mode="batch", label_smoothing=a.smoothing, num_classes=4)

    def prepare(b, index):
        images, labels, skips = b
        gen = torch.Generator().manual_seed(index) if pipe.batch_transform is not None else None
        images, _ = pipe.to_device(images, skips.names, device, gen)
        return images, labels.to(device, non_blocking=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    need = warmup + batches + 1
    per_epoch = len(pipe.dataset) // batch
    pipe.sampler.set_epoch(0, until=-(-need // per_epoch) + 1)  # one iterator through the epochs, as the trainer
    stamps = []
    with DeviceFeeder(iter(pipe.loader), prepare, device, thread=device.type == "cuda") as feeder:
        for images, labels in feeder:
            if mixup is not None:
                images, labels = mixup(images, labels)
            sync()
            stamps.append(time.perf_counter())
            if len(stamps) >= need:
                break
    epoch = -(-len(stamps) // per_epoch)
    t = np.array(stamps[warmup:])
    rates = [window * batch / (t[i + window] - t[i]) for i in range(0, len(t) - window, window)]
    return {"mode": mode, "workers": workers, "batch": batch, "img_size": cfg.model.img_size,
            "images": len(pipe.dataset), "normalize": "device" if pipe.normalize else "workers",
            "epochs_crossed": epoch, "images_per_s": batches * batch / (t[-1] - t[0]),
            "min_window_images_per_s": min(rates) if rates else None, "device": str(device)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="ImageFolder root (ROOT/train/CLASS/*.jpg)")
    ap.add_argument("--make", type=int, default=0, help="first make this many synthetic 500x375 JPEGs under ROOT")
    ap.add_argument("--modes", nargs="+", default=["pretrain", "pretrain_pillow", "pretrain_float", "finetune"]
                    + (["gpu"] if torch.cuda.is_available() else []), choices=list(PRESETS))
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, help="batch size (default: the targets' micro-batch of the mode)")
    ap.add_argument("--img-size", type=int, help="crop size (default: the preset's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.make:
        t = time.perf_counter()
        make_synthetic_jpegs(args.root, args.make)
        print(f"made {args.make} JPEGs in {time.perf_counter() - t:.1f} s")
    rows = []
    for mode in args.modes:
        r = pipeline_rate(args.root, mode, args.workers, args.batches, args.warmup, batch=args.batch,
                          img_size=args.img_size)
        rows.append(r)
        slowest = r["min_window_images_per_s"]
        print(f"{mode:>9}: {r['images_per_s']:8.0f} images/s (slowest window {slowest or 0:.0f}), "
              f"{r['workers']} workers, batch {r['batch']}, {r['epochs_crossed']} epoch(s) of {r['images']}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
