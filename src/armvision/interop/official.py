"""The official ARM checkpoints (OliverRensu/ARM): reading them (re-exported from
:mod:`armvision.weights.official`, where every loader finds them) and writing armvision models back in their
layout (:func:`to_official`, :func:`save_official`).

The inverse writes the pretraining model's ``mask`` buffer (the decoder's additive attention mask) back and
refuses models the official layout cannot describe, or (``strict``) that the reference code cannot run.
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..models import ARMClassifier, ARMPretrain, default_memory_layers
from ..models.io import atomic_write
from ..weights.official import (  # noqa: F401  (re-exported: the reading half lives in the weights package)
    ALLOWED_GLOBALS,
    CLASSIFIER,
    FINETUNING,
    PRETRAINING,
    OfficialCheckpoint,
    _official_mask,
    check_keys,
    check_official_state_dict,
    clean_state_dict,
    detect_kind,
    infer_model_args,
    is_official_checkpoint,
    is_state_dict,
    is_vim_state_dict,
    load_official,
    read_official_checkpoint,
    reference_kind,
    registry_name,
    safe_torch_load,
    select_state_dict,
)

__all__ = [
    "PRETRAINING",
    "CLASSIFIER",
    "FINETUNING",
    "CheckpointError",
    "OfficialCheckpoint",
    "safe_torch_load",
    "read_official_checkpoint",
    "is_official_checkpoint",
    "detect_kind",
    "infer_model_args",
    "check_official_state_dict",
    "check_keys",
    "load_official",
    "official_state_dict",
    "to_official",
    "save_official",
    "clean_state_dict",
    "select_state_dict",
    "is_state_dict",
    "is_vim_state_dict",
    "ALLOWED_GLOBALS",
    "registry_name",
    "reference_kind",
]


# ---------------------------------------------------------------------------------------------
# the inverse: armvision -> official layout
# ---------------------------------------------------------------------------------------------
def _representation_problems(model: nn.Module) -> tuple[list[str], list[str]]:
    """(what the official layout cannot describe, what the reference code cannot run)."""
    never, reference = [], []
    if isinstance(model, ARMPretrain):
        geo = model.geometry
        if geo.grid[0] != geo.grid[1]:
            never.append(f"a non-square patch grid {geo.grid}")
        levels = len(model.memory_layers)
        try:
            default = default_memory_layers(model.depth, levels)
        except ValueError:
            default = None
        if tuple(model.memory_layers) != default:
            never.append(f"decoder memory layers {tuple(model.memory_layers)} (the layout implies {default})")
        heads = model.dec_block[0].attn2.num_heads
        if heads != max(1, model.decoder_dim // 64):
            never.append(f"{heads} decoder heads (the layout implies decoder width // 64 = "
                         f"{max(1, model.decoder_dim // 64)})")
        if geo.cluster_size != 4 or geo.num_clusters != 9:
            reference.append(f"clusters of {geo.cluster_size}x{geo.cluster_size} patches, {geo.num_clusters} of "
                             "them (the reference code hard-codes 9 clusters of 4x4)")
        if model.depth not in (12, 24) or levels != 4:
            reference.append(f"depth {model.depth} with {levels} decoder levels (the reference code knows depth "
                             "12 and 24, 4 levels)")
        if geo.patch_dim != 768:
            reference.append(f"{geo.patch_dim} values per patch (the reference's head predicts 16*16*3 = 768)")
        if model.decoder_dim < 64:
            reference.append(f"decoder width {model.decoder_dim} (the reference uses width // 64 heads: 0)")
        if not model.norm_pix_loss:
            reference.append("norm_pix_loss=False (the reference code always normalizes the target patches)")
        if geo.order != "row":
            reference.append(f"cluster order {geo.order!r} (the reference code visits clusters row-major)")
    elif isinstance(model, ARMClassifier):
        cfg = model.config
        (gh, gw) = model.geometry.grid
        if gh != gw:
            never.append(f"a non-square patch grid {(gh, gw)}")
        if (gh * gw) % 2:
            never.append(f"an odd number of patches ({gh * gw}): the reference mixer would put the class token "
                         "elsewhere")
        if cfg["directions"] != 4:
            reference.append(f"{cfg['directions']} scan direction(s) (the reference's fine-tuning model scans 4)")
    else:
        raise TypeError(f"not an armvision ARM model: {type(model).__name__}")
    return never, reference


def official_state_dict(model: ARMPretrain | ARMClassifier) -> "OrderedDict[str, Tensor]":
    """The model's weights in the reference's layout: the same names, plus the pretraining ``mask``.
    Tensors are detached CPU copies."""
    sd = OrderedDict((k, v.detach().to("cpu").clone()) for k, v in model.state_dict().items())
    if isinstance(model, ARMPretrain):
        sd["mask"] = _official_mask(model.decoder_mask)
    return sd


def refuse_unrepresentable(never: list[str], reference: list[str], strict: bool, layout: str) -> None:
    """CheckpointError when a model cannot be written in an official ``layout`` ("ARM", "Vim"): ``never`` lists
    what no checkpoint of that layout can hold, ``reference`` what its reference code cannot run (only with
    ``strict``)."""
    problems = never + (reference if strict else [])
    if problems:
        hint = "" if never else " (pass strict=False to write the layout anyway)"
        raise CheckpointError(f"this model has no official {layout} checkpoint: " + "; ".join(problems) + hint)


def to_official(model: ARMPretrain | ARMClassifier, strict: bool = True,
                args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint the reference code would have saved for ``model``:
    ``{'model': official_state_dict(model), 'args': argparse.Namespace(...)}``.

    ``args`` holds what the reference's scripts read (model, input_size, nb_classes, global_pool,
    drop_path, norm_pix_loss), updated from ``args``. Models the official layout cannot describe
    (non-square grids, non-default decoder memory layers or heads, odd patch counts) raise a
    CheckpointError; with ``strict`` (default) so do models the reference *code* cannot run (other
    cluster geometry, depth other than 12/24, one-direction classifiers, ...).
    """
    if getattr(model, "block", "mambamlp") == "vim":  # the Vim family: hustvl/Vim's layout
        from .official_vim import to_official_vim

        return to_official_vim(model, strict, args)
    refuse_unrepresentable(*_representation_problems(model), strict, "ARM")
    cfg = model.config
    name = getattr(model, "model_name", None) or "arm_base_pz16"
    ns = dict(model=name, input_size=cfg["img_size"][0])
    if isinstance(model, ARMPretrain):
        ns.update(norm_pix_loss=bool(cfg["norm_pix_loss"]))
    else:
        ns.update(nb_classes=cfg["num_classes"], global_pool=cfg["global_pool"] == "avg",
                  drop_path=cfg["drop_path_rate"])
    ns.update(args or {})
    return {"model": official_state_dict(model), "args": argparse.Namespace(**ns)}


def save_official(model: ARMPretrain | ARMClassifier, path: str | os.PathLike, strict: bool = True,
                  args: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`to_official` with ``torch.save`` (atomically) to ``path``; returns the path."""
    payload = to_official(model, strict=strict, args=args)
    path = Path(path)
    atomic_write(path, lambda p: torch.save(payload, p))
    return path
