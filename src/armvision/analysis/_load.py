"""The one place the analysis commands load weights: through :func:`armvision.weights.read_weights`."""

from __future__ import annotations

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
    from ..weights import read_weights

    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; expected a run directory, a checkpoint folder, a model "
                              "directory (config.json + model.safetensors) or an official ARM .pth")
    try:
        weights = read_weights(path)
        model = weights.build(map_location=device)
    except OSError as e:  # a file missing from a model directory (damaged or unfitting weights: CheckpointError)
        raise CheckpointError(f"cannot load {path}: {e}") from None
    config = {} if weights.official is not None else dict(weights.config or {})
    return LoadedModel(model.to(device).eval(), weights.source, config)
