"""ImageNet's validation set and its robustness test sets as folders of class folders, labelled for a classifier
of the 1000 ImageNet classes.

| name | folder layout | class folders | logits scored |
|---|---|---|---|
| ``imagenet`` | ``ROOT/n01440764/*.JPEG`` (the ImageNet-1k val split) | 1000 synsets | 1000 |
| ``imagenet-a`` | ``ROOT/n01498041/*.jpg`` (ImageNet-A, Hendrycks et al.) | 200 synsets | its 200 |
| ``imagenet-r`` | ``ROOT/n01443537/*.jpg`` (ImageNet-R, Hendrycks et al.) | 200 synsets | its 200 |
| ``imagenet-sketch`` | ``ROOT/n01440764/*.JPEG`` (ImageNet-Sketch, Wang et al.: ``sketch/``) | 1000 synsets | 1000 |
| ``imagenet-v2`` | ``ROOT/0/*.jpeg`` .. ``ROOT/999/`` (ImageNetV2, Recht et al.; any of its 3 sets) | 0 .. 999 | 1000 |

ImageNet-A and -R hold 200 of the 1000 classes; as their authors score them, a prediction is the best of those
200 classes' logits. Their synsets and their indices in the 1000-class head are timm's lists
(``timm/data/_info/imagenet_{a,r}_{synsets,indices}.txt``), read from the installed timm. ImageNetV2's folders are
class indices of the standard order (timm's ``imagenet_synsets.txt``: the synsets sorted), not names to sort.

A classifier's own class list (a fine-tuning run's, from its ImageNet folder) maps synsets to its head; one with
1000 classes and no list is taken to use the standard order.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DataError

__all__ = ["Benchmark", "BENCHMARKS", "imagenet_synsets", "imagenet_subset_indices", "benchmark_folders",
           "benchmark_labels", "build_benchmark_dataset"]

_logger = logging.getLogger(__name__)

_SYNSET = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class Benchmark:
    """One test set: ``folders`` "synset" (class folders named by WordNet id) or "index" (0..999);
    ``subset``: the stem of timm's lists of its classes (None: all 1000)."""

    name: str
    title: str
    column: str
    folders: str
    subset: str | None
    example: str

    @property
    def layout(self) -> str:
        what = f"the 200 class folders of {self.title}" if self.subset else (
            "1000 class folders named 0 to 999 (class indices)" if self.folders == "index"
            else "1000 class folders named by ImageNet synset")
        return f"ROOT/{self.example}/<image> ({what})"


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("imagenet", "ImageNet-1k val", "IN-1k", "synset", None, "n01440764"),
    Benchmark("imagenet-a", "ImageNet-A", "IN-A", "synset", "imagenet_a", "n01498041"),
    Benchmark("imagenet-r", "ImageNet-R", "IN-R", "synset", "imagenet_r", "n01443537"),
    Benchmark("imagenet-sketch", "ImageNet-Sketch", "IN-Sketch", "synset", None, "n01440764"),
    Benchmark("imagenet-v2", "ImageNet-V2", "IN-V2", "index", None, "0"),
)}


def _timm_list(filename: str) -> list[str]:
    return resources.files("timm.data").joinpath("_info", filename).read_text().split()


@lru_cache(maxsize=None)
def imagenet_synsets(subset: str | None = None) -> tuple[str, ...]:
    """The 1000 ImageNet synsets in the standard (sorted) order, or a subset's ("imagenet_a", "imagenet_r"),
    from timm's lists."""
    return tuple(_timm_list(f"{subset or 'imagenet'}_synsets.txt"))


@lru_cache(maxsize=None)
def imagenet_subset_indices(subset: str) -> tuple[int, ...]:
    """Index in the standard 1000-class order of each class of a subset (timm's list), in the subset's order."""
    return tuple(int(i) for i in _timm_list(f"{subset}_indices.txt"))


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _looks_like(bench: Benchmark, names: Sequence[str]) -> bool:
    if bench.folders == "index":
        return bool(names) and all(n.isdigit() for n in names)
    return bool(names) and all(_SYNSET.fullmatch(n) for n in names)


def benchmark_folders(name: str, root: str | Path) -> dict[str, str]:
    """Class folder -> synset of the benchmark at ``root``, after checking its layout (a DataError naming the
    expected layout otherwise). A copy holding only some of the classes is evaluated on those, with a warning."""
    bench = get_benchmark(name)
    root = Path(root)
    expected = f"expected {bench.layout}"
    if not root.is_dir():
        raise DataError(f"{bench.title} folder {root} {'is a file' if root.exists() else 'does not exist'}; "
                        f"{expected.replace('ROOT', str(root))}")
    names = _subfolders(root)
    if not names:
        raise DataError(f"{bench.title} folder {root} holds no class folders; {expected.replace('ROOT', str(root))}")
    if not _looks_like(bench, names):
        hint = ""
        inner = [n for n in names if _looks_like(bench, _subfolders(root / n))]
        if len(inner) == 1:
            hint = f" (did you mean {root / inner[0]}?)"
        elif bench.folders == "index" and _looks_like(BENCHMARKS["imagenet"], names):
            hint = " (these are synset folders: ImageNet-V2's are class indices)"
        elif bench.folders == "synset" and _looks_like(BENCHMARKS["imagenet-v2"], names):
            hint = " (these are class-index folders, ImageNet-V2's layout)"
        odd = [n for n in names if not _looks_like(bench, [n])][:3]
        raise DataError(f"{bench.title} folder {root} has class folders {', '.join(odd)}{hint}; "
                        f"{expected.replace('ROOT', str(root))}")
    if bench.folders == "index":
        standard = imagenet_synsets()
        bad = [n for n in names if int(n) >= len(standard) or n != str(int(n))][:3]
        if bad:
            raise DataError(f"{bench.title} folder {root} has class folders {', '.join(bad)}; expected class indices "
                            f"0 to {len(standard) - 1} ({expected.replace('ROOT', str(root))})")
        folders = {n: standard[int(n)] for n in names}
    else:
        allowed = set(imagenet_synsets(bench.subset))
        bad = [n for n in names if n not in allowed][:3]
        if bad:
            which = f"{bench.title}'s {len(allowed)} classes" if bench.subset else "the 1000 ImageNet classes"
            raise DataError(f"{bench.title} folder {root} has class folders {', '.join(bad)}, not among {which}; "
                            f"{expected.replace('ROOT', str(root))}")
        folders = {n: n for n in names}
    total = len(imagenet_synsets(bench.subset))
    if len(folders) < total:
        _logger.warning("%s folder %s holds %d of its %d classes; evaluating those", bench.title, root, len(folders),
                        total)
    return folders


def benchmark_labels(name: str, folders: dict[str, str], model_classes: Sequence[str] | None,
                     num_classes: int) -> tuple[dict[str, int], list[int] | None]:
    """(class folder -> label, head columns scored) for a classifier with ``num_classes`` outputs named by
    ``model_classes`` (synsets; None: the standard 1000-class order).

    Benchmarks of a 200-class subset score only those classes: the labels count the subset's classes in timm's
    order, and the head columns (one per subset class, in that order) are timm's indices for the standard order;
    other benchmarks label each folder by its class's head column and score every column (None)."""
    bench = get_benchmark(name)
    standard = imagenet_synsets()
    if model_classes is None:
        if num_classes != len(standard):
            raise DataError(f"{bench.title} needs a classifier of the {len(standard)} ImageNet classes; this one "
                            f"predicts {num_classes} classes and names none")
        model_classes = standard
    model_classes = list(model_classes)
    if len(model_classes) != num_classes:
        raise DataError(f"the classifier names {len(model_classes)} classes but predicts {num_classes}")
    column = {c: i for i, c in enumerate(model_classes)}
    wanted = imagenet_synsets(bench.subset) if bench.subset else sorted(set(folders.values()))
    missing = [w for w in wanted if w not in column]
    if missing:
        kind = "ImageNet synsets" if all(_SYNSET.fullmatch(c) for c in model_classes) else \
            f"classes such as {model_classes[0]!r}, not ImageNet synsets"
        raise DataError(f"{bench.title}: the classifier's {len(model_classes)} classes ({kind}) lack {len(missing)} of "
                        f"the benchmark's (e.g. {missing[0]}); evaluate a classifier of the 1000 ImageNet classes")
    if bench.subset:
        subset = imagenet_synsets(bench.subset)
        indices = list(imagenet_subset_indices(bench.subset)) if tuple(model_classes) == standard else \
            [column[w] for w in subset]
        position = {w: k for k, w in enumerate(subset)}
        return {f: position[w] for f, w in folders.items()}, indices
    return {f: column[w] for f, w in folders.items()}, None


def build_benchmark_dataset(name: str, root: str | Path, transform: Callable | None, class_map: dict[str, int],
                            in_chans: int = 3, strict_images: bool = False):
    """The images of the benchmark at ``root`` with the labels of ``class_map`` (:func:`benchmark_labels`), as
    :func:`armvision.data.build_dataset` yields them."""
    from .datasets import ReaderDataset, _folder_reader

    root = Path(root)
    try:
        reader = _folder_reader(str(root.parent), root.name, class_map)
    except DataError:
        bench = get_benchmark(name)
        raise DataError(f"{bench.title} folder {root} holds no images in its class folders; expected "
                        f"{bench.layout.replace('ROOT', str(root))}") from None
    return ReaderDataset(reader, transform, "L" if in_chans == 1 else "RGB", strict_images)
