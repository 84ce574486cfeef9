"""Reading ARM weights from any source into one :class:`Weights` (see :mod:`armvision.weights`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import CheckpointError
from .official import (
    CLASSIFIER,
    PRETRAINING,
    OfficialCheckpoint,
    check_keys,
    clean_state_dict,
    detect_kind,
    is_state_dict,
    read_official_checkpoint,
    reference_kind,
    registry_name,
    select_state_dict,
)
from ..models.io import build_model
from ..models.manifest import verify_file
from .layout import (CONFIG_NAME, WEIGHTS_NAME, find_checkpoint, is_model_dir, is_pickle_file, link_target,
                     pickle_message, step_dirs)

__all__ = ["PRETRAINING", "CLASSIFIER", "Weights", "read_weights", "read_config", "load_model", "resolve_model_dir",
           "is_model_dir", "is_pickle_file", "pickle_message", "step_dirs", "link_target"]

_KIND_OF_ARCHITECTURE = {"ARMPretrain": PRETRAINING, "ARMClassifier": CLASSIFIER}
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl")  # read_weights: a missing file of these types


@dataclass
class Weights:
    """ARM weights read from any source.

    Attributes:
        kind: :data:`PRETRAINING` or :data:`CLASSIFIER`.
        state_dict: parameter name -> tensor (armvision's names, which are the reference's; the official
            pretraining ``mask`` buffer is dropped).
        config: what to build: ``{"architecture", "model_name", "args", ...}`` (a model directory's
            config.json, or derived from an official checkpoint's shapes); None for a bare state dict.
        source: where the weights came from (a path, or "state dict").
        official: the official checkpoint they were read from (provenance: epoch, args, ...), if any.
    """

    kind: str
    state_dict: dict[str, Tensor]
    config: dict[str, Any] | None = None
    source: str = "state dict"
    official: OfficialCheckpoint | None = field(default=None, repr=False)

    @property
    def args(self) -> dict[str, Any]:
        """The constructor arguments of the model these weights belong to ({} when not known)."""
        return dict((self.config or {}).get("args", {}))

    @property
    def grid(self) -> tuple[int, int] | None:
        """The patch grid (rows, columns) of these weights when the config says it; None: infer from shapes."""
        args = self.args
        if "img_size" not in args or "patch_size" not in args:
            return None
        size = args["img_size"]
        h, w = (size, size) if isinstance(size, int) else size
        return h // args["patch_size"], w // args["patch_size"]

    @property
    def description(self) -> str:
        """'ARMPretrain' / 'ARMClassifier' for armvision weights, 'official ARM (or Vim) ... checkpoint' for official
        ones."""
        if self.official is not None:
            return f"official {self.official.family} {reference_kind(self.official.kind)} checkpoint"
        return (self.config or {}).get("architecture") or f"{self.kind} weights"

    def build(self, map_location: str | torch.device = "cpu", strict: bool = True, **overrides) -> nn.Module:
        """The model these weights belong to, holding them (``overrides`` replace constructor arguments).

        Raises CheckpointError (one line, with ``missing`` / ``unexpected`` / ``mismatched`` where the weights do
        not fit) when the config names no model armvision builds or the weights do not fit it; TypeError for an
        override an official checkpoint does not allow."""
        if self.official is not None:
            return self.official.build(**overrides).to(map_location)
        if self.config is None:
            raise CheckpointError(f"{self.source}: bare weights without a config.json: build the model yourself "
                                  "and load them (or use init_classifier)")
        try:
            model = build_model(self.config, **overrides)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{self.source}: cannot build the model its config describes: "
                                  f"{str(e).strip(chr(39))}") from None
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        what = f"{self.source} does not fit {self.config.get('architecture')}"
        if strict:
            check_keys(self.state_dict, expected, what)
        else:  # only the shapes of the weights the model has
            check_keys({k: v for k, v in self.state_dict.items() if k in expected}, expected, what, optional=expected)
        model.load_state_dict(self.state_dict, strict=False)
        return model.to(map_location)


# ---------------------------------------------------------------------------------------------
# finding weights on disk (armvision.weights.layout)
# ---------------------------------------------------------------------------------------------
def resolve_model_dir(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A model directory from a model directory, a checkpoint folder or a run directory.

    A run directory gives its ``best`` checkpoint (``prefer="best"``), else its latest:
    :func:`armvision.weights.layout.find_checkpoint` with ``need="model"``.
    """
    return find_checkpoint(path, need="model", prefer=prefer)


def _model_file(path: Path) -> Path:
    """``path``, a file of a model directory; FileNotFoundError saying what a model directory holds if absent."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an armvision model directory holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (written by save_model / save_pretrained / training runs)")
    return path


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a model directory (the one place armvision parses it).

    Raises FileNotFoundError when the directory has no model, CheckpointError when it cannot be read.
    """
    path = _model_file(Path(directory) / CONFIG_NAME)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _read_safetensors(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    _model_file(path)
    problem = verify_file(path)
    if problem:
        raise CheckpointError(f"cannot read {path}: {problem}; use another checkpoint (an older step_* folder)")
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _model_dir(path: Path) -> Path:
    """``path`` when it is a model directory, else the checkpoint a checkpoint folder or run directory
    points at; a directory with neither raises FileNotFoundError naming what a model directory holds."""
    if is_model_dir(path):
        return path
    try:
        return resolve_model_dir(path)
    except CheckpointError:
        read_config(path)
        _read_safetensors(path / WEIGHTS_NAME)
        raise


def _from_model_dir(directory: Path, map_location: str | torch.device = "cpu") -> Weights:
    config = read_config(directory)
    arch = config.get("architecture")
    if arch not in _KIND_OF_ARCHITECTURE:
        raise CheckpointError(f"{directory / CONFIG_NAME} names architecture {arch!r}; expected ARMPretrain or "
                              "ARMClassifier")
    sd = _read_safetensors(directory / WEIGHTS_NAME, map_location)
    return Weights(_KIND_OF_ARCHITECTURE[arch], sd, config, str(directory))


def read_weights(source: str | os.PathLike | Mapping[str, Any] | Weights, ema: bool | None = None,
                 global_pool: str | None = None, allow_globals: Iterable[Any] = (),
                 map_location: str | torch.device = "cpu") -> Weights:
    """Read ARM weights from any source (see the module docstring) into a :class:`Weights`.

    Args:
        source: a model / checkpoint / run directory, a ``.safetensors`` file, an official ``.pth``
            checkpoint, or a (checkpoint or state) dict in memory.
        ema: pickles and checkpoint dicts: None takes the EMA weights when present, True requires them,
            False takes the plain ones (:func:`armvision.weights.official.select_state_dict`).
        global_pool: official classifier checkpoints: "avg" / "token" (None: from the checkpoint's args).
        allow_globals: official checkpoints: classes beyond ``argparse.Namespace`` trusted in the pickle.
        map_location: where safetensors weights are loaded.
    """
    if isinstance(source, Weights):
        return source
    if isinstance(source, Mapping):
        raw = dict(source) if is_state_dict(source) else select_state_dict(source, ema)[0]
        sd = clean_state_dict(raw)
        return Weights(detect_kind(sd, "state dict"), sd)
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        if path.name == WEIGHTS_NAME and is_model_dir(path.parent):
            return _from_model_dir(path.parent, map_location)
        sd = _read_safetensors(path, map_location)
        return Weights(detect_kind(sd, str(path)), sd, None, str(path))
    if path.is_dir():
        return _from_model_dir(_model_dir(path), map_location)
    if not path.exists():
        if path.suffix in (*_PICKLE_SUFFIXES, ".safetensors"):
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        read_config(path)  # raises FileNotFoundError: what a model directory holds
    return _weights_of_official(read_official_checkpoint(path, ema, global_pool, allow_globals))


def load_model(source: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True,
               **overrides) -> nn.Module:
    """The model held by ``source`` -- a model directory (config.json + model.safetensors), a checkpoint
    folder or run directory, or an official ``.pth`` -- with its weights; ``overrides`` replace constructor
    arguments (e.g. ``dynamic_img_size=True``, ``backend="torch"``)."""
    return read_weights(source, map_location=map_location).build(map_location, strict, **overrides)


def _weights_of_official(ckpt: OfficialCheckpoint) -> Weights:
    config = {"architecture": ckpt.architecture.__name__, "model_name": registry_name(ckpt.model_args),
              "args": dict(ckpt.model_args)}
    sd = {k: v for k, v in ckpt.state_dict.items() if k != "mask"}
    return Weights(ckpt.kind, sd, config, ckpt.source, ckpt)
