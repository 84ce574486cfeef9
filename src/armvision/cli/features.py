"""``armvision extract``: parses the flags and prints; the work is :mod:`armvision.features`
(:func:`~armvision.features.load_feature_model`, :func:`~armvision.features.extract_folder`,
:func:`~armvision.features.write_features`).

    armvision extract MODEL IMAGE_DIR OUT.safetensors       features of every image under IMAGE_DIR
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

import torch

from ..argtypes import nonneg_int, positive_int
from ..errors import CheckpointError, DataError, UserError
from .interop import ema_choice, trusted_globals

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "extract", help="write features of an image folder to .safetensors / .npy",
        description="Extract pooled features (n, c) and optionally per-block token maps (n, h, w, c) of every image "
                    "under a folder (recursive, sorted). Writes OUT (.safetensors: tensors 'pooled' and "
                    "'layer{i}'; .npy: the pooled features, maps in OUT-stem.layer{i}.npy) and OUT-stem.files.txt "
                    "(one image path per row, relative to the folder); unreadable images are skipped, warned about "
                    "and listed in OUT-stem.skipped.txt.")
    e.add_argument("model", help="an armvision model directory, an official .pth checkpoint, or a model name "
                                 "(arm_base_pz16, vim_tiny_pz16, ...; with --weights)")
    e.add_argument("images", help="image folder")
    e.add_argument("output", help="output file: .safetensors or .npy")
    e.add_argument("--weights", default=None, help="weights for a model name (any file timm's pretrained_cfg_overlay "
                                                   "file= accepts); without them the model is randomly initialised")
    e.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="constructor arguments for a model name, as timm's scripts take them (img_size=384 ...)")
    e.add_argument("--layers", type=int, nargs="*", default=[],
                   help="blocks (0-based, negative from the end) whose token maps to write (default: none)")
    e.add_argument("--norm-maps", action="store_true", help="pass the token maps through the final norm")
    e.add_argument("--img-size", type=positive_int, default=None, help="input resolution (default: the model's)")
    e.add_argument("--batch-size", type=positive_int, default=32)
    e.add_argument("--workers", type=nonneg_int, default=0, help="data loading processes (default 0: in the main process)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    e.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="dtype of the written features")
    e.add_argument("--as-classifier", action="store_true",
                   help="pretraining weights: extract with the classifier they initialise (four directions for ARM, two for "
                        "Vim) instead of "
                        "the causal pretraining encoder")
    e.add_argument("--ema", choices=["auto", "yes", "no"], default="auto", help="official checkpoints: as in convert")
    e.add_argument("--trust-global", action="append", default=[], metavar="MODULE.NAME",
                   help="official checkpoints: as in convert")
    e.add_argument("--strict-images", action="store_true", help="stop at the first unreadable image")
    e.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    e.set_defaults(func=run_extract)


def _parse_kwargs(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs takes KEY=VALUE items, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..features import check_output, extract_folder, load_feature_model, write_features

    out = Path(args.output)
    check_output(out)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise UserError(f"--device {args.device}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} asked for, but no CUDA GPU is available; use --device cpu")

    def warn(path: str, reason: str) -> None:
        tqdm.write(f"armvision extract: warning: skipping unreadable image {path}: {reason}", file=sys.stderr)

    try:
        model = load_feature_model(args.model, args.weights, args.as_classifier, ema_choice(args.ema),
                                   model_kwargs=_parse_kwargs(args.model_kwargs),
                                   allow_globals=trusted_globals(args.trust_global))
        result = extract_folder(model, args.images, args.img_size, args.layers, args.norm_maps, args.batch_size,
                                args.workers, device, getattr(torch, args.dtype), args.strict_images,
                                progress=not args.quiet and sys.stderr.isatty(), on_skip=warn, name=str(args.model))
        written = write_features(result, out)
    except (CheckpointError, DataError, FileNotFoundError, RuntimeError, ValueError, TypeError, KeyError) as e:
        raise UserError(str(e)) from e
    stem = out.with_suffix("")
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in result.tensors.items())
    print(f"wrote {', '.join(map(str, written))} ({shapes}) and {stem}.files.txt"
          + (f"; skipped {len(result.skipped)} unreadable image(s), listed in {stem}.skipped.txt"
             if result.skipped else ""))
    return 0
