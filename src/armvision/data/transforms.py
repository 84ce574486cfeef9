"""Image transforms of the three stages, built with timm as the ARM/MAE reference builds them.

- pretraining: RandomResizedCrop (area 0.2-1, bicubic) + horizontal flip, then normalise (in the loader
  workers, or on the device from 8-bit batches: ``normalize=False`` and :func:`normalize_batch`);
- fine-tuning: timm's ``create_transform`` training pipeline (RandomResizedCrop, flip, RandAugment,
  random erasing); mixup/cutmix act on batches (:func:`armvision.train.trainer`);
- evaluation: the reference's (Finetuning/util/datasets.py): squash both sides to ``size / crop_pct`` (bicubic;
  crop_pct 224/256 up to 224 px, 1.0 above: :func:`reference_crop_pct`), centre-crop ``size``, normalise
  (:func:`eval_transform`: the one evaluation transform; :func:`model_eval_transform` builds it from a
  model's preprocessing, :func:`data_config`, as feature extraction, ``predict`` and the Hub configs use it).
"""

from __future__ import annotations

import functools
import random
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment, posterize
from timm.data.transforms import MaybePILToTensor, MaybeToTensor, RandomResizedCropAndInterpolation, ToTensor
from torch import Tensor
from torchvision.transforms import InterpolationMode, RandomHorizontalFlip

__all__ = ["NORMALIZATION", "normalization", "pretrain_transform", "finetune_transform", "eval_transform", "to_mode",
           "normalize_batch", "reference_crop_pct", "data_config", "model_eval_transform", "TensorCrop",
           "RESIZE_BACKENDS"]

RESIZE_BACKENDS = ("torch", "pillow")

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


_TORCH_MODES = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}


def _to_pil(x: Tensor) -> Image.Image:
    a = x.permute(1, 2, 0).numpy()
    return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)


class TensorCrop:
    """A timm training pipeline (RandomResizedCrop first) whose crop is resized by PyTorch on 8-bit tensors.

    The crop box and every later draw come from the same calls as in timm's pipeline (``get_params`` of its
    RandomResizedCropAndInterpolation, then its own flip, RandAugment, ... objects), so a seeded worker draws
    exactly what the Pillow pipeline draws. The resize is ``F.interpolate(..., antialias=True)`` on the uint8
    image, Pillow-SIMD's fixed-point algorithm in PyTorch: the same antialiased bicubic/bilinear filter as
    Pillow's, equal to rounding (docs/training.md says how close), and about 3x faster than Pillow's. Transforms that
    need a PIL image (RandAugment, colour jitter) get the cropped image back as one; the tensor conversions
    (``ToTensor``'s x / 255, timm's 8-bit ``MaybePILToTensor``) act on the tensor directly.
    """

    def __init__(self, pipeline):
        first, *rest = pipeline.transforms
        if not isinstance(first, RandomResizedCropAndInterpolation):
            raise TypeError(f"TensorCrop needs a pipeline that starts with a random resized crop, not {first!r}")
        modes = first.interpolation if isinstance(first.interpolation, (tuple, list)) else (first.interpolation,)
        if any(m not in _TORCH_MODES for m in modes):
            raise ValueError(f"TensorCrop resizes with bicubic or bilinear interpolation, not {modes}")
        self.crop, self.rest, self.pipeline = first, rest, pipeline

    accepts_tensors = True  # datasets may hand over decoded uint8 (c, h, w) tensors instead of PIL images

    def resized_crop(self, img: Image.Image | Tensor) -> Tensor:
        """``img`` (PIL image, or uint8 (c, h, w) tensor) -> the random crop resized to the crop's size, uint8
        (c, h, w) (the draws of timm's crop)."""
        c = self.crop
        i, j, h, w = c.get_params(img, c.scale, c.ratio)
        mode = random.choice(c.interpolation) if isinstance(c.interpolation, (tuple, list)) else c.interpolation
        if isinstance(img, Tensor):
            x = img[:, i:i + h, j:j + w]
        else:
            with warnings.catch_warnings():  # Pillow's array is read-only; torch warns, but nothing writes to it
                warnings.simplefilter("ignore", UserWarning)
                a = torch.from_numpy(np.asarray(img))[i:i + h, j:j + w]
            x = (a.unsqueeze(-1) if a.dim() == 2 else a).permute(2, 0, 1)
        out = F.interpolate(x.unsqueeze(0), size=tuple(c.size), mode=_TORCH_MODES[mode], antialias=True,
                            align_corners=False)
        return out[0]

    def __call__(self, img: Image.Image | Tensor):
        x: Any = self.resized_crop(img)
        for t in self.rest:
            if isinstance(t, (MaybeToTensor, ToTensor)) and isinstance(x, Tensor):
                x = x.float().div(255)  # ToTensor of the same 8-bit image
            elif isinstance(t, (RandomHorizontalFlip, MaybePILToTensor)) or not isinstance(x, Tensor) \
                    or x.dtype != torch.uint8:
                x = t(x)  # acts on tensors as on PIL images (the flip), or the image is no longer 8-bit
            else:
                x = t(_to_pil(x))  # RandAugment, colour jitter, ...: Pillow operations
        return x.contiguous() if isinstance(x, Tensor) else x

    @property
    def transforms(self) -> list:
        """The timm pipeline's transforms (the crop first), as ``Compose.transforms``."""
        return self.pipeline.transforms

    def __repr__(self) -> str:
        return f"TensorCrop({self.pipeline!r})"


def _resize_with(pipeline, backend: str, interpolation: str):
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize backend {backend!r}: expected one of {', '.join(RESIZE_BACKENDS)}")
    if backend == "pillow" or interpolation not in ("bicubic", "bilinear", "random"):
        return pipeline
    return TensorCrop(pipeline)


def pretrain_transform(img_size: int, mean, std, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                       interpolation: str = "bicubic", normalize: bool = True, resize_backend: str = "torch"):
    """RandomResizedCrop + horizontal flip + normalise (ARM/MAE pretraining).

    ``normalize=False``: the same crops and flips (the same random draws), ending in an 8-bit (c, h, w) tensor
    instead of a normalised float one (timm's prefetcher form); :func:`normalize_batch` finishes it on the device.
    ``resize_backend``: "torch" (:class:`TensorCrop`, the crop resized by PyTorch; bicubic and bilinear) or
    "pillow" (timm's pipeline as it is, as the reference code).
    """
    t = create_transform(img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                         color_jitter=None, auto_augment=None, re_prob=0.0, interpolation=interpolation,
                         mean=tuple(mean), std=tuple(std), use_prefetcher=not normalize)
    return _resize_with(t, resize_backend, interpolation)


def finetune_transform(img_size: int, mean, std, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                       auto_augment: str | None = None, color_jitter: float | None = None, reprob: float = 0.0,
                       remode: str = "pixel", interpolation: str = "bicubic", normalize: bool = True,
                       resize_backend: str = "torch"):
    """timm's training pipeline: RandomResizedCrop, flip, RandAugment (or colour jitter), random erasing.

    ``normalize=False`` (only without random erasing, which acts on normalised pixels): 8-bit (c, h, w) tensors,
    as :func:`pretrain_transform`; ``resize_backend`` as there.
    """
    if not normalize and reprob > 0:
        raise ValueError("random erasing acts on normalised images: normalize=False needs reprob 0")
    t = create_transform(img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                         color_jitter=color_jitter, auto_augment=auto_augment, re_prob=reprob, re_mode=remode,
                         re_count=1, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
                         use_prefetcher=not normalize)
    _patch_posterize(t)
    return _resize_with(t, resize_backend, interpolation)


def eval_transform(img_size: int | tuple[int, int], mean, std, crop_pct: float | None = None,
                   interpolation: str = "bicubic", resize: str = "squash"):
    """Resize to img_size / crop_pct, centre-crop img_size, normalise: the reference's evaluation transform
    (``Resize((s, s))`` with s = int(size / crop_pct), ``CenterCrop(size)``) with the defaults.

    ``crop_pct`` None: the reference's, :func:`reference_crop_pct` of the larger side. ``resize="squash"``
    (the reference's) scales both sides to the same length, not keeping the aspect ratio; ``"shorter"``
    scales the shorter side and keeps it (timm's and MAE's usual resize, not the ARM code's). They differ
    only on non-square images.
    """
    modes = {"squash": "squash", "shorter": "center"}
    if resize not in modes:
        raise ValueError(f"eval resize {resize!r}: expected one of {', '.join(modes)}")
    if crop_pct is None:
        crop_pct = reference_crop_pct(max(img_size) if isinstance(img_size, (tuple, list)) else img_size)
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, crop_mode=modes[resize],
                            interpolation=interpolation, mean=tuple(mean), std=tuple(std))


def reference_crop_pct(img_size: int) -> float:
    """The reference's evaluation crop (Finetuning/util/datasets.py): resize to size / 0.875 up to 224 px, no
    margin above (the one place of this rule: :func:`eval_transform`, timm's pretrained cfgs and
    :func:`data_config` use it)."""
    return 224 / 256 if img_size <= 224 else 1.0


def data_config(model: Any, img_size: int | None = None) -> dict[str, Any]:
    """Preprocessing of an ARM ``model`` in timm's data-config form (input_size, interpolation, mean, std,
    crop_pct, crop_mode), at ``img_size`` if given. A timm-created model's ``pretrained_cfg`` wins;
    otherwise the reference's evaluation transform: bicubic squash of both sides to img_size / crop_pct
    (timm's crop_mode "squash"), center crop, ImageNet mean/std; for a Vim (``block="vim"``) hustvl/Vim's:
    the shorter side to size / 0.875, center crop."""
    inner = getattr(model, "model", model)
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    geo = inner.geometry
    size = (img_size, img_size) if img_size else tuple(cfg.get("input_size", (0, *geo.img_size))[1:])
    if getattr(inner, "config", {}).get("block") == "vim":
        # Vim evaluates as DeiT: the shorter side to size / 0.875 at every size, then a center crop
        cfg = {"crop_pct": 0.875, "crop_mode": "center", **cfg}
        crop = cfg["crop_pct"]
    else:
        crop = cfg.get("crop_pct") if (not img_size and "crop_pct" in cfg) else reference_crop_pct(max(size))
    mean, std = NORMALIZATION["imagenet"]
    return {
        "input_size": (geo.in_chans, *size),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": tuple(cfg.get("mean", mean)),
        "std": tuple(cfg.get("std", std)),
        "crop_pct": crop,
        "crop_mode": cfg.get("crop_mode", "squash"),
    }


def model_eval_transform(model: Any, img_size: int | None = None):
    """PIL image -> normalized tensor for ``model``: :func:`eval_transform` as :func:`data_config` says
    (statistics of another channel count averaged / repeated to the model's channels)."""
    cfg = data_config(model, img_size)
    channels, *size = cfg["input_size"]
    mean, std = cfg["mean"], cfg["std"]
    if channels != len(mean):  # e.g. a one-channel model with the 3-channel ImageNet statistics
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    resize = {"center": "shorter", "squash": "squash"}[cfg["crop_mode"]]
    return eval_transform(tuple(size), mean, std, cfg["crop_pct"], cfg["interpolation"], resize)


@functools.lru_cache(maxsize=None)
def _stats_255(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(1, c, 1, 1) float32 255 * mean and 255 * std on ``device``, made once per statistics and device (computed
    on the host, then copied: no kernel that another stream could overtake)."""
    def scaled(v):
        return (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) * 255).to(device)

    return scaled(mean), scaled(std)


def normalize_batch(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(b, c, h, w) images of 8-bit values (uint8, or float holding 0..255; any device) -> float32 normalised
    as ToTensor + Normalize do it in the workers: (x / 255 - mean) / std, computed as (x - 255 mean) / (255 std)."""
    m, s = _stats_255(tuple(float(v) for v in mean), tuple(float(v) for v in std), images.device)
    return (images.float() - m) / s


def to_mode(in_chans: int) -> str:
    """PIL mode for a channel count."""
    return "L" if in_chans == 1 else "RGB"

