"""Image transforms of the three stages, built with timm as the ARM/MAE reference builds them.

- pretraining: RandomResizedCrop (area 0.2-1, bicubic) + horizontal flip, then normalise;
- fine-tuning: timm's ``create_transform`` training pipeline (RandomResizedCrop, flip, RandAugment,
  random erasing); mixup/cutmix act on batches (:func:`armvision.train.trainer`);
- evaluation: resize (squash, or the shorter side) to ``size / crop_pct``, centre-crop ``size``, normalise.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment, posterize

__all__ = ["NORMALIZATION", "normalization", "pretrain_transform", "finetune_transform", "eval_transform", "to_mode"]

# mean, std per preset (RGB, or one grayscale channel)
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion_mnist": ((0.2860,), (0.3530,)),  # measured on the 60000 training images
    "half": ((0.5,), (0.5,)),
}


def normalization(stats: str, in_chans: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) with ``in_chans`` values: explicit values win; a preset's RGB values are averaged
    for grayscale and a grayscale preset is repeated for RGB."""
    pm, ps = NORMALIZATION[stats]

    def fit(v: Sequence[float]) -> tuple[float, ...]:
        v = tuple(float(x) for x in v)
        if len(v) == in_chans:
            return v
        if len(v) == 1:
            return v * in_chans
        if in_chans == 1:
            return (sum(v) / len(v),)
        raise ValueError(f"{len(v)} normalisation values do not fit {in_chans} channels")

    return fit(mean if mean is not None else pm), fit(std if std is not None else ps)


def _black_if_no_bits(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    # timm's RandAugment asks for 0 bits at magnitude 10 (reached by m9 with mstd noise), which old
    # Pillow turned into a black image and recent Pillow rejects; keep the old behaviour.
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(transform) -> None:
    for t in getattr(transform, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.aug_fn is posterize:
                    op.aug_fn = _black_if_no_bits


def pretrain_transform(img_size: int, mean, std, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                       interpolation: str = "bicubic"):
    """RandomResizedCrop + horizontal flip + normalise (ARM/MAE pretraining)."""
    return create_transform(img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                            color_jitter=None, auto_augment=None, re_prob=0.0, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std))


def finetune_transform(img_size: int, mean, std, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                       auto_augment: str | None = None, color_jitter: float | None = None, reprob: float = 0.0,
                       remode: str = "pixel", interpolation: str = "bicubic"):
    """timm's training pipeline: RandomResizedCrop, flip, RandAugment (or colour jitter), random erasing."""
    t = create_transform(img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                         color_jitter=color_jitter, auto_augment=auto_augment, re_prob=reprob, re_mode=remode,
                         re_count=1, interpolation=interpolation, mean=tuple(mean), std=tuple(std))
    _patch_posterize(t)
    return t


def eval_transform(img_size: int, mean, std, crop_pct: float = 0.875, interpolation: str = "bicubic",
                   resize: str = "squash"):
    """Resize to img_size / crop_pct, centre-crop img_size, normalise.

    ``resize="squash"`` scales both sides to the same length (the project's method notes; see docs/fidelity.md);
    ``"shorter"`` scales the shorter side and keeps the aspect ratio, as the reference code does
    (MAE's ``transforms.Resize(int)``). They differ only on non-square images.
    """
    modes = {"squash": "squash", "shorter": "center"}
    if resize not in modes:
        raise ValueError(f"eval resize {resize!r}: expected one of {', '.join(modes)}")
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, crop_mode=modes[resize],
                            interpolation=interpolation, mean=tuple(mean), std=tuple(std))


def to_mode(in_chans: int) -> str:
    """PIL mode for a channel count."""
    return "L" if in_chans == 1 else "RGB"

