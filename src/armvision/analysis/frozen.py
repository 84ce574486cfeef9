"""Frozen-feature evaluation of a model or a checkpoint: open two splits, extract their features once (pooled, or
the flattened token map), then a linear probe and/or a weighted k-NN on them; one result dict (what ``armvision
linprobe | knn`` print and write as JSON, and what the studies under experiments/ and the demo record).

    result = probe_checkpoint("runs/pre", linprobe=LinearProbeSettings(epochs=30), knn=KnnSettings(k=20))
    result["linear_probe"]["best"]["test_top1"], result["knn"]["top1"]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..train.config import RunConfig

__all__ = ["LinearProbeSettings", "KnnSettings", "probe_model", "probe_features", "probe_checkpoint"]

_FROM_CONFIG: Any = "config"  # a subset taken from the run config's data section


@dataclass(frozen=True)
class LinearProbeSettings:
    """The linear probe's sweep (:func:`~armvision.analysis.probe.linear_probe`): ``batch_size`` of its training
    on the cached features, not of the extraction."""

    lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0)
    epochs: int = 30
    batch_size: int = 256
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    holdout: float = 0.1


@dataclass(frozen=True)
class KnnSettings:
    """The weighted k-NN's neighbours and temperature (:func:`~armvision.analysis.probe.knn_classify`)."""

    k: int = 20
    temperature: float = 0.07


def probe_model(model: nn.Module, cfg: RunConfig, *, linprobe: LinearProbeSettings | None = None,
                knn: KnnSettings | None = None, train_split: str | None = None, test_split: str | None = None,
                train_subset: int | None = _FROM_CONFIG, test_subset: int | None = _FROM_CONFIG,
                batch_size: int = 256, workers: int = 0, device: str | torch.device = "cpu", seed: int = 0,
                progress: bool = False, features: str = "pooled") -> dict[str, Any]:
    """Probe ``model``'s frozen features on the dataset of ``cfg.data``: ``features`` ``"pooled"`` (one vector per
    image) or ``"tokens"`` (the last block's normed token map, flattened;
    :func:`~armvision.analysis.features.extract_dataset_features`).

    ``train_split`` defaults to ``cfg.data.train_split``, ``test_split`` to the split the run evaluates on
    (:func:`~armvision.analysis.features.default_test_split`); ``train_subset`` / ``test_subset`` (a fixed draw of
    that many images, None: all) to ``cfg.data.train_subset`` / ``cfg.data.val_subset``. ``batch_size`` and
    ``workers``: of the feature extraction. Returns the dataset, splits, image counts, feature width, unreadable
    files of each split (``train_unreadable_files`` ...), then ``linear_probe`` (with its ``settings``) and/or
    ``knn`` -- the linear probe first, each run only when its settings are given.
    """
    from ..data.datasets import class_names_to_map, dataset_classes
    from ..data.loader import unreadable_report
    from .features import check_feature_kind, default_test_split, extract_dataset_features, open_split

    if linprobe is None and knn is None:
        raise ConfigError("nothing to probe: pass linprobe and/or knn settings")
    check_feature_kind(features)  # before the splits are opened
    train_split = train_split or cfg.data.train_split
    test_split = test_split or default_test_split(cfg)
    train_subset = cfg.data.train_subset if train_subset is _FROM_CONFIG else train_subset
    test_subset = cfg.data.val_subset if test_subset is _FROM_CONFIG else test_subset
    train_ds = open_split(model, cfg, train_split, train_subset)
    test_ds = open_split(model, cfg, test_split, test_subset, class_map=class_names_to_map(dataset_classes(train_ds)))
    kw = dict(batch_size=batch_size, device=device, workers=workers, progress=progress, features=features)
    tr = extract_dataset_features(model, train_ds, desc=f"features {train_split}", **kw)
    te = extract_dataset_features(model, test_ds, desc=f"features {test_split}", **kw)
    out: dict[str, Any] = {"dataset": cfg.data.dataset, "root": cfg.data.root, "train_split": train_split,
                           "test_split": test_split, "train_images": len(tr.labels), "test_images": len(te.labels),
                           "features": features, "feature_dim": tr.features.shape[1]}
    for split, fs in (("train", tr), ("test", te)):
        out.update({f"{split}_{k}": v for k, v in unreadable_report(fs.unreadable).items()})
    out.update(probe_features(tr.features, tr.labels, te.features, te.labels, linprobe=linprobe, knn=knn,
                              device=device, seed=seed, progress=progress))
    return out


def probe_features(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                   linprobe: LinearProbeSettings | None = None, knn: KnnSettings | None = None,
                   device: str | torch.device = "cpu", seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The linear probe (with its ``settings``) and/or the k-NN on features in hand ((n, d) tensors and their
    labels): what :func:`probe_model` runs on a model's features, and the demo on raw pixels."""
    from .probe import knn_classify, linear_probe

    out: dict[str, Any] = {}
    if linprobe is not None:
        res = linear_probe(train_x, train_y, test_x, test_y, linprobe.lrs, linprobe.epochs,
                           batch_size=linprobe.batch_size, optimizer=linprobe.optimizer,
                           weight_decay=linprobe.weight_decay, holdout=linprobe.holdout, seed=seed, device=device,
                           progress=progress)
        out["linear_probe"] = res.as_dict()
        out["settings"] = {k: v for k, v in asdict(linprobe).items() if k not in ("lrs", "batch_size")}
    if knn is not None:
        out["knn"] = knn_classify(train_x, train_y, test_x, test_y, knn.k, knn.temperature, device=device).as_dict()
    return out


def probe_checkpoint(checkpoint: str | Path, overrides: Mapping[str, Any] | None = None, *,
                     device: str | torch.device = "cpu", **kwargs: Any) -> dict[str, Any]:
    """Load ``checkpoint`` (a run directory, a checkpoint folder, a model directory or an official ``.pth``) and
    :func:`probe_model` it on its own training data, changed by ``overrides`` (data keys and ``seed`` of the run
    config: ``{"data.dataset": "fashion_mnist", "data.root": ...}``). The result starts with ``checkpoint`` and
    ``architecture``; ``kwargs`` are :func:`probe_model`'s."""
    from ._load import load_for_analysis
    from .features import data_setup

    overrides = dict(overrides or {})
    bad = sorted(k for k in overrides if not k.startswith("data.") and k != "seed")
    if bad:
        raise ConfigError(f"a probe takes only data keys as config overrides (--data.dataset, --data.root ...), "
                          f"got {', '.join('--' + k for k in bad)}")
    loaded = load_for_analysis(checkpoint, device)
    cfg = data_setup(loaded.training, overrides)
    return {"checkpoint": loaded.source, "architecture": type(loaded.model).__name__,
            **probe_model(loaded.model, cfg, device=device, **kwargs)}
