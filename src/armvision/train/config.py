"""Run configuration: one tree of dataclasses, filled from a preset, a YAML file and flags.

This module is the schema: where every config key is defined (the dataclasses below, with their
defaults and help texts), the packaged presets, :func:`load_config` and the range checks of
:func:`validate_config`. Reading YAML, type checks, dotted overrides and flag parsing are generic
(:mod:`armvision.configtree`, which also documents the one override syntax).

A run is described by :class:`RunConfig`. Its values come, in this order (later wins), from the
dataclass defaults, a packaged preset or a YAML file (``--config``), and overrides: on the command
line ``--optim.lr 1e-3`` / ``--optim.lr=1e-3``; in Python a dict ``{"optim.lr": 1e-3}`` or the same
flags as a list (``["--optim.lr", "1e-3"]`` or ``["optim.lr=1e-3"]``). Every key is checked: an
unknown key or a value of the wrong type or range raises :class:`~armvision.errors.ConfigError`
naming the key and what is allowed. The resolved config is written beside the run's outputs
(``config.yaml``).

The paper's recipes are data files in ``armvision/train/presets`` (see :func:`list_presets`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

from ..configtree import apply_overrides as _apply_overrides
from ..configtree import describe_keys as _describe_keys
from ..configtree import from_dict, parse_overrides, read_yaml, to_dict, to_yaml
from ..configtree import option as _f
from ..errors import ConfigError

__all__ = [
    "ScanConfig",
    "ModelConfig",
    "DataConfig",
    "AugmentConfig",
    "OptimConfig",
    "EmaConfig",
    "CheckpointConfig",
    "LogConfig",
    "FsdpConfig",
    "RunConfig",
    "list_presets",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "training_config",
    "config_to_dict",
    "config_to_yaml",
    "validate_config",
    "describe_keys",
    "parse_cli_overrides",
]

Task = Literal["pretrain", "finetune"]


@dataclass
class ScanConfig:
    states: Union[Literal["recompute", "save"], None] = _f(None, "the selective scan's chunk states between forward "
                                                                "and backward: 'recompute' (less memory) or 'save' "
                                                                "(no recompute); null: the kernels' default")
    seg: Union[int, None] = _f(None, "chunks per saved scan state (k > 1: the backward rebuilds the others; less "
                                     "memory at long sequences); null: the kernels' default (1)")


@dataclass
class ModelConfig:
    name: str = _f("arm_base_pz16", "registry name (arm_tiny_pz16 ... arm_huge_pz16)")
    img_size: int = _f(224, "input resolution in pixels (square)")
    in_chans: int = _f(3, "image channels: 3 (RGB) or 1 (grayscale; images are converted to 'L')")
    drop_path: float = _f(0.0, "stochastic depth rate of the encoder")
    args: dict[str, Any] = _f(help="further constructor arguments of the model, checked against its config "
                                   "(armvision.models.config; the model.args.* keys below), e.g. "
                                   "--model.args.embed_dim 128", factory=dict)
    scan: ScanConfig = _f(factory=ScanConfig)


@dataclass
class DataConfig:
    dataset: str = _f("imagefolder", "'imagefolder' (ROOT/TRAIN_SPLIT/CLASS/*.jpg, a folder or a .tar), "
                                     "'fashion_mnist' (the idx files), or a timm reader such as 'wds/NAME' "
                                     "(webdataset shards + _info.json) or 'hfds/NAME' (a local Hugging Face dataset)")
    root: Union[str, None] = _f(None, "dataset location (fashion_mnist: defaults to Debian's "
                                      "/usr/share/datasets/fashion-mnist)")
    train_split: str = _f("train", "split to train on")
    val_split: Union[str, None] = _f("val", "split to evaluate on during training (null: none)")
    num_classes: Union[int, None] = _f(None, "classes of the head (null: from the dataset)")
    stats: Literal["imagenet", "fashion_mnist", "half"] = _f("imagenet", "normalisation mean/std preset")
    mean: Union[tuple[float, ...], None] = _f(None, "per-channel mean (overrides 'stats')")
    std: Union[tuple[float, ...], None] = _f(None, "per-channel std (overrides 'stats')")
    train_subset: Union[int, None] = _f(None, "train on this many images only (a fixed random subset, "
                                              "drawn with subset_seed)")
    val_subset: Union[int, None] = _f(None, "evaluate on this many images only (fixed random subset)")
    subset_seed: int = _f(0, "seed of the subset draws (independent of the run's seed)")
    workers: Union[int, Literal["auto"]] = _f(8, "data loader worker processes per device (0: load in the main "
                                                  "process; 'auto': this node's CPU cores per training process, "
                                                  "minus one, at most 32)")
    pin_memory: bool = _f(True, "pin host memory of batches (used only with a GPU)")
    persistent_workers: bool = _f(True, "keep loader workers alive between epochs")
    strict_images: bool = _f(False, "an unreadable image stops the run (default: skipped with a warning "
                                    "and counted in the summary)")
    eval_crop_pct: Union[float, None] = _f(None, "evaluation: resize to img_size / eval_crop_pct, then center-crop "
                                                 "img_size; null: the reference's, 224/256 up to 224 px, 1.0 above")
    eval_resize: Literal["squash", "shorter"] = _f("squash", "evaluation resize: 'squash' both sides to "
                                                             "img_size / eval_crop_pct (the reference code's), or "
                                                             "'shorter': the shorter side, keeping the aspect ratio")
    interpolation: Literal["bicubic", "bilinear", "nearest"] = _f("bicubic", "resize interpolation")
    resize_backend: Literal["torch", "pillow"] = _f(
        "torch", "training crops (decode cpu): 'torch' decodes RGB JPEGs with torchvision and resizes the 8-bit "
                 "crop with PyTorch's antialiased kernels (the same draws and filter as Pillow's, values equal to "
                 "rounding; the pretraining loader 2.2x faster), 'pillow' keeps timm's Pillow pipeline as the "
                 "reference code; nearest always uses Pillow")
    decode: Literal["cpu", "gpu"] = _f("cpu", "training images: 'cpu' (PIL in the loader workers) or 'gpu' (JPEGs "
                                              "decoded and cropped on the GPU in batches, pretraining transform and "
                                              "random erasing; no RandAugment)")
    normalize: Literal["auto", "workers", "device"] = _f(
        "auto", "where training images are normalised: 'workers' (float batches from the loader), 'device' (the "
                "loader sends 8-bit batches, a quarter of the bytes to pass and copy, normalised on the device), "
                "'auto' (device on a GPU, unless random erasing runs in the workers)")


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = _f((0.08, 1.0), "RandomResizedCrop area range")
    ratio: tuple[float, float] = _f((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range")
    hflip: float = _f(0.5, "horizontal flip probability")
    auto_augment: Union[str, None] = _f(None, "timm RandAugment/AutoAugment policy, e.g. rand-m9-mstd0.5-inc1 "
                                              "(fine-tuning only)")
    color_jitter: Union[float, None] = _f(None, "color jitter strength when auto_augment is off (fine-tuning only)")
    reprob: float = _f(0.0, "random erasing probability (fine-tuning only)")
    remode: Literal["pixel", "rand", "const"] = _f("pixel", "random erasing fill")
    mixup: float = _f(0.0, "mixup alpha (0: off)")
    cutmix: float = _f(0.0, "cutmix alpha (0: off)")
    mixup_prob: float = _f(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on")
    smoothing: float = _f(0.0, "label smoothing")


@dataclass
class OptimConfig:
    epochs: int = _f(100, "training epochs (the schedule's length)")
    warmup_epochs: float = _f(5.0, "linear warm-up, in epochs (counted in optimizer steps)")
    batch_size: int = _f(1024, "global batch: micro_batch x devices x accumulation steps (lr scales with it)")
    micro_batch: Union[int, None] = _f(None, "images per device per forward pass (null: batch_size / devices, "
                                             "no accumulation); gradients are accumulated up to batch_size")
    blr: float = _f(5e-4, "base learning rate: lr = blr * batch_size / 256")
    lr: Union[float, None] = _f(None, "absolute learning rate (overrides blr)")
    min_lr: float = _f(1e-6, "learning rate at the end of the half-cosine")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas")
    weight_decay: float = _f(0.05, "AdamW weight decay (none on 1-D parameters and biases, and on what "
                                   "optim.no_decay adds)")
    no_decay: Literal["reference", "mamba"] = _f(
        "mamba", "parameters without weight decay beyond the 1-D ones and biases: 'reference' (the ARM code's, set by "
                 "the ARM presets: only the model's no_weight_decay() names, pos_embed and cls_token; A_log, "
                 "ar_token and the embeddings are decayed) or 'mamba' (also A_log, D of every direction, position "
                 "embeddings and tokens); the schema default 'mamba' keeps configs written without this key "
                 "meaning what they meant, and a checkpoint resumes only under the rule it was trained with")
    layer_decay: Union[float, None] = _f(None, "layer-wise lr decay (fine-tuning; null: off)")
    clip_grad: Union[float, None] = _f(None, "clip the gradient norm to this (null: off)")
    skip_nonfinite: int = _f(0, "steps with a non-finite loss or gradient norm that are skipped (no weight update) "
                                "before the run stops as diverged (0: the first one stops it)")


@dataclass
class EmaConfig:
    decay: Union[float, None] = _f(None, "EMA of the weights with this decay per optimizer step (null: off)")
    warmup: bool = _f(False, "timm's EMA decay warm-up (useful for short runs)")


@dataclass
class CheckpointConfig:
    every_epochs: int = _f(1, "save a checkpoint every N epochs (0: only at the end)")
    every_steps: int = _f(0, "also save every N optimizer steps (0: off)")
    keep_last: int = _f(2, "keep the N most recent checkpoints (the best one is kept as well)")
    loss_rise_factor: float = _f(3.0, "a checkpoint counts as good when the loss of the step after it is finite and "
                                      "at most this factor times the best smoothed loss so far (the lowest mean of "
                                      "5 logged training losses; divergence names the newest good one)")


@dataclass
class LogConfig:
    every_steps: int = _f(20, "log training metrics every N optimizer steps")
    tensorboard: bool = _f(True, "write TensorBoard event files (OUTPUT_DIR/tensorboard)")
    progress: Literal["auto", "on", "off"] = _f("auto", "progress bar (auto: only on a terminal)")


# sharding and activation checkpointing (armvision.train.parallel, docs/scaling.md)
@dataclass
class FsdpConfig:
    cpu_offload: bool = _f(False, "keep the sharded parameters, gradients and optimizer state in host memory "
                                  "(FSDP2 CPUOffloadPolicy; slower, for models that do not fit otherwise)")
    reshard_after_forward: bool = _f(True, "free each block's gathered parameters after its forward pass and "
                                           "gather them again for the backward pass (less memory, more traffic)")
    mixed_precision: bool = _f(True, "bf16 parameters in forward/backward with fp32 gradient reduction when the "
                                     "run computes in bf16 (precision auto on a GPU, or bf16); false: fp32 "
                                     "parameters under bf16 autocast")


@dataclass
class RunConfig:
    task: Task = _f("finetune", "pretrain (autoregressive) or finetune (classification)")
    output_dir: str = _f("runs/run", "where config, logs, metrics and checkpoints go")
    seed: int = _f(0, "random seed (each process adds its rank)")
    device: str = _f("auto", "auto (cuda if present), cpu, cuda or cuda:N")
    precision: Literal["auto", "bf16", "fp32"] = _f("auto", "auto: bf16 autocast on GPU, fp32 on CPU")
    init: Union[str, None] = _f(None, "fine-tuning: start from this checkpoint (a model directory, a "
                                      "pretraining run directory, or an official ARM .pth)")
    resume: Union[str, None] = _f(None, "'auto' (continue the latest checkpoint in output_dir, if any) or a "
                                        "checkpoint directory")
    max_steps: Union[int, None] = _f(None, "stop after this many optimizer steps (the schedule still spans "
                                           "all epochs; resume to continue)")
    eval_every_epochs: int = _f(1, "evaluate on data.val_split every N epochs (0: only at the end)")
    preemption_signals: tuple[str, ...] = _f(("SIGTERM", "SIGUSR1"),
                                             "signals that stop the run after the current step with a checkpoint "
                                             "and exit status 75 (requeue); [] keeps the default actions")
    compile: Union[bool, Literal["auto"]] = _f("auto", "torch.compile the model for training: auto (on with a GPU, "
                                                       "off on the CPU), true or false; a compile error falls back "
                                                       "to eager with a warning")
    compile_backend: str = _f("inductor", "torch.compile backend (inductor; aot_eager to debug)")
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = _f(
        "auto", "torch.compile mode: 'reduce-overhead' replays each step's kernels as CUDA graphs (no host launch "
                "time per kernel: ARM-B fine-tuning 972 vs 752 images/s on an H200); 'auto' is reduce-overhead "
                "for one process on a GPU, 'default' with several processes (DDP/FSDP)")
    parallel: Literal["ddp", "fsdp"] = _f("ddp", "several processes: 'ddp' (every process holds the whole model) or "
                                                 "'fsdp' (FSDP2: parameters, gradients and optimizer state sharded "
                                                 "per block; sharded checkpoints, see armvision export)")
    activation_checkpointing: bool = _f(False, "recompute each block's activations in the backward pass (less "
                                               "memory for a larger batch, about a third more compute)")
    model: ModelConfig = _f(factory=ModelConfig)
    data: DataConfig = _f(factory=DataConfig)
    aug: AugmentConfig = _f(factory=AugmentConfig)
    optim: OptimConfig = _f(factory=OptimConfig)
    ema: EmaConfig = _f(factory=EmaConfig)
    checkpoint: CheckpointConfig = _f(factory=CheckpointConfig)
    log: LogConfig = _f(factory=LogConfig)
    fsdp: FsdpConfig = _f(factory=FsdpConfig)


# ------------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------------
def _preset_dir():
    return resources.files("armvision.train").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the packaged presets (YAML files in armvision/train/presets)."""
    return sorted(p.name[: -len(".yaml")] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def _load_source(name_or_path: str) -> tuple[dict, str]:
    """Read a preset by name or a YAML file by path; returns (mapping, description)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass a YAML file or a preset name "
                              f"({', '.join(list_presets())})")
        return read_yaml(path.read_text(), str(path)), str(path)
    res = _preset_dir().joinpath(f"{name_or_path}.yaml")
    if not res.is_file():
        close = difflib.get_close_matches(name_or_path, list_presets(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name_or_path!r}{hint}; presets: {', '.join(list_presets())}; "
                          "or pass a path to a YAML file")
    return read_yaml(res.read_text(), f"preset {name_or_path}"), f"preset {name_or_path}"


def load_config(config: str | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                task: str | None = None, source: str = "overrides") -> RunConfig:
    """Build a :class:`RunConfig`: defaults, then ``config`` (preset name or YAML path), then ``overrides``.

    Args:
        config: a preset name (:func:`list_presets`) or a YAML file.
        overrides: ``{"optim.lr": 1e-3, "model.args": {...}}`` or a list in the flag syntax
            (``["optim.lr=1e-3"]``, ``["--optim.lr", "1e-3"]``; see :mod:`armvision.configtree`).
        task: the subcommand's task; a config for the other task is an error.
        source: how error messages name where the overrides came from.
    """
    data: dict = {}
    origin = "defaults"
    if config is not None:
        data, origin = _load_source(config)
    cfg = config_from_dict(data, origin)
    if isinstance(overrides, Mapping):
        cfg = apply_overrides(cfg, overrides, source)
    elif overrides:
        cfg = apply_overrides(cfg, parse_overrides(RunConfig, overrides, source), source)
    if task is not None:
        if cfg.task != task and isinstance(overrides, Mapping) and "task" in overrides:
            raise ConfigError(f"the task is set by the command (armvision {task}); drop the task override "
                              f"{overrides['task']!r}")
        if "task" in data and data["task"] != task:
            raise ConfigError(f"{origin} is a {data['task']} config; use `armvision {data['task']}` with it, "
                              f"or pick a {task} preset ({', '.join(p for p in list_presets() if task in p)})")
        cfg.task = task
    validate_config(cfg)
    return cfg


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a nested mapping (a YAML file's content); unknown keys are errors."""
    return from_dict(RunConfig, data, source)


def training_config(training: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None,
                    source: str = "the checkpoint's training config") -> RunConfig:
    """The run config a model directory's config.json records under ``training`` (the schema's defaults when it
    has none), then ``overrides`` from the command line: the one place a checkpoint's run config is rebuilt."""
    cfg = config_from_dict(training, source) if training else RunConfig()
    return apply_overrides(cfg, dict(overrides or {}), "the command line")


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, Any], source: str = "overrides") -> RunConfig:
    """Set dotted keys (``optim.lr``, ``model.args.embed_dim``) on a copy of ``cfg``."""
    return _apply_overrides(cfg, overrides, source)


def parse_cli_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``["--optim.lr", "1e-3", "--data.pin_memory", "--seed=3"]`` -> {"optim.lr": 0.001, ...}: the one
    override syntax of :mod:`armvision.configtree` over the :class:`RunConfig` keys."""
    return parse_overrides(RunConfig, tokens, "the command line")


# ------------------------------------------------------------------------------------------------
# validation and output
# ------------------------------------------------------------------------------------------------
_FLOAT32_MAX = 3.4e38
# model arguments the run config sets outside model.args -> the key that sets them
_SET_ELSEWHERE = {"img_size": "model.img_size", "in_chans": "model.in_chans", "drop_path_rate": "model.drop_path",
                  "num_classes": "data.num_classes"}


def peak_lr_ok(o: "OptimConfig") -> bool:
    lr = o.lr if o.lr is not None else o.blr * o.batch_size / 256
    return math.isfinite(lr) and lr < _FLOAT32_MAX


def _signal_ok(name: Any) -> bool:
    from .preemption import signal_number

    try:
        return signal_number(name) not in (9, 19)  # SIGKILL and SIGSTOP cannot be caught
    except (ValueError, TypeError):
        return False


def validate_config(cfg: RunConfig) -> None:
    """Range checks the types cannot express; raises ConfigError naming the key."""
    def need(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"bad value for {key!r}: {value!r}; expected {allowed}")

    from ..models import list_models
    from ..models.config import check_model_args

    m, d, a, o = cfg.model, cfg.data, cfg.aug, cfg.optim
    need(m.name in list_models(), "model.name", m.name, f"one of {', '.join(list_models())}")
    need(m.img_size > 0, "model.img_size", m.img_size, "a positive integer")
    need(m.in_chans in (1, 3), "model.in_chans", m.in_chans, "1 (grayscale) or 3 (RGB)")
    need(0 <= m.drop_path < 1, "model.drop_path", m.drop_path, "a rate in [0, 1)")
    need(m.scan.seg is None or m.scan.seg >= 1, "model.scan.seg", m.scan.seg, "1 or more, or null")
    need(d.num_classes is None or d.num_classes > 0, "data.num_classes", d.num_classes, "a positive integer or null")
    for key in ("mean", "std"):
        v = getattr(d, key)
        need(v is None or len(v) == m.in_chans, f"data.{key}", v,
             f"{m.in_chans} value(s), one per channel (model.in_chans)")
    need(d.std is None or min(d.std) > 0, "data.std", d.std, "positive values")
    for key in ("train_subset", "val_subset"):
        v = getattr(d, key)
        need(v is None or v > 0, f"data.{key}", v, "a positive number of images or null")
    need(d.workers == "auto" or d.workers >= 0, "data.workers", d.workers, "0 or more, or auto")
    need(d.normalize != "device" or cfg.task == "pretrain" or d.decode == "gpu" or a.reprob == 0, "data.normalize",
         d.normalize, "workers or auto while aug.reprob > 0 (random erasing acts on normalised images in the workers)")
    need(d.eval_crop_pct is None or 0 < d.eval_crop_pct <= 1, "data.eval_crop_pct", d.eval_crop_pct,
         "a fraction in (0, 1] or null")
    need(0 < a.scale[0] <= a.scale[1] <= 1, "aug.scale", a.scale, "0 < min <= max <= 1")
    need(0 < a.ratio[0] <= a.ratio[1], "aug.ratio", a.ratio, "0 < min <= max")
    for key in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob"):
        v = getattr(a, key)
        need(0 <= v <= 1, f"aug.{key}", v, "a probability in [0, 1]")
    need(0 <= a.smoothing < 1, "aug.smoothing", a.smoothing, "a value in [0, 1)")
    need(a.mixup >= 0 and a.cutmix >= 0, "aug.mixup/aug.cutmix", (a.mixup, a.cutmix), "alphas >= 0")
    need(o.epochs >= 1, "optim.epochs", o.epochs, "1 or more")
    need(0 <= o.warmup_epochs <= o.epochs, "optim.warmup_epochs", o.warmup_epochs, f"0 .. optim.epochs ({o.epochs})")
    need(o.batch_size >= 1, "optim.batch_size", o.batch_size, "1 or more")
    need(o.micro_batch is None or 1 <= o.micro_batch <= o.batch_size, "optim.micro_batch", o.micro_batch,
         f"1 .. optim.batch_size ({o.batch_size}) or null")
    for key, v in (("optim.blr", o.blr), ("optim.lr", o.lr), ("optim.min_lr", o.min_lr),
                   ("optim.weight_decay", o.weight_decay), ("optim.clip_grad", o.clip_grad),
                   ("model.drop_path", m.drop_path), ("data.eval_crop_pct", d.eval_crop_pct)):
        need(v is None or (math.isfinite(v) and abs(v) < _FLOAT32_MAX), key, v, "a finite number")
    need(o.blr > 0, "optim.blr", o.blr, "a positive learning rate")
    need(o.lr is None or o.lr > 0, "optim.lr", o.lr, "a positive learning rate or null")
    need(peak_lr_ok(o), "optim.blr", o.blr, "a value whose lr (blr * batch_size / 256) is finite in float32")
    need(o.min_lr >= 0, "optim.min_lr", o.min_lr, "0 or more")
    need(o.skip_nonfinite >= 0, "optim.skip_nonfinite", o.skip_nonfinite, "0 or more")
    need(math.isfinite(cfg.checkpoint.loss_rise_factor) and cfg.checkpoint.loss_rise_factor > 1,
         "checkpoint.loss_rise_factor", cfg.checkpoint.loss_rise_factor, "a finite factor above 1")
    for name in cfg.preemption_signals:
        need(_signal_ok(name), "preemption_signals", cfg.preemption_signals,
             "signal names such as SIGTERM, SIGUSR1 (catchable ones; [] for none)")
    for key in m.args:
        need(key not in _SET_ELSEWHERE, f"model.args.{key}", m.args[key],
             f"to be set with {_SET_ELSEWHERE.get(key)} instead")
    check_model_args(m.args, cfg.task == "pretrain", f"model.args ({cfg.task})")
    need(all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "two values in [0, 1)")
    need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "0 or more")
    need(o.layer_decay is None or 0 < o.layer_decay <= 1, "optim.layer_decay", o.layer_decay,
         "a factor in (0, 1] or null")
    need(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", o.clip_grad, "a positive norm or null")
    need(cfg.ema.decay is None or 0 < cfg.ema.decay < 1, "ema.decay", cfg.ema.decay, "a decay in (0, 1) or null")
    need(cfg.parallel != "fsdp" or cfg.ema.decay is None, "ema.decay", cfg.ema.decay,
         "null with parallel fsdp (the EMA copy is not sharded; train with parallel ddp to keep an EMA)")
    need(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", cfg.checkpoint.keep_last, "1 or more")
    need(cfg.checkpoint.every_epochs >= 0, "checkpoint.every_epochs", cfg.checkpoint.every_epochs, "0 or more")
    need(cfg.checkpoint.every_steps >= 0, "checkpoint.every_steps", cfg.checkpoint.every_steps, "0 or more")
    need(cfg.log.every_steps >= 1, "log.every_steps", cfg.log.every_steps, "1 or more")
    need(cfg.eval_every_epochs >= 0, "eval_every_epochs", cfg.eval_every_epochs, "0 or more")
    need(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", cfg.max_steps, "1 or more, or null")
    dev = cfg.device
    need(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()), "device", dev,
         "auto, cpu, cuda or cuda:N")
    if cfg.task == "pretrain":
        need(cfg.init is None, "init", cfg.init, "null for pretraining (init is a fine-tuning option)")
        need(o.layer_decay is None, "optim.layer_decay", o.layer_decay,
             "null for pretraining (layer-wise lr decay is a fine-tuning option)")


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (tuples as lists), ready for YAML/JSON."""
    return to_dict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    return to_yaml(cfg)


def describe_keys(cls=RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) of every config key, for ``--help`` (``task`` is chosen by the subcommand); below
    ``model.args``, the model arguments of :mod:`armvision.models.config` (those set elsewhere left out; the
    sizes default to the model name's)."""
    from ..models.config import describe_model_args

    rows = _describe_keys(cls, prefix, skip=("task",) if cls is RunConfig else ())
    if cls is RunConfig:
        sized = {"embed_dim", "depth", "patch_size", "block"}
        rows += [(k, "from model.name" if k.rsplit(".", 1)[-1] in sized else d, h)
                 for k, d, h in describe_model_args(f"{prefix}model.args.")
                 if k.rsplit(".", 1)[-1] not in _SET_ELSEWHERE]
    return rows
