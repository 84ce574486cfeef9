"""Datasets: ImageFolder trees and tar shards (timm's readers), Fashion-MNIST (idx files) and the
streaming formats of timm (webdataset shards, local Hugging Face datasets).

Map-style datasets yield ``(image, label, skipped)``: ``skipped`` names the unreadable files that were
passed over to produce this sample (a tuple of paths, empty when the sample is its own file), so that the
training loop and evaluation can report them by file and evaluation can leave the stand-in out (a loader
worker cannot update the main process's counters). Iterable datasets yield ``(image, label)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Subset

from ..errors import DataError
from .fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from .fashion_mnist import FashionMNIST
from .images import IMAGE_EXTENSIONS, convert_image, decode_rgb_jpeg

__all__ = ["ReaderDataset", "build_dataset", "dataset_classes", "STREAMING_PREFIXES", "MAX_CONSECUTIVE_BAD",
           "class_names_to_map"]

_logger = logging.getLogger(__name__)

STREAMING_PREFIXES = ("wds/", "hfds/", "hfids/", "tfds/")
MAX_CONSECUTIVE_BAD = 16  # more unreadable images in a row than this means the data is broken, not noisy


def _imagefolder_layout(root: str, split: str) -> str:
    return (f"{root}/{split}/<class>/<image> (e.g. {root}/{split}/n01440764/x.JPEG), or {root}/{split}.tar "
            f"(images in class folders, or one .tar per class)")


class ReaderDataset(Dataset):
    """Images from a timm reader (folder, tar, Hugging Face dataset), decoded with PIL.

    An image that cannot be read or decoded is replaced by the next readable one (its image and label)
    with a warning, and named in the sample's third field (the files passed over; a non-empty tuple marks
    the sample a stand-in); with ``strict=True`` it raises :class:`DataError`.
    """

    def __init__(self, reader, transform: Callable | None = None, mode: str = "RGB", strict: bool = False):
        self.reader, self.transform, self.mode, self.strict = reader, transform, mode, strict
        # timm's folder reader calls it class_to_idx, its tar reader class_name_to_idx
        class_to_idx = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", None) or {}
        self.classes = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])] or None

    def __len__(self) -> int:
        return len(self.reader)

    def _filename(self, index: int) -> str:
        try:
            return str(self.reader.filename(index, absolute=True))
        except Exception:  # noqa: BLE001 - a name for a message only
            return f"sample {index}"

    def _load(self, index: int):
        item = self.reader[index]
        img, target = item[0], item[1]
        if not isinstance(img, Image.Image):
            f = img
            try:
                img = Image.open(f)  # reads the header only
                x = None
                if getattr(self.transform, "accepts_tensors", False) and img.format == "JPEG" and \
                        img.mode == self.mode == "RGB":
                    x = decode_rgb_jpeg(f)
                img = x if x is not None else convert_image(img, self.mode)  # decodes: truncated files fail here
            finally:
                if hasattr(f, "close"):
                    f.close()
        else:
            img = convert_image(img, self.mode)
        return img, (-1 if target is None else int(target))

    def __getitem__(self, index: int):
        skipped: list[str] = []
        for attempt in range(MAX_CONSECUTIVE_BAD):
            i = (index + attempt) % len(self.reader)
            try:
                img, target = self._load(i)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                name = self._filename(i)
                if self.strict:
                    raise DataError(f"cannot read image {name}: {e}; fix or remove the file, or set "
                                    "data.strict_images false to skip unreadable images with a warning") from None
                _logger.warning("skipped unreadable image %s (%s)", name, e)
                skipped.append(name)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target, tuple(skipped)
        raise DataError(f"{MAX_CONSECUTIVE_BAD} unreadable images in a row from {self._filename(index)} on: "
                        "the dataset looks broken; check the files")


class _IndexedMap(Dataset):
    """Gives a plain map-style dataset the (image, label, skipped files) sample format (nothing skipped)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.classes = list(getattr(dataset, "classes", None) or []) or None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img, target = self.dataset[index][:2]
        return img, target, ()


def dataset_classes(dataset) -> list[str] | None:
    """Class names of a dataset built here (None when the format does not name them)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "classes", None)


def _folder_reader(root: str, split: str, class_map: dict | None):
    from timm.data.readers.reader_image_folder import ReaderImageFolder
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    base = Path(root)
    if not base.exists():
        raise DataError(f"dataset root {root} does not exist; expected {_imagefolder_layout(root, split)}")
    folder, tar = base / split, base / f"{split}.tar"
    if base.is_file() and base.suffix == ".tar":
        source, reader_cls = base, ReaderImageInTar  # one tar holding everything: no split folders
    elif folder.is_dir():
        is_tars = any(p.suffix == ".tar" for p in folder.iterdir())
        source, reader_cls = folder, (ReaderImageInTar if is_tars else ReaderImageFolder)
    elif tar.is_file():
        source, reader_cls = tar, ReaderImageInTar
    else:
        found = sorted(p.name for p in base.iterdir())[:10] if base.is_dir() else []
        raise DataError(f"{root} has no '{split}' split; expected {_imagefolder_layout(root, split)}; "
                        f"found: {', '.join(found) or 'nothing'}")
    from timm.data.readers.img_extensions import add_img_extensions

    add_img_extensions(list(IMAGE_EXTENSIONS))  # timm's readers then list what armvision reads elsewhere
    _report_other_files(source)
    try:
        reader = reader_cls(str(source), class_map=class_map or "")
    except (RuntimeError, ValueError, OSError) as e:  # timm: "Found 0 images in subfolders of ..."
        raise DataError(f"no images found in {source}: {e}; expected {_imagefolder_layout(root, split)}") from None
    if len(reader) == 0:
        raise DataError(f"no images found in {source}; expected {_imagefolder_layout(root, split)}")
    return reader


def _report_other_files(source: Path) -> None:
    """Warn about files in an image folder that are not read as images (by extension), once per folder."""
    if not source.is_dir():
        return
    other: dict[str, int] = {}
    for p in source.rglob("*"):
        if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS and p.suffix.lower() != ".tar":
            other[p.suffix.lower() or "(none)"] = other.get(p.suffix.lower() or "(none)", 0) + 1
    if other:
        kinds = ", ".join(f"{k} ({n})" for k, n in sorted(other.items()))
        _logger.warning("%d file(s) in %s are not read as images (extensions: %s); armvision reads %s",
                        sum(other.values()), source, kinds, " ".join(IMAGE_EXTENSIONS))


def _streaming_dataset(name: str, root: str | None, split: str, transform, mode: str, is_training: bool,
                       batch_size: int, seed: int, class_map: dict | None):
    from timm.data import create_dataset

    if root is not None and not Path(root).exists():
        raise DataError(f"dataset root {root} for {name} does not exist")
    kwargs = {}
    if name.startswith("wds/"):
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise DataError("webdataset shards need the webdataset package: pip install 'webdataset>=0.2.86,<0.3' "
                            "(or pip install 'armvision[wds]')") from None
        if root is None:
            raise DataError("data.root is not set: for 'wds/NAME' pass the folder with the .tar shards and "
                            "_info.json (see timm's webdataset reader)")
    try:
        ds = create_dataset(name, root=root, split=split, is_training=is_training, batch_size=batch_size,
                            seed=seed, input_img_mode=mode, class_map=class_map, **kwargs)
    except ImportError as e:
        raise DataError(f"{name} needs a package that is not installed: {e}") from None
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as e:
        raise DataError(f"cannot open {name} (root {root}, split {split}): {e}") from None
    ds.transform = transform
    if not isinstance(ds, IterableDataset):  # map-style (hfds): give it the common sample format
        return _IndexedMap(ds)
    return ds


def take_subset(ds: Dataset, subset: int, subset_seed: int, kind: str = "the dataset", split: str = "") -> Dataset:
    """``subset`` samples of ``ds``, a fixed random draw (``subset_seed``), in index order."""
    if isinstance(ds, IterableDataset):
        raise DataError(f"data.train_subset/val_subset need a map-style dataset; {kind} streams its samples")
    if subset > len(ds):
        raise DataError(f"asked for a subset of {subset} images, but {kind} split {split!r} holds {len(ds)}")
    order = np.random.default_rng(subset_seed).permutation(len(ds))[:subset]
    return Subset(ds, sorted(int(i) for i in order))


def build_dataset(kind: str, root: str | None, split: str, transform: Callable | None = None,
                  in_chans: int = 3, strict_images: bool = False, class_map: dict | None = None,
                  subset: int | None = None, subset_seed: int = 0, is_training: bool = False,
                  batch_size: int = 1, seed: int = 0) -> Dataset:
    """Open one split of a dataset.

    Args:
        kind: "imagefolder", "fashion_mnist", or a timm reader name ("wds/...", "hfds/...").
        root: dataset location (Fashion-MNIST: default /usr/share/datasets/fashion-mnist).
        split: split name ("train", "val", "test", ...).
        transform: applied to each PIL image.
        in_chans: 1 (images converted to grayscale "L") or 3 ("RGB").
        strict_images: raise on an unreadable image instead of skipping it.
        class_map: class name -> index (e.g. the training split's), so every split agrees.
        subset: keep this many samples, a fixed random draw (``subset_seed``).
        is_training, batch_size, seed: for the streaming readers (shuffling, per-worker counts).
    """
    mode = "L" if in_chans == 1 else "RGB"
    if kind == "fashion_mnist":
        ds: Dataset = _IndexedMap(FashionMNIST(root or FASHION_MNIST_ROOT, split, transform, mode))
    elif kind == "imagefolder":
        if not root:
            raise DataError("data.root is not set: pass --data.root PATH, the folder holding the splits "
                            f"({_imagefolder_layout('PATH', split)})")
        ds = ReaderDataset(_folder_reader(root, split, class_map), transform, mode, strict_images)
    elif kind.startswith(STREAMING_PREFIXES):
        ds = _streaming_dataset(kind, root, split, transform, mode, is_training, batch_size, seed, class_map)
    else:
        raise DataError(f"unknown dataset kind {kind!r}; use 'imagefolder', 'fashion_mnist', or a timm reader "
                        f"name starting with {', '.join(STREAMING_PREFIXES)}")
    if subset is not None:
        ds = take_subset(ds, subset, subset_seed, kind, split)
    if not isinstance(ds, IterableDataset) and len(ds) == 0:
        raise DataError(f"{kind} split {split!r} at {root} holds no samples")
    return ds


def class_names_to_map(classes: Sequence[str] | None) -> dict | None:
    return {c: i for i, c in enumerate(classes)} if classes else None

