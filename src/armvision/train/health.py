"""The health judgement of a run: non-finite steps, good and bad checkpoints, divergence.

- Non-finite steps: each step's "loss or gradient norm is not finite" flag is counted on the device
  (:meth:`Health.record_step`, no host read); :meth:`Health.check_nonfinite` reads the count at log steps and
  saves. Up to ``optim.skip_nonfinite`` such steps are skipped (the weights are not updated) with a warning;
  one more stops the run as diverged.
- Good checkpoints: the step after a checkpoint uses its weights. A finite loss at most
  ``checkpoint.loss_rise_factor`` times the baseline -- the best (lowest) smoothed training loss so far
  (:func:`baseline_loss`), not the recent average, which a blow-up inflates -- marks it good in its
  ``health.json`` (:func:`mark_health`), else bad.
- Divergence: :meth:`Health.diverged` makes the newest good checkpoint the latest, renames the newer ones
  ``diverged-step_*`` (:meth:`~armvision.train.checkpoint.CheckpointManager.retire_after`) and returns the
  one-line :class:`~armvision.errors.TrainingDiverged` that says what to change.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import TrainingDiverged
from ..models.io import atomic_write
from ..weights.layout import HEALTH_NAME, step_of
from . import distributed

__all__ = ["Health", "read_health", "mark_health", "last_good", "baseline_loss", "state_finite", "SMOOTHING"]

_logger = logging.getLogger("armvision.train")

SMOOTHING = 5  # logged training losses per mean of the baseline


def read_health(ckpt: Path) -> dict[str, Any]:
    """The ``health.json`` of a checkpoint ({} when it has not been judged)."""
    try:
        return json.loads((Path(ckpt) / HEALTH_NAME).read_text())
    except (OSError, ValueError):
        return {}


def mark_health(ckpt: Path, good: bool, **info: Any) -> None:
    """Record whether the weights of ``ckpt`` proved good (main process)."""
    if Path(ckpt).is_dir():
        text = json.dumps({"good": bool(good), **info}) + "\n"
        try:
            atomic_write(Path(ckpt) / HEALTH_NAME, lambda p: Path(p).write_text(text))
        except OSError:
            pass  # a note, not the checkpoint: losing it only makes the checkpoint unconfirmed


def last_good(steps: Iterable[Path], before_step: int | None = None) -> Path | None:
    """The newest of the checkpoints ``steps`` (oldest first) whose weights proved good (optionally: saved before
    ``before_step``)."""
    for d in reversed(list(steps)):
        if before_step is not None and step_of(d) >= before_step:
            continue
        if read_health(d).get("good"):
            return d
    return None


def baseline_loss(loss_history: list[tuple[int, float]]) -> float | None:
    """The baseline a checkpoint is judged against: the best (lowest) smoothed training loss so far, the
    smoothing a mean over :data:`SMOOTHING` logged losses. Not the recent average, which a blow-up inflates along
    with the losses it should be compared with."""
    finite = [v for _, v in loss_history if math.isfinite(v)]
    if not finite:
        return None
    n = SMOOTHING
    sums = np.cumsum([0.0, *finite])
    return float(min((sums[i] - sums[max(0, i - n)]) / (i - max(0, i - n)) for i in range(1, len(finite) + 1)))


class Health:
    """The health judgement of one run (see the module docstring); the trainer feeds it each step.

    Args:
        manager: the run's :class:`~armvision.train.checkpoint.CheckpointManager` (its steps, ``retire_after``).
        device: where the per-step counts live.
        skip_nonfinite: ``optim.skip_nonfinite``.
        loss_rise_factor: ``checkpoint.loss_rise_factor``.
        is_main: whether this process writes (health.json, warnings).
    """

    def __init__(self, manager, device: torch.device, skip_nonfinite: int, loss_rise_factor: float,
                 is_main: bool = True):
        self.manager = manager
        self.device = device
        self.skip_nonfinite = skip_nonfinite
        self.loss_rise_factor = loss_rise_factor
        self.is_main = is_main
        self.bad_steps = torch.zeros((), dtype=torch.long, device=device)
        self.bad_seen = 0  # the count at the last host read
        self.first_bad = torch.full((3,), -1.0, dtype=torch.float64, device=device)  # step, loss, grad norm
        self.pending: tuple[Path, float | None] | None = None  # the checkpoint the next step judges

    # -- checkpoints ----------------------------------------------------------------------------
    def expect(self, ckpt: Path, loss_history: list[tuple[int, float]]) -> None:
        """The next step judges ``ckpt`` (just saved, or resumed from before it was judged)."""
        self.pending = (ckpt, baseline_loss(loss_history))

    def judge(self, step_loss: torch.Tensor) -> None:
        """The step after a checkpoint used its weights: a finite loss not above loss_rise_factor x the baseline
        marks the checkpoint good (one host read per checkpoint). ``step_loss``: NaN for a skipped step."""
        if self.pending is None:
            return
        path, ref = self.pending
        self.pending = None
        loss = float(step_loss.item())
        factor = self.loss_rise_factor
        good = math.isfinite(loss) and (ref is None or loss <= factor * ref)
        if self.is_main:
            mark_health(path, good, next_step_loss=loss if math.isfinite(loss) else str(loss), baseline_loss=ref,
                        baseline=f"the best mean of {SMOOTHING} logged training losses so far",
                        loss_rise_factor=factor)
            if not good:
                _logger.warning("checkpoint %s is not a good one: the loss after it is %s, above %g x the best "
                                "smoothed loss so far (%s)", path.name, loss, factor, ref)

    # -- non-finite steps -----------------------------------------------------------------------
    def record_step(self, step_bad: torch.Tensor, step_number: torch.Tensor, step_loss: torch.Tensor,
                    grad_norm: torch.Tensor) -> None:
        """Count a step (on the device, no host read): ``step_bad`` its agreed non-finite flag, ``step_number`` its
        1-based number on the device; the first bad step's number, loss and gradient norm are kept."""
        self.bad_steps += step_bad.long()
        first = torch.stack([step_number, step_loss, grad_norm.double().to(self.device)])
        self.first_bad.copy_(torch.where(step_bad & (self.first_bad[0] < 0), first, self.first_bad))

    def check_nonfinite(self) -> tuple[str, float, int] | None:
        """Read the count of non-finite steps (one host read). Past ``skip_nonfinite``: (what became non-finite,
        its value, the step before it) for :meth:`diverged`; below it, a warning and None."""
        bad = int(self.bad_steps.item())
        if bad == self.bad_seen:
            return None
        step, loss, grad = (float(v) for v in self.first_bad.tolist())
        if bad > self.skip_nonfinite:
            what, value = ("training loss", loss) if not math.isfinite(loss) else ("gradient norm", grad)
            return what, value, int(step) - 1
        if self.is_main:
            _logger.warning("skipped %d step(s) with a non-finite loss or gradient norm so far (the first at step "
                            "%d); the run stops after %d (optim.skip_nonfinite)", bad, int(step), self.skip_nonfinite)
        self.bad_seen = bad
        return None

    # -- divergence -----------------------------------------------------------------------------
    def diverged(self, what: str, value: float, at_step: int, epoch: int, advice: list[str]) -> TrainingDiverged:
        """Make the newest good checkpoint the latest, so that ``--resume auto`` continues from it, the newer ones
        ``diverged-step_*`` (every process calls it); returns the error that stops the run, with ``advice``."""
        good = last_good(self.manager.steps())
        retired = self.manager.retire_after(good)
        distributed.barrier()
        where = (f"the last good checkpoint, {good}, is intact (its weights are finite and the loss after it was "
                 "not rising)" if good else "no checkpoint with good weights had been saved")
        if retired:
            where += f"; the {len(retired)} newer one(s) were renamed diverged-step_* and will not be resumed from"
        happened = ("the weights were not updated" if what != "weights or optimizer state"
                    else "its checkpoint was not saved")
        then = "resume with --resume auto" if good else "start again"
        return TrainingDiverged(
            f"the {what} became {value} at step {at_step + 1} (epoch {epoch + 1}); {happened}, "
            f"the run stops and {where}. To go on: {', '.join(advice[:-1]) + ' or ' if len(advice) > 1 else ''}"
            f"{advice[-1]}, then {then}")


def state_finite(tensors: list[torch.Tensor], device: torch.device) -> bool:
    """Whether every tensor (weights, EMA weights, optimizer state) is finite, agreed by all processes (one host
    read); DTensors (FSDP2) are checked shard by shard, each process its own."""
    if not tensors:
        return True
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    ok = torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all().double()
    return distributed.all_reduce_sum(1.0 - ok).item() == 0
