"""data.decode gpu's crop + resize + flip of one batch on the GPU: the batched resize (armvision.data.resize, two
float64 matmuls per chunk) against the former loop of one F.interpolate per image, on nvjpeg-decoded JPEGs.

    python benchmarks/gpu_crops.py --json crops.json [--n 256] [--size 192] [--modes bicubic bilinear]

Prints, per interpolation mode: ms per batch (CUDA events around the call, and host time of the call; median of
``--reps`` after ``--warmup``), the peak memory the call adds, the number of chunks, and how far the two agree
(8-bit pixels equal, max difference before rounding); then the whole transform (decode + crops + normalise).
Synthetic 500x375 JPEGs (quality 90) as benchmarks/data_pipeline.py makes them; about 30 s of GPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import make_synthetic_jpegs  # noqa: E402

from armvision.data.gpu import GpuBatchTransform  # noqa: E402
from armvision.data.resize import CHUNK_ELEMENTS, _chunks, _crop_flip_loop, resized_crops  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timed(fn, reps: int, warmup: int) -> tuple[float, float, float]:
    """(median CUDA ms, median host ms, peak MiB above the memory in use before) of ``fn()``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    cuda, host = [], []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t) * 1e3)
        end.record()
        torch.cuda.synchronize()
        cuda.append(start.elapsed_time(end))
    return float(np.median(cuda)), float(np.median(host)), (torch.cuda.max_memory_allocated() - base) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="images in the batch")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--modes", nargs="+", default=["bicubic", "bilinear"], choices=["bicubic", "bilinear"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_crops.py needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_jpegs(Path(tmp), args.n)
        files = sorted(root.rglob("*.jpg"))
        data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "n": args.n, "size": args.size,
              "chunk_elements": CHUNK_ELEMENTS, "modes": {}}
    for mode in args.modes:
        t = GpuBatchTransform(args.size, MEAN, STD, "cuda", interpolation=mode)
        decoded, failed = t.decode(data)
        assert not failed
        boxes, flips = t.sample(decoded, torch.Generator().manual_seed(0))
        crops = [tuple(b[2:]) for b in boxes.tolist()]
        order = sorted(range(len(crops)), key=lambda k: crops[k][0] * crops[k][1])
        chunks = len(_chunks(crops, order, decoded[0].shape[0], args.size, CHUNK_ELEMENTS))
        batch = (decoded, boxes, flips, args.size, mode)
        loop = timed(lambda b=batch: _crop_flip_loop(*b), args.reps, args.warmup)
        batched = timed(lambda b=batch: resized_crops(*b), args.reps, args.warmup)
        a = resized_crops(decoded, boxes, flips, args.size, mode, rounded=False)
        b = _crop_flip_loop(decoded, boxes, flips, args.size, mode, rounded=False)
        equal = (a.round().clamp(0, 255) == b.round().clamp(0, 255)).float().mean().item()
        whole = timed(lambda t=t: t(data, generator=torch.Generator().manual_seed(0)), args.reps, args.warmup)
        r = {"loop_ms_cuda": loop[0], "loop_ms_host": loop[1], "loop_peak_mib": loop[2],
             "batched_ms_cuda": batched[0], "batched_ms_host": batched[1], "batched_peak_mib": batched[2],
             "chunks": chunks, "pixels_equal": equal, "max_abs_diff_unrounded": (a - b).abs().max().item(),
             "transform_ms_cuda": whole[0], "transform_ms_host": whole[1]}
        record["modes"][mode] = r
        print(f"{mode}: {args.n} images of 500x375 -> {args.size}, {chunks} chunk(s)")
        print(f"  loop of F.interpolate  {loop[0]:7.2f} ms (host {loop[1]:6.2f}), peak +{loop[2]:6.0f} MiB")
        print(f"  batched resize         {batched[0]:7.2f} ms (host {batched[1]:6.2f}), peak +{batched[2]:6.0f} MiB")
        print(f"  8-bit pixels equal {equal * 100:.4f} %, max difference before rounding "
              f"{r['max_abs_diff_unrounded']:.2e}")
        print(f"  whole transform (decode + crops + normalise) {whole[0]:7.2f} ms (host {whole[1]:6.2f})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
