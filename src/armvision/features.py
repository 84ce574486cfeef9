"""Features for downstream use: pooled features (b, c) and per-block token maps (b, h, w, c).

:func:`extract_features` works on a batch; :func:`extract_folder` on every image under a folder (what
``armvision extract`` runs; :func:`write_features` writes its result), with the model from
:func:`load_feature_model` (any ARM weights, through :mod:`armvision.weights`, or a registered name).

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

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .data import IMAGE_EXTENSIONS, ImageFiles, collate_readable, data_config, list_images, model_eval_transform
from .errors import DataError
from .outputs import check_output_file
from .models import ARMClassifier, ARMPretrain, list_models
from .models.arm import feature_take_indices
from .models.io import atomic_write
from .weights import PRETRAINING, classifier_for, init_classifier, is_model_dir, read_weights

__all__ = ["Features", "extract_features", "pretraining_encoder_intermediates", "FolderFeatures", "extract_folder",
           "write_features", "check_output", "load_feature_model"]


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
    """Run a pretraining model's causal encoder over every cluster of ``images``
    (:meth:`~armvision.ARMPretrain.forward_intermediates` with maps (b, gh, gw, c)).

    Returns (final tokens after the last memory norm, (b, patches, c) in row-major order; the maps of
    the blocks ``indices`` selects (timm's convention), each (b, gh, gw, c), passed through the same
    norm when ``norm``).
    """
    return model.forward_intermediates(images, indices, norm=norm, output_fmt="NHWC")


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
        final, maps = model.forward_intermediates(images, layers if layers != [] else [-1], norm=norm,
                                                  output_fmt="NHWC")
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


# ---------------------------------------------------------------------------------------------
# a model to extract with
# ---------------------------------------------------------------------------------------------
def load_feature_model(source: str | os.PathLike, weights: str | os.PathLike | None = None,
                       as_classifier: bool = False, ema: bool | None = None, dynamic_img_size: bool = True,
                       model_kwargs: dict[str, Any] | None = None, allow_globals: Iterable[Any] = ()) -> nn.Module:
    """A model for feature extraction from any ARM or Vim weights :func:`armvision.weights.read_weights` reads
    that carry a config (a model / checkpoint / run directory, an official ``.pth``), or a registered
    model name (``arm_base_pz16``, ``vim_tiny_pz16``, ...; built by timm, with ``weights`` when given, else randomly
    initialised, with a warning).

    Classifiers are built with ``dynamic_img_size`` and no head; ``as_classifier`` turns pretraining
    weights into the classifier they initialise (four directions for ARM, two for Vim) (:func:`armvision.weights.init_classifier`).
    """
    import timm

    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors" and is_model_dir(path.parent):
        path = path.parent
    if path.exists():
        w = read_weights(path, ema=ema, allow_globals=allow_globals)
        if w.kind == PRETRAINING and as_classifier:
            clf = classifier_for(w, img_size=w.args["img_size"], dynamic_img_size=dynamic_img_size)
            init_classifier(clf, w)
            return clf
        model = w.build(**({"dynamic_img_size": dynamic_img_size} if w.kind != PRETRAINING else {}))
        if isinstance(model, ARMClassifier) and model.num_classes:
            model.reset_classifier(0)
        return model
    names = [n for n in list_models() if n in timm.list_models(n)]  # armvision's names timm builds (ARM, Vim)
    if str(source) in names:
        if not weights:
            warnings.warn(f"{source}: no weights given, the features come from a randomly initialised model",
                          stacklevel=2)
        overlay = dict(file=str(weights)) if weights else None
        return timm.create_model(str(source), pretrained=bool(weights), pretrained_cfg_overlay=overlay,
                                 **{"num_classes": 0, "dynamic_img_size": dynamic_img_size, **(model_kwargs or {})})
    raise FileNotFoundError(f"{source}: not a model directory, a checkpoint file, or a model name "
                            f"({', '.join(names)})")


# ---------------------------------------------------------------------------------------------
# a folder of images
# ---------------------------------------------------------------------------------------------
@dataclass
class FolderFeatures:
    """What :func:`extract_folder` found.

    Attributes:
        tensors: ``"pooled"`` (n, c) and ``"layer{i}"`` (n, h, w, c), one row per readable image.
        files: the readable images, relative to the folder (posix paths), in row order.
        skipped: ``(relative path, reason)`` of every unreadable image.
        metadata: model, architecture, input size, layers, norm, pooling (strings, as safetensors keeps them).
    """

    tensors: dict[str, Tensor]
    files: list[str]
    skipped: list[tuple[str, str]]
    metadata: dict[str, str]


def extract_folder(model: nn.Module, images: str | os.PathLike, img_size: int | None = None,
                   layers: Sequence[int] = (), norm: bool = False, batch_size: int = 32, workers: int = 0,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, strict_images: bool = False,
                   progress: bool = False, on_skip: Callable[[str, str], None] | None = None,
                   name: str | None = None) -> FolderFeatures:
    """Features of every image under ``images`` (recursive, sorted by path; :func:`armvision.data.list_images`).

    Images go through the model's evaluation transform at ``img_size`` (default: the model's;
    :func:`armvision.data.model_eval_transform`), then :func:`extract_features` (``layers``, ``norm``).
    Unreadable images are skipped (``on_skip(relative path, reason)`` is called, and they are listed in
    ``skipped``) or, with ``strict_images``, raise a DataError; so does a folder with no readable image.
    """
    root = Path(images)
    files = list_images(root)
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    device = torch.device(device)
    model = model.to(device).eval()
    inner = getattr(model, "model", model)
    loader = torch.utils.data.DataLoader(ImageFiles(files, model_eval_transform(inner, img_size),
                                                    inner.geometry.in_chans),
                                         batch_size=batch_size, num_workers=workers, collate_fn=collate_readable)
    from tqdm import tqdm

    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    pooled: list[Tensor] = []
    maps: dict[int, list[Tensor]] = {}
    with torch.inference_mode():
        for indices, batch, bad in tqdm(loader, desc="extract", unit="batch", disable=not progress):
            for i, err in bad:
                if strict_images:
                    raise DataError(f"cannot read image {files[i]}: {err}")
                rel = files[i].relative_to(root).as_posix()
                skipped.append((rel, err))
                if on_skip is not None:
                    on_skip(rel, err)
            if batch is None:
                continue
            feats = extract_features(inner, batch.to(device), layers=list(layers), norm=norm)
            kept += indices
            pooled.append(feats.pooled.to("cpu", dtype))
            for k, v in feats.maps.items():
                maps.setdefault(k, []).append(v.to("cpu", dtype))
    if not kept:
        raise DataError(f"none of the {len(files)} images could be read")
    tensors = {"pooled": torch.cat(pooled)}
    tensors.update({f"layer{k}": torch.cat(v).contiguous() for k, v in sorted(maps.items())})
    cfg = data_config(inner, img_size)
    metadata = {"model": str(name), "architecture": type(inner).__name__,
                "input_size": json.dumps(list(cfg["input_size"])), "layers": json.dumps(sorted(maps)),
                "norm_maps": str(bool(norm)), "images": str(root),
                "pooled": "mean of patch tokens" if isinstance(inner, ARMPretrain) or inner.global_pool == "avg"
                else "class token"}
    return FolderFeatures(tensors, [files[i].relative_to(root).as_posix() for i in kept], skipped, metadata)


def check_output(output: str | os.PathLike) -> Path:
    """``output`` as a Path, if it names a format :func:`write_features` writes (.safetensors, .npy) in a place
    that can be written (checked before any work); else a UserError saying why."""
    out = Path(output)
    if out.suffix not in (".safetensors", ".npy"):
        raise DataError(f"{out}: the output must end in .safetensors or .npy")
    return check_output_file(out, "OUTPUT", "features.safetensors", "nothing was extracted")


def write_features(result: FolderFeatures, output: str | os.PathLike) -> list[Path]:
    """Write :func:`extract_folder`'s result: ``output`` (.safetensors: every tensor, with the metadata;
    .npy: the pooled features, maps in ``STEM.layer{i}.npy``), ``STEM.files.txt`` (one image a row) and,
    when images were skipped, ``STEM.skipped.txt`` (path, tab, reason). Returns the feature files written."""
    out = check_output(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    written = [out]
    if out.suffix == ".safetensors":
        meta = {**result.metadata, "files": stem.name + ".files.txt"}
        atomic_write(out, lambda p: save_file(result.tensors, str(p), metadata=meta))
    else:
        np.save(out, result.tensors["pooled"].numpy())
        for k, v in result.tensors.items():
            if k != "pooled":
                p = Path(f"{stem}.{k}.npy")
                np.save(p, v.numpy())
                written.append(p)
    Path(f"{stem}.files.txt").write_text("".join(f + "\n" for f in result.files))
    skipped_path = Path(f"{stem}.skipped.txt")
    if result.skipped:
        skipped_path.write_text("".join(f"{f}\t{err}\n" for f, err in result.skipped))
    elif skipped_path.exists():
        skipped_path.unlink()
    return written
