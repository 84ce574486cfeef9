"""data.decode gpu on CUDA (skipped without it): nvjpeg + GPU crops against the same code on the CPU, and the batched
resize (armvision.data.resize) against one F.interpolate per image on the GPU."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ks import ks_2samp  # noqa: E402
from test_data_gpu_path import MEAN, STD, assert_same_crops, encoded, jpeg_bytes, natural  # noqa: E402

from armvision.data.gpu import GpuBatchTransform  # noqa: E402
from armvision.data.resize import resized_crops  # noqa: E402

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


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_cuda_batched_resize_equals_per_image_loop_on_decoded_jpegs(tmp_path, mode):
    """Real JPEG files decoded by nvjpeg, crops drawn as in training plus fixed ones (the whole image, 1 row, 1 column,
    a 50x40 crop upsampled): the criteria of the CPU test (test_data_gpu_path.assert_same_crops) against the loop run
    on the GPU (CUDA's antialiased kernels, float32 and float64)."""
    rng = np.random.default_rng(0)
    shapes = [(375, 500), (500, 375), (333, 500), (120, 90), (64, 64), (40, 300), (480, 640), (256, 256)]
    data = []
    for i, (h, w) in enumerate(shapes):
        natural(rng, h, w).save(tmp_path / f"{i}.jpg", quality=90)
        data.append(encoded((tmp_path / f"{i}.jpg").read_bytes()))
    t = GpuBatchTransform(192, MEAN, STD, "cuda", interpolation=mode)
    decoded, failed = t.decode(data)
    assert failed == [] and all(x.is_cuda and x.shape[1:] == s for x, s in zip(decoded, shapes))
    boxes, flips = t.sample(decoded, torch.Generator().manual_seed(0))
    fixed = torch.tensor([[0, 0, 375, 500], [100, 0, 1, 375], [0, 200, 333, 1], [30, 20, 50, 40]])
    images = decoded + decoded[:4]
    boxes = torch.cat([boxes, fixed])
    flips = torch.cat([flips, torch.tensor([False, True, True, False])])
    assert assert_same_crops(images, boxes, flips, 192, mode, device="cuda") <= 1e-3
    assert assert_same_crops(images[:8], boxes[:8], flips[:8], 224, mode, device="cuda") <= 1e-3


def test_cuda_same_generator_same_crops_as_cpu():
    """The crops and flips are drawn on the CPU: the same per-call generator gives the same boxes on either device, so
    the GPU batch differs from the CPU one only by the decoders (the bound of test_cuda_fixed_crop_equals_cpu)."""
    rng = np.random.default_rng(1)
    data = [encoded(jpeg_bytes(natural(rng, 375, 500))) for _ in range(8)]
    cpu, _ = GpuBatchTransform(192, MEAN, STD, "cpu")(data, generator=torch.Generator().manual_seed(3))
    gpu, _ = GpuBatchTransform(192, MEAN, STD, "cuda")(data, generator=torch.Generator().manual_seed(3))
    levels = (gpu.cpu() - cpu) * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert levels.abs().mean() < 0.5 and levels.abs().max() <= 16


def test_cuda_batched_resize_same_under_tf32_autocast_and_a_side_stream_thread():
    """The trainer sets allow_tf32 and runs under bf16 autocast; a prefetcher may call the transform in a thread on a
    side stream: none of these changes the float64 result."""
    import threading

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).cuda()
              for h, w in [(375, 500), (500, 375), (64, 90)]]
    boxes, flips = [(10, 20, 300, 400), (0, 0, 500, 375), (5, 5, 40, 60)], [True, False, True]
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        ref = resized_crops(images, boxes, flips, 192, rounded=False)
        torch.backends.cuda.matmul.allow_tf32 = True
        with torch.autocast("cuda", dtype=torch.bfloat16):
            # TF32 or bf16 matmuls would be off by ~0.1-1 grey level
            assert torch.allclose(resized_crops(images, boxes, flips, 192, rounded=False), ref, rtol=0, atol=1e-4)
        out = {}
        torch.cuda.synchronize()

        def work():
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                out["x"] = resized_crops(images, boxes, flips, 192, rounded=False)
            side.synchronize()

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        assert torch.allclose(out["x"], ref, rtol=0, atol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_cuda_decodes_a_batch_that_crossed_processes_as_one_buffer():
    """An EncodedBatch (the loader's batches with data.decode gpu) after pickling: nvjpeg decodes its views of the
    one buffer exactly as it decodes the original tensors."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from armvision.data.gpu import EncodedBatch

    rng = np.random.default_rng(0)
    batch = EncodedBatch(encoded(jpeg_bytes(natural(rng, 120 + 7 * i, 160))) for i in range(6))
    back = pickle.loads(ForkingPickler.dumps(batch))
    t = GpuBatchTransform(32, MEAN, STD, "cuda")
    (a, fa), (b, fb) = t.decode(list(batch)), t.decode(back)
    assert fa == fb == [] and all(torch.equal(x, y) for x, y in zip(a, b))
