"""Optimizer and learning-rate schedule of the ARM recipes.

AdamW over parameter groups built by timm, with the weight decay of one of two rules (``optim.no_decay``):

- ``"reference"`` (the ARM code's): no decay on 1-D parameters and biases, and on the names the model lists in
  ``no_weight_decay()`` (the reference models list ``pos_embed`` and ``cls_token``); everything else is
  decayed, ``A_log`` and its direction copies, ``ar_token`` and the 2-D embeddings included. The reference
  pretrains with timm's ``add_weight_decay`` (no skip list; its position embeddings are frozen, so the list
  changes nothing there) and fine-tunes with MAE's ``param_groups_lrd`` (1-D parameters and the model's list).
- ``"mamba"``: also none on the parameters Mamba marks ``_no_weight_decay`` (``A_log``, ``D`` and every
  direction's copies), on position embeddings and on the tokens (``cls_token``, ``ar_token``).

Optional layer-wise lr decay (timm's ``param_groups_layer_decay`` with the classifier's ``group_matcher``:
the reference's scales). Frozen parameters (the fixed sin-cos embeddings of pretraining) are in no group.
The learning rate is ``blr * batch / 256``, warmed up linearly per optimizer step, then decayed by
a half-cosine to ``min_lr``.
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from .config import OptimConfig

__all__ = ["NO_DECAY_RULES", "MAMBA_NO_DECAY_TOKENS", "no_decay_names", "peak_lr", "build_param_groups",
           "build_optimizer", "WarmupCosine", "WarmupCosineSchedule", "build_scheduler"]


def peak_lr(cfg: OptimConfig) -> float:
    """The absolute lr: ``cfg.lr`` if set, else ``blr * batch_size / 256`` (global batch)."""
    return cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256


NO_DECAY_RULES = ("reference", "mamba")
# the names the "mamba" rule exempts beyond the marked parameters
MAMBA_NO_DECAY_TOKENS = ("pos_embed", "cls_token", "ar_token", "dec_pos_embed")


def no_decay_names(model: nn.Module, rule: str = "reference") -> set[str]:
    """Names exempt from weight decay beyond the 1-D parameters and biases (which every rule exempts):
    the model's ``no_weight_decay()``, and with ``rule="mamba"`` also the parameters marked
    ``_no_weight_decay`` and the position embeddings and tokens of :data:`MAMBA_NO_DECAY_TOKENS`."""
    if rule not in NO_DECAY_RULES:
        raise ValueError(f"weight decay rule {rule!r}: expected one of {', '.join(NO_DECAY_RULES)}")
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if rule == "mamba":
        for n, p in model.named_parameters():
            if getattr(p, "_no_weight_decay", False) or n in MAMBA_NO_DECAY_TOKENS:
                names.add(n)
    return names


def build_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                       no_decay: str = "reference") -> list[dict]:
    """Trainable parameters in groups with ``weight_decay`` and ``lr_scale`` (1 without layer decay);
    ``no_decay``: the rule of :func:`no_decay_names` ("reference" or "mamba")."""
    no_wd = no_decay_names(model, no_decay)
    if layer_decay is not None and layer_decay < 1.0:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"layer-wise lr decay needs a model with group_matcher(); {type(model).__name__} has none")
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=no_wd, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_wd)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device | str | None = None) -> torch.optim.AdamW:
    """AdamW with each group's lr = peak lr * its lr_scale (the scheduler multiplies it per step).

    ``device`` (default: the model's): the fused kernel on a GPU (one launch for all parameters),
    the multi-tensor (foreach) implementation elsewhere; the same arithmetic and state either way."""
    lr = peak_lr(cfg)
    groups = build_param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.no_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    impl = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), **impl)


class WarmupCosine:
    """lr factor of optimizer step ``s`` (0-based): linear warm-up to 1 over ``warmup_steps``
    ((s + 1) / warmup_steps, so the first step already moves), then a half-cosine from 1 down to
    ``min_lr / peak_lr`` at ``total_steps``."""

    def __init__(self, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float):
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_factor = min_lr / peak_lr if peak_lr > 0 else 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """The per-step learning rate of a run: each group's lr is ``peak_lr * lr_scale * factor(step)``
    (:class:`WarmupCosine`), ``step`` counting the optimizer steps done.

    Call :meth:`step` after each optimizer step. The schedule is built from the *current* run's
    config and only its step count is state: resuming with more epochs stretches the cosine, and the
    step count continues (:meth:`load_state_dict`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, peak_lr: float,
                 min_lr: float):
        self.optimizer = optimizer
        self.factor = WarmupCosine(total_steps, warmup_steps, peak_lr, min_lr)
        self.base_lrs = [peak_lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> list[float]:
        """The lr of each parameter group for optimizer step ``step`` (0-based)."""
        f = self.factor(step)
        return [base * f for base in self.base_lrs]

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step)):
            g["lr"] = lr

    def step(self) -> None:
        """One optimizer step done: set the lrs of the next one."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved step count; also reads the LambdaLR state of earlier checkpoints."""
        if "step" in state:
            step = state["step"]
        elif "last_epoch" in state:  # torch LambdaLR (armvision before the schedule had its own state)
            step = state["last_epoch"]
        else:
            raise ValueError(f"not a learning-rate schedule state (keys {sorted(state)})")
        self.last_step = int(step)
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    cfg: OptimConfig) -> WarmupCosineSchedule:
    """The run's :class:`WarmupCosineSchedule` (call ``.step()`` after each optimizer step)."""
    return WarmupCosineSchedule(optimizer, total_steps, warmup_steps, peak_lr(cfg), cfg.min_lr)
