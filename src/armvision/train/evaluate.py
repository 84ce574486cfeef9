"""Evaluation: top-1/top-5 accuracy and loss of a classifier, loss of a pretraining model, summed
exactly over all ranks; and ``evaluate_checkpoint`` behind ``armvision eval``.

A sample that stands in for an unreadable image (:class:`armvision.data.Skips`) is not scored: it is left
out of the metrics and the image count, and the unreadable files are counted and named in the results
(``unreadable_files``, ``unreadable_file_names``)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import drop_standins, unreadable_report
from ..errors import CheckpointError, ConfigError, DataError
from ..outputs import check_output_file
from ..weights import load_model, read_config, resolve_model_dir
from . import distributed
from .config import RunConfig, training_config
from .data import build_pipeline, build_transform

__all__ = ["evaluate_classifier", "evaluate_pretraining", "evaluate_checkpoint", "evaluate_benchmarks",
           "benchmark_table", "autocast_for", "SubsetLogits"]

_logger = logging.getLogger(__name__)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on GPU ("auto" or "bf16"), plain fp32 elsewhere (or when "fp32")."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _unreadable_over_ranks(unreadable: set[str]) -> dict:
    """``unreadable_report`` of the files every rank found unreadable (one gather, after the loop)."""
    return unreadable_report(distributed.union_over_ranks(unreadable))


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device: torch.device, precision: str = "auto") -> dict[str, Any]:
    """Top-1, top-5 (%) and cross-entropy over every readable image of ``loader``, summed over all ranks;
    ``images`` counts them; ``unreadable_files`` / ``unreadable_file_names``: the files left out."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, images
    unreadable: set[str] = set()
    for images, labels, skips in loader:
        images, labels = drop_standins(images, labels, skips, unreadable)
        if not labels.numel():
            continue
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = model(images)
        logits = logits.float()
        if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
            raise DataError(f"the dataset has labels {labels.min().item()}..{labels.max().item()} but the model "
                            f"predicts {logits.shape[-1]} classes; evaluate on the dataset it was trained for")
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == labels[:, None]
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += hit[:, 0].sum()
        sums[2] += hit.any(dim=-1).sum()
        sums[3] += labels.numel()
    distributed.all_reduce_sum(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {"top1": 100.0 * sums[1].item() / n, "top5": 100.0 * sums[2].item() / n, "loss": sums[0].item() / n,
            "images": int(sums[3].item()), **_unreadable_over_ranks(unreadable)}


@torch.no_grad()
def evaluate_pretraining(model: nn.Module, loader, device: torch.device, precision: str = "auto") -> dict[str, Any]:
    """Mean next-cluster prediction loss over every readable image of ``loader``, over all ranks (``images``,
    ``unreadable_files`` and ``unreadable_file_names`` as :func:`evaluate_classifier`)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    unreadable: set[str] = set()
    for images, labels, skips in loader:
        images, labels = drop_standins(images, labels, skips, unreadable)
        if not labels.numel():
            continue
        images = images.to(device, non_blocking=True)
        with autocast_for(device, precision):
            loss = model(images)
        sums[0] += loss.double() * images.shape[0]
        sums[1] += images.shape[0]
    distributed.all_reduce_sum(sums)
    model.train(was_training)
    return {"loss": sums[0].item() / max(sums[1].item(), 1.0), "images": int(sums[1].item()),
            **_unreadable_over_ranks(unreadable)}


def _load_for_eval(model_dir: Path, device: torch.device) -> nn.Module:
    """:func:`armvision.load_model` on ``device`` (a config naming no model, or weights damaged or not fitting it,
    are CheckpointErrors already), with a missing file reported as one too."""
    try:
        return load_model(model_dir, map_location=device)
    except OSError as e:
        raise CheckpointError(f"cannot load the model in {model_dir}: {e}") from None


class SubsetLogits(nn.Module):
    """A classifier whose logits are only those of the head columns ``indices`` (in that order): how a test set
    of a subset of the classes (ImageNet-A, -R) is scored."""

    def __init__(self, model: nn.Module, indices: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).index_select(-1, self.indices.to(images.device))


@dataclass
class _Checkpoint:
    """What evaluating a checkpoint needs: its model directory and config, the run config (its training config
    with the overrides), the processes, the model's input size and channels and its class names."""

    model_dir: Path
    config: dict
    run_cfg: RunConfig
    info: Any
    img_size: int
    in_chans: int
    classes: list[str] | None

    @classmethod
    def open(cls, checkpoint: str | Path, overrides: dict[str, Any] | None) -> "_Checkpoint":
        model_dir = resolve_model_dir(checkpoint)
        config = read_config(model_dir)
        run_cfg = training_config(config.get("training"), overrides, f"{model_dir}/config.json")
        info = distributed.setup(run_cfg.device)
        args = config.get("args", {})
        size = args.get("img_size", run_cfg.model.img_size)
        size = size[0] if isinstance(size, list) else int(size)
        return cls(model_dir, config, run_cfg, info, size, int(args.get("in_chans", run_cfg.model.in_chans)),
                   config.get("classes"))

    def weights(self, weights: str) -> list[tuple[str, Path]]:
        """(name, model directory) of the weights to evaluate: "raw", "ema" or "both" (EMA where there are some)."""
        if weights not in ("raw", "ema", "both"):
            raise ConfigError(f"bad value for weights: {weights!r}; allowed: 'raw', 'ema', 'both'")
        ema = self.model_dir / "ema"
        if weights == "ema" and not (ema / "config.json").is_file():
            raise CheckpointError(f"{self.model_dir} has no EMA weights (no ema/ folder); use --weights raw")
        out = [("raw", self.model_dir)] if weights in ("raw", "both") else []
        return out + ([("ema", ema)] if weights != "raw" and (ema / "config.json").is_file() else [])


def evaluate_checkpoint(checkpoint: str | Path, overrides: dict[str, Any] | None = None, split: str | None = None,
                        batch_size: int = 256, weights: str = "both", output: str | Path | None = None) -> dict:
    """Evaluate a checkpoint (model directory, checkpoint folder or run directory) on a dataset split.

    The data settings default to those the checkpoint was trained with (its config.json); ``overrides``
    (``{"data.root": ..., "data.dataset": ...}``) change them. ``weights``: "raw", "ema" or "both"
    (EMA only where the checkpoint has an ``ema/`` folder). Returns
    ``{"checkpoint", "split", "results": {"raw": {...}, "ema": {...}}, "unreadable_files": n,
    "unreadable_file_names": [...]}`` (the files of the split that could not be read, left out of every
    result's metrics and ``images``; the first ``MAX_LISTED_FILES`` names, sorted) and writes it to ``output``
    (JSON).
    """
    if weights not in ("raw", "ema", "both"):
        raise ConfigError(f"bad value for weights: {weights!r}; allowed: 'raw', 'ema', 'both'")
    if batch_size < 1:
        raise ConfigError(f"bad value for batch size: {batch_size}; expected 1 or more")
    if output is not None:
        check_output_file(output, "--output", "eval.json", "nothing was evaluated")  # before, not after it
    ck = _Checkpoint.open(checkpoint, overrides)
    run_cfg, info, model_dir = ck.run_cfg, ck.info, ck.model_dir
    dcfg = run_cfg.data
    split = split or dcfg.val_split
    if not split:
        raise ConfigError("no split to evaluate: pass --split NAME (the checkpoint's config has no data.val_split)")
    arch = ck.config.get("architecture")
    classes = ck.classes
    chosen = ck.weights(weights)
    loader = build_pipeline(run_cfg, split, False, batch_size, rank=info.rank, world=info.world_size,
                            device=info.device, class_map={c: i for i, c in enumerate(classes)} if classes else None,
                            img_size=ck.img_size, in_chans=ck.in_chans, persistent_workers=False).loader
    results: dict[str, dict] = {}
    unreadable = unreadable_report([])
    for name, d in chosen:
        model = _load_for_eval(d, info.device)
        t0 = time.time()
        if arch == "ARMPretrain":
            results[name] = evaluate_pretraining(model, loader, info.device, run_cfg.precision)
        else:
            if getattr(model, "num_classes", 0) <= 0:
                raise CheckpointError(f"{d} is a classifier without a head (num_classes 0): nothing to evaluate")
            results[name] = evaluate_classifier(model, loader, info.device, run_cfg.precision)
        results[name]["seconds"] = round(time.time() - t0, 2)
        unreadable = {k: results[name].pop(k) for k in unreadable}  # the same files for every weights
    out = {"checkpoint": str(model_dir), "architecture": arch, "dataset": dcfg.dataset, "root": dcfg.root,
           "split": split, "results": results, **unreadable}
    if output is not None and info.is_main:
        from ..models.io import atomic_write

        atomic_write(output, lambda p: Path(p).write_text(json.dumps(out, indent=2) + "\n"))
    return out


BENCHMARK_METRIC = "top-1 accuracy (%); ImageNet-A and -R over their 200 classes' logits, the others over all 1000"


def evaluate_benchmarks(checkpoints: str | Path | list[str | Path], benchmarks: dict[str, str | Path],
                        overrides: dict[str, Any] | None = None, batch_size: int = 256, weights: str = "both",
                        output: str | Path | None = None) -> dict:
    """Evaluate classifiers of the 1000 ImageNet classes on ImageNet's validation folder and its robustness test
    sets (:mod:`armvision.data.benchmarks`): ``benchmarks`` maps a benchmark name ("imagenet", "imagenet-a",
    "imagenet-r", "imagenet-sketch", "imagenet-v2") to its folder.

    Each checkpoint's images go through its evaluation transform (its training config's ``data.*`` settings,
    ``overrides`` applied; the reference's by default) at its input size. ``weights`` as
    :func:`evaluate_checkpoint`. Returns ``{"metric", "benchmarks": {name: {"title", "root", "classes"}},
    "rows": [{"checkpoint", "weights", "results": {name: {"top1", "top5", "loss", "images", "classes", "logits",
    ...}}}], "table"}`` (``classes``: the class folders scored; ``logits``: the head columns a prediction is the
    best of; ``table``: :func:`benchmark_table`) and writes it to ``output`` (JSON).
    """
    from ..data import make_loader
    from ..data.benchmarks import BENCHMARKS, benchmark_folders, benchmark_labels, build_benchmark_dataset
    from ..data.loader import auto_workers

    checkpoints = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not checkpoints:
        raise ConfigError("no checkpoint to evaluate")
    if not benchmarks:
        raise ConfigError(f"no benchmark to evaluate; name one or more of {', '.join(BENCHMARKS)}")
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark {unknown[0]!r}; expected one of {', '.join(BENCHMARKS)}")
    if batch_size < 1:
        raise ConfigError(f"bad value for batch size: {batch_size}; expected 1 or more")
    if output is not None:
        check_output_file(output, "--output", "benchmarks.json", "nothing was evaluated")
    folders = {b: benchmark_folders(b, root) for b, root in benchmarks.items()}  # every layout checked first
    rows = []
    for checkpoint in checkpoints:
        ck = _Checkpoint.open(checkpoint, overrides)
        if ck.config.get("architecture") == "ARMPretrain":
            raise CheckpointError(f"{ck.model_dir} is a pretraining model; the benchmarks score classifiers")
        chosen = ck.weights(weights)
        d, info = ck.run_cfg.data, ck.info
        transform = build_transform(ck.run_cfg, False, ck.img_size, ck.in_chans)
        workers = auto_workers() if d.workers == "auto" else d.workers
        models = {name: _load_for_eval(path, info.device) for name, path in chosen}
        results: dict[str, dict] = {name: {} for name in models}
        for bench, root in benchmarks.items():
            num_classes = getattr(next(iter(models.values())), "num_classes", 0)
            class_map, columns = benchmark_labels(bench, folders[bench], ck.classes, num_classes)
            ds = build_benchmark_dataset(bench, root, transform, class_map, ck.in_chans, d.strict_images)
            loader, _ = make_loader(ds, batch_size, train=False, workers=workers,
                                    pin_memory=d.pin_memory and info.device.type == "cuda", persistent_workers=False,
                                    seed=ck.run_cfg.seed, rank=info.rank, world_size=info.world_size)
            for name, model in models.items():
                scored = model if columns is None else SubsetLogits(model, columns)
                t0 = time.time()
                r = evaluate_classifier(scored, loader, info.device, ck.run_cfg.precision)
                results[name][bench] = {**r, "classes": len(class_map), "logits": len(columns or range(num_classes)),
                                        "seconds": round(time.time() - t0, 2)}
        rows += [{"checkpoint": str(ck.model_dir), "weights": name, "results": results[name]} for name in models]
    out = {"metric": BENCHMARK_METRIC,
           "benchmarks": {b: {"title": BENCHMARKS[b].title, "root": str(root), "classes": len(folders[b])}
                          for b, root in benchmarks.items()},
           "rows": rows}
    out["table"] = benchmark_table(out)
    if output is not None and distributed.is_main_process():
        from ..models.io import atomic_write

        atomic_write(output, lambda p: Path(p).write_text(json.dumps(out, indent=2) + "\n"))
    return out


def benchmark_table(out: dict) -> str:
    """The results of :func:`evaluate_benchmarks` as the paper's table (Markdown): a row per model (and weights),
    a column per benchmark (IN-1k, IN-A, IN-R, IN-Sketch, IN-V2, as evaluated), top-1 accuracy in %."""
    from ..data.benchmarks import BENCHMARKS

    names = [b for b in BENCHMARKS if b in out["benchmarks"]]
    several = len({r["weights"] for r in out["rows"]}) > 1
    lines = ["| model | " + " | ".join(BENCHMARKS[b].column for b in names) + " |",
             "|---" + "|---:" * len(names) + "|"]
    for row in out["rows"]:
        label = row["checkpoint"] + (f" ({row['weights'].upper() if row['weights'] == 'ema' else 'raw'})"
                                     if several else "")
        cells = [f"{row['results'][b]['top1']:.2f}" if b in row["results"] else "-" for b in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
