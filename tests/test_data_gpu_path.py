"""data.decode gpu (armvision.data.gpu) run on the CPU device against the CPU path: the same crop
distribution as torchvision's RandomResizedCrop.get_params, the same pixels for a fixed crop, the
same output statistics over random crops, and the fallbacks for non-JPEG and unreadable files."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from armvision.data import make_loader, pretrain_transform
from armvision.data.gpu import GpuBatchTransform, build_encoded_dataset, collate_encoded, sample_crop_boxes
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
