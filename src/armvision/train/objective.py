"""What a training step minimises, one component per task, built from the run's config.

:class:`PretrainingObjective`: the pretraining model's own loss (next-cluster prediction; the model
computes it from the images). :class:`ClassificationObjective`: timm's Mixup/CutMix on the batch
(when ``aug.mixup`` or ``aug.cutmix`` is on) and the matching criterion: SoftTargetCrossEntropy
after mixing, LabelSmoothingCrossEntropy with ``aug.smoothing``, else cross-entropy.
Each is called as ``objective(model, images (b, c, h, w), labels (b,)) -> loss ()``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AugmentConfig, RunConfig

__all__ = ["PretrainingObjective", "ClassificationObjective", "build_objective"]


class PretrainingObjective:
    """The model's own loss: ``model(images)`` returns it (labels are unused)."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(images)


class ClassificationObjective:
    """Mixup/CutMix (optional) then the criterion on the logits, in fp32."""

    def __init__(self, aug: AugmentConfig, num_classes: int):
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.mixup = None
        if aug.mixup > 0 or aug.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                               switch_prob=aug.mixup_switch_prob, mode="batch", label_smoothing=aug.smoothing,
                               num_classes=num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif aug.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        return self.criterion(model(images).float(), labels)


def build_objective(cfg: RunConfig, num_classes: int | None = None):
    """The objective of ``cfg.task`` (fine-tuning needs ``num_classes``)."""
    if cfg.task == "pretrain":
        return PretrainingObjective()
    if num_classes is None:
        raise ValueError("a classification objective needs num_classes")
    return ClassificationObjective(cfg.aug, num_classes)
