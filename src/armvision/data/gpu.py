"""GPU image decoding and augmentation (``data.decode: gpu``).

Loader workers only read the files' bytes (:class:`EncodedImageDataset`); the training process
decodes each batch of JPEGs at once on the GPU (``torchvision.io.decode_jpeg(device="cuda")``,
nvjpeg) and applies the pretraining transform there (:class:`GpuBatchTransform`):
RandomResizedCrop (the crop sampled as torchvision's ``RandomResizedCrop.get_params`` does, resized
with antialiased bicubic/bilinear interpolation, rounded to 8 bits as PIL does), horizontal flip and
normalisation, giving the same distribution of crops and pixel statistics as the CPU path
(:func:`armvision.data.pretrain_transform`). The whole batch is cropped, resized and flipped at once, by two
batched float64 matmuls per chunk of the batch (:mod:`armvision.data.resize`: the values of one
``F.interpolate(antialias=True)`` per image). The crops and flips are drawn on the CPU from the generator passed
with the batch, else the transform's own, else torch's global one, so a caller can draw each batch's crops from a
generator of its own (seeded per batch) and run the transform ahead of the step without changing them.
Fine-tuning adds timm's batch random erasing (which draws from Python's ``random``, not from that generator);
timm's RandAugment has no GPU equivalent here, so ``aug.auto_augment`` needs ``data.decode: cpu``.

Non-JPEG files are decoded by PIL in the worker (the CPU path) and cropped on the GPU like the others;
a JPEG the GPU decoder rejects (CMYK, progressive oddities) is decoded on the CPU instead; a file no
decoder reads is replaced by another image of the batch and reported by name, as the CPU path reports the
files it passes over (the batch carries each sample's file name, :class:`armvision.data.loader.Skips`).

The same code runs on the CPU (``device="cpu"``: torchvision's CPU decoder); the tests use that to
check the distributions against the CPU path. Shapes: a batch is a list of b encoded images and
comes out as (b, c, size, size) float32 on the device.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ConfigError, DataError
from .datasets import ReaderDataset, _folder_reader
from .images import convert_image, decode_jpeg
from .loader import Skips
from .resize import resized_crops
from .transforms import normalization, normalize_batch

__all__ = ["EncodedImageDataset", "EncodedBatch", "collate_encoded", "sample_crop_boxes", "GpuBatchTransform",
           "build_encoded_dataset", "gpu_batch_transform", "is_jpeg", "resized_crops"]

_logger = logging.getLogger(__name__)


def is_jpeg(data: bytes | Tensor) -> bool:
    """True when the bytes start with the JPEG start-of-image marker (FF D8 FF)."""
    head = bytes(data[:3].tolist()) if isinstance(data, Tensor) else bytes(data[:3])
    return head == b"\xff\xd8\xff"


class EncodedImageDataset(ReaderDataset):
    """A folder/tar of images whose samples are ``(encoded, label, skipped, name)``: ``encoded`` is the
    file's bytes as a 1-D uint8 tensor for a JPEG, or the image decoded by PIL as a (c, h, w) uint8
    tensor for any other format (the CPU fallback); ``skipped`` the unreadable files passed over (as
    :class:`ReaderDataset`); ``name`` the file ``encoded`` came from, named if the device cannot decode it.
    No transform: :class:`GpuBatchTransform` does it."""

    def __getitem__(self, index: int):
        encoded, target, skipped = super().__getitem__(index)
        return encoded, target, skipped, self._filename((index + len(skipped)) % len(self.reader))

    def _load(self, index: int):
        item = self.reader[index]
        f, target = item[0], (-1 if item[1] is None else int(item[1]))
        try:
            data = f.read()
        finally:
            if hasattr(f, "close"):
                f.close()
        if is_jpeg(data):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), target
        return _pil_decode(data, self.mode), target


def _pil_decode(data: bytes, mode: str) -> Tensor:
    import io

    img = convert_image(Image.open(io.BytesIO(data)), mode)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class EncodedBatch(list):
    """A batch's encoded images: a list of uint8 tensors (1-D JPEG bytes, or (c, h, w) images PIL decoded) that goes
    from a loader worker to the training process as one buffer. Pickled (as the DataLoader sends a batch), the
    tensors are packed into one uint8 tensor, so the batch crosses in one shared-memory segment instead of one per
    image; unpickled, the images are views of it. A plain list otherwise.

    The training process receives each batch in the feeder's thread, holding the GIL while it rebuilds the
    tensors: one segment instead of b of them is less of that time taken from the thread that launches the steps.
    """

    def __reduce_ex__(self, protocol):
        shapes = [tuple(t.shape) for t in self]
        flat = torch.cat([t.reshape(-1) for t in self]) if len(self) else torch.empty(0, dtype=torch.uint8)
        return _unpack_encoded, (flat, shapes)


def _unpack_encoded(flat: Tensor, shapes: list[tuple[int, ...]]) -> EncodedBatch:
    sizes = [math.prod(s) for s in shapes]
    return EncodedBatch(part.view(shape) for part, shape in zip(torch.split(flat, sizes), shapes))


def collate_encoded(batch):
    """``(EncodedBatch of b encoded images, labels (b,), Skips)``: the images differ in size and format; the
    :class:`~armvision.data.loader.Skips` carry each sample's file name (``names``)."""
    images = EncodedBatch(b[0] for b in batch)
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    standin = torch.tensor([len(b[2]) > 0 for b in batch], dtype=torch.bool)
    return images, labels, Skips(standin, [n for b in batch for n in b[2]], [b[3] for b in batch])


def sample_crop_boxes(sizes: Tensor, scale: Sequence[float], ratio: Sequence[float],
                      generator: torch.Generator | None = None, attempts: int = 10) -> Tensor:
    """RandomResizedCrop boxes for a batch: (b, 2) image (height, width) -> (b, 4) (top, left, h, w).

    The same distribution as torchvision's ``RandomResizedCrop.get_params`` (and timm's): up to 10
    draws of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``; the
    first draw that fits is placed uniformly; if none fits, the central crop clamped to ``ratio``.
    """
    sizes = sizes.to(torch.float64)
    b = sizes.shape[0]
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    frac = torch.rand(b, attempts, generator=generator, dtype=torch.float64) * (scale[1] - scale[0]) + scale[0]
    aspect = torch.exp(torch.rand(b, attempts, generator=generator, dtype=torch.float64) * (hi - lo) + lo)
    target = area * frac
    # int(round(x)) of Python: round half to even, as torch.round
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), torch.full((b,), -1))
    found = first >= 0
    idx = first.clamp_min(0)[:, None]
    w, h = w.gather(1, idx)[:, 0], h.gather(1, idx)[:, 0]
    height, width = height[:, 0], width[:, 0]
    u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1)).clamp(max=width - w)
    # fallback: the central crop, clamped to the ratio range
    in_ratio = width / height
    fw = torch.where(in_ratio < min(ratio), width,
                     torch.where(in_ratio > max(ratio), torch.round(height * max(ratio)), width))
    fh = torch.where(in_ratio < min(ratio), torch.round(width / min(ratio)), height)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], 1).to(torch.long)


class GpuBatchTransform:
    """Decode a batch of encoded images on ``device`` and apply RandomResizedCrop + flip + normalise
    (+ random erasing): ``(list of b encoded images[, their b file names]) -> ((b, c, size, size) float32,
    failed)``; ``failed`` lists the batch positions no decoder read (another image of the batch took
    their place: stand-ins, for training only)."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                 scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5, interpolation: str = "bicubic",
                 in_chans: int = 3, reprob: float = 0.0, remode: str = "pixel", seed: int | None = None):
        if interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(f"data.decode gpu resizes with bicubic or bilinear interpolation, got {interpolation!r}")
        self.size, self.device = int(img_size), torch.device(device)
        self.scale, self.ratio, self.hflip, self.mode = tuple(scale), tuple(ratio), float(hflip), interpolation
        self.in_chans = in_chans
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.erase = None
        if reprob > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(reprob, mode=remode, max_count=1, device=self.device)

    def decode(self, images: list[Tensor], names: Sequence[str] | None = None) -> tuple[list[Tensor], list[int]]:
        """(c, h, w) uint8 images on the device, and the positions of the undecodable ones (replaced by a
        neighbour). ``names``: the files, for the warnings."""
        from torchvision.io import ImageReadMode

        mode = ImageReadMode.GRAY if self.in_chans == 1 else ImageReadMode.RGB
        out: list[Tensor | None] = [None] * len(images)
        jpeg = [i for i, x in enumerate(images) if x.dim() == 1]
        if jpeg:
            try:
                decoded = decode_jpeg([images[i] for i in jpeg], mode=mode, device=self.device)
                for i, img in zip(jpeg, decoded):
                    out[i] = img
            except RuntimeError:  # one bad file fails the batch: decode one by one, then on the CPU
                for i in jpeg:
                    out[i] = self._decode_one(images[i], mode, names[i] if names is not None else None)
        for i, x in enumerate(images):
            if x.dim() == 3:
                out[i] = x.to(self.device, non_blocking=True)
        good = [i for i, x in enumerate(out) if x is not None]
        if not good:
            raise DataError(f"none of the {len(images)} images of a batch could be decoded; check the files")
        failed = [i for i, x in enumerate(out) if x is None]
        for k, i in enumerate(failed):
            out[i] = out[good[k % len(good)]]
        return out, failed

    def _decode_one(self, data: Tensor, mode, name: str | None = None) -> Tensor | None:
        try:
            return decode_jpeg(data, mode=mode, device=self.device)
        except RuntimeError:
            pass
        try:
            return _pil_decode(data.numpy().tobytes(), "L" if self.in_chans == 1 else "RGB").to(self.device)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            _logger.warning("skipped unreadable image %s (%s)", name or "(a file of the batch)", e)
            return None

    def sample(self, images: Sequence[Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """RandomResizedCrop boxes (b, 4) (top, left, height, width) and flips (b,) bool for b (c, h, w) images,
        drawn on the CPU from ``generator``, else the transform's own (``seed``), else torch's global generator."""
        g = generator if generator is not None else self.generator
        sizes = torch.tensor([[x.shape[-2], x.shape[-1]] for x in images])
        boxes = sample_crop_boxes(sizes, self.scale, self.ratio, g)
        flips = torch.rand(len(images), generator=g) < self.hflip
        return boxes, flips

    def crop_flip(self, images: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Random resized crops of (c, h, w) uint8 images, each flipped with probability ``hflip``: (b, c, size, size)
        float32 8-bit values, all resized at once (:func:`armvision.data.resize.resized_crops`)."""
        boxes, flips = self.sample(images, generator)
        return resized_crops(images, boxes, flips, self.size, self.mode)

    def __call__(self, images: list[Tensor], names: Sequence[str] | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, list[int]]:
        """``generator``: the crops' and flips' random draws for this batch (a CPU generator); None: the transform's
        own or torch's global one. Random erasing (fine-tuning) draws from Python's ``random`` (timm's)."""
        decoded, failed = self.decode(images, names)
        x = normalize_batch(self.crop_flip(decoded, generator), self.mean, self.std)
        if self.erase is not None:
            x = self.erase(x)
        return x, failed


def build_encoded_dataset(kind: str, root: str | None, split: str, in_chans: int = 3,
                          strict_images: bool = False) -> EncodedImageDataset:
    """The training split as encoded images for ``data.decode: gpu`` (image folders and tars only)."""
    if kind != "imagefolder":
        raise ConfigError(f"data.decode gpu reads image folders or tars (data.dataset imagefolder), not {kind!r}; "
                          "use data.decode cpu")
    if not root:
        raise DataError("data.root is not set: pass --data.root PATH")
    return EncodedImageDataset(_folder_reader(root, split, None), None, "L" if in_chans == 1 else "RGB",
                               strict_images)


def gpu_batch_transform(cfg, device: torch.device | str, seed: int | None = None) -> GpuBatchTransform:
    """The training transform of a run config (``RunConfig``) on ``device``, for ``data.decode: gpu``.

    The trainer (through :func:`armvision.train.data.build_pipeline`) builds its training set with
    :func:`build_encoded_dataset` and ``collate_encoded``, and calls the returned object on each
    batch's list of encoded images: ``images, failed = transform(encoded, skips.names, generator=g)``, with ``g``
    seeded per batch from (seed, rank, the batch's position), so a resumed run draws the crops it would have drawn.
    ``seed``: the crops' own generator for calls without one; None: torch's global generator.
    """
    d, a, m = cfg.data, cfg.aug, cfg.model
    mean, std = normalization(d.stats, m.in_chans, d.mean, d.std)
    if cfg.task == "finetune" and (a.auto_augment or a.color_jitter):
        raise ConfigError("data.decode gpu has no RandAugment / colour jitter: set aug.auto_augment null and "
                          "aug.color_jitter null, or use data.decode cpu")
    reprob = a.reprob if cfg.task == "finetune" else 0.0
    return GpuBatchTransform(m.img_size, mean, std, device, a.scale, a.ratio, a.hflip, d.interpolation, m.in_chans,
                             reprob, a.remode, seed=seed)
