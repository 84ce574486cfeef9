"""What ``armvision convert`` does, as library calls: an official ARM checkpoint -> an armvision model
directory (the model, or the classifier a pretraining checkpoint initialises), and back."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from ..errors import CheckpointError
from ..weights import CLASSIFIER, Weights, classifier_for, init_classifier, load_model, read_weights
from .hub import save_pretrained
from .official import reference_kind, save_official

__all__ = ["convert_official", "convert_to_official", "sha256"]


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the provenance a converted model records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_official(source: str | os.PathLike, dest: str | os.PathLike, ema: bool | None = None,
                     global_pool: str | None = None, allow_globals: Iterable[Any] = (), as_classifier: bool = False,
                     num_classes: int = 1000, img_size: int | None = None) -> tuple[nn.Module, Weights]:
    """Write the official checkpoint ``source`` as an armvision model directory ``dest`` (config.json with
    the provenance under ``converted_from``, model.safetensors, README.md); returns (model, weights read).

    ``as_classifier``: a pretraining checkpoint becomes the four-direction classifier it initialises
    (``num_classes`` classes, ``img_size`` px: default 224), ready to fine-tune.
    """
    src = Path(source)
    w = read_weights(src, ema=ema, global_pool=global_pool, allow_globals=allow_globals)
    if w.official is None:
        raise CheckpointError(f"{src}: not an official ARM checkpoint (.pth); armvision model directories need no "
                              "conversion")
    ckpt = w.official
    provenance: dict[str, Any] = {
        "file": src.name, "sha256": sha256(src), "kind": reference_kind(ckpt.kind), "state_dict": ckpt.state_dict_key,
        "epoch": ckpt.epoch, **ckpt.extra,
        "args": {k: v for k, v in ckpt.args.items() if isinstance(v, (int, float, str, bool)) or v is None},
    }
    if as_classifier:
        if w.kind == CLASSIFIER:
            raise CheckpointError(f"{src} is a fine-tuning checkpoint; --as-classifier starts a classifier from a "
                                  "pretraining checkpoint")
        model = classifier_for(w, img_size, num_classes, **({"global_pool": global_pool} if global_pool else {}))
        init_classifier(model, w)
        provenance["initialised_classifier"] = True
    else:
        model = w.build()
    save_pretrained(model, dest, extra_config={"converted_from": provenance})
    return model, w


def convert_to_official(source: str | os.PathLike, dest: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Write the armvision model in ``source`` in the official checkpoint layout to ``dest``; returns the model."""
    model = load_model(source)
    save_official(model, dest, strict=strict)
    return model
