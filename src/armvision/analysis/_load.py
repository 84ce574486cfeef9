"""The one place the analysis commands load weights (to be re-pointed at ``armvision.weights``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError

__all__ = ["LoadedModel", "load_for_analysis"]


@dataclass
class LoadedModel:
    """A model and what its checkpoint says about it: ``config`` is the model directory's config.json
    (``training``: the run config, ``classes``: class names), empty for an official ``.pth``."""

    model: nn.Module
    source: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def training(self) -> dict[str, Any] | None:
        return self.config.get("training")

    @property
    def classes(self) -> list[str] | None:
        return self.config.get("classes")


def load_for_analysis(spec: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a pretraining run directory, a checkpoint folder, a model directory or an official ``.pth``.

    Raises :class:`~armvision.errors.CheckpointError` (one line for the user) when nothing loadable is there.
    """
    from ..interop.cli import load_any_model
    from ..models.io import load_model
    from ..train.checkpoint import is_pickle_file, resolve_model_dir

    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; expected a run directory, a checkpoint folder, a model "
                              "directory (config.json + model.safetensors) or an official ARM .pth")
    try:
        if is_pickle_file(path):
            model = load_any_model(str(path), dynamic_img_size=False)
            return LoadedModel(model.to(device).eval(), str(path), {})
        model_dir = resolve_model_dir(path)
        config = json.loads((model_dir / "config.json").read_text())
        model = load_model(model_dir, map_location=device)
    except CheckpointError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load {path}: {str(e).strip(chr(39))}") from None
    return LoadedModel(model.eval(), str(model_dir), config)
