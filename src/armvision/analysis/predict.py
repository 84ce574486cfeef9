"""Top-k classes of image files from a fine-tuned classifier, with its evaluation transform."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import DataError

__all__ = ["collect_images", "load_images", "predict_images", "predict_files"]


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders; DataError when none."""
    from ..data import IMAGE_EXTENSIONS, list_images

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist; pass image files or folders of images")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return files


def load_images(files: Sequence[Path], transform, in_chans: int) -> Tensor:
    """(n, c, h, w) model inputs; an unreadable file is a DataError naming it."""
    from PIL import Image

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(transform(im.convert("L" if in_chans == 1 else "RGB")))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {f}: {e}") from None
    return torch.stack(out)


@torch.no_grad()
def predict_images(model: nn.Module, images: Tensor, classes: Sequence[str] | None = None,
                   topk: int = 5) -> list[list[tuple[str, float]]]:
    """For each image (n, c, h, w): the ``topk`` (class name, probability) pairs, most likely first.
    Without ``classes`` the names are the class indices."""
    probs = model(images).float().softmax(dim=-1)
    p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    name = (lambda i: classes[i]) if classes else str
    return [[(name(int(i)), float(v)) for v, i in zip(pv, iv)] for pv, iv in zip(p, idx)]


def predict_files(model: nn.Module, files: Sequence[Path], transform, classes: Sequence[str] | None = None,
                  topk: int = 5, batch_size: int = 64, device: str | torch.device = "cpu") -> list[dict]:
    """``[{"file": path, "top": [{"class", "prob"}, ...]}, ...]`` for each file, in order."""
    model = model.to(device).eval()
    rows = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        x = load_images(chunk, transform, model.geometry.in_chans).to(device)
        for f, top in zip(chunk, predict_images(model, x, classes, topk)):
            rows.append({"file": str(f), "top": [{"class": c, "prob": p} for c, p in top]})
    return rows
