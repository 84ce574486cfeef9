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


def load_images(files: Sequence[Path], transform, in_chans: int,
                skipped: list[tuple[Path, str]] | None = None) -> tuple[Tensor | None, list[Path]]:
    """The model inputs (n, c, h, w) of the readable ``files`` and those files, in order (``None`` and ``[]``
    when none is readable). An unreadable file (truncated, empty, not an image) is left out and appended to
    ``skipped`` as ``(path, reason)``, as eval and extract do; without ``skipped`` it is a DataError naming it."""
    from PIL import Image

    out, kept = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(transform(im.convert("L" if in_chans == 1 else "RGB")))
            kept.append(f)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises SyntaxError for some broken headers
            if skipped is None:
                raise DataError(f"cannot read image {f}: {e}") from None
            skipped.append((f, str(e).splitlines()[0] if str(e) else type(e).__name__))
    return (torch.stack(out) if out else None), kept


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
                  topk: int = 5, batch_size: int = 64, device: str | torch.device = "cpu",
                  skipped: list[tuple[Path, str]] | None = None) -> list[dict]:
    """``[{"file": path, "top": [{"class", "prob"}, ...]}, ...]`` for each readable file, in order; unreadable
    files go to ``skipped`` (see :func:`load_images`; without it the first one is a DataError)."""
    model = model.to(device).eval()
    rows = []
    for i in range(0, len(files), batch_size):
        x, chunk = load_images(files[i:i + batch_size], transform, model.geometry.in_chans, skipped)
        if x is None:
            continue
        for f, top in zip(chunk, predict_images(model, x.to(device), classes, topk)):
            rows.append({"file": str(f), "top": [{"class": c, "prob": p} for c, p in top]})
    return rows
