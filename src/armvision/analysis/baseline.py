"""A reference point without a network: a linear classifier (multinomial logistic regression) on the raw pixels
of Fashion-MNIST, used by the demo (:mod:`armvision.demo`) and the studies in experiments/."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["fashion_mnist_pixels", "pixel_linear_baseline"]


def fashion_mnist_pixels(root: str | None, split: str, subset: int | None,
                         subset_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, h * w) float pixels in [0, 1] and (n,) labels of a Fashion-MNIST split, the subset drawn exactly as
    :func:`armvision.data.build_dataset` draws it (so the labelled images are the fine-tuning runs' own)."""
    from torch.utils.data import Subset

    from ..data.datasets import build_dataset

    ds = build_dataset("fashion_mnist", root, split, None, in_chans=1, subset=subset, subset_seed=subset_seed)
    idx = np.asarray(ds.indices) if isinstance(ds, Subset) else None
    base = ds.dataset if isinstance(ds, Subset) else ds
    fm = base.dataset  # the FashionMNIST arrays behind the sample-format wrapper
    images, targets = (fm.images, fm.targets) if idx is None else (fm.images[idx], fm.targets[idx])
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(np.asarray(targets, dtype=np.int64))


def _fit(x: torch.Tensor, y: torch.Tensor, weight_decay: float, epochs: int, seed: int) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    steps = epochs * max(1, len(x) // 256)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(max(1, len(x) // 256)):
            b = perm[i * 256:(i + 1) * 256]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


def pixel_linear_baseline(root: str | None = None, train_subset: int | None = 10000, subset_seed: int = 0,
                          seed: int = 0, weight_decays: Sequence[float] = (0.0, 0.1, 1.0), epochs: int = 20,
                          test_subset: int | None = None) -> dict[str, Any]:
    """Logistic regression on standardised raw pixels of the same labelled Fashion-MNIST images as the demo's
    fine-tuning (``train_subset`` drawn with ``subset_seed``), evaluated on the test images (``test_subset``: the
    same subset of them as the fine-tuning runs' evaluation; None: all 10000).

    AdamW (lr 1e-2, half-cosine, batch 256, ``epochs`` epochs); the weight decay is chosen on a held-out 10 %
    of the labelled images (never on the test images), then the classifier is refitted on all of them.
    Returns ``{"top1", "weight_decay", "sweep", "labels", "seconds"}``.
    """
    t0 = time.time()
    x, y = fashion_mnist_pixels(root, "train", train_subset, subset_seed)
    xt, yt = fashion_mnist_pixels(root, "test", test_subset, subset_seed)
    mean, std = x.mean(0), x.std(0) + 1e-3
    x, xt = (x - mean) / std, (xt - mean) / std
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    hold, fit = perm[: len(x) // 10], perm[len(x) // 10:]
    sweep = []
    for wd in weight_decays:
        m = _fit(x[fit], y[fit], wd, epochs, seed)
        with torch.no_grad():
            acc = 100.0 * (m(x[hold]).argmax(1) == y[hold]).float().mean().item()
        sweep.append({"weight_decay": wd, "heldout_top1": acc})
    best = max(sweep, key=lambda e: e["heldout_top1"])["weight_decay"]
    model = _fit(x, y, best, epochs, seed)
    with torch.no_grad():
        top1 = 100.0 * (model(xt).argmax(1) == yt).float().mean().item()
    return {"top1": top1, "weight_decay": best, "sweep": sweep, "labels": len(x), "test_images": len(xt),
            "seconds": round(time.time() - t0, 1)}
