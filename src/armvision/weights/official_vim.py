"""Reading the official Vim checkpoints (hustvl/Vim): detection and checks (writing them is
:mod:`armvision.interop.official_vim`).

The reference's training script (``vim/main.py``, DeiT's) saves PyTorch pickles ``{'model': state_dict,
'optimizer': ..., 'lr_scheduler': ..., 'epoch': int, 'model_ema': state_dict, 'scaler': ..., 'args':
argparse.Namespace}``. They are read as the ARM checkpoints are
(:func:`~armvision.weights.official.safe_torch_load`: ``weights_only`` with the ``argparse.Namespace``
allow-list); :func:`~armvision.weights.official.read_official_checkpoint` hands a state dict of Vim's layout
(:func:`~armvision.weights.official.is_vim_state_dict`) to :func:`read_vim_checkpoint`, so every path that reads
official ARM checkpoints (``load_official``, ``read_weights``, ``armvision convert``, timm's ``pretrained=True``)
reads Vim's too.

The reference's parameter names are armvision's (``layers.{i}.mixer.conv1d_b.weight``, ``A_b_log``,
``layers.{i}.norm.weight``, ``norm_f.weight``, ...), so a conversion checks every key and shape against the
model the shapes describe (``ARMClassifier(block="vim", ...)``, :mod:`armvision.models.vim`) and loads it.

Reference behaviour a conversion reproduces (docs/fidelity.md):

* the feature is the class token at index patches // 2 (``global_pool="token"``), whatever the registered name
  says of mean pooling;
* the plain weights (``'model'``) by default: the reference's ``--eval`` evaluates them, not ``'model_ema'``
  (``ema=True`` takes the EMA weights);
* only the registered ``vim_{tiny,small,base}_patch16_224_...`` models: the ``*_stride8_*`` ones (overlapping
  patches, the "+" checkpoints) are refused, because armvision's patch embedding has stride = patch size.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from torch import Tensor

from ..errors import CheckpointError
from ..models import ARMClassifier
from ..models.vim import REFERENCE_NAMES, VIM_CLASSIFIER_ARGS
from .official import (
    CLASSIFIER,
    OfficialCheckpoint,
    _expected_shapes,
    _namespace_dict,
    check_keys,
    clean_state_dict,
    select_state_dict,
)

__all__ = ["infer_vim_model_args", "read_vim_checkpoint"]

_REQUIRED = ("patch_embed.proj.weight", "pos_embed", "cls_token", "norm_f.weight", "layers.0.norm.weight",
             "layers.0.mixer.in_proj.weight", "layers.0.mixer.A_log")


def infer_vim_model_args(state_dict: Mapping[str, Tensor], args: Mapping[str, Any] | None = None,
                         source: str = "state dict") -> dict[str, Any]:
    """Constructor arguments of the armvision Vim (``ARMClassifier(block="vim", ...)``) an official Vim state
    dict describes: width, depth, patch, channels, state size, expansion, image size and classes from the tensor
    shapes; ``args`` (the checkpoint's training arguments) only to refuse the reference models armvision does
    not build (``args['model']`` other than the three of :data:`~armvision.models.vim.REFERENCE_NAMES`)."""
    sd, args = state_dict, dict(args or {})
    model = args.get("model")
    if isinstance(model, str) and model not in REFERENCE_NAMES.values():
        why = (" (patch 16 with stride 8: overlapping patches, which armvision's patch embedding does not make)"
               if "stride" in model else "")
        raise CheckpointError(f"{source}: a checkpoint of the reference model {model!r}{why}; armvision converts "
                              f"the Vim models {', '.join(REFERENCE_NAMES.values())}")
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: not a Vim checkpoint: missing keys {', '.join(missing)}", missing=missing)
    w = sd["patch_embed.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight has shape {tuple(w.shape)}; expected "
                              "(width, channels, patch, patch)")
    embed_dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
    inner = int(sd["layers.0.mixer.in_proj.weight"].shape[0]) // 2
    if inner % embed_dim:
        raise CheckpointError(f"{source}: the mixer's inner width {inner} is not a multiple of the width {embed_dim}")
    pos = sd["pos_embed"]
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source}: pos_embed has shape {tuple(pos.shape)}; expected (1, tokens, width)")
    n = int(pos.shape[1]) - 1
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{source}: pos_embed has {n} patch positions (class token excluded), not a square "
                              "grid; the reference builds square grids")
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    directions = 2 if "layers.0.mixer.conv1d_b.weight" in sd else 1
    return dict(VIM_CLASSIFIER_ARGS, embed_dim=embed_dim, depth=depth, patch_size=patch, in_chans=in_chans,
                d_state=int(sd["layers.0.mixer.A_log"].shape[-1]), img_size=side * patch, num_classes=num_classes,
                directions=directions, block="vim", expand=inner // embed_dim)


def read_vim_checkpoint(obj: Any, ema: bool | None = None, source: str = "checkpoint") -> OfficialCheckpoint:
    """Read a loaded official Vim checkpoint (a checkpoint dict or a state dict) and check every key and shape.

    ``ema``: None takes ``'model'`` (as the reference evaluates; ``'model_ema'`` when there is no ``'model'``), False
    requires ``'model'``, True requires ``'model_ema'``.
    """
    try:
        raw, key = select_state_dict(obj, bool(ema), source)
    except CheckpointError:
        if ema is not None:
            raise
        raw, key = select_state_dict(obj, None, source)  # no plain weights: the EMA ones
    sd = clean_state_dict(raw)
    meta = obj if isinstance(obj, Mapping) and key is not None else {}
    args = _namespace_dict(meta.get("args"))
    model_args = infer_vim_model_args(sd, args, source)
    if model_args["directions"] != 2:
        raise CheckpointError(f"{source}: a Vim checkpoint without the backward scan (no conv1d_b, x_proj_b, ...); "
                              "armvision converts the reference's bidirectional (bimamba v2) models")
    expected = _expected_shapes(ARMClassifier, model_args, source)
    desc = ", ".join(f"{k}={v}" for k, v in model_args.items())
    check_keys(sd, expected, f"{source}: does not match the Vim model it describes ({desc})")
    epoch = meta.get("epoch")
    extra = {k: v for k, v in meta.items()
             if k not in ("model", "model_ema", "optimizer", "lr_scheduler", "scaler", "args", "epoch")
             and isinstance(v, (int, float, str, bool))}
    return OfficialCheckpoint(CLASSIFIER, sd, ARMClassifier, model_args, source, key, args,
                              epoch if isinstance(epoch, int) else None, extra, family="Vim")
