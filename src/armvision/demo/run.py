"""The embedded demo: does autoregressive pretraining help on Fashion-MNIST?

Three runs through the ordinary training code (:func:`armvision.train.train`), each in its own run
directory under the demo's output folder:

1. ``pretrain``: a small ARM learns to predict the next cluster of patches of the training images
   (labels unused);
2. ``finetune``: the classifier initialised from it is fine-tuned on a labelled subset;
3. ``scratch``: the same classifier from random weights, with the same labelled subset, recipe and
   number of steps, except layer-wise lr decay, which only makes sense for pretrained layers (on this
   budget it lowered the from-scratch accuracy by two points, so the baseline runs without it).

Both classifiers are evaluated on the 10000 test images at the end of their run (raw and EMA
weights; no model selection on the test set). A fourth row is a reference point a reader knows: a linear
classifier (logistic regression) on the raw pixels of the same labelled images, evaluated on the same test
images (:func:`armvision.analysis.baseline.pixel_linear_baseline`). The result table is printed and saved
(``demo_results.json``, ``demo_results.md``), with a verdict line computed from the numbers
(:func:`demo_verdict`): ARM counts as better only when it is above both from scratch and the pixel classifier by
more than the profile's measured seed noise.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..analysis.baseline import pixel_linear_baseline
from ..errors import ConfigError
from ..models.io import atomic_write
from ..train.config import config_to_dict, load_config
from ..train.trainer import train
from .profiles import PROFILES

__all__ = ["run_demo", "stage_config", "format_table", "demo_verdict"]

_logger = logging.getLogger(__name__)


_STAGES = ("pretrain", "finetune", "scratch")
_MARKER = "demo_results.json"


def _prepare_output(out: Path) -> None:
    """Replace an earlier demo in ``out``; refuse to touch a folder that holds anything else."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise ConfigError(f"demo output {out} exists and is not a folder; choose another --output-dir")
    entries = {p.name for p in out.iterdir()}
    ours = set(_STAGES) | {_MARKER, "demo_results.md"}
    if entries - ours:
        raise ConfigError(f"demo output folder {out} holds other files ({', '.join(sorted(entries - ours)[:5])}); "
                          "choose an empty or new --output-dir (an earlier demo there would be replaced)")
    for name in entries:
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _sparkline(values: list[float], width: int = 16) -> str:
    if not values:
        return ""
    if len(values) > width:  # evenly spaced samples, last one included
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    bars = "▁▂▃▄▅▆▇█"
    return "".join(bars[0 if hi == lo else round((v - lo) / (hi - lo) * (len(bars) - 1))] for v in values)


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def format_table(results: dict[str, Any]) -> str:
    """The demo's result table as Markdown (also readable as plain text)."""
    rows = results["runs"]
    lines = [
        f"ARM demo on Fashion-MNIST ({results['profile']} profile, {results['device']}): "
        f"{results['setup']['model']}",
        "",
        "| run | labels | steps | images seen | wall time | train loss first -> last (min) | loss curve "
        "| test top-1 raw | test top-1 EMA | test loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _STAGES:
        r = rows[name]
        ev = r.get("eval") or {}
        loss = (f"{_fmt(r['loss_first'], '.4f')} -> {_fmt(r['loss_last'], '.4f')} ({_fmt(r['loss_min'], '.4f')})"
                if r.get("loss_first") is not None else "-")
        lines.append(
            f"| {r['label']} | {r['labels']} | {r['steps']} | {r['images_seen']} | {r['wall_seconds']:.0f} s | {loss} "
            f"| {_sparkline([v for _, v in r.get('loss_curve', [])])} "
            f"| {_fmt(ev.get('top1'), '.2f')} | {_fmt(ev.get('ema_top1'), '.2f')} | {_fmt(ev.get('loss'), '.4f')} |"
        )
    base = results.get("baseline")
    if base:
        lines.append(f"| linear classifier on raw pixels | {base['labels']} | - | - | {base['seconds']:.0f} s | - | - "
                     f"| {base['top1']:.2f} | - | - |")
    ft, sc = rows["finetune"].get("eval") or {}, rows["scratch"].get("eval") or {}
    lines += ["", f"pretraining + fine-tuning vs from scratch (same fine-tuning budget): top-1 "
                  f"{_fmt(ft.get('top1'), '.2f')} vs {_fmt(sc.get('top1'), '.2f')} "
                  f"(EMA {_fmt(ft.get('ema_top1'), '.2f')} vs {_fmt(sc.get('ema_top1'), '.2f')}); "
                  f"test split: {results['setup']['test_images']} images",
              "the same labelled images, steps and recipe for both, except layer-wise lr decay "
              f"({results['setup']['layer_decay']}) for the pretrained model only",
              f"total wall time {results['wall_seconds']:.0f} s; {results['note']}"]
    if base:
        lines.append("verdict: " + demo_verdict(ft.get("top1"), sc.get("top1"), base["top1"],
                                                 results.get("seed_noise"), results["profile"]))
    return "\n".join(lines)


def demo_verdict(arm_top1: float | None, scratch_top1: float | None, pixel_top1: float | None,
                 seed_noise: float | None, profile: str) -> str:
    """One plain sentence computed from the numbers: is pretraining + fine-tuning above both the same classifier
    trained from scratch and a linear classifier on the same labelled pixels, by more than the seed noise?

    ``seed_noise``: the margin (test top-1 points) a difference must exceed to count, measured for the profile
    over seeds (docs/analysis.md); None where it was not measured, and then no difference is called real.
    """
    if arm_top1 is None or scratch_top1 is None or pixel_top1 is None:
        return "no verdict: a run did not report its test accuracy"
    others = {"training from scratch": scratch_top1, "a linear classifier on the raw pixels": pixel_top1}
    best_name, best = max(others.items(), key=lambda kv: kv[1])
    gap = arm_top1 - best
    numbers = (f"pretraining + fine-tuning {arm_top1:.2f}, from scratch {scratch_top1:.2f}, "
               f"a linear classifier on the raw pixels {pixel_top1:.2f} (same labelled images, same test images)")
    if profile == "smoke":
        return f"no verdict: the smoke profile runs a few steps and measures nothing ({numbers})"
    if seed_noise is None:
        if gap > 0:
            return (f"pretraining + fine-tuning is ahead of {best_name} by {gap:.2f} points, but this profile's seed "
                    f"noise was not measured, so the gap is not shown to be real: {numbers}")
        return f"pretraining does NOT beat {best_name} ({gap:+.2f} points): {numbers}"
    if gap > seed_noise:
        return (f"pretraining helps: ARM is above both baselines by more than the seed noise "
                f"({gap:.2f} > {seed_noise:.2f} points over the stronger one, {best_name}): {numbers}")
    if gap > 0:
        return (f"NOT shown: ARM is ahead of {best_name} by {gap:.2f} points, within the seed noise "
                f"({seed_noise:.2f}): {numbers}")
    over_scratch = arm_top1 - scratch_top1
    if best_name != "training from scratch" and over_scratch > seed_noise:
        return (f"pretraining beats training from scratch ({over_scratch:+.2f} points, more than the seed noise "
                f"{seed_noise:.2f}) but does NOT beat {best_name} ({gap:+.2f} points): {numbers}")
    return f"pretraining does NOT beat {best_name} ({gap:+.2f} points; seed noise {seed_noise:.2f}): {numbers}"


_PRESETS = {"pretrain": ("fmnist_pretrain", "pretrain"), "finetune": ("fmnist_finetune", "finetune"),
            "scratch": ("fmnist_finetune", "finetune")}


def stage_config(profile: str, stage: str, overrides: dict[str, Any]):
    """The resolved config of one demo stage (``pretrain``, ``finetune`` or ``scratch``): its preset, the profile's
    overrides, then ``overrides``. From scratch runs without layer-wise lr decay: it protects pretrained layers, and
    from scratch there are none (on the demo's budget it only slowed the early blocks)."""
    preset, task = _PRESETS[stage]
    prof = PROFILES[profile]
    values = {**(prof.pretrain if task == "pretrain" else prof.finetune), **overrides}
    if stage == "scratch":
        values["optim.layer_decay"] = None
    return load_config(preset, values, task=task)


def run_demo(output_dir: str | Path = "runs/demo", profile: str = "auto", data_root: str | None = None,
             device: str = "auto", seed: int = 0, workers: int | None = None) -> dict[str, Any]:
    """Run the demo; returns ``{"table", "runs", "paths", ...}`` (also written to output_dir)."""
    t0 = time.time()
    has_gpu = torch.cuda.is_available() and device != "cpu"
    if profile == "auto":
        profile = "gpu" if has_gpu else "cpu"
    if profile not in PROFILES:
        raise ConfigError(f"unknown demo profile {profile!r}; choose auto, {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    out = Path(output_dir)
    common = {"seed": seed, "device": device, "data.root": data_root}
    if workers is not None:
        common["data.workers"] = workers
    # every config is resolved (and checked) before anything is written
    pre_cfg = stage_config(profile, "pretrain", {**common, "output_dir": str(out / "pretrain")})
    ft_cfg = stage_config(profile, "finetune", {**common, "output_dir": str(out / "finetune"),
                                                "init": str(out / "pretrain")})
    sc_cfg = stage_config(profile, "scratch", {**common, "output_dir": str(out / "scratch")})
    _prepare_output(out)
    if profile == "gpu":
        _logger.info("GPU present: running the longer 'gpu' profile (%s)", prof.description)
    labels = ft_cfg.data.train_subset or 60000
    runs: dict[str, Any] = {}
    for name, cfg, label, n_labels in (
        ("pretrain", pre_cfg, "ARM pretraining (no labels)", 0),
        ("finetune", ft_cfg, "fine-tune from ARM", labels),
        ("scratch", sc_cfg, "from scratch", labels),
    ):
        _logger.info("demo stage %s: %s", name, label)
        summary = train(cfg)
        runs[name] = {**summary, "label": label, "labels": n_labels}
    _logger.info("demo reference: a linear classifier on the raw pixels of the same %d labelled images", labels)
    baseline = pixel_linear_baseline(data_root, ft_cfg.data.train_subset, ft_cfg.data.subset_seed, seed,
                                     test_subset=ft_cfg.data.val_subset)
    m = pre_cfg.model
    geometry = (f"{m.name} {m.args.get('embed_dim')} wide, {m.args.get('depth')} blocks; {m.img_size}x{m.img_size} "
                f"grayscale, {m.args.get('patch_size')}px patches, clusters of {m.args.get('cluster_size')}x"
                f"{m.args.get('cluster_size')} patches")
    results = {
        "profile": profile,
        "profile_description": prof.description,
        "device": runs["finetune"]["device"],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if has_gpu else None},
        "setup": {"model": geometry, "pretrain_images": pre_cfg.data.train_subset or 60000,
                  "finetune_labels": labels, "test_images": ft_cfg.data.val_subset or 10000,
                  "layer_decay": ft_cfg.optim.layer_decay},
        "wall_seconds": round(time.time() - t0, 1),
        "note": ("GPU present: longer 'gpu' schedule (8 pretraining epochs, 10 fine-tuning epochs)" if profile == "gpu"
                 else prof.description),
        "runs": runs,
        "baseline": baseline,
        "seed_noise": prof.seed_noise,
        "configs": {"pretrain": config_to_dict(pre_cfg), "finetune": config_to_dict(ft_cfg),
                    "scratch": config_to_dict(sc_cfg)},
    }
    table = format_table(results)
    results["table"] = table
    paths = {"json": str(out / _MARKER), "markdown": str(out / "demo_results.md")}
    atomic_write(paths["json"], lambda p: Path(p).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(paths["markdown"], lambda p: Path(p).write_text(table + "\n"))
    results["paths"] = paths
    return results
