"""data.decode gpu on CUDA (skipped without it): nvjpeg + GPU crops against the same code on the CPU."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_data_gpu_path import MEAN, STD, encoded, jpeg_bytes, natural  # noqa: E402

from armvision.data.gpu import GpuBatchTransform  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_fixed_crop_equals_cpu():
    rng = np.random.default_rng(0)
    data = [encoded(jpeg_bytes(natural(rng, 375, 500))) for _ in range(8)]
    kw = dict(scale=(1, 1), ratio=(4 / 3, 4 / 3), hflip=0.0)
    cpu, _ = GpuBatchTransform(192, MEAN, STD, "cpu", **kw)(data)
    gpu, failed = GpuBatchTransform(192, MEAN, STD, "cuda", **kw)(data)
    levels = (gpu.cpu() - cpu) * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert failed == [] and gpu.is_cuda
    # nvjpeg's IDCT and chroma upsampling vs libjpeg-turbo's: measured on an H200 (2026-11-30) mean 0.17 and max 10
    # grey levels, the max at sharp colour edges; a wrong crop, scale or normalisation is tens of levels on average
    assert levels.abs().mean() < 0.5 and levels.abs().max() <= 16


def test_cuda_random_crops_statistics_match_cpu(seed):
    rng = np.random.default_rng(seed)
    data = [encoded(jpeg_bytes(natural(rng, 120, 160))) for _ in range(16)]
    on_cpu, on_gpu = GpuBatchTransform(32, MEAN, STD, "cpu", seed=seed), GpuBatchTransform(32, MEAN, STD, "cuda")
    cpu = torch.cat([on_cpu(data)[0] for _ in range(20)])
    gpu = torch.cat([on_gpu(data)[0].cpu() for _ in range(20)])
    for c in range(3):
        assert ks_2samp(cpu[:, c].mean((1, 2)).numpy(), gpu[:, c].mean((1, 2)).numpy()).pvalue > 1e-4


def test_cuda_names_the_jpeg_nvjpeg_and_pil_cannot_decode():
    """One file that starts like a JPEG but is not one fails the batched nvjpeg call: the batch is decoded
    one by one, and the bad file's position comes back (the trainer names it from the batch's file names)."""
    rng = np.random.default_rng(0)
    data = [encoded(jpeg_bytes(natural(rng, 60, 80))) for _ in range(3)]
    data.insert(1, encoded(b"\xff\xd8\xff\xe0 truncated, not a JPEG"))
    out, failed = GpuBatchTransform(32, MEAN, STD, "cuda")(data, ["a.jpg", "bad.jpg", "c.jpg", "d.jpg"])
    assert failed == [1] and out.shape == (4, 3, 32, 32) and torch.isfinite(out).all()
