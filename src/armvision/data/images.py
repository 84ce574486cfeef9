"""A folder of image files, for inference: the image extensions armvision reads, listing them, and a
dataset that reports unreadable files instead of failing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

__all__ = ["IMAGE_EXTENSIONS", "list_images", "ImageFiles", "collate_readable"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return i, self.transform(im.convert(self.mode)), None
        except Exception as e:  # unreadable / truncated / not an image
            return i, None, f"{type(e).__name__}: {e}"


def collate_readable(batch):
    """Batch of :class:`ImageFiles` items -> (indices read, images (b, c, h, w) or None, [(index, reason)])."""
    ok = [(i, x) for i, x, err in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, bad
