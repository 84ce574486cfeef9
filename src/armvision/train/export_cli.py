"""``armvision export``: parses the flags and prints; the work is :func:`armvision.train.sharded.export_checkpoint`.

    armvision export RUN_OR_CKPT OUT_DIR    any checkpoint (sharded or not) -> config.json + model.safetensors
"""

from __future__ import annotations

import argparse

from ..errors import UserError, report

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
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
    from .sharded import export_checkpoint, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(args.source)
        out = export_checkpoint(ckpt, args.out_dir)
    except UserError as e:
        return report(f"export: {e}")
    print(f"exported {ckpt} -> {out} (config.json + model.safetensors)")
    return 0
