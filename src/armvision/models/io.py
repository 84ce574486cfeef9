"""A model on disk: ``config.json`` (what to build) + ``model.safetensors`` (its weights).

This is the one format armvision writes model weights in: training checkpoints, converted
official checkpoints and ``save_pretrained`` directories all use it, so any of them loads with
:func:`armvision.load_model`. Writing lives here; reading (and parsing config.json) is :mod:`armvision.weights`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from .arm import ARMClassifier, ARMPretrain

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "model_config", "build_model", "save_model",
           "atomic_write", "current_umask"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_ARCHITECTURES = {"ARMPretrain": ARMPretrain, "ARMClassifier": ARMClassifier}


def model_config(model: nn.Module) -> dict[str, Any]:
    """JSON-able description of an armvision model: architecture, registry name and constructor args."""
    arch = type(model).__name__
    if arch not in _ARCHITECTURES:
        raise TypeError(f"not an armvision model: {arch}; expected one of {sorted(_ARCHITECTURES)}")
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    return {"architecture": arch, "model_name": getattr(model, "model_name", None), "args": args}


def build_model(config: dict[str, Any], **overrides) -> nn.Module:
    """Build an (untrained) model from :func:`model_config` output; ``overrides`` replace args."""
    arch = config.get("architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"config names architecture {arch!r}; armvision builds {sorted(_ARCHITECTURES)}")
    model = _ARCHITECTURES[arch](**{**config.get("args", {}), **overrides})
    model.model_name = config.get("model_name")
    return model


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``: a reader never sees a
    half-written file, and an interrupted write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers (safetensors' save_file) re-create the file 0600: set the mode
        # open() would give after the write, before the rename
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model: nn.Module, directory: str | os.PathLike, state_dict: dict | None = None,
               extra_config: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically).

    ``state_dict`` replaces the model's own weights (e.g. EMA weights); ``extra_config`` adds keys
    to config.json (training config, metrics...).
    """
    directory = Path(directory)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    cfg = {**model_config(model), **(extra_config or {})}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(sd, p, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    return directory
