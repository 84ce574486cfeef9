"""Mapping ARM weights onto a classifier: pretraining -> classifier (the reference's fine-tuning start),
classifier -> classifier; initialising a classifier from any source (see :mod:`armvision.weights`)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..layers import DIRECTIONS, insert_token_slot, resize_classifier_pos_embed, resize_pos_embed
from ..models import ARMClassifier, ARMPretrain
from ..models.config import classifier_args_for, encoder_keys
from .official import PRETRAINING, OfficialCheckpoint, check_keys, read_official_checkpoint, square_side
from .read import Weights, _weights_of_official, read_weights

__all__ = [
    "ENCODER_KEYS",
    "encoder_mismatch",
    "classifier_state_dict_from_pretraining",
    "classifier_state_dict_from_classifier",
    "classifier_state_dict",
    "init_classifier",
    "init_classifier_from_pretraining",
    "init_classifier_from_official",
    "classifier_for",
]

_log = logging.getLogger(__name__)
# constructor arguments that must agree between an encoder's weights and the classifier they initialise
ENCODER_KEYS = encoder_keys()

# ---------------------------------------------------------------------------------------------
# mappings onto a classifier
# ---------------------------------------------------------------------------------------------
_MIXER_DIRECTION_KEYS = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias")


def encoder_mismatch(args: Mapping[str, Any], classifier: ARMClassifier) -> list[tuple[str, Any, Any]]:
    """``(key, weights' value, classifier's value)`` for each encoder argument (:data:`ENCODER_KEYS`) that differs."""
    mine = classifier.config
    return [(k, args[k], mine.get(k)) for k in ENCODER_KEYS if k in args and args[k] != mine.get(k)]


def classifier_state_dict_from_pretraining(
    pretrained: Mapping[str, Tensor], classifier: ARMClassifier, pretrain_grid: tuple[int, int] | None = None
) -> dict[str, Tensor]:
    """Map a pretraining state dict onto ``classifier``'s parameters.

    Copies the patch embedding and the encoder blocks; copies each mixer's forward direction
    (conv1d, x_proj, dt_proj, A_log, D) into all of the classifier's directions; resizes the
    position embedding from ``pretrain_grid`` (default: square, from its length) to the
    classifier's grid and inserts a zero class-token slot in the middle. Decoder weights are
    dropped. Returns only the keys it fills (cls_token, norm_f and head keep their init).
    """
    sd = dict(pretrained)
    if "pos_embed" not in sd or not any(k.startswith("layers.") for k in sd):
        raise KeyError("not an ARM pretraining state dict: expected 'pos_embed' and 'layers.*' keys")
    target = classifier.state_dict()
    out: dict[str, Tensor] = {}
    suffixes = [s for _, s in DIRECTIONS[: classifier.layers[0].mixer.num_directions]]
    for k, v in sd.items():
        if k.startswith("patch_embed.") or (k.startswith("layers.") and ".mixer." not in k):
            out[k] = v
        elif k.startswith("layers.") and ".mixer." in k:
            prefix, name = k.split(".mixer.")
            if name in ("in_proj.weight", "out_proj.weight"):
                out[k] = v
                continue
            for s in suffixes:
                if name == "A_log":
                    out[f"{prefix}.mixer.A{s}_log"] = v
                elif name == "D":
                    out[f"{prefix}.mixer.D{s}"] = v
                elif name in _MIXER_DIRECTION_KEYS:
                    mod, param = name.split(".")
                    out[f"{prefix}.mixer.{mod}{s}.{param}"] = v
    pos = sd["pos_embed"]
    n = pos.shape[1]
    if pretrain_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"pretrained pos_embed has {n} tokens, not a square grid; pass pretrain_grid")
        pretrain_grid = (side, side)
    grid = classifier.geometry.grid
    out["pos_embed"] = insert_token_slot(resize_pos_embed(pos.float(), pretrain_grid, grid), (grid[0] * grid[1]) // 2)
    unknown = [k for k in out if k not in target]
    if unknown:
        raise KeyError(f"pretrained weights do not fit this classifier (depth or directions differ): {unknown[:5]}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in out.items() if v.shape != target[k].shape]
    if bad:
        raise ValueError("pretrained weights have other shapes than this classifier: " + "; ".join(bad[:5]))
    return out


def classifier_state_dict_from_classifier(state_dict: Mapping[str, Tensor], classifier: ARMClassifier,
                                          source: str = "state dict",
                                          source_grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """A classifier state dict made to fit ``classifier``: the position embedding resized to its grid
    (from ``source_grid``; default square), the head taken from ``classifier`` when the source's does not
    fit (other class count, or no head). Everything else must match; a CheckpointError lists what does not."""
    sd = dict(state_dict)
    target = classifier.state_dict()
    if "pos_embed" in sd and sd["pos_embed"].shape != target["pos_embed"].shape:
        if source_grid is None:
            side = square_side(sd["pos_embed"].shape[1] - 1, "pos_embed (class token slot excluded)", source)
            source_grid = (side, side)
        sd["pos_embed"] = resize_classifier_pos_embed(sd["pos_embed"], source_grid, classifier.geometry.grid)
    head_keys = [k for k in target if k.startswith("head.")]
    fits = all(k in sd and sd[k].shape == target[k].shape for k in head_keys)
    extra_head = [k for k in sd if k.startswith("head.") and k not in target]
    if not fits or extra_head:
        if any(k.startswith("head.") for k in sd):
            _log.info("%s: head of another shape than the classifier's (%d classes): keeping the classifier's head",
                      source, classifier.num_classes)
        for k in [k for k in sd if k.startswith("head.")]:
            del sd[k]
        sd.update({k: target[k] for k in head_keys})
    check_keys(sd, {k: tuple(v.shape) for k, v in target.items()},
               f"{source}: classifier weights do not fit this classifier")
    return sd


def classifier_state_dict(weights: Weights, classifier: ARMClassifier) -> dict[str, Tensor]:
    """A complete state dict for ``classifier`` from any ARM weights: the mapping of their kind, and the
    classifier's own tensors where the mapping leaves its initialisation (cls_token, norm_f, head)."""
    if weights.kind == PRETRAINING:
        out = classifier_state_dict_from_pretraining(weights.state_dict, classifier, weights.grid)
        out.update({k: v for k, v in classifier.state_dict().items() if k not in out})
        return out
    return classifier_state_dict_from_classifier(weights.state_dict, classifier, weights.source, weights.grid)


def init_classifier_from_pretraining(
    classifier: ARMClassifier,
    source: ARMPretrain | Mapping[str, Tensor],
    pretrain_grid: tuple[int, int] | None = None,
) -> ARMClassifier:
    """Initialise ``classifier`` from a pretraining model or its state dict (in place; returned).

    See :func:`classifier_state_dict_from_pretraining`. The head is re-drawn (trunc-normal,
    ``head_init_std``) and norm_f reset, as the reference's fine-tuning does.
    """
    if isinstance(source, ARMPretrain):
        pretrain_grid = source.geometry.grid
        source = source.state_dict()
    sd = classifier_state_dict_from_pretraining(source, classifier, pretrain_grid)
    missing = set(classifier.state_dict()) - set(sd)
    expected_missing = {k for k in missing if k in ("cls_token",) or k.startswith(("norm_f.", "head."))}
    lacking = sorted(missing - expected_missing)
    if lacking:
        raise KeyError(f"pretrained weights lack parameters of the classifier: {lacking[:5]}")
    with torch.no_grad():
        params = dict(classifier.named_parameters())
        for k, v in sd.items():
            params[k].copy_(v)
    classifier.norm_f.reset_parameters()
    classifier._init_head()
    return classifier


def init_classifier(classifier: ARMClassifier, source: Any, ema: bool | None = None,
                    allow_globals: Iterable[Any] = ()) -> dict[str, Any]:
    """Initialise ``classifier`` (in place) from any ARM weights (:func:`read_weights` sources, or an
    :class:`~armvision.ARMPretrain`); what ``finetune --init`` does. Returns ``{"source", "architecture",
    "step", "not_loaded"}`` (not_loaded: the source's head tensors left out for another class count).

    Pretraining weights: :func:`init_classifier_from_pretraining`. Classifier weights:
    :func:`classifier_state_dict_from_classifier` (position embedding resized, head kept when it differs).
    The encoder (width, depth, patch, channels, state size) must be the weights' (CheckpointError).
    """
    if isinstance(source, ARMPretrain):
        w = Weights(PRETRAINING, source.state_dict(), {"architecture": "ARMPretrain", "args": dict(source.config)},
                    "ARMPretrain")
    elif isinstance(source, OfficialCheckpoint):
        w = _weights_of_official(source)
    else:
        w = read_weights(source, ema=ema, allow_globals=allow_globals)
    diff = encoder_mismatch(w.args, classifier)
    if diff:
        what = w.description if w.official is not None else f"{w.kind} model"
        raise CheckpointError(f"{w.source}: the {what} does not fit this classifier: "
                              + "; ".join(f"{k}: checkpoint {a}, classifier {b}" for k, a, b in diff))
    own = classifier.state_dict()
    if w.kind == PRETRAINING:
        try:
            init_classifier_from_pretraining(classifier, w.state_dict, pretrain_grid=w.grid)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"cannot initialise the classifier from {w.source}: {str(e).strip(chr(39))}") \
                from None
        not_loaded: list[str] = []
    else:
        not_loaded = [k for k, v in w.state_dict.items()
                      if k.startswith("head.") and (k not in own or own[k].shape != v.shape)]
        classifier.load_state_dict(classifier_state_dict(w, classifier), strict=True)
        if not_loaded:
            _log.info("init: kept the fresh %s (shapes differ from %s)", ", ".join(not_loaded), w.source)
    return {"source": w.source, "architecture": w.description, "step": (w.config or {}).get("step"),
            "not_loaded": not_loaded}


def init_classifier_from_official(
    classifier: ARMClassifier,
    checkpoint: str | os.PathLike | Mapping[str, Any] | OfficialCheckpoint,
    ema: bool | None = None,
    allow_globals: Iterable[Any] = (),
) -> ARMClassifier:
    """Initialise ``classifier`` (in place; returned) from an official checkpoint, as the reference's
    ``main_finetune.py --finetune`` does (see :func:`init_classifier`; a pretraining checkpoint's encoder
    goes into every direction, a fine-tuning checkpoint's weights are copied with the position embedding
    resized and the head kept when its shape differs). The classifier's width and depth must be the
    checkpoint's; a CheckpointError says what differs."""
    ckpt = checkpoint if isinstance(checkpoint, OfficialCheckpoint) else read_official_checkpoint(
        checkpoint, ema, allow_globals=allow_globals)
    init_classifier(classifier, ckpt)
    return classifier


def classifier_for(weights: Weights, img_size: int | None = None, num_classes: int = 0, **overrides) -> ARMClassifier:
    """A fresh classifier with the encoder of ``weights`` (pretraining or classifier), at ``img_size`` (default:
    224 when the patch divides it -- the paper's fine-tuning size -- for official pretraining weights, else the
    weights' own size): four directions for MambaMLP encoders, a Vim for Vim encoders
    (:func:`armvision.models.config.classifier_args_for`). Not initialised from them: see :func:`init_classifier`."""
    a = weights.args
    if img_size is None:
        img_size = 224 if weights.official is not None and 224 % a["patch_size"] == 0 else a["img_size"]
    clf = ARMClassifier(**classifier_args_for(a, img_size=img_size, num_classes=num_classes, **overrides))
    clf.model_name = (weights.config or {}).get("model_name")
    return clf
