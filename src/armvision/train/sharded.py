"""The sharded backend of the checkpoint manager: FSDP runs through torch.distributed.checkpoint (DCP); and ``export``.

A sharded checkpoint is a ``checkpoints/step_00001234/`` folder like the others (names in
:mod:`armvision.weights.layout`), except that the weights are not one ``model.safetensors``:

- ``sharded/``: a DCP checkpoint of ``{"model": ..., "optimizer": ...}``, each process writing its own
  shards (no process gathers the model); the state dicts come from
  ``torch.distributed.checkpoint.state_dict.get_state_dict``, so parameter names are the plain model's;
- ``sharded.json``: the marker (format, number of processes that wrote it);
- ``config.json`` (the model's architecture and the run's config, as in every model directory),
  ``training_state.pt`` (step, epoch, position in the epoch, schedule, RNG states of every rank, ... --
  the optimizer is in ``sharded/``), ``metrics.json``.

Every process writes into the same hidden temporary folder (:func:`write_shards`); rank 0 adds the small files
(:func:`write_config`, :func:`write_marker`) and :class:`~armvision.train.checkpoint.CheckpointManager` renames
the folder into place after all shards are written, then moves ``latest``. This module does not import the
manager; the manager calls it. An interrupted save leaves
a ``.tmp-*`` folder that is never taken for a checkpoint (and is removed when the run resumes).
DCP reshards on load: a checkpoint written by N processes resumes on M, or in one process without
a process group. :func:`export_checkpoint` turns any checkpoint, sharded or not, into the single
model directory (``config.json`` + ``model.safetensors``) that every other command reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import CheckpointError
from ..models.io import build_model, save_model
from ..outputs import check_output_dir
from ..weights import read_config, read_weights
from ..weights.layout import CONFIG_NAME, MARKER_NAME, SHARDED_DIR, find_checkpoint, is_sharded_checkpoint

__all__ = ["SHARDED_DIR", "MARKER_NAME", "is_sharded_checkpoint", "write_shards", "write_config", "write_marker",
           "save_sharded", "load_sharded", "load_full", "resolve_checkpoint", "export_checkpoint"]

_ARCHITECTURES = ("ARMPretrain", "ARMClassifier")


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns each time it runs without a process group; in one process that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _model_config(model: nn.Module) -> dict[str, Any]:
    """:func:`armvision.models.io.model_config` of a model that FSDP2 may have re-classed (``FSDPARMPretrain``)."""
    arch = next((c.__name__ for c in type(model).__mro__ if c.__name__ in _ARCHITECTURES), None)
    if arch is None:
        raise TypeError(f"not an armvision model: {type(model).__name__}")
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    return {"architecture": arch, "model_name": getattr(model, "model_name", None), "args": args}


def write_shards(tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write this process's shards of the model and optimizer state into ``tmp/sharded`` (every process calls it;
    no process gathers the model)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / SHARDED_DIR, no_dist=_no_dist())


def write_config(tmp: Path, model: nn.Module, extra_config: dict[str, Any]) -> None:
    """The ``config.json`` of a sharded checkpoint, as in every model directory (main process)."""
    cfg = {**_model_config(model), **extra_config}
    (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def write_marker(tmp: Path, world_size: int) -> None:
    """The marker that makes ``tmp`` a complete sharded checkpoint: written last (main process)."""
    marker = {"format": "torch.distributed.checkpoint", "world_size": world_size, "contents": ["model", "optimizer"]}
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")


def save_sharded(manager, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                 extra_config: dict[str, Any], metrics: dict[str, Any] | None = None, is_best: bool = False) -> Path:
    """Write checkpoint ``step_{step}`` of ``manager`` (a :class:`~armvision.train.checkpoint.CheckpointManager`)
    as a sharded checkpoint: :meth:`CheckpointManager.save_sharded`, which every process calls."""
    return manager.save_sharded(step, model, optimizer, state, extra_config, metrics=metrics, is_best=is_best)


def load_sharded(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a sharded checkpoint's model (and optimizer) state into ``model`` -- sharded over any number
    of processes, wrapped in DDP, or plain in one process -- resharding as needed (every process calls it)."""
    if optimizer is None:
        sd = {"model": get_state_dict(model, [])[0]}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        sd = {"model": model_sd, "optimizer": optim_sd}
    with _quiet_single_process():
        dcp.load(sd, checkpoint_id=Path(ckpt) / SHARDED_DIR, no_dist=_no_dist())
    set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=sd["model"],
                   optim_state_dict=sd.get("optimizer", {}))


def load_full(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict[str, torch.Tensor],
              optim_sd: dict[str, Any]) -> None:
    """Load a plain checkpoint -- the whole model's state dict and ``optimizer.state_dict()`` of the same
    optimizer construction (parameters numbered in group order) -- into a sharded model and its optimizer
    (every process calls it; each takes its shards of the whole tensors)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    groups = get_optimizer_state_dict(model, optimizer)["param_groups"]  # parameter names, in the optimizer's order
    saved = optim_sd["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in saved]:
        raise ValueError(f"the optimizer's parameter groups differ ({len(saved)} saved, {len(groups)} now)")
    name = {i: n for g, sg in zip(groups, saved) for i, n in zip(sg["params"], g["params"])}
    by_name = {"state": {name[i]: st for i, st in optim_sd["state"].items()},
               "param_groups": [{**sg, "params": [name[i] for i in sg["params"]]} for sg in saved]}
    set_optimizer_state_dict(model, optimizer, by_name, options=opts)


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder (sharded or not) or model directory, from itself or a run directory
    (its ``best`` checkpoint, else its ``latest``, else its newest ``step_*``):
    :func:`armvision.weights.find_checkpoint` with ``need="any"``."""
    return find_checkpoint(path, need="any")


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the model of ``source`` (any checkpoint, sharded or not, or a run directory) as a single
    model directory ``out_dir`` (config.json + model.safetensors). Runs in one process, with or
    without a GPU; a sharded checkpoint is read shard by shard into the plain model (DCP, no process
    group). Returns ``out_dir``."""
    ckpt = resolve_checkpoint(source)
    out = Path(out_dir)
    if out.resolve() == ckpt.resolve():
        raise CheckpointError(f"{out} is the checkpoint being exported; choose another output directory")
    check_output_dir(out, "OUT_DIR")
    if not is_sharded_checkpoint(ckpt):
        weights = read_weights(ckpt)
        model = weights.build("cpu")
        extra = {k: v for k, v in weights.config.items() if k not in ("architecture", "model_name", "args")}
        return save_model(model, out, extra_config={**extra, "exported_from": str(ckpt)})
    config = read_config(ckpt)
    try:
        model = build_model(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build the model described by {ckpt / CONFIG_NAME}: {e}") from None
    sd = model.state_dict()
    try:
        with _quiet_single_process():
            dcp.load({"model": sd}, checkpoint_id=ckpt / SHARDED_DIR, no_dist=True)
    except Exception as e:  # noqa: BLE001 - DCP raises its own CheckpointException and others
        raise CheckpointError(f"cannot read the sharded weights in {ckpt / SHARDED_DIR}: {e}") from None
    model.load_state_dict(sd)
    extra = {k: v for k, v in config.items() if k not in ("architecture", "model_name", "args")}
    return save_model(model, out, extra_config={**extra, "exported_from": str(ckpt)})
