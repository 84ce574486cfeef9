"""data.resize_backend torch: the training crop resized by PyTorch on 8-bit tensors (TensorCrop) against timm's
Pillow pipeline, and RGB JPEGs decoded by torchvision in the folder dataset."""

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trainhelpers import make_image

from armvision.data import build_dataset, finetune_transform, normalization, pretrain_transform
from armvision.data.images import decode_rgb_jpeg
from armvision.data.transforms import TensorCrop
from armvision.errors import ConfigError
from armvision.train import load_config

MEAN, STD = normalization("imagenet", 3)


def _photo(seed: int, w: int = 75, h: int = 56, mode: str = "RGB") -> Image.Image:
    """A smooth colour field with edges (resizing differences show on edges, not on noise alone)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    chans = [np.sin(6 * xx * rng.uniform(0.5, 2) + 4 * yy * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    a = (np.stack(chans, -1) * 100 + 128 + rng.normal(0, 8, (h, w, 3)))
    a[h // 3: h // 2, w // 4: w // 2] = rng.uniform(0, 255, 3)  # a hard-edged patch
    img = Image.fromarray(a.clip(0, 255).astype(np.uint8), mode="RGB")
    return img.convert(mode)


def _rng_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()


def _run(transform, images, seed=0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    out = torch.stack([transform(im) for im in images])
    return out, _rng_states()


@pytest.mark.parametrize("normalize", [False, True])
def test_pretraining_crops_draw_as_pillow_and_stay_within_two_levels(normalize):
    images = [_photo(i, w=60 + 7 * i, h=40 + 5 * i) for i in range(24)]
    pil = pretrain_transform(32, MEAN, STD, normalize=normalize, resize_backend="pillow")
    fast = pretrain_transform(32, MEAN, STD, normalize=normalize, resize_backend="torch")
    assert isinstance(fast, TensorCrop) and not isinstance(pil, TensorCrop)
    a, states_a = _run(pil, images)
    b, states_b = _run(fast, images)
    assert states_a[0] == states_b[0] and states_a[1] == states_b[1] and torch.equal(states_a[2], states_b[2])
    assert a.dtype == b.dtype == (torch.float32 if normalize else torch.uint8) and a.shape == b.shape
    scale = torch.tensor(STD).view(1, 3, 1, 1) * 255 if normalize else 1.0
    levels = ((a.double() - b.double()).abs() * scale)
    # Pillow 13 picks the order of its two passes per image; where bicubic overshoot is clipped between the
    # passes (hard edges), the other order differs by a few levels at a few pixels; elsewhere fixed-point rounding
    assert levels.mean() < 0.1 and (levels > 2.5).double().mean() < 0.005 and levels.max() <= 24


def test_the_resize_is_pillows_filter_within_one_level():
    """Against Pillow's horizontal-then-vertical passes (the order PyTorch uses), every value within 1 level."""
    images = [_photo(i, w=60 + 7 * i, h=40 + 5 * i) for i in range(24)]
    fast = pretrain_transform(32, MEAN, STD, normalize=False)
    c = fast.crop
    for seed, img in enumerate(images):
        random.seed(seed)
        x = fast.resized_crop(img)
        random.seed(seed)
        i, j, h, w = c.get_params(img, c.scale, c.ratio)
        crop = img.crop((j, i, j + w, i + h))
        ref = crop.resize((32, h), Image.BICUBIC).resize((32, 32), Image.BICUBIC)
        ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)
        assert (x.int() - ref.int()).abs().max() <= 1, seed


def test_tensor_input_is_the_pil_input():
    images = [_photo(i) for i in range(8)]
    fast = pretrain_transform(24, MEAN, STD, normalize=False)
    tensors = [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images]
    a, _ = _run(fast, images, seed=3)
    b, _ = _run(fast, tensors, seed=3)
    assert torch.equal(a, b)


def test_grayscale_and_bilinear():
    images = [_photo(i, mode="L") for i in range(6)]
    for interp in ("bicubic", "bilinear"):
        pil = pretrain_transform(20, (0.5,), (0.5,), interpolation=interp, normalize=False, resize_backend="pillow")
        fast = pretrain_transform(20, (0.5,), (0.5,), interpolation=interp, normalize=False)
        a, _ = _run(pil, images)
        b, _ = _run(fast, images)
        assert b.shape == (6, 1, 20, 20) and (a.int() - b.int()).abs().max() <= 2


def test_finetuning_keeps_every_draw_and_returns_to_pillow_for_randaugment():
    images = [_photo(i, w=80, h=64) for i in range(16)]
    kw = dict(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
    pil = finetune_transform(28, MEAN, STD, resize_backend="pillow", **kw)
    fast = finetune_transform(28, MEAN, STD, **kw)
    a, states_a = _run(pil, images)
    b, states_b = _run(fast, images)
    assert states_a[0] == states_b[0] and states_a[1] == states_b[1] and torch.equal(states_a[2], states_b[2])
    assert a.shape == b.shape == (16, 3, 28, 28) and b.dtype == torch.float32
    # same operations on (nearly) the same crops: most values agree to the normalised size of 2 levels
    close = (a - b).abs() <= 2 / 255 / min(STD) + 1e-6
    assert close.double().mean() > 0.9
    # colour jitter (torchvision on a PIL image) and the 8-bit output form
    cj = finetune_transform(28, MEAN, STD, color_jitter=0.4, normalize=False)
    x = cj(images[0])
    assert x.dtype == torch.uint8 and x.shape == (3, 28, 28)


def test_nearest_and_pillow_keep_timms_pipeline_and_bad_values_fail():
    assert not isinstance(pretrain_transform(16, MEAN, STD, interpolation="nearest"), TensorCrop)
    assert not isinstance(pretrain_transform(16, MEAN, STD, resize_backend="pillow"), TensorCrop)
    assert pretrain_transform(16, MEAN, STD).transforms[0].scale == (0.2, 1.0)
    with pytest.raises(ValueError, match="resize backend 'cv2'"):
        pretrain_transform(16, MEAN, STD, resize_backend="cv2")
    with pytest.raises(ConfigError, match="resize_backend"):
        load_config("arm_base_in1k_pretrain", ["--data.resize_backend", "cv2"])


def _jpeg_folder(root, n=6):
    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(n):
            _photo(i + (100 if c == "b" else 0), w=70 + i, h=50).save(d / f"{i}.jpg", quality=90)
    make_image(0, np.random.default_rng(0)).save(root / "train" / "a" / "png.png")
    make_image(0, np.random.default_rng(0)).convert("L").save(root / "train" / "b" / "gray.jpg")
    return root


def test_folder_dataset_decodes_rgb_jpegs_with_torchvision_bit_exactly(tmp_path, monkeypatch):
    root = _jpeg_folder(tmp_path / "d")
    fast = pretrain_transform(24, MEAN, STD, normalize=False)
    calls = []
    import armvision.data.datasets as datasets_mod

    def spy(f):
        x = decode_rgb_jpeg(f)
        calls.append(x is not None)
        return x

    monkeypatch.setattr(datasets_mod, "decode_rgb_jpeg", spy)
    ds = build_dataset("imagefolder", str(root), "train", fast)
    names = [str(ds.reader.filename(i, absolute=True)) for i in range(len(ds))]
    random.seed(1)
    torch.manual_seed(1)
    got = [ds[i][0] for i in range(len(ds))]
    assert len(calls) == 12 and all(calls)  # 12 RGB JPEGs; the PNG and the grayscale JPEG went through Pillow
    random.seed(1)
    torch.manual_seed(1)
    want = [fast(Image.open(n).convert("RGB")) for n in names]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_truncated_jpeg_is_still_skipped_as_unreadable(tmp_path, caplog):
    root = _jpeg_folder(tmp_path / "d", n=3)
    data = (root / "train" / "a" / "0.jpg").read_bytes()
    (root / "train" / "a" / "0.jpg").write_bytes(data[: len(data) // 2])
    ds = build_dataset("imagefolder", str(root), "train", pretrain_transform(24, MEAN, STD, normalize=False))
    names = [Path(ds.reader.filename(i)).name for i in range(len(ds))]
    with caplog.at_level(logging.WARNING):
        img, label, skipped = ds[names.index("0.jpg")]
    assert [p.split("/")[-1] for p in skipped] == ["0.jpg"] and img.shape == (3, 24, 24)
    assert "skipped unreadable image" in caplog.text
