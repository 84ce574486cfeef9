"""Classifiers on frozen features: a linear probe (MAE's) and a weighted k-NN (DINO's).

Both take cached features (n, c) and labels (n,); nothing here touches images or models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["topk_accuracy", "LinearProbeResult", "linear_probe", "train_linear_classifier", "KnnResult",
           "knn_classify"]


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the ``k`` highest scores (k capped at the class count)."""
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        out[f"top{k}"] = 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
    return out


@dataclass
class LinearProbeResult:
    """``best``: the sweep entry chosen on the held-out part of the training features (``selection``);
    ``sweep``: every learning rate with its held-out and test accuracies."""

    best: dict
    sweep: list[dict] = field(default_factory=list)
    selection: str = "held-out"

    def as_dict(self) -> dict:
        return {"best": self.best, "sweep": self.sweep, "selection": self.selection}


def train_linear_classifier(x: Tensor, y: Tensor, num_classes: int, lr: float, epochs: int = 30,
                            batch_size: int = 256, optimizer: str = "sgd", weight_decay: float = 0.0,
                            seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """BatchNorm1d(affine=False) + Linear on features ``x`` (n, c), trained with cross-entropy and a
    half-cosine learning rate (SGD with momentum 0.9, or AdamW). Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False), nn.Linear(x.shape[1], num_classes)).to(device)
    nn.init.trunc_normal_(model[1].weight, std=0.01)
    nn.init.zeros_(model[1].bias)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer {optimizer!r}: expected 'sgd' or 'adamw'")
    n = x.shape[0]
    steps_per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    x, y = x.to(device), y.to(device)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size] if n >= batch_size else perm
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def _scores(model: nn.Module, x: Tensor, device) -> Tensor:
    return torch.cat([model(x[i:i + 4096].to(device)).float().cpu() for i in range(0, x.shape[0], 4096)])


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                 lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0), epochs: int = 30, batch_size: int = 256,
                 optimizer: str = "sgd", weight_decay: float = 0.0, holdout: float = 0.1, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = False) -> LinearProbeResult:
    """Linear probe with a learning-rate sweep.

    Each lr trains on the training features minus a held-out fraction (``holdout``, a fixed draw), the
    best lr is chosen on that held-out part (never on the test features), and every lr's test top-1/top-5
    is reported. ``holdout=0`` trains on everything and chooses on the test features (as MAE and DINO
    report), which ``selection`` then says.
    """
    from tqdm import tqdm

    num_classes = int(max(train_y.max(), test_y.max()).item()) + 1
    n = train_x.shape[0]
    n_hold = int(round(n * holdout)) if holdout > 0 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    fit_idx, hold_idx = perm[n_hold:], perm[:n_hold]
    sweep = []
    for lr in tqdm(list(lrs), desc="linear probe lr sweep", disable=not progress, leave=False):
        model = train_linear_classifier(train_x[fit_idx], train_y[fit_idx], num_classes, lr, epochs, batch_size,
                                        optimizer, weight_decay, seed, device)
        entry = {"lr": lr, **{f"test_{k}": v for k, v in topk_accuracy(_scores(model, test_x, device), test_y).items()}}
        if n_hold:
            entry.update({f"heldout_{k}": v for k, v in
                          topk_accuracy(_scores(model, train_x[hold_idx], device), train_y[hold_idx]).items()})
        sweep.append(entry)
    key = "heldout_top1" if n_hold else "test_top1"
    best = max(sweep, key=lambda e: e[key])
    return LinearProbeResult(best, sweep, "held-out" if n_hold else "test")


@dataclass
class KnnResult:
    top1: float
    top5: float
    k: int
    temperature: float

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "k": self.k, "temperature": self.temperature}


@torch.no_grad()
def knn_classify(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024,
                 device: str | torch.device = "cpu") -> KnnResult:
    """Weighted k-NN as DINO: cosine similarity to the ``k`` nearest training features, each neighbour
    votes for its class with weight exp(similarity / temperature); top-1/top-5 of the class votes."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max()).item()) + 1
    k = min(k, train_x.shape[0])
    train = F.normalize(train_x.float(), dim=1).to(device)
    ty = train_y.to(device)
    votes = []
    for i in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[i:i + chunk].float(), dim=1).to(device)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (b, k)
        w = (sim / temperature).exp()
        v = torch.zeros(q.shape[0], num_classes, device=device)
        v.scatter_add_(1, ty[idx], w)
        votes.append(v.cpu())
    acc = topk_accuracy(torch.cat(votes), test_y)
    return KnnResult(acc["top1"], acc["top5"], k, temperature)
