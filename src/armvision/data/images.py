"""Image files: the extensions armvision reads (every still-image format this Pillow opens; the same list for
training, evaluation and extraction, and given to timm's folder readers), listing them, decoding any
bit depth to 8-bit RGB or L (:func:`convert_image`), and a dataset that reports unreadable files
instead of failing."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "list_images", "ImageFiles", "collate_readable", "convert_image", "decode_rgb_jpeg",
           "decode_jpeg"]

# Pillow formats that are not still images, or that need programs or handlers outside Pillow
_NOT_STILL_IMAGES = {".eps", ".ps", ".mpeg", ".mpg", ".h5", ".hdf", ".bufr", ".grib", ".wmf", ".emf", ".fli",
                     ".flc", ".fit", ".fits"}


def _pillow_extensions() -> tuple[str, ...]:
    Image.init()
    found = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    common = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
    return tuple(dict.fromkeys([*common, *sorted(found - _NOT_STILL_IMAGES)]))


IMAGE_EXTENSIONS = _pillow_extensions()
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def convert_image(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` ("RGB" or "L"), high bit depths scaled to 8 bits rather than clipped.

    16-bit modes (I;16*) map 0..65535 to 0..255; 32-bit integer images ("I") the same when their values fit
    16 bits (how Pillow opens 16-bit PNGs), else 0..2**32-1; float images ("F") map 0..1 to 0..255 when
    their values lie in [0, 1], else 0..255 as they are (clipped only outside it).
    """
    if img.mode not in _HIGH_BIT_MODES:
        return img.convert(mode)
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else 1.0
    elif img.mode == "I" and (a.min() < 0 or a.max() > 65535):
        a = a - a.min() if a.min() < 0 else a
        scale = 255.0 / (2**32 - 1)
    else:
        scale = 255.0 / 65535.0
    a = np.nan_to_num(a * scale, nan=0.0).clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(a, mode="L").convert(mode)


def decode_rgb_jpeg(f) -> torch.Tensor | None:
    """The RGB JPEG in the binary file ``f`` -> uint8 (3, h, w), decoded by torchvision's libjpeg-turbo (the pixels
    Pillow decodes, without Pillow's packing of RGB into 4-byte pixels and back: about 20% faster); None when
    torchvision cannot read it (a truncated file, ...), so the caller falls back to Pillow and its errors."""
    try:
        from torchvision.io import ImageReadMode

        f.seek(0)
        return decode_jpeg(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError, OSError, ValueError):
        return None


def decode_jpeg(data, **kwargs):
    """torchvision.io.decode_jpeg (one tensor or a list; CPU, or nvjpeg with ``device="cuda"``) without its
    deprecation warning: torchvision 0.29 points to TorchCodec, which the GPU machines do not have; the decoder
    itself is unchanged (the CPU path falls back to Pillow if it ever goes)."""
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities", category=DeprecationWarning)
        return tv_decode_jpeg(data, **kwargs)


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, case-insensitive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


class ImageFiles(torch.utils.data.Dataset):
    """``files[i]`` -> ``(i, transform(image), None)``, or ``(i, None, reason)`` when it cannot be read."""

    def __init__(self, files: list[Path], transform: Callable, channels: int):
        self.files, self.transform, self.mode = files, transform, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.files[i]) as im:
                return i, self.transform(convert_image(im, self.mode)), None
        except Exception as e:  # unreadable / truncated / not an image
            return i, None, f"{type(e).__name__}: {e}"


def collate_readable(batch):
    """Batch of :class:`ImageFiles` items -> (indices read, images (b, c, h, w) or None, [(index, reason)])."""
    ok = [(i, x) for i, x, err in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, bad
