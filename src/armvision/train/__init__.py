"""Training and evaluation: configs and presets, the training loop, checkpoints, evaluation.

Python API (the command line calls the same functions)::

    from armvision.train import load_config, pretrain, finetune, evaluate_checkpoint, run_demo

    cfg = load_config("fmnist_pretrain", {"optim.epochs": 1, "output_dir": "runs/pre"})
    summary = pretrain(cfg)                       # dict: steps, losses, eval metrics, checkpoints
    ft = load_config("fmnist_finetune", {"init": "runs/pre", "output_dir": "runs/ft"})
    summary = finetune(ft)
    metrics = evaluate_checkpoint("runs/ft")       # {"results": {"raw": {...}, "ema": {...}}}
"""

from __future__ import annotations

from typing import Any

from .checkpoint import CheckpointManager, load_init_weights, resolve_model_dir, resolve_resume_dir
from .config import (
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    EmaConfig,
    FsdpConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    apply_overrides,
    config_to_dict,
    config_to_yaml,
    list_presets,
    load_config,
)
from .evaluate import evaluate_benchmarks, evaluate_checkpoint, evaluate_classifier, evaluate_pretraining
from .preemption import EXIT_PREEMPTED
from .sharded import export_checkpoint
from .trainer import Trainer, build_model_from_config, train

__all__ = [
    "EXIT_PREEMPTED",
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "AugmentConfig",
    "OptimConfig",
    "EmaConfig",
    "CheckpointConfig",
    "LogConfig",
    "FsdpConfig",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_to_yaml",
    "list_presets",
    "Trainer",
    "train",
    "pretrain",
    "finetune",
    "build_model_from_config",
    "evaluate_checkpoint",
    "evaluate_benchmarks",
    "evaluate_classifier",
    "evaluate_pretraining",
    "CheckpointManager",
    "load_init_weights",
    "resolve_model_dir",
    "resolve_resume_dir",
    "run_demo",
    "export_checkpoint",
]


def _with_task(cfg: RunConfig, task: str) -> RunConfig:
    if cfg.task != task:
        from ..errors import ConfigError

        raise ConfigError(f"this is a {cfg.task} config; call armvision.train.{cfg.task}() with it, or load a {task} "
                          "preset")
    return cfg


def pretrain(cfg: RunConfig) -> dict[str, Any]:
    """Autoregressive pretraining run; returns its summary (see :meth:`Trainer.fit`)."""
    return train(_with_task(cfg, "pretrain"))


def finetune(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tuning run (``cfg.init``: a pretraining checkpoint to start from); returns its summary."""
    return train(_with_task(cfg, "finetune"))


def run_demo(*args, **kwargs) -> dict[str, Any]:
    """The Fashion-MNIST demo (see :func:`armvision.demo.run_demo`)."""
    from ..demo import run_demo as _run_demo

    return _run_demo(*args, **kwargs)
