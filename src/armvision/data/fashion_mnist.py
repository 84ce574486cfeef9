"""Fashion-MNIST read in place from its idx files (Debian's ``dataset-fashion-mnist`` or any folder).

The idx format is four big-endian header fields and raw uint8 pixels; no library we depend on reads
it from the gzipped files without downloading, so this small reader does. Images are 28x28
grayscale, ten classes, 60000 training and 10000 test images.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["FashionMNIST", "DEFAULT_ROOT", "CLASSES", "read_idx", "SPLITS"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx1 (labels) or idx3 (images) file, gzipped or not, into a uint8 array."""
    path = Path(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; expected a Fashion-MNIST idx file (gzipped or not)") from None
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    if magic not in _MAGIC:
        raise DataError(f"{path} is not an idx file (magic number {magic}, expected 2049 for labels or 2051 "
                        "for images)")
    ndim = _MAGIC[magic]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated or corrupt: header says {dims} ({expected} bytes), "
                        f"file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, prefix: str, kind: str) -> Path:
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {prefix}-{kind}-ubyte.gz not found in {root}; expected "
                    f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                    f"t10k-labels-idx1-ubyte.gz (gzipped or not). On Debian/Ubuntu: "
                    f"apt-get install dataset-fashion-mnist (installs them in {DEFAULT_ROOT})")


class FashionMNIST(Dataset):
    """Map-style Fashion-MNIST: ``dataset[i]`` is ``(transform(PIL image), label)``.

    Args:
        root: folder with the idx files (default: Debian's /usr/share/datasets/fashion-mnist).
        split: "train" (60000 images) or "test" (10000; "t10k" also works).
        transform: applied to the PIL image.
        mode: PIL mode of the images: "L" (grayscale, as stored) or "RGB" (channel replicated).
    """

    classes = CLASSES

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", transform=None,
                 mode: str = "L"):
        root = Path(root or DEFAULT_ROOT)
        if split not in SPLITS:
            raise DataError(f"Fashion-MNIST has no split {split!r}; its splits are 'train' and 'test'")
        if not root.is_dir():
            raise DataError(f"Fashion-MNIST folder {root} does not exist; expected the four idx files "
                            f"there (train-images-idx3-ubyte.gz, ...). On Debian/Ubuntu: "
                            f"apt-get install dataset-fashion-mnist (installs them in {DEFAULT_ROOT})")
        prefix = SPLITS[split]
        self.images = read_idx(_find(root, prefix, "images-idx3"))
        self.targets = read_idx(_find(root, prefix, "labels-idx1")).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self.targets):
            raise DataError(f"Fashion-MNIST {split} files in {root} disagree: {self.images.shape} images, "
                            f"{self.targets.shape} labels")
        if self.targets.max(initial=0) >= len(CLASSES):
            raise DataError(f"Fashion-MNIST {split} labels in {root} go up to {self.targets.max()}; expected 0..9")
        self.root, self.split, self.transform, self.mode = root, split, transform, mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L")
        if self.mode != "L":
            img = img.convert(self.mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
