"""Features for downstream use: pooled features (b, c) and per-block token maps (b, h, w, c).

* Classifiers (:class:`~armvision.ARMClassifier`): the pooled feature is what the head sees (final
  norm, mean of the patch tokens, or the class token); token maps are block outputs with the class
  token removed, in row-major grid order. Any input size that divides into patches works when the
  model has ``dynamic_img_size=True`` (the position embedding is resized bicubically on the fly).
* Pretraining models (:class:`~armvision.ARMPretrain`): the causal encoder runs over *all* clusters of
  the image in its training order (clusters row-major, patches row-major inside each), its position
  embedding resized bicubically when the grid differs from the pretraining one; maps are put back in
  row-major grid order; the pooled feature is the mean of the last block's tokens after the last
  memory norm (``norm_4`` for 4 levels: the norm pretraining applied to the last block). The patch
  grid must divide into clusters (192, 256, 384 px for patch 16 and clusters of 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from ..layers import resize_pos_embed
from ..models import ARMClassifier, ARMPretrain, Geometry
from ..models.arm import feature_take_indices

__all__ = ["Features", "extract_features", "pretraining_encoder_intermediates", "data_config", "eval_transform",
           "reference_crop_pct"]


def reference_crop_pct(img_size: int) -> float:
    """The reference's evaluation crop (utils/datasets.py): resize to size / 0.875 up to 224 px, no margin above."""
    return 224 / 256 if img_size <= 224 else 1.0


def data_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """Preprocessing of ``model`` in timm's data-config form (input_size, interpolation, mean, std,
    crop_pct, crop_mode), at ``img_size`` if given. A timm-created model's ``pretrained_cfg`` wins;
    otherwise the reference's evaluation transform: bicubic resize of the shorter side to
    img_size / crop_pct, center crop, ImageNet mean/std."""
    inner = getattr(model, "model", model)
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    geo: Geometry = inner.geometry
    size = (img_size, img_size) if img_size else tuple(cfg.get("input_size", (0, *geo.img_size))[1:])
    crop = cfg.get("crop_pct") if (not img_size and "crop_pct" in cfg) else reference_crop_pct(max(size))
    return {
        "input_size": (geo.in_chans, *size),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
        "crop_pct": crop,
        "crop_mode": cfg.get("crop_mode", "center"),
    }


def eval_transform(model: nn.Module, img_size: int | None = None):
    """PIL image -> normalized tensor, as :func:`data_config` says (timm's ``create_transform``)."""
    from timm.data import create_transform

    cfg = data_config(model, img_size)
    mean, std = cfg["mean"], cfg["std"]
    if cfg["input_size"][0] != len(mean):  # e.g. a one-channel model with the 3-channel ImageNet statistics
        mean, std = (sum(mean) / len(mean),) * cfg["input_size"][0], (sum(std) / len(std),) * cfg["input_size"][0]
    return create_transform(input_size=cfg["input_size"], is_training=False, interpolation=cfg["interpolation"],
                            mean=mean, std=std, crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"])


@dataclass
class Features:
    """``pooled`` (b, c); ``maps``: block index (0-based) -> token map (b, h, w, c)."""

    pooled: Tensor
    maps: dict[int, Tensor] = field(default_factory=dict)


def _as_list(layers: int | Sequence[int] | None) -> list[int] | None:
    if layers is None:
        return None
    return [layers] if isinstance(layers, int) else list(layers)


def pretraining_encoder_intermediates(
    model: ARMPretrain, images: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False
) -> tuple[Tensor, list[Tensor]]:
    """Run a pretraining model's causal encoder over every cluster of ``images``.

    Returns (final tokens after the last memory norm, (b, patches, c) in row-major order; the maps of
    the blocks ``indices`` selects (timm's convention), each (b, gh, gw, c), passed through the same
    norm when ``norm``).
    """
    geo = model.geometry
    if images.dim() != 4 or images.shape[1] != geo.in_chans:
        raise ValueError(f"expected images (batch, {geo.in_chans}, height, width), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    try:
        new = Geometry((h, w), geo.patch_size, geo.cluster_size, geo.in_chans, geo.order, geo.order_seed)
    except ValueError as e:
        raise ValueError(f"the pretraining encoder reads whole clusters of {geo.cluster_size}x{geo.cluster_size} "
                         f"patches: {e}") from e
    take, _ = feature_take_indices(len(model.layers), indices)
    x = model.patch_embed.norm(model.patch_embed.proj(images).flatten(2).transpose(1, 2))  # (b, n, c) row-major
    pos = resize_pos_embed(model.pos_embed, geo.grid, new.grid).to(x.dtype)
    order = new.cluster_order().to(x.device)
    inverse = torch.argsort(order)
    x = (x + pos)[:, order]
    final_norm = getattr(model, f"norm_{len(model.memory_layers)}")
    maps = []
    for i, layer in enumerate(model.layers):
        x = layer(x)
        if i in take:
            y = final_norm(x) if norm else x
            maps.append(y[:, inverse].reshape(x.shape[0], *new.grid, x.shape[-1]))
    return final_norm(x)[:, inverse], maps


def extract_features(model: nn.Module, images: Tensor, layers: int | Sequence[int] | None = (),
                     norm: bool = False) -> Features:
    """Pooled features and token maps of ``images`` (b, c, h, w).

    Args:
        model: an :class:`~armvision.ARMClassifier` (or a timm-created one) or an :class:`~armvision.ARMPretrain`.
        layers: blocks whose token maps to return (0-based, negative from the end; an int: that one
            block; None: all; ``()``: none, pooled features only).
        norm: pass the maps through the final norm (the classifier's norm_f, the pretraining model's
            last memory norm).
    """
    layers = _as_list(layers)
    if isinstance(model, ARMPretrain):
        final, maps = pretraining_encoder_intermediates(model, images, layers if layers != [] else [-1], norm)
        pooled = final.mean(dim=1)
    elif isinstance(model, ARMClassifier):
        if layers == []:
            return Features(model.forward_head(model.forward_features(images), pre_logits=True))
        final, maps = model.forward_intermediates(images, indices=layers, norm=norm, output_fmt="NHWC")
        pooled = model.forward_head(final, pre_logits=True)
    else:
        raise TypeError(f"extract_features takes an ARMClassifier or ARMPretrain, got {type(model).__name__}")
    if layers == []:
        return Features(pooled)
    take, _ = feature_take_indices(len(model.layers), layers)
    return Features(pooled, dict(zip(sorted(set(take)), maps)))  # maps come in block order
