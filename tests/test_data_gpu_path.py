"""data.decode gpu (armvision.data.gpu) run on the CPU device against the CPU path: the same crop
distribution as torchvision's RandomResizedCrop.get_params, the same pixels for a fixed crop, the
same output statistics over random crops, and the fallbacks for non-JPEG and unreadable files; the batched resize
(armvision.data.resize) against one F.interpolate per image."""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ks import ks_2samp
from torchvision.transforms import RandomResizedCrop

from armvision.data import make_loader, pretrain_transform
from armvision.data.gpu import GpuBatchTransform, build_encoded_dataset, collate_encoded, sample_crop_boxes
from armvision.data.resize import _crop_flip_loop, interpolation_matrices, resized_crops
from armvision.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def natural(rng, h, w):
    """A smooth random field plus noise: pixel statistics that a crop changes (unlike white noise)."""
    low = rng.random((3, 4, 3)) * 255
    img = np.array(Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float64)
    img[: h // 2, : w // 3] = 250  # a bright block in the top-left: flips and crops move it
    return Image.fromarray((img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8))


def jpeg_bytes(img, fmt="JPEG"):
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def encoded(data):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# (height, width) of the images and the fixed crop boxes (top, left, height, width) of the batched-resize tests:
# downscaling, upscaling (12x9 -> 16/24), the whole image, 1 row, 1 column, a 1x1 image, exactly 2x, non-square
SHAPES = [(37, 53), (12, 9), (64, 48), (5, 70), (70, 5), (1, 1), (40, 40), (30, 90)]
BOXES = [(4, 7, 30, 41), (2, 1, 9, 7), (0, 0, 64, 48), (2, 3, 1, 60), (5, 2, 60, 1), (0, 0, 1, 1), (8, 8, 32, 32),
         (3, 20, 25, 66)]
FLIPS = [True, False, True, True, False, True, False, True]


def assert_same_crops(images, boxes, flips, size, mode, device="cpu"):
    """The batched resize against the per-image loop (the specification), before and after the 8-bit rounding.

    Before rounding: within 1e-4 of the loop in float64 (our float64 result stored as float32: half an ulp at 256 is
    7.6e-6; measured 1.5e-5) and within 1e-2 of the float32 loop, whose own error is the larger one (its float32
    scale and centres ``(i + 0.5) * scale`` shift the sampling positions by ~1e-5 px: measured up to 4e-3 on noise
    images, whose gradients are the steepest). After rounding: the values differ by at most 1, only where the float32
    loop is within that 1e-2 of a half level, and at <= 0.1% of the pixels that are not exact ties. Exact ties
    (x.5 in float64: dyadic scales such as 2x, 1-row crops) round to even here and to either side in float32: the
    fixed boxes below, made to hit such cases, have up to 0.15% of their pixels there; random boxes far fewer.
    Returns the fraction of pixels that differ."""
    ours = resized_crops(images, boxes, flips, size, mode, rounded=False)
    loop = _crop_flip_loop(images, boxes, flips, size, mode, rounded=False)
    exact = _crop_flip_loop([x.cpu() for x in images], boxes, flips, size, mode, rounded=False, dtype=torch.float64)
    exact = exact.to(device)
    assert ours.dtype == torch.float32 and ours.shape == (len(images), images[0].shape[0], size, size)
    assert ours.device.type == torch.device(device).type
    assert (ours.double() - exact).abs().max() < 1e-4
    assert (ours - loop).abs().max() < 1e-2
    a, b = resized_crops(images, boxes, flips, size, mode), _crop_flip_loop(images, boxes, flips, size, mode)
    assert torch.equal(a, ours.round().clamp(0, 255)) and torch.equal(b, loop.round().clamp(0, 255))
    diff = (a - b).abs()
    tie = (exact - exact.floor() - 0.5).abs() < 1e-9
    near_tie = (loop - loop.floor() - 0.5).abs() < 1e-2
    assert diff.max() <= 1 and near_tie[diff > 0].all() and (diff[~tie] > 0).float().mean() <= 1e-3
    return (diff > 0).float().mean().item()


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("c", [1, 3])
def test_batched_resize_equals_per_image_loop(mode, c):
    g = torch.Generator().manual_seed(c)
    images = [torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=g) for h, w in SHAPES]
    for size in (16, 24):
        assert_same_crops(images, BOXES, FLIPS, size, mode)
    # one chunk per image (the memory bound) gives the one-chunk values; and the flip is the mirror image
    one = resized_crops(images, BOXES, FLIPS, 16, mode, rounded=False)
    assert torch.allclose(resized_crops(images, BOXES, FLIPS, 16, mode, chunk_elements=1, rounded=False), one,
                          rtol=0, atol=1e-4)
    unflipped = resized_crops(images, BOXES, [False] * len(FLIPS), 16, mode, rounded=False)
    assert torch.allclose(torch.where(torch.tensor(FLIPS)[:, None, None, None], unflipped.flip(-1), unflipped), one,
                          rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_batched_resize_equals_loop_on_random_crops(mode):
    """Crops drawn as the pretraining transform draws them, images of random sizes, RGB: >= 99.9% of the 8-bit
    pixels equal to the loop's."""
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(60, 160, (24, 2), generator=g)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes.tolist()]
    boxes = sample_crop_boxes(sizes, (0.2, 1.0), (3 / 4, 4 / 3), g)
    flips = torch.rand(len(images), generator=g) < 0.5
    assert assert_same_crops(images, boxes, flips, 32, mode) <= 1e-3


def test_batched_resize_operations_do_not_grow_with_the_batch():
    """The point of the batched resize: a fixed number of operations (kernel launches on a GPU) per chunk, whatever
    the number of images in it. Views (the per-image flattening before the one concatenation) launch nothing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += not func.is_view
            return func(*args, **(kwargs or {}))

    def ops(b, chunk_elements=1 << 26):
        images = [torch.zeros(3, 20 + k % 7, 30, dtype=torch.uint8) for k in range(b)]
        with Count() as count:
            resized_crops(images, [(0, 0, 20, 30)] * b, [k % 2 == 0 for k in range(b)], 16,
                          chunk_elements=chunk_elements)
        return count.n

    assert ops(4) == ops(64) <= 70
    per_chunk = 16 * 3 * 20 * 30  # 16 crops of 20x30 (> 16x16) a chunk
    one, two, four = ops(16, per_chunk), ops(32, per_chunk), ops(64, per_chunk)
    assert one == ops(4) and four - two == 2 * (two - one) and two - one < 65


def test_batched_resize_ignores_autocast():
    """The caller (the trainer) may run it under bf16 autocast: the float64 matmuls are not cast."""
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
              for h, w in SHAPES]
    ref = resized_crops(images, BOXES, FLIPS, 16, rounded=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(resized_crops(images, BOXES, FLIPS, 16, rounded=False), ref)


def test_interpolation_matrices_rows_sum_to_one_inside_the_crop():
    m = interpolation_matrices(torch.tensor([1, 7, 16, 33]), 16, 40, "bicubic")
    assert m.shape == (4, 16, 40) and m.dtype == torch.float64
    assert torch.allclose(m.sum(-1), torch.ones(4, 16, dtype=torch.float64))
    assert (m[0, :, 1:] == 0).all() and (m[1, :, 7:] == 0).all() and (m[3, :, 33:] == 0).all()
    assert torch.equal(m[2], torch.eye(16, 40, dtype=torch.float64))  # the same length: the identity


def test_batched_resize_rejects_bad_boxes_and_modes():
    img = [torch.zeros(3, 10, 10, dtype=torch.uint8)]
    with pytest.raises(ValueError, match="not inside image 0"):
        resized_crops(img, [(5, 0, 6, 4)], [False], 8)
    with pytest.raises(ValueError, match="one box and one flip"):
        resized_crops(img, [(0, 0, 4, 4)], [False, True], 8)
    with pytest.raises(ValueError, match="mode must be"):
        resized_crops(img, [(0, 0, 4, 4)], [False], 8, "nearest")


def test_per_call_generator_draws_the_crops():
    """A generator passed with the batch draws its crops and flips (and nothing else draws from torch's global
    generator): the same generator state gives the same batch, as the transform's own seed does."""
    rng = np.random.default_rng(0)
    data = [encoded(jpeg_bytes(natural(rng, 30 + 5 * i, 40))) for i in range(4)]
    t = GpuBatchTransform(12, MEAN, STD, "cpu")
    state = torch.get_rng_state()
    a, _ = t(data, generator=torch.Generator().manual_seed(5))
    b, _ = t(data, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    c, _ = GpuBatchTransform(12, MEAN, STD, "cpu", seed=5)(data)
    d, _ = t(data, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)
    torch.manual_seed(3)  # no generator: torch's global one, as before
    e, _ = t(data)
    torch.manual_seed(3)
    assert torch.equal(t(data)[0], e) and not torch.equal(torch.get_rng_state(), state)
    boxes, flips = t.sample([torch.zeros(3, 30, 40, dtype=torch.uint8)] * 3, torch.Generator().manual_seed(5))
    assert boxes.shape == (3, 4) and flips.shape == (3,) and flips.dtype == torch.bool


@pytest.mark.parametrize("hw,scale", [((375, 500), (0.2, 1.0)), ((60, 20), (0.08, 1.0)), ((3, 40), (0.2, 1.0))])
def test_crop_boxes_match_torchvision_distribution(seed, hw, scale):
    ratio = (3 / 4, 4 / 3)
    n = 3000
    ours = sample_crop_boxes(torch.tensor([hw] * n), scale, ratio).numpy()
    img = torch.zeros(1, *hw)
    theirs = np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])
    for k, name in enumerate(("top", "left", "height", "width")):
        if np.ptp(theirs[:, k]) == 0:  # a deterministic coordinate (the fallback crop): equal exactly
            assert (ours[:, k] == theirs[0, k]).all(), name
        else:
            assert ks_2samp(ours[:, k], theirs[:, k]).pvalue > 1e-4, name
    assert (ours[:, 0] + ours[:, 2] <= hw[0]).all() and (ours[:, 1] + ours[:, 3] <= hw[1]).all()


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_fixed_crop_equals_cpu_path_pixels(interpolation):
    img = natural(np.random.default_rng(0), 30, 40)
    data = jpeg_bytes(img)
    cpu = pretrain_transform(16, MEAN, STD, scale=(1, 1), ratio=(4 / 3, 4 / 3), hflip=0.0, interpolation=interpolation)
    ref = cpu(Image.open(io.BytesIO(data)).convert("RGB"))
    gpu = GpuBatchTransform(16, MEAN, STD, "cpu", scale=(1, 1), ratio=(4 / 3, 4 / 3), hflip=0.0,
                            interpolation=interpolation)
    out, failed = gpu([encoded(data)])
    levels = (out[0] - ref) * torch.tensor(STD).view(3, 1, 1) * 255  # difference in 8-bit pixel levels
    assert failed == [] and out.shape == (1, 3, 16, 16)
    assert levels.abs().max() <= 1.01 and levels.abs().mean() < 0.3


def test_random_crops_have_cpu_path_statistics(seed):
    rng = np.random.default_rng(seed)
    images = [natural(rng, 36, 48) for _ in range(4)]
    data = [jpeg_bytes(im) for im in images]
    reps = 100
    cpu = pretrain_transform(12, MEAN, STD, scale=(0.2, 1.0))
    ref = torch.stack([cpu(Image.open(io.BytesIO(d)).convert("RGB")) for _ in range(reps) for d in data])
    gpu = GpuBatchTransform(12, MEAN, STD, "cpu", scale=(0.2, 1.0), seed=seed)
    out = torch.cat([gpu([encoded(d) for d in data])[0] for _ in range(reps)])
    for stat in (lambda x: x.mean((2, 3)), lambda x: x.std((2, 3)), lambda x: x[:, :, :6, :6].mean((2, 3)),
                 lambda x: x[:, :, :, :6].mean((2, 3)) - x[:, :, :, 6:].mean((2, 3))):  # left-right: the flips
        a, b = stat(out), stat(ref)
        for c in range(3):
            assert ks_2samp(a[:, c].numpy(), b[:, c].numpy()).pvalue > 1e-4


def test_loader_fallbacks_png_and_unreadable(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "train" / cls / f"{i}.jpg").write_bytes(jpeg_bytes(natural(rng, 20, 30)))
    (tmp_path / "train" / "b" / "p.png").write_bytes(jpeg_bytes(natural(rng, 25, 25), "PNG"))
    (tmp_path / "train" / "b" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    ds = build_encoded_dataset("imagefolder", str(tmp_path), "train")
    assert len(ds) == 8 and ds.classes == ["a", "b"]
    loader, _ = make_loader(ds, 8, train=True, workers=0)
    loader.collate_fn = collate_encoded
    images, labels, skips = next(iter(loader))
    assert sum(x.dim() == 3 for x in images) == 1  # the PNG, decoded by PIL in the worker
    assert skips.files == [] and not skips.standin.any()  # x.jpg starts like a JPEG: the decoder finds it out
    out, bad = GpuBatchTransform(8, MEAN, STD, "cpu")(images, skips.names)
    assert out.shape == (8, 3, 8, 8) and torch.isfinite(out).all() and len(bad) == 1
    assert Path(skips.names[bad[0]]).name == "x.jpg"  # the batch names the file the device could not decode
    with pytest.raises(ConfigError, match="data.decode"):
        build_encoded_dataset("fashion_mnist", None, "train")


def test_gpu_batch_transform_from_run_config():
    from armvision.data.gpu import gpu_batch_transform
    from armvision.train import load_config

    cfg = load_config("arm_base_in1k_pretrain", {"data.decode": "gpu", "model.img_size": 32})
    t = gpu_batch_transform(cfg, "cpu")
    assert (t.size, t.scale, t.hflip, t.mode, t.erase) == (32, (0.2, 1.0), 0.5, "bicubic", None)
    rng = np.random.default_rng(0)
    out, failed = t([encoded(jpeg_bytes(natural(rng, 40, 50))) for _ in range(3)])
    assert out.shape == (3, 3, 32, 32) and failed == []
    ft = load_config("arm_base_in1k_finetune", {"data.decode": "gpu"})
    with pytest.raises(ConfigError, match="RandAugment"):
        gpu_batch_transform(ft, "cpu")
    ft = load_config("arm_base_in1k_finetune", {"data.decode": "gpu", "aug.auto_augment": None})
    assert gpu_batch_transform(ft, "cpu").erase is not None  # random erasing 0.25 on the batch


def test_pretraining_with_gpu_decoding_runs_and_resumes_exactly(tmp_path):
    """data.decode gpu through the trainer (the GPU path's code on the CPU device): JPEG bytes from the
    loader, decoded and cropped per batch; the crops draw from the trainer's seeded generator, so a run
    stopped and resumed takes the same steps as one run straight through."""
    from trainhelpers import make_imagefolder, tiny_overrides

    from armvision.train import load_config, train
    from armvision.train.data import build_pipeline

    root = make_imagefolder(tmp_path / "png", {"train": 8})
    for p in sorted(root.rglob("*.png")):  # JPEG files: the decoder's path, not the PIL fallback
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=90)
        p.unlink()

    def cfg(out, **extra):
        over = tiny_overrides(root, tmp_path / out, "pretrain", **{"data.decode": "gpu", "data.val_split": None,
                                                                   "eval_every_epochs": 0, **extra})
        return load_config("fmnist_pretrain", over, task="pretrain")

    pipe = build_pipeline(cfg("p"), "train", True, 4)
    encoded_batch, labels, skips = next(iter(pipe.loader))
    assert isinstance(encoded_batch, list) and encoded_batch[0].dim() == 1 and skips.events == 0
    images, failed = pipe.batch_transform(encoded_batch, skips.names)
    assert images.shape == (4, 3, 16, 16) and failed == []
    full = train(cfg("full"))
    assert full["steps"] == 6 and np.isfinite(full["loss_last"])
    train(cfg("split", max_steps=4))
    rest = train(cfg("split", resume="auto"))
    assert [v for _, v in rest["loss_curve"]] == pytest.approx([v for _, v in full["loss_curve"]], rel=1e-6)


def test_encoded_batch_crosses_processes_as_one_buffer(tmp_path):
    """data.decode gpu's batches (collate_encoded) pickle as one uint8 buffer and come back as views of it, equal
    to the images sent, through the DataLoader's own worker transport."""
    from multiprocessing.reduction import ForkingPickler

    from armvision.data.gpu import EncodedBatch

    rng = np.random.default_rng(0)
    images = EncodedBatch([encoded(jpeg_bytes(natural(rng, 20, 30))), torch.randint(0, 256, (3, 5, 7),
                                                                                        dtype=torch.uint8),
                           encoded(jpeg_bytes(natural(rng, 31, 17)))])
    back = pickle.loads(ForkingPickler.dumps(images))
    assert isinstance(back, EncodedBatch) and [x.shape for x in back] == [x.shape for x in images]
    assert all(torch.equal(a, b) for a, b in zip(back, images))
    assert len({x.untyped_storage().data_ptr() for x in back}) == 1  # one buffer, the images views of it
    assert pickle.loads(ForkingPickler.dumps(EncodedBatch())) == []
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "train" / cls / f"{i}.jpg").write_bytes(jpeg_bytes(natural(rng, 20 + i, 30)))
    ds = build_encoded_dataset("imagefolder", str(tmp_path), "train")
    loader, _ = make_loader(ds, 6, train=False, workers=1)
    loader.collate_fn = collate_encoded
    got, labels, skips = next(iter(loader))
    assert isinstance(got, EncodedBatch) and len({x.untyped_storage().data_ptr() for x in got}) == 1
    want = [ds[i][0] for i in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
