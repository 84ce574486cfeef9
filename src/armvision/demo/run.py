"""The embedded demo: does autoregressive pretraining help on Fashion-MNIST?

A small ARM is pretrained through the ordinary training code (:func:`armvision.train.train`; ``pretrain``: it
learns to predict the next cluster of patches of the training images, labels unused), then evaluated in one or
both of two ways, as the profile's ``evaluate`` says (:mod:`.profiles`):

* ``probe``, the frozen-feature protocol: the pretrained encoder's features (the profile's ``probe.features``:
  the last block's token map, flattened, or pooled) under a linear probe and a weighted k-NN
  (:func:`armvision.analysis.probe_model`), trained on the labelled training images and scored on the test
  images; beside it the same encoder at random initialisation (same architecture, same seed, no training) and
  the raw pixels, under the same two classifiers.
* ``finetune``: the classifier initialised from the pretrained encoder is fine-tuned on a labelled subset, and the
  same classifier is trained from random weights (``scratch``) with the same labelled subset, recipe and number
  of steps, except layer-wise lr decay, which only makes sense for pretrained layers (on this budget it lowered
  the from-scratch accuracy by two points, so the baseline runs without it). Both are evaluated on the test
  images at the end of their run (raw and EMA weights; no model selection on the test set). A reference point a
  reader knows sits beside them: a linear classifier on the raw pixels of the same labelled images
  (:func:`armvision.analysis.baseline.pixel_linear_baseline`).

Each run has its own run directory under the demo's output folder. The result tables are printed and saved
(``demo_results.json``, ``demo_results.md``), each with a verdict computed from the numbers
(:func:`probe_verdict`, :func:`demo_verdict`): ARM counts as better only when it is above both baselines by more
than the profile's measured seed noise.
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

__all__ = ["run_demo", "stage_config", "format_table", "demo_verdict", "probe_verdict"]

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


def _finetune_lines(results: dict[str, Any]) -> list[str]:
    rows = results["runs"]
    lines = [
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
              f"({results['setup']['layer_decay']}) for the pretrained model only"]
    if base:
        lines.append("verdict: " + demo_verdict(ft.get("top1"), sc.get("top1"), base["top1"],
                                                 (results.get("seed_noise") or {}).get("finetune"),
                                                 results["profile"]))
    return lines


_PROBE_ROWS = (("arm", "ARM-pretrained encoder (frozen)"), ("random_init", "the same encoder at random init (frozen)"),
               ("pixels", "raw pixels, no network"))


def _probe_lines(results: dict[str, Any]) -> list[str]:
    probe = results["probe"]
    rows = probe["rows"]
    pre = results["runs"]["pretrain"]
    loss = (f"pretraining: {pre['steps']} steps, {pre['images_seen']} images seen, {pre['wall_seconds']:.0f} s, train "
            f"loss {_fmt(pre.get('loss_first'), '.4f')} -> {_fmt(pre.get('loss_last'), '.4f')} "
            f"{_sparkline([v for _, v in pre.get('loss_curve', [])])}")
    lines = [] if "finetune" in results["runs"] else [loss, ""]  # else the fine-tuning table has a row for it
    lines += [f"frozen features ({probe['features_label']}): a linear probe and a weighted k-NN trained on "
              f"{probe['train_images']} labelled training images, scored on {probe['test_images']} test images",
              "",
              "| features of | dim | linear probe top-1 | k-NN top-1 | time |",
              "|---|---|---|---|---|"]
    for key, label in _PROBE_ROWS:
        r = rows[key]
        lines.append(f"| {label} | {r['feature_dim']} | {r['linear_probe_top1']:.2f} | {r['knn_top1']:.2f} "
                     f"| {r['seconds']:.0f} s |")
    noise = results.get("seed_noise") or {}
    lines.append("")
    for method, key, name in (("linear probe", "linear_probe_top1", "linear_probe"), ("k-NN", "knn_top1", "knn")):
        lines.append(f"verdict ({method}): " + probe_verdict(method, rows["arm"][key], rows["random_init"][key],
                                                            rows["pixels"][key], noise.get(name), results["profile"]))
    return lines


def format_table(results: dict[str, Any]) -> str:
    """The demo's result tables as Markdown (also readable as plain text): the frozen-feature evaluation and/or
    fine-tuning against from scratch, each with its verdict, then the total wall time."""
    lines = [
        f"ARM demo on Fashion-MNIST ({results['profile']} profile, {results['device']}): "
        f"{results['setup']['model']}",
        "",
    ]
    if results.get("probe"):
        lines += _probe_lines(results) + [""]
    if "finetune" in results["runs"]:
        lines += _finetune_lines(results) + [""]
    lines.append(f"total wall time {results['wall_seconds']:.0f} s; {results['note']}")
    return "\n".join(lines)


def _verdict(subject: str, arm: float, baselines: dict[str, float], numbers: str, seed_noise: float | None,
             profile: str) -> str:
    """The verdict sentence: ``subject`` ("ARM is", "the pretrained features are") against ``baselines`` ({name:
    top-1}; the first is the same architecture without pretraining), by more than ``seed_noise`` or not."""
    if profile == "smoke":
        return f"no verdict: the smoke profile runs a few steps and measures nothing ({numbers})"
    best_name, best = max(baselines.items(), key=lambda kv: kv[1])
    gap = arm - best
    if seed_noise is None:
        if gap > 0:
            return (f"{subject} ahead of {best_name} by {gap:.2f} points, but this profile's seed noise was not "
                    f"measured, so the gap is not shown to be real: {numbers}")
        return f"pretraining does NOT beat {best_name} ({gap:+.2f} points): {numbers}"
    if gap > seed_noise:
        return (f"pretraining helps: {subject} above both baselines by more than the seed noise "
                f"({gap:.2f} > {seed_noise:.2f} points over the stronger one, {best_name}): {numbers}")
    if gap > 0:
        return (f"NOT shown: {subject} ahead of {best_name} by {gap:.2f} points, within the seed noise "
                f"({seed_noise:.2f}): {numbers}")
    same_name, same = next(iter(baselines.items()))
    if best_name != same_name and arm - same > seed_noise:
        return (f"pretraining beats {same_name} ({arm - same:+.2f} points, more than the seed noise "
                f"{seed_noise:.2f}) but does NOT beat {best_name} ({gap:+.2f} points): {numbers}")
    return f"pretraining does NOT beat {best_name} ({gap:+.2f} points; seed noise {seed_noise:.2f}): {numbers}"


def probe_verdict(method: str, arm_top1: float | None, random_top1: float | None, pixel_top1: float | None,
                  seed_noise: float | None, profile: str) -> str:
    """One plain sentence computed from the numbers of one frozen-feature classifier (``method``: "linear probe" or
    "k-NN"): are the ARM-pretrained encoder's features above both the same encoder's at random init and the raw
    pixels, by more than the seed noise (None: not measured, and then no difference is called real)?"""
    if arm_top1 is None or random_top1 is None or pixel_top1 is None:
        return "no verdict: a probe did not report its test accuracy"
    numbers = (f"ARM-pretrained {arm_top1:.2f}, random init {random_top1:.2f}, raw pixels {pixel_top1:.2f} "
               f"({method}, same labelled and test images)")
    return _verdict("the pretrained features are", arm_top1,
                    {"the random-init encoder": random_top1, "the raw pixels": pixel_top1}, numbers, seed_noise,
                    profile)


def demo_verdict(arm_top1: float | None, scratch_top1: float | None, pixel_top1: float | None,
                 seed_noise: float | None, profile: str) -> str:
    """One plain sentence computed from the numbers: is pretraining + fine-tuning above both the same classifier
    trained from scratch and a linear classifier on the same labelled pixels, by more than the seed noise?

    ``seed_noise``: the margin (test top-1 points) a difference must exceed to count, measured for the profile
    over seeds (docs/analysis.md); None where it was not measured, and then no difference is called real.
    """
    if arm_top1 is None or scratch_top1 is None or pixel_top1 is None:
        return "no verdict: a run did not report its test accuracy"
    numbers = (f"pretraining + fine-tuning {arm_top1:.2f}, from scratch {scratch_top1:.2f}, "
               f"a linear classifier on the raw pixels {pixel_top1:.2f} (same labelled images, same test images)")
    return _verdict("ARM is", arm_top1, {"training from scratch": scratch_top1,
                                         "a linear classifier on the raw pixels": pixel_top1},
                    numbers, seed_noise, profile)


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


_FEATURE_LABELS = {"tokens": "the last block's token map after the final norm, flattened",
                   "pooled": "the mean of the last block's tokens after the final norm"}


def _probe_row(res: dict[str, Any], t0: float) -> dict[str, Any]:
    """One row of the probe table from a :func:`~armvision.analysis.probe_features` result."""
    return {"feature_dim": res["feature_dim"], "linear_probe_top1": res["linear_probe"]["best"]["test_top1"],
            "linear_probe_lr": res["linear_probe"]["best"]["lr"], "knn_top1": res["knn"]["top1"],
            "seconds": round(time.time() - t0, 1)}


def _probe_stage(pre_cfg, pretrained: Path, settings, data_root: str | None, device: str, seed: int) -> dict[str, Any]:
    """The frozen-feature evaluation: the pretrained encoder, the same architecture at random init (seeded as the
    pretraining run was), and the raw pixels of the same images, each under the same linear probe and k-NN."""
    from ..analysis import KnnSettings, LinearProbeSettings, probe_features, probe_model
    from ..analysis._load import load_for_analysis
    from ..analysis.baseline import fashion_mnist_pixels
    from ..analysis.features import data_setup
    from ..train.trainer import build_model_from_config, seed_everything

    lin = LinearProbeSettings(lrs=settings.lrs, epochs=settings.epochs)
    knn = KnnSettings(k=settings.k)
    loaded = load_for_analysis(pretrained, device)
    cfg = data_setup(loaded.training, {"data.root": data_root})
    seed_everything(seed)
    random_model = build_model_from_config(pre_cfg).to(device).eval()
    rows: dict[str, Any] = {}
    probe: dict[str, Any] = {}
    for key, model in (("arm", loaded.model), ("random_init", random_model)):
        _logger.info("demo probe: %s", dict(_PROBE_ROWS)[key])
        t0 = time.time()
        res = probe_model(model, cfg, linprobe=lin, knn=knn, train_subset=settings.train_subset,
                          test_subset=settings.test_subset, device=device, seed=seed, features=settings.features)
        rows[key] = _probe_row(res, t0)
        probe.update(train_images=res["train_images"], test_images=res["test_images"])
    _logger.info("demo probe: %s", dict(_PROBE_ROWS)["pixels"])
    t0 = time.time()
    x, y = fashion_mnist_pixels(cfg.data.root, "train", settings.train_subset, cfg.data.subset_seed)
    xt, yt = fashion_mnist_pixels(cfg.data.root, "test", settings.test_subset, cfg.data.subset_seed)
    res = {"feature_dim": x.shape[1], **probe_features(x, y, xt, yt, linprobe=lin, knn=knn, device=device, seed=seed)}
    rows["pixels"] = _probe_row(res, t0)
    if (len(y), len(yt)) != (probe["train_images"], probe["test_images"]):
        raise RuntimeError("the pixel baseline drew other images than the probes")  # a bug, not a user error
    return {**probe, "features": settings.features, "features_label": _FEATURE_LABELS[settings.features],
            "settings": {"lrs": list(lin.lrs), "epochs": lin.epochs, "holdout": lin.holdout, "k": knn.k,
                         "temperature": knn.temperature}, "rows": rows}


def run_demo(output_dir: str | Path = "runs/demo", profile: str = "auto", data_root: str | None = None,
             device: str = "auto", seed: int = 0, workers: int | None = None) -> dict[str, Any]:
    """Run the demo; returns ``{"table", "runs", "probe", "paths", ...}`` (also written to output_dir)."""
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
    finetuning = "finetune" in prof.evaluate
    # every config is resolved (and checked) before anything is written
    configs = {"pretrain": stage_config(profile, "pretrain", {**common, "output_dir": str(out / "pretrain")})}
    if finetuning:
        configs["finetune"] = stage_config(profile, "finetune", {**common, "output_dir": str(out / "finetune"),
                                                                 "init": str(out / "pretrain")})
        configs["scratch"] = stage_config(profile, "scratch", {**common, "output_dir": str(out / "scratch")})
    _prepare_output(out)
    if profile == "gpu":
        _logger.info("GPU present: running the longer 'gpu' profile (%s)", prof.description)
    pre_cfg = configs["pretrain"]
    ft_cfg = configs.get("finetune")
    labels = (ft_cfg.data.train_subset or 60000) if ft_cfg else 0
    runs: dict[str, Any] = {}

    def stage(name: str, label: str, n_labels: int) -> None:
        _logger.info("demo stage %s: %s", name, label)
        runs[name] = {**train(configs[name]), "label": label, "labels": n_labels}

    stage("pretrain", "ARM pretraining (no labels)", 0)
    probe = baseline = None
    if "probe" in prof.evaluate:
        probe = _probe_stage(pre_cfg, out / "pretrain", prof.probe, data_root, runs["pretrain"]["device"], seed)
    if finetuning:
        stage("finetune", "fine-tune from ARM", labels)
        stage("scratch", "from scratch", labels)
        _logger.info("demo reference: a linear classifier on the raw pixels of the same %d labelled images", labels)
        baseline = pixel_linear_baseline(data_root, ft_cfg.data.train_subset, ft_cfg.data.subset_seed, seed,
                                         test_subset=ft_cfg.data.val_subset)
    m = pre_cfg.model
    geometry = (f"{m.name} {m.args.get('embed_dim')} wide, {m.args.get('depth')} blocks; {m.img_size}x{m.img_size} "
                f"grayscale, {m.args.get('patch_size')}px patches, clusters of {m.args.get('cluster_size')}x"
                f"{m.args.get('cluster_size')} patches")
    setup = {"model": geometry, "pretrain_images": pre_cfg.data.train_subset or 60000, "evaluate": list(prof.evaluate)}
    if ft_cfg:
        setup.update(finetune_labels=labels, test_images=ft_cfg.data.val_subset or 10000,
                     layer_decay=ft_cfg.optim.layer_decay)
    results = {
        "profile": profile,
        "profile_description": prof.description,
        "device": runs["pretrain"]["device"],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if has_gpu else None},
        "setup": setup,
        "wall_seconds": round(time.time() - t0, 1),
        "note": prof.description,
        "runs": runs,
        "probe": probe,
        "baseline": baseline,
        "seed_noise": dict(prof.seed_noise),
        "configs": {name: config_to_dict(cfg) for name, cfg in configs.items()},
    }
    table = format_table(results)
    results["table"] = table
    paths = {"json": str(out / _MARKER), "markdown": str(out / "demo_results.md")}
    atomic_write(paths["json"], lambda p: Path(p).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(paths["markdown"], lambda p: Path(p).write_text(table + "\n"))
    results["paths"] = paths
    return results
