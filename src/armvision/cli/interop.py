"""``armvision convert | export``: parse the flags and print; the work is :mod:`armvision.interop.convert` and
:func:`armvision.train.sharded.export_checkpoint`.

    armvision convert OFFICIAL.pth OUT_DIR                  official checkpoint -> armvision model directory
    armvision convert --to-official MODEL_DIR OUT.pth       armvision model -> official checkpoint layout
    armvision convert --as-classifier PRETRAIN.pth OUT_DIR  pretraining checkpoint -> classifier to fine-tune
    armvision export RUN_OR_CKPT OUT_DIR                    any checkpoint (sharded or not) -> model directory

The flag helpers here (``--ema``, ``--trust-global``) are shared with ``armvision extract``
(:mod:`armvision.cli.features`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from ..argtypes import positive_int
from ..errors import CheckpointError, UserError
from ..outputs import check_output_dir, check_output_file

__all__ = ["register", "ema_choice", "trusted_globals", "describe_model"]

# what the conversion library raises for a file that is not what the command needs
_BAD_INPUT = (CheckpointError, FileNotFoundError, TypeError, ValueError, KeyError)


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_convert(subparsers)
    _add_export(subparsers)


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an official ARM or Vim checkpoint to an armvision model directory, or back",
        description="Convert an official ARM checkpoint (OliverRensu/ARM .pth, pretraining or fine-tuning) or an "
                    "official Vim checkpoint (hustvl/Vim .pth, Vim-T/S/B) into an "
                    "armvision model directory (config.json, model.safetensors, README.md), or an armvision model "
                    "into the official checkpoint layout (--to-official). Pickles are read with "
                    "torch.load(weights_only=True) and an allow-list, never unpickled blindly.")
    p.add_argument("source", help="official .pth checkpoint (or, with --to-official, an armvision model directory)")
    p.add_argument("dest", help="output model directory (or, with --to-official, the .pth file to write)")
    p.add_argument("--to-official", action="store_true", help="write an armvision model in the official layout")
    p.add_argument("--ema", choices=["auto", "yes", "no"], default="auto",
                   help="which weights of a fine-tuning checkpoint: 'auto' takes model_ema when present (as the "
                        "reference's evaluation), 'yes' requires it, 'no' takes 'model' (default: auto)")
    p.add_argument("--global-pool", choices=["avg", "token"], default=None,
                   help="classifier pooling; default: from the checkpoint's args.global_pool as the reference "
                        "reads it (absent args: avg)")
    p.add_argument("--as-classifier", action="store_true",
                   help="pretraining checkpoint: write the classifier it initialises (four directions for ARM, two for Vim; every "
                        "direction a copy of the pretrained one, position embedding resized), ready to fine-tune")
    p.add_argument("--num-classes", type=positive_int, default=1000, help="--as-classifier: classes of the new head")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="--as-classifier: classifier image size (default 224, the paper's fine-tuning size)")
    p.add_argument("--no-strict", action="store_true",
                   help="--to-official: also write models the reference code cannot run (other cluster geometry, "
                        "depth, ...), as long as the layout can describe them")
    p.add_argument("--trust-global", action="append", default=[], metavar="MODULE.NAME",
                   help="also allow this class in the pickle (repeatable; only for files you trust: the default "
                        "allow-list is argparse.Namespace)")
    p.set_defaults(func=run_convert)


def ema_choice(choice: str) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[choice]


def trusted_globals(names: list[str]) -> list[Any]:
    """The classes named MODULE.QUALNAME, for ``allow_globals``."""
    import importlib

    out = []
    for name in names:
        module, _, qualname = name.rpartition(".")
        try:
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"--trust-global {name}: no such class ({e})") from e
        out.append(obj)
    return out


def describe_model(model: nn.Module) -> str:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    count = f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"
    img = cfg["img_size"]
    what = f"{type(model).__name__} {getattr(model, 'model_name', None) or ''}".strip()
    tail = (f"{cfg['num_classes']} classes, pool {cfg['global_pool']}" if "num_classes" in cfg
            else f"clusters of {cfg['cluster_size']}x{cfg['cluster_size']} patches")
    return f"{what}: {count} parameters, {img[0]}x{img[1]} px, patch {cfg['patch_size']}, {tail}"


def run_convert(args: argparse.Namespace) -> int:
    from ..interop.convert import convert_official, convert_to_official
    from ..interop.official import reference_kind

    src, dst = Path(args.source), Path(args.dest)
    # the destination is checked before any work: a file where a folder should be, a read-only place
    if args.to_official:
        check_output_file(dst, "DEST", "model.pth", "nothing was converted")
    else:
        check_output_dir(dst, "DEST")
    try:
        if args.to_official:
            model = convert_to_official(src, dst, strict=not args.no_strict)
            layout = "official Vim layout" if getattr(model, "block", None) == "vim" else "official ARM layout"
            print(f"wrote {dst} ({layout}) from {src}: {describe_model(model)}")
            return 0
        model, weights = convert_official(src, dst, ema=ema_choice(args.ema), global_pool=args.global_pool,
                                          allow_globals=trusted_globals(args.trust_global),
                                          as_classifier=args.as_classifier, num_classes=args.num_classes,
                                          img_size=args.img_size)
    except _BAD_INPUT as e:
        # the library's hint names its keyword; here it is the flag
        raise UserError(str(e).strip("'\"").replace("pass strict=False", "pass --no-strict")) from e
    ckpt = weights.official
    details = [f"weights '{ckpt.state_dict_key}'" if ckpt.state_dict_key else "bare state dict"]
    if ckpt.epoch is not None:
        details.append(f"epoch {ckpt.epoch}")
    print(f"wrote {dst} from the official {reference_kind(ckpt.kind)} checkpoint {src} ({', '.join(details)}): "
          f"{describe_model(model)}")
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write any checkpoint (sharded FSDP ones too) as a single model directory",
        description="Write the model of a checkpoint -- a sharded one of a parallel fsdp run (torch.distributed."
                    "checkpoint shards, read in this one process) or a plain one -- as the single model directory "
                    "(config.json + model.safetensors) that load_model, eval, extract, finetune --init and the "
                    "other commands read. A run directory gives its best checkpoint, else its latest.")
    p.add_argument("source", metavar="RUN_OR_CKPT", help="a run directory, a checkpoint folder (run/checkpoints/"
                                                         "step_*) or a model directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the model directory to write")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..train.sharded import export_checkpoint, resolve_checkpoint

    ckpt = resolve_checkpoint(args.source)
    out = export_checkpoint(ckpt, args.out_dir)
    print(f"exported {ckpt} -> {out} (config.json + model.safetensors)")
    return 0
