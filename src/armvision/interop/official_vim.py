"""The official Vim checkpoints (hustvl/Vim): reading them (re-exported from :mod:`armvision.weights.official_vim`)
and writing an armvision Vim back in their layout (:func:`to_official_vim`)."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from typing import Any, Mapping

from ..errors import CheckpointError
from ..models import ARMClassifier, ARMPretrain
from ..models.vim import REFERENCE_NAMES, VIM_SIZES
from ..weights.official_vim import infer_vim_model_args, read_vim_checkpoint
from .official import refuse_unrepresentable

__all__ = ["infer_vim_model_args", "read_vim_checkpoint", "to_official_vim"]


def _vim_problems(model: ARMClassifier) -> tuple[list[str], list[str]]:
    """(what the official Vim layout cannot describe, what the reference code cannot run)."""
    never, reference = [], []
    cfg = model.config
    gh, gw = model.geometry.grid
    if gh != gw:
        never.append(f"a non-square patch grid {(gh, gw)}")
    if cfg["directions"] != 2:
        reference.append(f"{cfg['directions']} scan direction(s) (the reference's Vim scans 2)")
    if cfg["expand"] != 2:
        reference.append(f"expand {cfg['expand']} (the reference's registered models use 2)")
    if cfg["global_pool"] != "token":
        reference.append(f"global_pool={cfg['global_pool']!r} (the reference's Vim computes the class token's "
                         "logits)")
    if not any((s["embed_dim"], s["depth"]) == (cfg["embed_dim"], cfg["depth"]) for s in VIM_SIZES.values()) \
            or cfg["patch_size"] != 16:
        reference.append(f"width {cfg['embed_dim']}, depth {cfg['depth']}, patch {cfg['patch_size']} (the reference "
                         "registers Vim-T/S/B: 192/384/768 wide, 24 deep, patch 16)")
    return never, reference


def to_official_vim(model: ARMClassifier, strict: bool = True, args: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint the reference's training script would have saved for the Vim ``model``:
    ``{'model': state_dict (CPU copies), 'args': argparse.Namespace(model, input_size, nb_classes, drop_path)}``.

    Models the layout cannot describe (non-square grids) raise a CheckpointError; with ``strict`` (default) so
    do models the reference's registered Vim models cannot run (other directions, expansion, pooling or size).
    """
    if isinstance(model, ARMPretrain):
        raise CheckpointError("this model has no official checkpoint: ARM pretraining of a Vim encoder has no "
                              "reference code (OliverRensu/ARM pretrains MambaMLP encoders, hustvl/Vim trains "
                              "classifiers); save it as an armvision model directory")
    if not isinstance(model, ARMClassifier) or getattr(model, "block", None) != "vim":
        raise TypeError(f"not an armvision Vim classifier: {type(model).__name__}")
    refuse_unrepresentable(*_vim_problems(model), strict, "Vim")
    cfg = model.config
    name = next((REFERENCE_NAMES[n] for n, s in VIM_SIZES.items()
                 if (s["embed_dim"], s["depth"]) == (cfg["embed_dim"], cfg["depth"])), None)
    ns = dict(model=name, input_size=cfg["img_size"][0], nb_classes=cfg["num_classes"],
              drop_path=cfg["drop_path_rate"])
    ns.update(args or {})
    sd = OrderedDict((k, v.detach().to("cpu").clone()) for k, v in model.state_dict().items())
    return {"model": sd, "args": argparse.Namespace(**ns)}
