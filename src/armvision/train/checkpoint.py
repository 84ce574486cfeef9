"""The checkpoint manager of a run, and finding weights to start from.

:class:`CheckpointManager` saves and restores the whole training state (:meth:`~CheckpointManager.save_training`,
:meth:`~CheckpointManager.restore_training`: model, EMA, optimizer, scheduler, the trainer's loop state and the
RNG states of every process) through one of two backends: safetensors (:meth:`~CheckpointManager.save`, the main
process writes a model directory) or, for ``parallel: fsdp``, DCP (:meth:`~CheckpointManager.save_sharded`, every
process writes its shards through :mod:`armvision.train.sharded`). It also finds, links and prunes checkpoints.
The names of the files and the one resolver of paths are :mod:`armvision.weights.layout`.

A run directory holds ``checkpoints/step_00001234/`` folders, each a complete model directory
(``config.json`` + ``model.safetensors``, loadable with :func:`armvision.load_model`) plus:

- ``ema/``: the EMA weights as a second model directory (when EMA is on);
- ``training_state.pt``: optimizer, scheduler, step, epoch, position in the epoch, RNG states of
  every rank, best metric; read back with ``torch.load(weights_only=True)``;
- ``metrics.json``: the evaluation metrics at that step, if any;
- ``manifest.json``: size and SHA-256 of every file above, written last (:mod:`armvision.models.manifest`);
  loading checks it, and ``--resume auto`` passes over a damaged checkpoint to the newest intact one;
- ``health.json``: written after the save, once the step after the checkpoint has shown that its weights
  give a finite loss that is not rising (``good``); a divergence names the newest good checkpoint.

Free space is checked before a save; a save that fails (disk full, read-only, permission, file-size
limit) raises :class:`~armvision.errors.CheckpointError` naming the path and the cause, and the previous
checkpoint stays the latest.

Runs with ``parallel: fsdp`` write sharded checkpoints instead (the same folders, with a DCP
``sharded/`` folder in place of ``model.safetensors``); both kinds are found, linked and pruned alike here,
and ``armvision export`` turns either into a model directory.

A checkpoint is written into a hidden temporary folder and renamed into place in one step, so an
interrupted save leaves the previous checkpoints as they were. ``latest`` and ``best`` are
symbolic links, also replaced atomically. The newest ``keep_last`` checkpoints and the best one
are kept; older ones are deleted after a new one is in place.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import CheckpointError, SaveError
from ..models import ARMClassifier
from ..models.io import save_model
from ..models.manifest import verify_dir, write_manifest
from ..outputs import check_output_dir, describe_os_error  # noqa: F401 - re-exported (__all__)
from ..weights import encoder_mismatch, init_classifier, is_model_dir, is_pickle_file, read_weights, resolve_model_dir
from ..weights.layout import (BEST, CHECKPOINTS_DIR, EMA_DIR, HEALTH_NAME, LATEST, METRICS_NAME, STATE_NAME,
                              WEIGHTS_NAME, find_checkpoint, is_sharded_checkpoint, is_training_checkpoint,
                              link_target, step_dirs, step_name, step_of)
from . import distributed, health, sharded

_logger = logging.getLogger("armvision.train")

__all__ = [
    "CheckpointManager",
    "TrainingParts",
    "STATE_NAME",
    "rng_state",
    "set_rng_state",
    "is_model_dir",
    "resolve_model_dir",
    "resolve_resume_dir",
    "load_init_weights",
    "HEALTH_NAME",
    "describe_os_error",
    "check_output_dir",
]



def _checkpoint_link(link: Path) -> Path | None:
    """The checkpoint folder a ``latest`` / ``best`` link points at, if it does."""
    if link.is_symlink() and is_training_checkpoint(link.resolve()):
        return link.resolve()
    return link_target(link)


# ------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and CUDA), in types torch.load's
    ``weights_only`` mode accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------------------------------------
# finding model directories
# ------------------------------------------------------------------------------------------------
def resolve_resume_dir(path: str | os.PathLike) -> Path:
    """A checkpoint folder with a training state, from itself or from a run directory (its latest):
    :func:`armvision.weights.find_checkpoint` with ``need="resume"``."""
    return find_checkpoint(path, need="resume")


def load_init_weights(classifier: ARMClassifier, path: str | os.PathLike) -> dict[str, Any]:
    """Initialise a classifier for fine-tuning from ``path`` (``--init``); returns what was loaded.

    ``path``: an armvision model directory, checkpoint folder or run directory (its best checkpoint), or
    an official ARM ``.pth`` checkpoint. The work is :func:`armvision.weights.init_classifier`; this adds
    what the training config has to say when the encoder sizes differ.
    """
    if not is_pickle_file(Path(path)):
        weights = read_weights(resolve_model_dir(path))
        mismatch = [f"{k}: {a} (init) vs {b} (fine-tuning model)" for k, a, b in encoder_mismatch(weights.args,
                                                                                                    classifier)]
        if mismatch:
            raise CheckpointError(f"the --init model {weights.source} does not fit the fine-tuning model: "
                                  f"{'; '.join(mismatch)}; set model.name / model.args / model.in_chans to match the "
                                  "pretraining run")
        path = weights
    try:
        return init_classifier(classifier, path)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot initialise the classifier from {path}: {e}") from None


# ------------------------------------------------------------------------------------------------
# the manager
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainingParts:
    """What a checkpoint holds beside the loop state: the model (the module whose weights are saved), the
    optimizer, the lr scheduler, the EMA (timm's ``ModelEmaV3``, or None); ``sharded``: checkpoints go through
    DCP (``parallel: fsdp``, also when it runs in one process); ``fsdp_model``: the model is FSDP-sharded now (a
    plain checkpoint is loaded into it shard by shard); ``device``: where the weights are loaded."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any = None
    sharded: bool = False
    fsdp_model: bool = False
    device: torch.device | str = "cpu"


class CheckpointManager:
    """Saves, finds and prunes the checkpoints of one run (``run_dir/checkpoints``).

    Only the main process writes; every process may read.
    """

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 2, is_main: bool = True):
        self.dir = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last
        self.is_main = is_main

    # -- reading --------------------------------------------------------------------------------
    def steps(self) -> list[Path]:
        return [d for d in step_dirs(self.dir) if is_training_checkpoint(d)]

    def latest(self) -> Path | None:
        return find_checkpoint(self.dir, need="resume", required=False)

    def best(self) -> Path | None:
        return _checkpoint_link(self.dir / BEST)

    @staticmethod
    def load_state(ckpt: Path) -> dict[str, Any]:
        try:
            return torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable state is the same problem for the user
            raise CheckpointError(f"cannot read {ckpt / STATE_NAME}: {e}; the checkpoint is damaged; resume from "
                                  "an older one (--resume PATH)") from None

    def verify(self, ckpt: Path) -> str | None:
        """None when ``ckpt`` is intact (its files match its manifest and its training state reads), else
        what is wrong, naming the file."""
        problem = verify_dir(ckpt)
        if problem is None:
            try:
                self.load_state(ckpt)
            except CheckpointError as e:
                problem = str(e)
        return problem

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first (the ``latest`` link's target first)."""
        out = []
        target = link_target(self.dir / LATEST)
        if target is not None and (target / STATE_NAME).is_file():
            out.append(target)
        out += [d for d in reversed(self.steps()) if not out or d.name != out[0].name]
        return out

    # -- health (the judgement is armvision.train.health) ----------------------------------------
    def health(self, ckpt: Path) -> dict[str, Any]:
        """The ``health.json`` of ``ckpt`` ({} when not judged yet)."""
        return health.read_health(ckpt)

    def mark_health(self, ckpt: Path, good: bool, **info: Any) -> None:
        """Record whether the weights of ``ckpt`` proved good (main process)."""
        if self.is_main:
            health.mark_health(ckpt, good, **info)

    def last_good(self, before_step: int | None = None) -> Path | None:
        """The newest checkpoint whose weights proved good (optionally: saved before ``before_step``)."""
        return health.last_good(self.steps(), before_step)

    def retire_after(self, good: Path | None) -> list[Path]:
        """After a divergence: rename the checkpoints newer than ``good`` to ``diverged-step_*`` (kept for a
        look, never resumed from) and point ``latest`` at ``good``."""
        moved = []
        if not self.is_main:
            return moved
        limit = step_of(good) if good is not None else -1
        for d in step_dirs(self.dir):
            if step_of(d) > limit:
                dest = self.dir / f"diverged-{d.name}"
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(d, dest)
                moved.append(dest)
        if good is not None:
            self.link(LATEST, good)
        elif (self.dir / LATEST).is_symlink():
            (self.dir / LATEST).unlink()
        return moved

    # -- writing --------------------------------------------------------------------------------
    def remove_partial(self) -> list[Path]:
        """Delete temporary folders left by an interrupted save (they never replaced anything). A step
        folder moved aside while being re-saved (``.tmp-old-step_X-*``) goes back in place when the
        interruption came before the new copy replaced it."""
        removed = []
        if self.is_main and self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                m = re.match(r"\.tmp-old-(step_\d+)-", p.name)
                if m and p.is_dir() and not (self.dir / m.group(1)).exists():
                    os.replace(p, self.dir / m.group(1))
                    continue
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    def save(self, step: int, model: nn.Module, state: dict[str, Any], extra_config: dict[str, Any],
             ema_state_dict: dict[str, torch.Tensor] | None = None, metrics: dict[str, Any] | None = None,
             is_best: bool = False) -> Path:
        """The safetensors backend (main process only): write checkpoint ``step_{step}`` -- the model directory,
        ``ema/``, ``metrics``, the training ``state`` and the manifest -- atomically, point ``latest`` (and
        ``best``) at it, prune. A failure is a one-line SaveError, the previous checkpoint staying the latest."""
        final = self.dir / step_name(step)
        if not self.is_main:
            return final
        previous = self.latest()
        keep = f"; the previous checkpoint {previous} stays the latest" if previous else ""
        tmp = self.dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            short = self._space_shortfall(model, state, ema_state_dict)
            if short:
                raise SaveError(f"cannot save checkpoint {final.name} in {self.dir}: not enough free space "
                                f"({short}){keep}")
            tmp.mkdir()
            save_model(model, tmp, extra_config=extra_config)
            if ema_state_dict is not None:
                save_model(model, tmp / EMA_DIR, state_dict=ema_state_dict, extra_config={**extra_config, "ema": True})
            self._write_metrics_and_state(tmp, metrics, state)
            write_manifest(tmp)
            self.publish(tmp, final)
        except SaveError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except (OSError, RuntimeError, SafetensorError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            path = getattr(e, "filename", None) or tmp
            raise SaveError(f"cannot save checkpoint {final.name} in {self.dir} ({path}): "
                            f"{describe_os_error(e)}{keep}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.commit(final, is_best)
        return final

    def save_sharded(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     extra_config: dict[str, Any], metrics: dict[str, Any] | None = None,
                     is_best: bool = False) -> Path:
        """The DCP backend (every process calls it): each process writes its shards of the model and the
        optimizer into one temporary folder (:mod:`armvision.train.sharded`), the main process adds config.json,
        ``metrics``, the training ``state`` (without the optimizer) and the marker, then moves the folder into
        place as :meth:`save` does. Returns the checkpoint folder."""
        final = self.dir / step_name(step)
        token = distributed.all_gather_object(uuid.uuid4().hex[:8])[0]  # one temporary folder for all ranks
        tmp = self.dir / f".tmp-{final.name}-{token}"
        if self.is_main:
            tmp.mkdir(parents=True)
        distributed.barrier()
        try:
            sharded.write_shards(tmp, model, optimizer)
            if self.is_main:
                sharded.write_config(tmp, model, extra_config)
                self._write_metrics_and_state(tmp, metrics, state)
                sharded.write_marker(tmp, state.get("world_size", 1))  # last: the folder is complete
                self.publish(tmp, final)
                self.commit(final, is_best)
        except BaseException:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        distributed.barrier()
        return final

    @staticmethod
    def _write_metrics_and_state(tmp: Path, metrics: dict[str, Any] | None, state: dict[str, Any]) -> None:
        if metrics:
            (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        torch.save(state, tmp / STATE_NAME)

    # -- the whole training state ---------------------------------------------------------------
    def save_training(self, step: int, parts: TrainingParts, loop_state: dict[str, Any],
                      extra_config: dict[str, Any], metrics: dict[str, Any] | None = None,
                      is_best: bool = False) -> Path:
        """Checkpoint the whole training state (every process calls it): the model, the EMA weights, the
        optimizer, the scheduler, ``loop_state`` (step, epoch, position in the epoch, counters: the trainer's)
        and the RNG states of every process. Sharded parts go through DCP (:meth:`save_sharded`), the others
        through safetensors (:meth:`save`, main process); a failed save raises SaveError on every process."""
        state = {**loop_state, "scheduler": parts.scheduler.state_dict(),
                 "rng": distributed.all_gather_object(rng_state())}  # every rank joins the gather
        if parts.sharded:  # the optimizer state is in the shards
            return self.save_sharded(step, parts.model, parts.optimizer, state, extra_config, metrics=metrics,
                                     is_best=is_best)
        state["optimizer"] = parts.optimizer.state_dict()
        path, error = None, None
        if self.is_main:
            ema_sd = parts.ema.module.state_dict() if parts.ema is not None else None
            try:
                path = self.save(step, parts.model, state, extra_config, ema_sd, metrics=metrics, is_best=is_best)
            except SaveError as e:
                error = str(e)
        error = next((e for e in distributed.all_gather_object(error) if e), None)
        if error:
            raise SaveError(error)
        return path or self.dir / step_name(step)

    def restore_training(self, ckpt: Path, parts: TrainingParts, state: dict[str, Any], rank: int = 0,
                         world_size: int = 1) -> None:
        """Load checkpoint ``ckpt`` (its training ``state`` read by :meth:`load_state`) into ``parts`` and this
        process's RNG: the weights (sharded or not, into a sharded model or not: DCP reshards), the EMA weights,
        the optimizer, the scheduler. A checkpoint that does not fit is a one-line CheckpointError."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.api import CheckpointException

        device = str(parts.device)
        try:
            if is_sharded_checkpoint(ckpt):  # any number of processes wrote it; DCP reshards
                sharded.load_sharded(ckpt, parts.model, parts.optimizer)
                if parts.ema is not None:
                    parts.ema.module.load_state_dict(parts.model.state_dict())
            elif parts.fsdp_model:  # a ddp checkpoint: each process takes its shards of the whole tensors
                sd = load_file(str(ckpt / WEIGHTS_NAME), device=device)
                sharded.load_full(parts.model, parts.optimizer, sd, state["optimizer"])
            else:
                sd = load_file(str(ckpt / WEIGHTS_NAME), device=device)
                parts.model.load_state_dict(sd)
                if parts.ema is not None:
                    ema_file = ckpt / EMA_DIR / WEIGHTS_NAME
                    parts.ema.module.load_state_dict(load_file(str(ema_file), device=device)
                                                     if ema_file.is_file() else sd)
                parts.optimizer.load_state_dict(state["optimizer"])
            parts.scheduler.load_state_dict(state["scheduler"])
        except CheckpointError:
            raise
        except (RuntimeError, ValueError, KeyError, CheckpointException) as e:
            raise CheckpointError(f"cannot resume from {ckpt}: it does not fit this run's model/optimizer ({e}); "
                                  "resume with the config the run was started with") from None
        # the schedule follows this run's config (e.g. more epochs); the step count continues
        if parts.scheduler.last_step != int(state["step"]):
            raise CheckpointError(f"{ckpt}: its schedule is at step {parts.scheduler.last_step} but the run at step "
                                  f"{state['step']}; the checkpoint is damaged")
        rngs = state.get("rng") or []
        if len(rngs) == world_size:
            set_rng_state(rngs[rank])
        elif self.is_main:
            _logger.warning("checkpoint has RNG states of %d process(es), this run has %d: random streams restart",
                            len(rngs), world_size)

    def _space_shortfall(self, model: nn.Module, state: dict[str, Any], ema: dict | None) -> str | None:
        """'the checkpoint needs about N MiB plus a 5% margin and 1 MiB, M MiB free' when the file system lacks
        room for the checkpoint (weights, EMA weights, optimizer state), else None."""
        need = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        need *= 2 if ema is not None else 1
        need += sum(t.numel() * t.element_size() for t in _tensors(state))
        free = shutil.disk_usage(self.dir).free
        if free < need * 1.05 + (1 << 20):
            return (f"the checkpoint needs about {need / 2**20:.1f} MiB plus a 5% margin and 1 MiB, "
                    f"{free / 2**20:.1f} MiB free")
        return None

    def publish(self, tmp: Path, final: Path) -> None:
        """Move a complete temporary checkpoint folder into place (replacing the same step saved before)."""
        if final.exists():  # the same step saved again (e.g. end of epoch, then end of run)
            old = self.dir / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)

    def commit(self, final: Path, is_best: bool = False) -> None:
        """After a checkpoint is in place: point ``latest`` (and ``best``) at it, then prune."""
        self.link(LATEST, final)
        if is_best:
            self.link(BEST, final)
        self.prune()

    def link(self, name: str, target: Path) -> None:
        """Point the link ``name`` (``latest``, ``best``) at the checkpoint ``target``, atomically."""
        tmp = self.dir / f".tmp-link-{name}-{uuid.uuid4().hex[:8]}"
        os.symlink(target.name, tmp)
        os.replace(tmp, self.dir / name)

    def prune(self) -> None:
        """Delete the checkpoints beyond the newest ``keep_last`` and the best one."""
        # compared by folder name: best() resolves the link to an absolute path, the step folders are
        # listed relative to self.dir (a relative output_dir, or one reached through a symlink)
        keep = {d.name for d in self.steps()[-self.keep_last:]}
        best = self.best()
        if best is not None:
            keep.add(best.name)
        for d in step_dirs(self.dir):
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
