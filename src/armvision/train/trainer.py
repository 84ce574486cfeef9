"""The training loop of both tasks: autoregressive pretraining and fine-tuning.

One :class:`Trainer` per run. It joins the process group torchrun describes, builds the data, the
model (fine-tuning: optionally from a pretraining checkpoint), AdamW and the schedule, EMA, and
either starts fresh or resumes from a checkpoint; :meth:`Trainer.fit` then trains, evaluates,
checkpoints and returns the run's summary (also written to ``summary.json``).

The pieces are components built from the config: the data (:func:`armvision.train.data.build_pipeline`,
shared with ``armvision eval``), the loss (:mod:`armvision.train.objective`), the optimizer and the lr
schedule (:mod:`armvision.train.optim`; the schedule's state is its step count), the process group
(:mod:`armvision.train.distributed`), the compiled training module with its eager fallback
(:mod:`armvision.train.compiled`). The Trainer wires them and runs the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__, ops
from ..data import (MAX_LISTED_FILES, DeviceFeeder, class_names_to_map, copy_to_device, dataset_classes,
                    normalization, unreadable_report)
from ..errors import CheckpointError, ConfigError, DataError, Preempted
from ..models import create_model
from ..models.io import atomic_write
from ..outputs import guarded_write
from . import distributed
from .checkpoint import CheckpointManager, TrainingParts, check_output_dir, load_init_weights, resolve_resume_dir
from .compiled import CompiledModule, compile_enabled, compile_mode
from .config import RunConfig, config_to_dict, config_to_yaml, validate_config
from .data import build_pipeline
from .evaluate import autocast_for, evaluate_classifier, evaluate_pretraining
from .metrics import MetricsLogger, format_duration
from .objective import build_objective
from .optim import build_optimizer, build_scheduler, peak_lr
from .parallel import clip_grad_norm, gathered, gradient_sync, parallelize
from .preemption import EXIT_PREEMPTED, StopSignals
from .health import Health, read_health, state_finite
from .runlock import RunLock

__all__ = ["Trainer", "train", "build_model_from_config", "seed_everything", "check_output_dir"]

_logger = logging.getLogger("armvision.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_from_config(cfg: RunConfig, num_classes: int | None = None) -> nn.Module:
    """The model a config describes (pretraining model, or classifier with ``num_classes``)."""
    m = cfg.model
    clash = sorted({"img_size", "in_chans", "drop_path_rate", "num_classes"} & set(m.args))
    if clash:
        raise ConfigError(f"model.args sets {clash}; set these with model.img_size, model.in_chans, "
                          "model.drop_path and data.num_classes")
    kw = dict(img_size=m.img_size, in_chans=m.in_chans, drop_path_rate=m.drop_path, **m.args)
    try:
        if cfg.task == "pretrain":
            return create_model(m.name, pretraining=True, **kw)
        return create_model(m.name, num_classes=num_classes, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build model {m.name!r} ({cfg.task}) from the config: {e}") from None


class _Window:
    """Running sums of the training loss between two log lines (kept on the device: no sync per step).

    ``loss`` sums the losses of the steps that updated the weights, ``good`` counts them; ``steps`` counts
    every step (a skipped non-finite step included). ``data_wait``: host seconds the steps waited for their
    batches; ``spans``: each step's CUDA events (its GPU span, read at the log step, after its sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.good = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0
        self.images = 0
        self.data_wait = 0.0
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.start = time.time()

    def add(self, step: _Step, images: int) -> None:
        self.loss += torch.where(step.bad, 0.0, step.loss)
        self.good += (~step.bad).double()
        self.steps += 1
        self.images += images
        self.data_wait += step.data_wait
        if step.span is not None:
            self.spans.append(step.span)

    def timings(self) -> dict[str, float]:
        """Per step over the window: ``data_wait_ms`` (the host waiting for the loader) and, on a GPU, ``gpu_ms``
        (from where the GPU reaches the step, its batch on the device, to its update, any idle inside the step
        included; the rest of a step's wall time is the GPU waiting between steps, for the batch or the host).
        Call after a sync: the events must have completed."""
        out = {"data_wait_ms": 1e3 * self.data_wait / max(self.steps, 1)}
        if self.spans:
            out["gpu_ms"] = sum(a.elapsed_time(b) for a, b in self.spans) / len(self.spans)
        return out

    def reset(self):
        self.__init__(self.device)


@dataclass
class _Step:
    """One optimizer step as the loop sees it; the tensors stay on the device. ``bad``: the loss or gradient norm
    was non-finite on some rank (the update was skipped); ``loss``: the mean loss of its micro-batches;
    ``flags``: the agreed [non-finite, unreadable images, stop signals]; ``stop_here``: this process's signal."""

    bad: torch.Tensor
    loss: torch.Tensor
    grad_norm: torch.Tensor
    flags: torch.Tensor
    stop_here: float
    lr: float = float("nan")
    data_wait: float = 0.0  # host seconds waiting for the step's batches
    span: tuple[torch.cuda.Event, torch.cuda.Event] | None = None  # CUDA events around the step's GPU work


# resuming: keys that make a checkpoint another run's (an error), and keys whose change is warned about and recorded
_RESUME_SAME = ("task", "model.name", "model.img_size", "model.in_chans", "model.args", "data.dataset")
_RESUME_RECORDED = ("seed", "precision", "model.drop_path", "data.", "aug.", "optim.", "ema.")
_RESUME_IGNORED = {"data.workers", "data.pin_memory", "data.persistent_workers", "data.strict_images",
                   "data.resize_backend", "data.decode"}


def _another_run(ckpt: Path, what: str) -> CheckpointError:
    return CheckpointError(f"cannot resume from {ckpt}: it belongs to another run ({what}); resume with the config the "
                           "run was started with (its config.yaml), or start a new run in another --output-dir "
                           "(--init takes the weights)")


def _flatten(d: dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and k != "args":
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


class Trainer:
    """Trains one run described by a :class:`RunConfig` (see the module docstring)."""

    def __init__(self, cfg: RunConfig):
        validate_config(cfg)
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.run_dir = Path(cfg.output_dir)
        self.task = cfg.task
        seed_everything(cfg.seed + self.dist.rank)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.lock = self._lock_run_dir()
        try:
            self._build(cfg)
        except BaseException:
            self.lock.release()
            raise

    def _lock_run_dir(self) -> RunLock:
        """Check that the output folder can be written and take its lock (rank 0; every rank learns the verdict,
        so that all of them stop when another run holds the folder)."""
        lock, error = RunLock(self.run_dir), None
        if self.is_main:
            try:
                check_output_dir(self.run_dir)
                lock.acquire()
            except (ConfigError, CheckpointError) as e:
                error = e
        message = next((m for m in distributed.all_gather_object(str(error) if error else None) if m), None)
        if error is not None:
            raise error
        if message is not None:
            lock.release()
            raise ConfigError(message)
        return lock

    def _build(self, cfg: RunConfig) -> None:
        self.ckpt = CheckpointManager(self.run_dir, cfg.checkpoint.keep_last, self.is_main)
        self.resume_from = self._find_resume()
        # before the data and the model are built: a checkpoint of another run is named as such
        self.resume_changes = self._compare_resume_config(self.resume_from) if self.resume_from else []
        self._setup_batches()
        self._build_data()
        self._build_model()
        self._build_optimization()

        # progress counters (restored on resume)
        self.step = 0  # optimizer steps done
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # micro-batches of the current epoch consumed by this rank
        self.best_metric: float | None = None
        self.skipped_images = 0  # stand-in samples trained on (an unreadable file counts each time it is read)
        self.unreadable_files: list[str] = []  # the distinct unreadable training files of all ranks, at the last gather
        self._unreadable_local: set[str] = set()  # this rank's, fed by the loader; gathered at saves and the end
        self.images_seen = 0
        self.loss_history: list[tuple[int, float]] = []
        self.last_eval: dict[str, Any] = {}
        self.train_seconds = 0.0
        # non-finite steps, checkpoint health, divergence (armvision.train.health)
        self.health = Health(self.ckpt, self.device, cfg.optim.skip_nonfinite, cfg.checkpoint.loss_rise_factor,
                             self.is_main)
        # unreadable images, counted on the device; read at log steps and saves
        self._skipped_dev = torch.zeros((), dtype=torch.long, device=self.device)
        self._signals: StopSignals | None = None
        self._stop = False
        self.logger = None
        self._batches, self._batches_next = None, None  # the loader iterator and the (epoch, batch) it is at
        self.resume_history: list[dict[str, Any]] = []  # every resume of the run that changed its config
        if self.resume_from is not None:
            self._restore(self.resume_from)
            if not read_health(self.resume_from):  # not judged yet: the first step will
                self.health.expect(self.resume_from, self.loss_history)
        # records past the step the run continues from are dropped (they will be logged again); a new run
        # starts its records afresh
        self.logger = MetricsLogger(self.run_dir, enabled=self.is_main, tensorboard=cfg.log.tensorboard,
                                    resume_step=self.step if self.resume_from is not None else -1,
                                    note=self._write_failure_note)
        if self.is_main:
            removed = self.ckpt.remove_partial()
            for p in removed:
                _logger.warning("removed %s, left by an interrupted save", p)
            self._write_text(self.run_dir / "config.yaml", config_to_yaml(cfg))
        if self.resume_changes:
            self.logger.log("resume", self.step, checkpoint=str(self.resume_from), changes=self.resume_changes)

    # ------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------
    def _write_failure_note(self) -> str:
        """What a failed write of the run's records leaves: said after the cause in the one-line SaveError."""
        latest = self.ckpt.latest()
        return (f"; the run stops, the last checkpoint {latest} is intact (--resume auto continues from it once "
                "there is room)" if latest else "; the run stops (no checkpoint had been saved yet)")

    def _write_text(self, path: Path, text: str) -> None:
        """Write a file of the run atomically; a failure is the one-line SaveError of every writer."""
        with guarded_write(str(path), self._write_failure_note):
            atomic_write(path, lambda p: Path(p).write_text(text))

    def _find_resume(self) -> Path | None:
        r = self.cfg.resume
        existing = self.ckpt.latest()
        if r is None:
            if existing is not None:
                raise CheckpointError(f"{self.run_dir} already holds a run (checkpoint {existing.name}); pass "
                                      "--resume auto to continue it, or choose another --output-dir")
            return None
        if r == "auto":
            if existing is None:
                if self.is_main:
                    _logger.info("resume auto: no checkpoint in %s, starting a new run", self.run_dir)
                return None
            for ckpt in self.ckpt.candidates():
                problem = self.ckpt.verify(ckpt)
                if problem is None:
                    return ckpt
                if self.is_main:
                    _logger.warning("resume auto: skipping the damaged checkpoint %s: %s", ckpt, problem)
            raise CheckpointError(f"no intact checkpoint in {self.ckpt.dir} to resume from (each is damaged, see "
                                  "the warnings above); start a new run in another --output-dir")
        ckpt = resolve_resume_dir(r)
        problem = self.ckpt.verify(ckpt)
        if problem is not None:
            raise CheckpointError(f"cannot resume from {ckpt}: {problem}; pass an older checkpoint or --resume auto")
        return ckpt

    def _setup_batches(self) -> None:
        o, world = self.cfg.optim, self.dist.world_size
        micro = o.micro_batch or o.batch_size // world
        if micro < 1 or o.batch_size % (micro * world):
            raise ConfigError(f"optim.batch_size {o.batch_size} is not a multiple of optim.micro_batch ({micro}) x "
                              f"{world} process(es); choose a micro_batch that divides batch_size / {world}")
        self.micro_batch = micro
        self.accum_steps = o.batch_size // (micro * world)
        a = self.cfg.aug
        if self.task == "finetune" and (a.mixup > 0 or a.cutmix > 0) and micro % 2:
            raise ConfigError(f"mixup/cutmix pair images within a batch: optim.micro_batch must be even, got {micro}")

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.mean, self.std = normalization(d.stats, cfg.model.in_chans, d.mean, d.std)
        where = dict(rank=self.dist.rank, world=self.dist.world_size, device=self.device)
        train = build_pipeline(cfg, d.train_split, True, self.micro_batch, **where)
        self.train_set, self.train_loader, self.train_sampler = train.dataset, train.loader, train.sampler
        self.train_pipeline = train  # its to_device: copy (+ normalise 8-bit), or data.decode gpu's decode + crops
        self.classes = dataset_classes(self.train_set)
        self.val_set = self.val_loader = None
        if d.val_split:
            val = build_pipeline(cfg, d.val_split, False, self.micro_batch, class_map=class_names_to_map(self.classes),
                                 **where)
            self.val_set, self.val_loader = val.dataset, val.loader
        per_rank = len(self.train_sampler.base) if self.train_sampler is not None else len(self.train_set)
        self.steps_per_epoch = per_rank // self.micro_batch // self.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"the training split holds {per_rank} image(s) per process, fewer than one batch of "
                              f"{self.micro_batch * self.accum_steps}; lower optim.batch_size or use more data")
        self.total_steps = self.steps_per_epoch * cfg.optim.epochs
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))

    def _num_classes(self) -> int:
        n = self.cfg.data.num_classes
        if self.classes is not None:
            if n is not None and n != len(self.classes):
                raise ConfigError(f"data.num_classes is {n} but the training split has {len(self.classes)} classes "
                                  f"({', '.join(self.classes[:5])}...); drop data.num_classes or fix the dataset")
            n = len(self.classes)
        if n is None:
            raise ConfigError(f"cannot tell the number of classes of {self.cfg.data.dataset}; set data.num_classes")
        if n < 2:
            raise DataError(f"the training split of {self.cfg.data.root} has {n} class; fine-tuning needs labelled "
                            "images in at least two class folders")
        return n

    def _build_model(self) -> None:
        cfg = self.cfg
        self.num_classes = None if self.task == "pretrain" else self._num_classes()
        model = build_model_from_config(cfg, self.num_classes)
        self.init_info = None
        if cfg.init and self.resume_from is None:
            self.init_info = load_init_weights(model, cfg.init)
            if self.is_main:
                _logger.info("initialised from %s (%s)", self.init_info["source"], self.init_info["architecture"])
        self.model = model.to(self.device)
        self.ema = None
        if cfg.ema.decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
        # activation checkpointing, then DDP / FSDP2 (armvision.train.parallel); self.model stays the
        # module that is saved (sharded in place under FSDP2), self.ddp the DDP wrapper when there is one
        self.par = parallelize(self.model, cfg, self.dist)
        self.ddp = self.par.forward if self.par.kind == "ddp" else None
        self.objective = build_objective(cfg, self.num_classes)
        # the module a training step calls (DDP wrapper included, as torch recommends); self.model keeps the weights
        self.train_module = CompiledModule(self.ddp or self.model, compile_enabled(cfg.compile, self.device),
                                           cfg.compile_backend,
                                           compile_mode(cfg.compile_mode, self.device, self.dist.world_size))

    def _build_optimization(self) -> None:
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.warmup_steps, self.cfg.optim)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def _parts(self) -> TrainingParts:
        """What the checkpoint manager saves and restores beside the loop state."""
        return TrainingParts(self.model, self.optimizer, self.scheduler, self.ema,
                             sharded=self.cfg.parallel == "fsdp", fsdp_model=self.par.sharded, device=self.device)

    def _loop_state(self) -> dict[str, Any]:
        """The loop's position and counters, as a checkpoint keeps them (the manager adds the optimizer, the
        scheduler and the RNG states)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "micro_batch": self.micro_batch,
            "world_size": self.dist.world_size,
            "no_decay": self.cfg.optim.no_decay,  # the parameter groups the optimizer state is laid out in
            "best_metric": self.best_metric,
            "skipped_images": self.skipped_images,
            "unreadable_files": self.unreadable_files,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "loss_history": [[s, v] for s, v in self.loss_history],
            "resume_history": self.resume_history,
            "armvision_version": __version__,
        }

    def _model_extra_config(self) -> dict[str, Any]:
        return {"training": config_to_dict(self.cfg), "classes": self.classes, "step": self.step, "epoch": self.epoch,
                "task": self.task, "armvision_version": __version__}

    def save_checkpoint(self, is_best: bool = False, metrics: dict[str, Any] | None = None) -> Path:
        """Checkpoint the current step; ``metrics``: the evaluation made at this step, if one was.

        First the non-finite checks (the run stops as diverged rather than save bad weights); a failed
        save raises CheckpointError on every rank, the previous checkpoint staying the latest."""
        self._check_nonfinite(self.epoch)
        if not self._state_finite():  # the run stops as diverged rather than save bad weights
            self._diverged("weights or optimizer state", float("nan"), self.epoch, at_step=self.step)
        self._sync_skipped()
        self._gather_unreadable()
        path = self.ckpt.save_training(self.step, self._parts(), self._loop_state(), self._model_extra_config(),
                                       metrics=metrics or None, is_best=is_best)
        if self.is_main:
            _logger.info("saved %scheckpoint %s", "sharded " if self.cfg.parallel == "fsdp" else "", path)
        self.health.expect(path, self.loss_history)
        return path

    def _state_finite(self) -> bool:
        """Whether the weights, the EMA weights and the optimizer state are all finite (one host read)."""
        tensors = [p for p in self.model.parameters()]
        if self.ema is not None:
            tensors += [p for p in self.ema.module.parameters()]
        tensors += [t for st in self.optimizer.state.values() for t in st.values()
                    if isinstance(t, torch.Tensor) and t.is_floating_point()]
        return state_finite(tensors, self.device)

    def _compare_resume_config(self, ckpt: Path) -> list[dict[str, Any]]:
        """Compare the config a checkpoint was trained with to this run's. What makes it another run (task, model,
        image size, channels, dataset, classes) is a CheckpointError naming it; changed data, augmentation and
        optimisation keys (a new data.root, another lr) are allowed, warned about and returned (the run records
        them: a ``resume`` record in metrics.jsonl, ``resumes`` in summary.json)."""
        try:
            saved = json.loads((ckpt / "config.json").read_text())
        except (OSError, ValueError):
            return []  # older or hand-made checkpoints: the weights' own check speaks
        before = dict(_flatten(saved.get("training") or {}))
        if not before:
            return []
        now = dict(_flatten(config_to_dict(self.cfg)))
        fixed = [k for k in _RESUME_SAME if k in before and before[k] != now.get(k)]
        if fixed:
            def show(k):
                if k == "model.args" and isinstance(before[k], dict) and isinstance(now.get(k), dict):
                    keys = sorted(set(before[k]) | set(now[k]), key=str)
                    return "; ".join(f"{k}.{a}: {before[k].get(a)} in the checkpoint, {now[k].get(a)} now"
                                     for a in keys if before[k].get(a) != now[k].get(a))
                return f"{k}: {before[k]} in the checkpoint, {now.get(k)} now"
            raise _another_run(ckpt, "; ".join(map(show, fixed)))
        changes = [{"key": k, "checkpoint": before[k], "now": now.get(k)} for k in sorted(before)
                   if k.startswith(_RESUME_RECORDED) and k not in _RESUME_IGNORED and before[k] != now.get(k)]
        if changes and self.is_main:
            _logger.warning("resuming %s with a changed config: %s (recorded in metrics.jsonl and summary.json)",
                            ckpt, "; ".join(f"{c['key']} {c['checkpoint']} -> {c['now']}" for c in changes))
        return changes

    def _compare_classes(self, ckpt: Path) -> None:
        """A fine-tuning checkpoint of other classes (the same dataset, other folders) is another run's."""
        try:
            saved = json.loads((ckpt / "config.json").read_text()).get("classes")
        except (OSError, ValueError, AttributeError):
            return
        if self.task != "pretrain" and saved and self.classes and list(saved) != list(self.classes):
            raise _another_run(ckpt, f"classes: {len(saved)} ({', '.join(saved[:3])}...) in the checkpoint, "
                                     f"{len(self.classes)} ({', '.join(self.classes[:3])}...) now")

    def _restore(self, ckpt: Path) -> None:
        self._compare_classes(ckpt)
        state = self.ckpt.load_state(ckpt)
        self.resume_history = list(state.get("resume_history", []))
        if self.resume_changes:
            self.resume_history.append({"step": int(state["step"]), "checkpoint": str(ckpt),
                                        "changes": self.resume_changes})
        saved_rule = state.get("no_decay", "mamba")  # checkpoints written before the rule was a choice: mamba
        if saved_rule != self.cfg.optim.no_decay:
            raise CheckpointError(f"{ckpt} was trained with optim.no_decay {saved_rule} (its optimizer state is "
                                  f"grouped by that weight decay rule); resume it with --optim.no_decay {saved_rule}")
        if state.get("micro_batch") != self.micro_batch or state.get("world_size") != self.dist.world_size:
            if state.get("batch_in_epoch", 0):
                raise CheckpointError(
                    f"{ckpt} was saved mid-epoch with micro_batch {state.get('micro_batch')} on "
                    f"{state.get('world_size')} process(es); resume it with the same, or from an end-of-epoch "
                    "checkpoint")
        self.ckpt.restore_training(ckpt, self._parts(), state, self.dist.rank, self.dist.world_size)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.best_metric = state.get("best_metric")
        self.skipped_images = int(state.get("skipped_images", 0))
        self.unreadable_files = list(state.get("unreadable_files", []))
        self.images_seen = int(state.get("images_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.loss_history = [(int(s), float(v)) for s, v in state.get("loss_history", [])]
        if self.is_main:
            _logger.info("resumed from %s at step %d (epoch %d)", ckpt, self.step, self.epoch)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    @property
    def current_lr(self) -> float:
        """The lr of the groups with scale 1 (the peak group under layer decay)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.objective(self.train_module.module, images, labels)

    def _scan_scope(self):
        """The scan launch settings of model.scan around a step (read when torch.compile traces it)."""
        s = self.cfg.model.scan
        return ops.scan_config(**{k: v for k, v in (("states", s.states), ("seg", s.seg)) if v is not None})

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of one micro-batch, its gradient (scaled for accumulation) added to the parameters'."""
        def step():
            with self._scan_scope(), autocast_for(self.device, self.cfg.precision):
                loss = self._loss(images, labels)
            with self._scan_scope():
                (loss / self.accum_steps).backward()
            return loss

        def reset():
            for p in self.params:
                p.grad = None

        return self.train_module.guard(step, reset)

    def _prepare_batch(self, batch, index: int):
        """A loader batch -> (images, labels on the device, unreadable files): run by the
        :class:`~armvision.data.DeviceFeeder`, ahead of the step, on its own CUDA stream. ``index``: the
        micro-batch's position in the run; data.decode gpu draws the batch's crops from a generator seeded
        with it, so they do not depend on how far ahead the feeder runs (exact resume)."""
        images, labels, sk = batch
        generator = None
        if self.train_pipeline.batch_transform is not None:
            seed = np.random.SeedSequence([self.cfg.seed, self.dist.rank, index]).generate_state(2, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
        images, failed = self.train_pipeline.to_device(images, sk.names, self.device, generator)
        files = sk.files + [sk.names[i] if sk.names else f"sample {i} of a batch" for i in failed]
        return images, labels.to(self.device, non_blocking=True), files

    def _feeder(self, epoch: int, start_micro: int) -> DeviceFeeder:
        """The training batches from ``epoch``'s micro-batch ``start_micro`` on, prepared on the device one
        step ahead, in a thread on a GPU. Not in a thread when something in this process draws from the global
        random state while preparing (the transforms with ``data.workers: 0``, data.decode gpu's random
        erasing): a thread running ahead would make the draws depend on timing, and checkpoints would save a
        random state advanced by the batches prepared ahead."""
        tf = self.train_pipeline.batch_transform
        in_workers = getattr(self.train_loader, "num_workers", 0) > 0
        thread = self.device.type == "cuda" and in_workers and getattr(tf, "erase", None) is None
        first = epoch * self.steps_per_epoch * self.accum_steps + start_micro
        return DeviceFeeder(iter(self.train_loader), self._prepare_batch, self.device, first_index=first, thread=thread)

    def _close_batches(self) -> None:
        if self._batches is not None:
            self._batches.close()
        self._batches, self._batches_next = None, None

    def _spanning_batches(self, epoch: int, start_micro: int):
        """The training batches from ``epoch``'s micro-batch ``start_micro`` on: one loader iterator runs
        through all remaining epochs (no drain and refill of the workers' prefetch at each boundary,
        :class:`~armvision.data.ResumableSampler`); it is made anew only when the last one did not end
        exactly where this epoch starts (the first epoch of this process, a resume)."""
        if self._batches_next != (epoch, start_micro):
            self._close_batches()  # its thread stops reading the sampler before the sampler changes
            per_epoch = self.steps_per_epoch * self.accum_steps * self.micro_batch
            self.train_sampler.set_epoch(epoch, start=start_micro * self.micro_batch, until=self.cfg.optim.epochs,
                                         per_epoch=per_epoch)
            self._batches = self._feeder(epoch, start_micro)
        self._batches_next = None  # valid again only once this epoch is consumed to its end
        return self._batches

    def _train_epoch(self, epoch: int, stop_step: int, bar: tqdm | None) -> None:
        """Train ``epoch`` from where it stands to its end, ``stop_step`` or a stop signal: each step is
        :meth:`_train_step`, then the window's log line, the progress bar, the signal check and the step-cadence
        save."""
        batches = self._epoch_batches(epoch)
        self.model.train()
        window = _Window(self.device)
        step_number = torch.full((), float(self.step), dtype=torch.float64, device=self.device)  # see _Step
        last: _Step | None = None
        for _ in range(self.batch_in_epoch // self.accum_steps, self.steps_per_epoch):
            if self.step >= stop_step:
                break
            last = self._train_step(batches, epoch, step_number)
            window.add(last, self.micro_batch * self.dist.world_size * self.accum_steps)
            log_now = self._should_log(stop_step)
            self._show_progress(bar, window, last.lr, stop_step, log_now)
            if log_now:
                self._log_window(window, last.lr, last.grad_norm, epoch)
                window.reset()
            if self._signalled(last):  # every rank finishes this step, then all save (in fit) and exit
                break
            if self._should_save(stop_step):
                self.save_checkpoint()  # the end of an epoch or run saves in fit(), with its metrics
        if window.steps:  # the rest of the epoch's steps, with the lr and gradient norm of its last step
            self._log_window(window, last.lr, last.grad_norm, epoch)
        if self._epoch_done():
            self._batches_next = (epoch + 1, 0)  # the loader iterator goes on into the next epoch
        self._check_nonfinite(epoch)
        self._sync_skipped()

    def _epoch_batches(self, epoch: int):
        """The iterator of ``epoch``'s training batches from the micro-batch the run is at."""
        start_micro = self.batch_in_epoch
        if self.train_sampler is not None:
            return self._spanning_batches(epoch, start_micro)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        if start_micro and self.is_main:
            _logger.warning("resuming mid-epoch on a streaming dataset: it cannot skip what this epoch already "
                            "saw, so epoch %d starts over from its first shard (steps still end on schedule)",
                            epoch + 1)
        self._close_batches()
        self._batches = self._feeder(epoch, start_micro)
        return self._batches

    def _train_step(self, batches, epoch: int, step_number: torch.Tensor) -> _Step:
        """One optimizer step: ``accum_steps`` micro-batches forward and backward, the gradient norm (clipped),
        the flags all ranks agree on (non-finite, unreadable images, stop signal), the health records, then the
        update (skipped when non-finite), the schedule and the EMA. ``step_number``: the step counted on the
        device (a fill kernel and an add: a blocking copy from the host would wait for the GPU each step)."""
        t_step = time.time()
        self.train_module.begin_step()
        loss_sum, skipped, data_wait, started = self._accumulate(batches, epoch)
        # the gradient norm (clipping, when on) before the check: a finite loss can still give
        # non-finite gradients, which must not reach the weights either
        grad_norm = clip_grad_norm(self.params, self.cfg.optim.clip_grad or float("inf"))
        step = self._agree(loss_sum, grad_norm, skipped)
        self._skipped_dev += step.flags[1].long()
        step_number += 1
        self.health.record_step(step.bad, step_number, step.loss, grad_norm)
        if self.health.pending is not None:
            self.health.judge(torch.where(step.bad, torch.nan, step.loss))
        step.lr = self.current_lr
        self._optimizer_step(step.bad, epoch)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self.images_seen += self.micro_batch * self.dist.world_size * self.accum_steps
        self.train_seconds += time.time() - t_step
        step.data_wait = data_wait
        if started is not None:
            ended = torch.cuda.Event(enable_timing=True)
            ended.record()
            step.span = (started, ended)
        return step

    def _accumulate(self, batches, epoch: int) -> tuple[torch.Tensor, int, float, torch.cuda.Event | None]:
        """Forward and backward of the step's micro-batches (gradients synchronised on the last); returns the sum
        of their losses (on the device), the number of unreadable images among them, the host seconds spent
        waiting for the batches and, on a GPU, a CUDA event recorded once the first batch is on the device (after
        the feeder's event in stream order: the step's GPU span starts there)."""
        loss_sum = torch.zeros((), device=self.device)
        skipped = 0  # skip events of this step's batches (their files go to a host-side set)
        waited, started = 0.0, None
        for k in range(self.accum_steps):
            t_wait = time.perf_counter()
            try:
                images, labels, files = next(batches)  # on the device (see _prepare_batch)
            except StopIteration:  # a streaming split that ran short
                raise DataError(f"the training data ran out after {self.batch_in_epoch} batches of epoch "
                                f"{epoch + 1}; expected {self.steps_per_epoch * self.accum_steps}") from None
            waited += time.perf_counter() - t_wait
            if k == 0 and self.device.type == "cuda":
                started = torch.cuda.Event(enable_timing=True)
                started.record()
            if files:
                skipped += len(files)
                self._unreadable_local.update(files)
            with gradient_sync(self.par, k == self.accum_steps - 1):
                loss = self._forward_backward(images, labels)
            loss_sum += loss.detach().float()
            self.batch_in_epoch += 1
        return loss_sum, skipped, waited, started

    def _agree(self, loss_sum: torch.Tensor, grad_norm: torch.Tensor, skipped: int) -> _Step:
        """The one all-reduce of a step, before the weights change; it stays on the device: whether the loss or
        gradient norm is non-finite on any rank, the unreadable images, whether a stop signal arrived."""
        bad = ~torch.isfinite(loss_sum) | ~torch.isfinite(grad_norm.to(self.device))
        stop_here = float(self._signals is not None and self._signals.received is not None)
        host = copy_to_device(torch.tensor([float(skipped), stop_here], dtype=torch.float64), self.device)
        flags = torch.cat([bad.double().reshape(1), host])
        distributed.all_reduce_sum(flags)
        return _Step(bad=flags[0] > 0, loss=loss_sum.double() / self.accum_steps, grad_norm=grad_norm, flags=flags,
                     stop_here=stop_here)

    def _optimizer_step(self, step_bad: torch.Tensor, epoch: int) -> None:
        """The update (none for a non-finite step), the gradients cleared, the schedule advanced. Fused AdamW
        skips a flagged update on the device (found_inf, as GradScaler sets it); the foreach and for-loop
        implementations cannot, so there the flag is read on the host."""
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = step_bad.float()
            self.optimizer.step()
        elif step_bad.item():
            self._check_nonfinite(epoch)  # stops the run unless optim.skip_nonfinite allows a skip
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _should_log(self, stop_step: int) -> bool:
        return self.step % self.cfg.log.every_steps == 0 or self.step == stop_step

    def _should_save(self, stop_step: int) -> bool:
        """A step-cadence save inside the epoch (the end of an epoch or of the run saves in fit)."""
        return self._step_checkpoint_due() and not self._epoch_done() and self.step < stop_step

    def _epoch_done(self) -> bool:
        return self.batch_in_epoch >= self.steps_per_epoch * self.accum_steps

    def _signalled(self, step: _Step) -> bool:
        """Whether a stop signal reached any rank by this step (the step's agreed flag; this process's alone
        without a process group)."""
        if self.dist.distributed:
            self._stop = self._stop or bool(step.flags[2].item() > 0)
        else:
            self._stop = self._stop or step.stop_here > 0
        return self._stop

    def _show_progress(self, bar: tqdm | None, window: _Window, lr: float, stop_step: int, log_now: bool) -> None:
        if bar is None:
            return
        rate = window.images / max(time.time() - window.start, 1e-9)
        remaining = (min(stop_step, self.total_steps) - self.step) * self.cfg.optim.batch_size / max(rate, 1e-9)
        if log_now:  # the loss is read on the host only at log steps
            last = self.loss_history[-1][1] if self.loss_history else float("nan")
            bar.set_postfix_str(f"loss {last:.4f} lr {lr:.2e} {rate:.0f} img/s eta {format_duration(remaining)}",
                                refresh=False)
        bar.update(1)

    def _sync_skipped(self) -> None:
        self.skipped_images += int(self._skipped_dev.item())
        self._skipped_dev.zero_()

    def _gather_unreadable(self) -> None:
        """Merge every rank's unreadable training files into ``unreadable_files`` (one object gather: at
        checkpoint saves and at the end of the run only)."""
        gathered = distributed.union_over_ranks(self._unreadable_local)
        self.unreadable_files = sorted(gathered.union(self.unreadable_files))

    def _check_nonfinite(self, epoch: int) -> None:
        """Read the count of non-finite steps (one host read): past optim.skip_nonfinite the run stops as
        diverged; below it, a warning. The skipped steps did not change the weights."""
        verdict = self.health.check_nonfinite()
        if verdict is not None:
            what, value, at_step = verdict
            self._diverged(what, value, epoch, at_step=at_step)

    def _step_checkpoint_due(self) -> bool:
        every = self.cfg.checkpoint.every_steps
        return bool(every) and self.step % every == 0

    def _log_window(self, window: _Window, lr: float, grad_norm: torch.Tensor, epoch: int) -> None:
        t = torch.stack([window.loss, window.good, grad_norm.double().to(self.device)])
        distributed.all_reduce_sum(t[:2])
        values = t.tolist()  # the one host read of a log step
        loss = values[0] / values[1] if values[1] else float("nan")
        grad_norm = values[2]
        self._check_nonfinite(epoch)
        seconds = time.time() - window.start
        self.loss_history.append((self.step, loss))
        if len(self.loss_history) > 2000:  # a long run keeps an evenly thinned curve (first and last kept)
            self.loss_history = self.loss_history[:-1:2] + self.loss_history[-1:]
        record = {"epoch": epoch + self.batch_in_epoch / (self.steps_per_epoch * self.accum_steps), "loss": loss,
                  "lr": lr, "images_per_s": window.images / max(seconds, 1e-9), **window.timings()}
        if math.isfinite(grad_norm):
            record["grad_norm"] = grad_norm
        self.logger.log("train", self.step, **record)

    def _diverged(self, what: str, value: float, epoch: int, at_step: int | None = None) -> None:
        """Stop the run: the newest checkpoint whose weights proved good becomes the latest, so that ``--resume
        auto`` continues from it; newer ones become diverged-step_* (:meth:`Health.diverged`)."""
        at_step = self.step if at_step is None else at_step
        advice = ["lower the learning rate (optim.blr / optim.lr)"]
        if not self.cfg.optim.clip_grad:
            advice.append("set optim.clip_grad")
        if not isinstance(autocast_for(self.device, self.cfg.precision), contextlib.nullcontext):  # bf16 now
            advice.append("use precision fp32")
        error = self.health.diverged(what, value, at_step, epoch, advice)
        if self.logger is not None:
            self.logger.log("diverged", at_step, **{"loss" if what == "training loss" else "grad_norm": value},
                            epoch=epoch)
            self.logger.close()
        raise error

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the raw (and EMA) weights on the validation split."""
        if self.val_loader is None:
            return {}
        fn = evaluate_pretraining if self.task == "pretrain" else evaluate_classifier
        with gathered(self.par):  # FSDP2: the ranks' shares of the split may differ by a batch
            out = {f"{k}": v for k, v in fn(self.model, self.val_loader, self.device, self.cfg.precision).items()}
        if self.ema is not None:  # the same unreadable files: reported once
            out.update({f"ema_{k}": v for k, v in
                        fn(self.ema.module, self.val_loader, self.device, self.cfg.precision).items()
                        if not k.startswith("unreadable_")})
        return out

    def _is_best(self, metrics: dict[str, Any]) -> bool:
        if not metrics:
            return False
        if self.task == "pretrain":  # lower validation loss is better
            value = metrics["loss"]
            improved = self.best_metric is None or value < self.best_metric
        else:  # higher top-1 of the raw or the EMA weights
            value = max(metrics["top1"], metrics.get("ema_top1", -1.0))
            improved = self.best_metric is None or value > self.best_metric
        if improved:
            self.best_metric = value
            return True
        return False

    def fit(self) -> dict[str, Any]:
        """Train to the end of the schedule (or ``max_steps``); returns the summary. The records are closed and
        the output folder's lock released however it ends."""
        try:
            return self._fit()
        finally:
            try:
                self.logger.close()
            finally:
                self.lock.release()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        stop_step = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        self._announce(stop_step)
        wall0 = time.time()
        show = {"on": True, "off": False, "auto": None}[cfg.log.progress]
        saved_at = self.step if self.resume_from is not None else -1
        evaluated_at = -1
        try:
            with StopSignals(cfg.preemption_signals) as self._signals:
                saved_at, evaluated_at = self._fit_epochs(stop_step, show, saved_at, evaluated_at)
        finally:
            self._close_batches()  # the feeder's thread and the loader's workers
        self._signals = None
        if saved_at != self.step:  # nothing left to train (e.g. resumed a finished run)
            if evaluated_at != self.step:
                self.last_eval = self.evaluate()
            self.save_checkpoint(is_best=self._is_best(self.last_eval), metrics=self.last_eval)
        self._sync_skipped()
        self._gather_unreadable()
        summary = self._summary(time.time() - wall0, stop_step)
        if self.is_main and self.unreadable_files:
            n, shown = len(self.unreadable_files), self.unreadable_files[:10]
            _logger.warning("%d unreadable training file(s) were skipped (read %d time(s) in all; other images took "
                            "their places): %s%s; summary.json lists %s", n, self.skipped_images, ", ".join(shown),
                            f" and {n - len(shown)} more" if n > len(shown) else "",
                            "them" if n <= MAX_LISTED_FILES else f"the first {MAX_LISTED_FILES}")
        if self.is_main:
            self._write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
            self.logger.log("summary", self.step, **scalars)
        self.logger.close()
        return summary

    def _preempted(self, saved: bool = False) -> None:
        """Save at this step (unless ``saved`` already) and raise Preempted (the command line then exits with
        EXIT_PREEMPTED)."""
        name = self._signals.received if self._signals is not None and self._signals.received else "a stop signal"
        path = self.ckpt.dir / f"step_{self.step:08d}" if saved else self.save_checkpoint()
        self.logger.log("preempted", self.step, signal=name, checkpoint=str(path))
        self.logger.close()
        distributed.barrier()  # every rank past the save before any leaves the process group
        raise Preempted(f"stopped by {name} at step {self.step}: checkpoint {path} saved; start the same command "
                        f"with --resume auto to continue (exit status {EXIT_PREEMPTED}: requeue)", path, name)

    def _fit_epochs(self, stop_step: int, show, saved_at: int, evaluated_at: int) -> tuple[int, int]:
        cfg = self.cfg
        while self.epoch < cfg.optim.epochs and self.step < stop_step:
            if self._stop_requested():
                self._preempted(saved=saved_at == self.step)
            epoch = self.epoch
            bar = None
            if self.is_main and show is not False:
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch // self.accum_steps,
                           desc=f"{self.task} epoch {epoch + 1}/{cfg.optim.epochs}", disable=show is None and not
                           sys.stderr.isatty(), dynamic_ncols=True, leave=False, file=sys.stderr)
            try:
                self._train_epoch(epoch, stop_step, bar)
            finally:
                if bar is not None:
                    bar.close()
            epoch_done = self._epoch_done()
            if epoch_done:
                self.epoch, self.batch_in_epoch = epoch + 1, 0
            last = self.step >= stop_step
            metrics: dict[str, Any] = {}
            if (epoch_done and cfg.eval_every_epochs and self.epoch % cfg.eval_every_epochs == 0) or last:
                metrics = self.evaluate()
                evaluated_at = self.step
                if metrics:
                    self.last_eval = metrics
                    self.logger.log("eval", self.step, epoch=self.epoch,
                                    **{k: v for k, v in metrics.items() if not isinstance(v, list)})
            if self.is_main:
                _logger.info("%s epoch %d/%d step %d: %s", self.task, epoch + 1, cfg.optim.epochs, self.step,
                             self._describe(metrics))
            epoch_due = epoch_done and cfg.checkpoint.every_epochs and self.epoch % cfg.checkpoint.every_epochs == 0
            if last or epoch_due or self._step_checkpoint_due():
                self.save_checkpoint(is_best=self._is_best(metrics), metrics=metrics)
                saved_at = self.step
            if self._stop and not last:
                self._preempted(saved=saved_at == self.step)
        return saved_at, evaluated_at

    def _stop_requested(self) -> bool:
        """Whether a stop signal reached any rank (agreed by all; outside the step loop)."""
        local = float(self._signals is not None and self._signals.received is not None)
        if self.dist.distributed:
            flag = torch.tensor(local, dtype=torch.float64, device=self.device)
            local = distributed.all_reduce_sum(flag).item()
        self._stop = self._stop or local > 0
        return self._stop

    # ------------------------------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------------------------------
    def _announce(self, stop_step: int) -> None:
        if not self.is_main:
            return
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        info = {
            "task": self.task, "model": self.cfg.model.name, "trainable_params": n_params,
            "train_images": len(self.train_set), "val_images": len(self.val_set) if self.val_set is not None else 0,
            "device": str(self.device), "processes": self.dist.world_size, "batch_size": self.cfg.optim.batch_size,
            "micro_batch": self.micro_batch, "accum_steps": self.accum_steps, "peak_lr": peak_lr(self.cfg.optim),
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
            "stop_step": stop_step, "start_step": self.step,
        }
        self.logger.log("setup", self.step, **info)
        _logger.info("%s %s: %.2fM trainable parameters, %d training images on %d process(es) (%s); batch %d = %d x %d "
                     "x %d accumulation; peak lr %.3g; %d steps/epoch, %d steps%s", self.task, self.cfg.model.name,
                     n_params / 1e6, info["train_images"], self.dist.world_size, self.device, self.cfg.optim.batch_size,
                     self.micro_batch, self.dist.world_size, self.accum_steps, info["peak_lr"], self.steps_per_epoch,
                     self.total_steps, f" (stopping at step {stop_step})" if stop_step < self.total_steps else "")

    def _describe(self, metrics: dict[str, Any]) -> str:
        recent = [v for s, v in self.loss_history[-5:]]
        parts = [f"train loss {recent[-1]:.4f}" if recent else "no steps"]
        for k in ("loss", "top1", "top5", "ema_loss", "ema_top1"):
            if k in metrics:
                parts.append(f"val {k} {metrics[k]:.4f}" if "loss" in k else f"val {k} {metrics[k]:.2f}%")
        if self.skipped_images:
            parts.append(f"{self.skipped_images} unreadable image(s) skipped")
        if metrics.get("unreadable_files"):
            parts.append(f"{metrics['unreadable_files']} unreadable validation file(s) not scored")
        return ", ".join(parts)

    def _summary(self, wall: float, stop_step: int) -> dict[str, Any]:
        losses = [v for _, v in self.loss_history]
        best = self.ckpt.best()
        latest = self.ckpt.latest()
        return {
            "task": self.task,
            "status": "finished" if self.step >= self.total_steps else f"stopped at step {self.step} (max_steps)",
            "output_dir": str(self.run_dir),
            "steps": self.step,
            "total_steps": self.total_steps,
            "epochs_completed": self.epoch,
            "images_seen": self.images_seen,
            "wall_seconds": round(wall, 2),
            "train_seconds": round(self.train_seconds, 2),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "loss_min": min(losses) if losses else None,
            "loss_curve": [[s, v] for s, v in self.loss_history],
            "eval": self.last_eval,
            "skipped_images": self.skipped_images,
            **unreadable_report(self.unreadable_files),
            "resumes": self.resume_history,  # resumes that changed the config: step, checkpoint, changes
            "best_checkpoint": str(best) if best else None,
            "last_checkpoint": str(latest) if latest else None,
            "processes": self.dist.world_size,
            "device": str(self.device),
        }


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run one training (pretraining or fine-tuning, by ``cfg.task``) and return its summary."""
    return Trainer(cfg).fit()  # fit closes the records and releases the folder's lock however it ends
