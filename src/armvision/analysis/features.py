"""Pooled features of a whole dataset split, extracted once and kept in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..train.config import RunConfig, training_config

__all__ = ["FeatureSet", "FEATURE_KINDS", "data_setup", "eval_transform_for", "open_split", "extract_dataset_features"]


@dataclass
class FeatureSet:
    """``features`` (n, c) float32 on the CPU, ``labels`` (n,) int64, ``classes``: names or None; ``unreadable``:
    the files of the split that could not be read (sorted; their stand-ins are not among the n samples)."""

    features: Tensor
    labels: Tensor
    classes: list[str] | None = None
    unreadable: list[str] = field(default_factory=list)


def data_setup(training: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The run config whose ``data`` section says which dataset to read: the checkpoint's own training
    config (when it has one), then ``overrides`` (``{"data.dataset": "fashion_mnist", "data.root": ...}``)."""
    return training_config(training, overrides)


def eval_transform_for(model: nn.Module, cfg: RunConfig):
    """The evaluation transform of ``model`` under ``cfg.data`` (resize, centre crop, normalise)."""
    from ..data.transforms import eval_transform, normalization

    d = cfg.data
    geo = getattr(model, "geometry")
    mean, std = normalization(d.stats, geo.in_chans, d.mean, d.std)
    return eval_transform(geo.img_size[0], mean, std, d.eval_crop_pct, d.interpolation, d.eval_resize)


def default_test_split(cfg: RunConfig) -> str:
    """The split to evaluate on: data.val_split, else 'test' for Fashion-MNIST and 'val' for the rest
    (Fashion-MNIST has only 'train' and 'test': the config default 'val' means its 'test')."""
    if cfg.data.dataset == "fashion_mnist" and cfg.data.val_split not in ("train", "test"):
        return "test"
    return cfg.data.val_split or "val"


def open_split(model: nn.Module, cfg: RunConfig, split: str, subset: int | None = None,
               class_map: dict | None = None):
    """One labelled split, transformed for ``model``."""
    from ..data.datasets import build_dataset

    d = cfg.data
    if not hasattr(model, "geometry"):
        raise ConfigError(f"{type(model).__name__} has no geometry: only armvision models can be evaluated here")
    return build_dataset(d.dataset, d.root, split, eval_transform_for(model, cfg), in_chans=model.geometry.in_chans,
                         strict_images=d.strict_images, class_map=class_map, subset=subset,
                         subset_seed=d.subset_seed, seed=cfg.seed)


FEATURE_KINDS = ("pooled", "tokens")


def check_feature_kind(features: str) -> None:
    """A one-line :class:`ConfigError` unless ``features`` is one of :data:`FEATURE_KINDS`."""
    if features not in FEATURE_KINDS:
        raise ConfigError(f"features {features!r}: choose {' or '.join(FEATURE_KINDS)}")


@torch.no_grad()
def extract_dataset_features(model: nn.Module, dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                             workers: int = 0, progress: bool = False, desc: str = "features",
                             features: str = "pooled") -> FeatureSet:
    """Features (:func:`armvision.extract_features`) of every sample of a labelled dataset.

    ``features="pooled"`` (c values per image): pretraining models, the mean of the causal encoder's final normed
    tokens over all clusters; classifiers, the pooled feature the head sees. ``features="tokens"`` (patches x c
    values): the last block's token map through the same final norm, flattened in row-major grid order (a linear
    probe on it can use where things are, as a probe on a convolutional network's spatial feature map does; only
    for small grids: 16 tokens of 128 values give 2048 features). A sample standing in for an unreadable image is
    left out (the file is named in ``FeatureSet.unreadable``).
    """
    from tqdm import tqdm

    from ..data.datasets import dataset_classes
    from ..data.loader import collate, drop_standins
    from ..features import extract_features

    check_feature_kind(features)
    device = torch.device(device)
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    feats, labels, unreadable = [], [], set()
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, target = drop_standins(*batch, unreadable)
        if not len(target):
            continue
        if features == "tokens":
            maps = extract_features(model, images.to(device), layers=-1, norm=True).maps
            feats.append(next(iter(maps.values())).flatten(1).float().cpu())
        else:
            feats.append(extract_features(model, images.to(device)).pooled.float().cpu())
        labels.append(torch.as_tensor(target).long().cpu())
    if not feats:
        raise ConfigError("the dataset split is empty: no features to evaluate")
    return FeatureSet(torch.cat(feats), torch.cat(labels), dataset_classes(dataset), sorted(unreadable))
