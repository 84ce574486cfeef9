"""``armvision pretrain | finetune | eval | demo``: the training commands; the work is :mod:`armvision.train`.

Config overrides are plain flags named after the config keys: ``--optim.lr 1e-3``,
``--model.args.embed_dim 128``, ``--data.pin_memory false`` (a boolean flag alone means true),
``--output-dir runs/x`` (or ``--output_dir``: a key's dashes and underscores are the same). ``--help`` lists
every key.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from typing import Sequence

from ..argtypes import nonneg_int, positive_int
from ..errors import UserError

__all__ = ["register"]

_logger = logging.getLogger("armvision")


def _help_preset(argv: Sequence[str]) -> str | None:
    """The --config of a ``TASK ... --help`` command line, if it has one."""
    if not ({"-h", "--help"} & set(argv)):
        return None
    for i, a in enumerate(argv[:-1]):
        if a == "--config":
            return argv[i + 1]
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def _keys_help(task: str, default_preset: str, argv: Sequence[str]) -> str:
    import yaml

    from ..configtree import to_dict
    from ..train.config import describe_keys, load_config

    preset, values = _help_preset(argv), None
    if preset is not None:
        try:
            values = _flatten(to_dict(load_config(preset, task=task)))
        except (UserError, OSError):
            preset = None
    if preset is not None:
        head = (f"config keys, with the values of --config {preset} (flags --KEY VALUE override them; VALUE is "
                "YAML: 1e-3, true, [0.9, 0.95], null):")
    else:
        head = ("config keys, with the schema's defaults -- a preset replaces many of them (default preset "
                f"{default_preset}; `--config PRESET --help` shows its values, --print-config the resolved config). "
                "Flags --KEY VALUE override them; VALUE is YAML: 1e-3, true, [0.9, 0.95], null:")
    lines = [textwrap.fill(head, 100)]
    for key, default, help_text in describe_keys():
        shown = f"default {default}"
        if values is not None and key in values:
            v = values[key]
            text = yaml.safe_dump(list(v) if isinstance(v, tuple) else v, default_flow_style=True).strip()
            text = text.removesuffix("\n...")
            shown = f"{preset}: {text}" + ("" if text == default else f"; schema default {default}")
        wrapped = textwrap.fill(help_text, 78, initial_indent=" " * 6, subsequent_indent=" " * 6) if help_text else ""
        lines.append(f"  --{key} ({shown})" + (f"\n{wrapped}" if wrapped else ""))
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k == "args":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _add_train_parser(sub, task: str) -> None:
    from ..train.config import list_presets

    default_preset = {"pretrain": "arm_base_in1k_pretrain", "finetune": "arm_base_in1k_finetune"}[task]
    what = {"pretrain": "Autoregressive pretraining (next-cluster prediction, ARM's decoder and objective) of a "
                        "Mamba encoder: ARM's MambaMLP blocks (arm_* models) or Vim's (vim_* models).",
            "finetune": "Fine-tune a classifier (ARM: four-direction scans; Vim: two), from a pretraining checkpoint "
                        "(--init: a run, a model directory or an official .pth) or from scratch."}[task]
    short = {"pretrain": "autoregressive (ARM) pretraining of an ARM or Vim encoder",
             "finetune": "fine-tune an ARM or Vim classifier (from a pretraining checkpoint or from scratch)"}[task]
    examples = {
        "pretrain": "  armvision pretrain --config arm_base_in1k_pretrain --data.root /data/imagenet \\\n"
                    "      --output-dir runs/pre_b\n"
                    "  torchrun --nproc_per_node 8 -m armvision pretrain --data.root /data/imagenet \\\n"
                    "      --optim.micro_batch 128\n"
                    "  armvision pretrain --config fmnist_pretrain --optim.epochs 2 --output-dir runs/fm_pre\n"
                    "  armvision pretrain --config vim_small_in1k_pretrain --data.root /data/imagenet \\\n"
                    "      --output-dir runs/pre_vim_s",
        "finetune": "  armvision finetune --config arm_base_in1k_finetune --init runs/pre_b \\\n"
                    "      --data.root /data/imagenet --output-dir runs/ft_b\n"
                    "  armvision finetune --config fmnist_finetune --init runs/fm_pre --output-dir runs/fm_ft\n"
                    "  armvision finetune --config vim_small_in1k_finetune --init runs/pre_vim_s \\\n"
                    "      --data.root /data/imagenet --output-dir runs/ft_vim_s\n"
                    "  armvision finetune --config vim_tiny_in1k_scratch --data.root /data/imagenet   # hustvl/Vim's\n"
                    "  armvision finetune --output-dir runs/fm_ft --resume auto     # with the run's config.yaml",
    }[task]
    p = sub.add_parser(
        task, help=short, description=what,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        dynamic_epilog=lambda argv: f"examples:\n{examples}\n\npresets: {', '.join(list_presets())}\n\n"
                                    f"{_keys_help(task, default_preset, argv)}",
    )
    p.add_argument("--config", metavar="PRESET_OR_YAML", default=None,
                   help=f"a preset name or a YAML file (default: {default_preset}; when resuming, the run's own "
                        "OUTPUT_DIR/config.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=lambda args: _train_command(args, task, default_preset), config_overrides=True)


def _train_command(args, task: str, default_preset: str) -> int:
    from ..train.config import config_to_yaml, load_config, parse_cli_overrides
    from ..train.trainer import train

    overrides = parse_cli_overrides(getattr(args, "overrides", []) or [])
    own = None if args.config else _own_config(overrides)
    if own:  # a stop asked of the earlier invocation (--max_steps) is not asked of this one
        overrides.setdefault("max_steps", None)
    config = args.config or own or default_preset
    cfg = load_config(config, overrides, task=task, source="the command line")
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    summary = train(cfg)
    _print_summary(summary)
    return 0


def _own_config(overrides: dict) -> str | None:
    """The run's config.yaml when resuming without --config, so that the run continues as it was set up."""
    from pathlib import Path

    out = overrides.get("output_dir")
    if overrides.get("resume") is None or out is None or not (Path(out) / "config.yaml").is_file():
        return None
    _logger.info("config: %s (the run's own; pass --config to use another)", Path(out) / "config.yaml")
    return str(Path(out) / "config.yaml")


def _unreadable_line(report: dict, show: int = 5) -> str:
    """"2 unreadable file(s): a.png, b.png" from a summary's or an eval output's unreadable_files/_file_names."""
    n, names = report["unreadable_files"], report.get("unreadable_file_names") or []
    more = f" and {n - show} more (listed in the JSON)" if n > show and names else ""
    return f"{n} unreadable file(s): {', '.join(names[:show])}{more}"


def _print_summary(summary: dict) -> None:
    from ..train.distributed import is_main_process

    if not is_main_process():
        return
    ev = summary.get("eval") or {}
    parts = [f"{summary['task']} {summary['status']}: {summary['steps']} steps, {summary['images_seen']} images, "
             f"{summary['wall_seconds']:.1f} s"]
    if summary.get("loss_last") is not None:
        parts.append(f"train loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} "
                     f"(min {summary['loss_min']:.4f})")
    for k in ("top1", "ema_top1", "loss", "ema_loss"):
        if k in ev:
            parts.append(f"val {k} {ev[k]:.2f}%" if "top" in k else f"val {k} {ev[k]:.4f}")
    if summary.get("skipped_images"):
        parts.append(f"{summary['skipped_images']} unreadable image(s) skipped")
    print("; ".join(parts))
    if summary.get("unreadable_files"):
        print(f"training data: {_unreadable_line(summary)}; other images took their places")
    if (summary.get("eval") or {}).get("unreadable_files"):
        print(f"validation data: {_unreadable_line(summary['eval'])}; not scored")
    print(f"checkpoint: {summary.get('best_checkpoint') or summary.get('last_checkpoint')}  "
          f"(summary: {summary['output_dir']}/summary.json)")


def _add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint on a dataset split (top-1/top-5/loss, raw and EMA weights)",
        description="Evaluate a checkpoint (a model directory, a checkpoint folder or a run directory: its best, "
                    "else latest checkpoint) on a dataset split. Data settings default to those the checkpoint "
                    "was trained with; --data.* flags (after CHECKPOINT) change them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  armvision eval runs/fm_ft\n"
               "  armvision eval runs/ft_b/checkpoints/best --data.root /data/imagenet --split val --output val.json\n"
               "  armvision eval runs/ft_b runs/ft_l --benchmark imagenet=/data/imagenet/val \\\n"
               "      --benchmark imagenet-a=/data/imagenet-a --benchmark imagenet-r=/data/imagenet-r \\\n"
               "      --benchmark imagenet-sketch=/data/sketch \\\n"
               "      --benchmark imagenet-v2=/data/imagenetv2-matched-frequency-format-val\n\n"
               "benchmarks (--benchmark NAME=FOLDER, a classifier of the 1000 ImageNet classes; docs/training.md):\n"
               "  imagenet         FOLDER/n01440764/... the val split's 1000 synset folders\n"
               "  imagenet-a       FOLDER/n01498041/... its 200 synset folders, scored over those 200 classes\n"
               "  imagenet-r       FOLDER/n01443537/... its 200 synset folders, scored over those 200 classes\n"
               "  imagenet-sketch  FOLDER/n01440764/... 1000 synset folders\n"
               "  imagenet-v2      FOLDER/0/ .. FOLDER/999/: class-index folders\n"
               "  top-1 accuracy (%), a row per checkpoint (and per raw/EMA weights)",
    )
    p.add_argument("checkpoint", nargs="+", help="model directory, checkpoint folder or run directory (several: "
                                                 "with --benchmark, a row each)")
    p.add_argument("--benchmark", action="append", default=None, metavar="NAME[=FOLDER]",
                   help="evaluate on a benchmark's folder instead of a split (repeatable): imagenet, imagenet-a, "
                        "imagenet-r, imagenet-sketch, imagenet-v2; FOLDER defaults to --data.root")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's data.val_split)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--weights", default="both", choices=["raw", "ema", "both"],
                   help="raw weights, EMA weights, or both (default; EMA where the checkpoint has them)")
    p.add_argument("--output", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=_eval_command, config_overrides=True)


def _eval_command(args) -> int:
    from ..train.config import parse_cli_overrides
    from ..train.evaluate import evaluate_checkpoint

    overrides = parse_cli_overrides(getattr(args, "overrides", []) or [])
    if args.benchmark:
        return _benchmark_command(args, overrides)
    if len(args.checkpoint) > 1:
        raise UserError(f"{len(args.checkpoint)} checkpoints given: several are evaluated together only with "
                        "--benchmark (a table with a row each); evaluate a split one checkpoint at a time")
    out = evaluate_checkpoint(args.checkpoint[0], overrides, split=args.split, batch_size=args.batch_size,
                              weights=args.weights, output=args.output)
    from ..train.distributed import is_main_process

    if is_main_process():
        print(f"{out['checkpoint']} on {out['dataset']} split {out['split']!r}:")
        print(f"  {'weights':8s} {'images':>7s} {'top-1 %':>8s} {'top-5 %':>8s} {'loss':>8s}")
        for name, r in out["results"].items():
            top1 = f"{r['top1']:8.2f}" if "top1" in r else f"{'-':>8s}"
            top5 = f"{r['top5']:8.2f}" if "top5" in r else f"{'-':>8s}"
            print(f"  {name:8s} {r['images']:7d} {top1} {top5} {r['loss']:8.4f}")
        if out.get("unreadable_files"):
            print(f"  {_unreadable_line(out)}; not scored, not in the image count")
        if args.output:
            print(f"  written to {args.output}")
    return 0


def _benchmark_command(args, overrides: dict) -> int:
    from ..train.distributed import is_main_process
    from ..train.evaluate import evaluate_benchmarks

    if args.split is not None:
        raise UserError("--split and --benchmark exclude each other: a benchmark is a folder of class folders")
    benchmarks: dict[str, str] = {}
    for item in args.benchmark:
        name, _, folder = item.partition("=")
        folder = folder or overrides.get("data.root")
        if not folder:
            raise UserError(f"--benchmark {name}: no folder; pass --benchmark {name}=FOLDER (or --data.root FOLDER)")
        if name in benchmarks:
            raise UserError(f"--benchmark {name} given twice")
        benchmarks[name] = folder
    out = evaluate_benchmarks(args.checkpoint, benchmarks, overrides, batch_size=args.batch_size,
                              weights=args.weights, output=args.output)
    if is_main_process():
        print(out["table"])
        print(f"\n{out['metric']}")
        if args.output:
            print(f"written to {args.output}")
    return 0


def _add_demo_parser(sub) -> None:
    from ..demo import PROFILES

    p = sub.add_parser(
        "demo", help="ARM pretraining on Fashion-MNIST, evaluated against baselines, with result tables",
        description="The embedded demo: on Fashion-MNIST, pretrain a small ARM with the autoregressive objective, "
                    "then (cpu profile) probe its frozen features with a linear probe and k-NN on all training "
                    "labels beside the same encoder at random init and the raw pixels; with a GPU (gpu profile) "
                    "also fine-tune it beside the same classifier trained from scratch with the same budget. Prints "
                    "result tables with verdicts computed against the measured seed noise. About 9 minutes on 2 "
                    "idle CPU cores.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="profiles:\n" + "\n".join(f"  {k}: {v.description}" for k, v in PROFILES.items()),
    )
    p.add_argument("--output-dir", default="runs/demo",
                   help="where the runs and the results go (an earlier demo there is replaced)")
    p.add_argument("--profile", default="auto", choices=["auto", *PROFILES],
                   help="budget: auto picks gpu when a GPU is present, else cpu")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files "
                                                     "(default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of every stage (default 0)")
    p.add_argument("--workers", type=nonneg_int, default=None, help="data loader workers (default: the profile's)")
    p.set_defaults(func=_demo_command)


def _demo_command(args) -> int:
    from ..demo import run_demo

    result = run_demo(output_dir=args.output_dir, profile=args.profile, data_root=args.data_root,
                      device=args.device, seed=args.seed, workers=args.workers)
    print(result["table"])
    print(f"\nresults: {result['paths']['json']} and {result['paths']['markdown']}")
    return 0


def register(sub) -> None:
    """Add pretrain, finetune, eval and demo to the armvision command."""
    _add_train_parser(sub, "pretrain")
    _add_train_parser(sub, "finetune")
    _add_eval_parser(sub)
    _add_demo_parser(sub)

