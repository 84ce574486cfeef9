"""The data pipeline of a run, one builder for training, validation and ``armvision eval``.

:func:`build_pipeline` turns the run's config into transform -> dataset -> loader for one split:
the task's training augmentation (``train=True``: pretraining or fine-tuning transform, shuffled,
sharded over ranks, whole batches) or the evaluation transform (resize, centre-crop; every image
once over all ranks, in order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import (
    build_dataset,
    eval_transform,
    finetune_transform,
    make_loader,
    normalization,
    normalize_batch,
    pretrain_transform,
)
from ..data.datasets import take_subset
from ..data.loader import auto_workers
from ..data.gpu import build_encoded_dataset, collate_encoded, gpu_batch_transform
from .config import RunConfig

__all__ = ["Pipeline", "build_transform", "build_pipeline", "normalize_on_device"]


@dataclass
class Pipeline:
    """One split's transform, dataset, loader (batches ``(images (b, c, h, w), labels (b,), skips)``, skips an
    :class:`armvision.data.Skips`: which samples stand in for unreadable files, and which files) and sampler
    (None for streaming datasets). ``data.decode: gpu`` (training): the loader's images are a list of b
    encoded images and ``batch_transform(images, skips.names) -> (images (b, c, h, w) on the device, failed
    positions)`` decodes and augments them; None otherwise. ``normalize``: (mean, std) when the loader's images
    are 8-bit, to be normalised on the device (``data.normalize``); :meth:`to_device` does either."""

    transform: Callable
    dataset: Dataset
    loader: DataLoader
    sampler: Any
    batch_transform: Callable | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def to_device(self, images: Any, names: Sequence[str] | None, device: torch.device,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int]]:
        """A loader batch's images -> ((b, c, h, w) float32 on ``device``, positions no decoder read): the
        copy, normalisation of 8-bit batches (``normalize`` = (mean, std)), or ``batch_transform`` (drawing
        its crops from ``generator`` when given)."""
        if self.batch_transform is not None:
            return self.batch_transform(images, names, generator=generator)
        images = images.to(device, non_blocking=True)
        if self.normalize is not None:
            images = normalize_batch(images, *self.normalize)
        return images, []


def normalize_on_device(cfg: RunConfig, device: torch.device | None) -> bool:
    """Whether the training loader sends 8-bit images, normalised on the device (``data.normalize``; 'auto':
    on a GPU, unless random erasing runs in the workers)."""
    d = cfg.data
    erasing = cfg.task == "finetune" and cfg.aug.reprob > 0
    if d.normalize == "auto":
        return device is not None and device.type == "cuda" and not erasing
    return d.normalize == "device"


def build_transform(cfg: RunConfig, train: bool, img_size: int | None = None, in_chans: int | None = None,
                    normalize: bool = True):
    """The task's training transform (``train``) or the evaluation transform, normalised with data.stats
    (or data.mean/std). ``img_size``/``in_chans`` default to the config's model (a checkpoint's own win).
    ``normalize=False`` (training only): 8-bit (c, h, w) tensors, the same crops (:func:`normalize_batch`)."""
    d, m, a = cfg.data, cfg.model, cfg.aug
    size = img_size or m.img_size
    mean, std = normalization(d.stats, in_chans or m.in_chans, d.mean, d.std)
    if not train:
        return eval_transform(size, mean, std, d.eval_crop_pct, d.interpolation, d.eval_resize)
    if cfg.task == "pretrain":
        return pretrain_transform(size, mean, std, a.scale, a.ratio, a.hflip, d.interpolation, normalize=normalize,
                                  resize_backend=d.resize_backend)
    return finetune_transform(size, mean, std, a.scale, a.ratio, a.hflip, a.auto_augment, a.color_jitter, a.reprob,
                              a.remode, d.interpolation, normalize=normalize, resize_backend=d.resize_backend)


def build_pipeline(cfg: RunConfig, split: str, train: bool, batch_size: int, rank: int = 0, world: int = 1,
                   device: torch.device | None = None, class_map: dict | None = None, img_size: int | None = None,
                   in_chans: int | None = None, persistent_workers: bool | None = None) -> Pipeline:
    """Transform, dataset and loader of ``split`` for this process (``rank`` of ``world``).

    ``train``: training augmentation, ``data.train_subset``, shuffled; else evaluation, ``data.val_subset``,
    in order. ``class_map``: class name -> label (evaluation uses the training split's). ``device``: pin host
    memory only for a GPU. ``persistent_workers`` defaults to ``data.persistent_workers``.
    """
    d = cfg.data
    chans = in_chans or cfg.model.in_chans
    pin = d.pin_memory and device is not None and device.type == "cuda"
    persistent = d.persistent_workers if persistent_workers is None else persistent_workers
    workers = auto_workers() if d.workers == "auto" else d.workers
    if train and d.decode == "gpu":  # workers read bytes; the batch is decoded and cropped on the device
        batch_tf = gpu_batch_transform(cfg, device or torch.device("cpu"))
        ds = build_encoded_dataset(d.dataset, d.root, split, chans, d.strict_images)
        if d.train_subset is not None:
            ds = take_subset(ds, d.train_subset, d.subset_seed, d.dataset, split)
        loader, sampler = make_loader(ds, batch_size, train=True, workers=workers, pin_memory=False,
                                      persistent_workers=persistent, seed=cfg.seed, rank=rank, world_size=world,
                                      collate_fn=collate_encoded)
        return Pipeline(batch_tf, ds, loader, sampler, batch_tf)
    on_device = train and normalize_on_device(cfg, device)
    tf = build_transform(cfg, train, img_size, chans, normalize=not on_device)
    ds = build_dataset(d.dataset, d.root, split, tf, in_chans=chans, strict_images=d.strict_images,
                       class_map=class_map, subset=d.train_subset if train else d.val_subset,
                       subset_seed=d.subset_seed, is_training=train, batch_size=batch_size, seed=cfg.seed)
    loader, sampler = make_loader(ds, batch_size, train=train, workers=workers, pin_memory=pin,
                                  persistent_workers=persistent, seed=cfg.seed, rank=rank, world_size=world)
    stats = normalization(d.stats, chans, d.mean, d.std) if on_device else None
    return Pipeline(tf, ds, loader, sampler, normalize=stats)
