"""``armvision convert`` and ``armvision extract``.

    armvision convert OFFICIAL.pth OUT_DIR                  official checkpoint -> armvision model directory
    armvision convert --to-official MODEL_DIR OUT.pth       armvision model -> official checkpoint layout
    armvision convert --as-classifier PRETRAIN.pth OUT_DIR  pretraining checkpoint -> classifier to fine-tune
    armvision extract MODEL IMAGE_DIR OUT.safetensors       features of every image under IMAGE_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import report

__all__ = ["register", "load_any_model", "IMAGE_EXTENSIONS", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an official ARM checkpoint to an armvision model directory, or back",
        description="Convert an official ARM checkpoint (OliverRensu/ARM .pth, pretraining or fine-tuning) into an "
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
                   help="pretraining checkpoint: write the four-direction classifier it initialises (every "
                        "direction a copy of the pretrained one, position embedding resized), ready to fine-tune")
    p.add_argument("--num-classes", type=int, default=1000, help="--as-classifier: classes of the new head")
    p.add_argument("--img-size", type=int, default=None,
                   help="--as-classifier: classifier image size (default 224, the paper's fine-tuning size)")
    p.add_argument("--no-strict", action="store_true",
                   help="--to-official: also write models the reference code cannot run (other cluster geometry, "
                        "depth, ...), as long as the layout can describe them")
    p.add_argument("--trust-global", action="append", default=[], metavar="MODULE.NAME",
                   help="also allow this class in the pickle (repeatable; only for files you trust: the default "
                        "allow-list is argparse.Namespace)")
    p.set_defaults(func=run_convert)

    e = subparsers.add_parser(
        "extract", help="write features of an image folder to .safetensors / .npy",
        description="Extract pooled features (n, c) and optionally per-block token maps (n, h, w, c) of every image "
                    "under a folder (recursive, sorted). Writes OUT (.safetensors: tensors 'pooled' and "
                    "'layer{i}'; .npy: the pooled features, maps in OUT-stem.layer{i}.npy) and OUT-stem.files.txt "
                    "(one image path per row, relative to the folder); unreadable images are skipped, warned about "
                    "and listed in OUT-stem.skipped.txt.")
    e.add_argument("model", help="an armvision model directory, an official .pth checkpoint, or a model name "
                                 "(arm_base_pz16, ...; with --weights)")
    e.add_argument("images", help="image folder")
    e.add_argument("output", help="output file: .safetensors or .npy")
    e.add_argument("--weights", default=None, help="weights for a model name (any file timm's pretrained_cfg_overlay "
                                                   "file= accepts); without them the model is randomly initialised")
    e.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="constructor arguments for a model name, as timm's scripts take them (img_size=384 ...)")
    e.add_argument("--layers", type=int, nargs="*", default=[],
                   help="blocks (0-based, negative from the end) whose token maps to write (default: none)")
    e.add_argument("--norm-maps", action="store_true", help="pass the token maps through the final norm")
    e.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--workers", type=int, default=0, help="data loading processes (default 0: in the main process)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    e.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="dtype of the written features")
    e.add_argument("--as-classifier", action="store_true",
                   help="pretraining weights: extract with the four-direction classifier they initialise instead of "
                        "the causal pretraining encoder")
    e.add_argument("--ema", choices=["auto", "yes", "no"], default="auto", help="official checkpoints: as in convert")
    e.add_argument("--trust-global", action="append", default=[], metavar="MODULE.NAME",
                   help="official checkpoints: as in convert")
    e.add_argument("--strict-images", action="store_true", help="stop at the first unreadable image")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run_extract)


def _ema(choice: str) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[choice]


def _trusted(names: list[str]) -> list[Any]:
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


def _fail(command: str, message: str) -> int:
    return report(f"{command}: {message}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _describe(model: nn.Module) -> str:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    count = f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"
    img = cfg["img_size"]
    what = f"{type(model).__name__} {getattr(model, 'model_name', None) or ''}".strip()
    tail = (f"{cfg['num_classes']} classes, pool {cfg['global_pool']}" if "num_classes" in cfg
            else f"clusters of {cfg['cluster_size']}x{cfg['cluster_size']} patches")
    return f"{what}: {count} parameters, {img[0]}x{img[1]} px, patch {cfg['patch_size']}, {tail}"


def _classifier_for(ckpt, img_size: int | None, num_classes: int, **extra):
    """The classifier a pretraining checkpoint initialises: its encoder's sizes, at ``img_size``
    (default 224, the paper's fine-tuning size, when the patch divides it)."""
    from ..models import ARMClassifier
    from .official import _registry_name

    a = ckpt.model_args
    if img_size is None:
        img_size = 224 if 224 % a["patch_size"] == 0 else a["img_size"]
    clf = ARMClassifier(img_size=img_size, patch_size=a["patch_size"], in_chans=a["in_chans"],
                        num_classes=num_classes, embed_dim=a["embed_dim"], depth=a["depth"], d_state=a["d_state"],
                        **extra)
    clf.model_name = _registry_name(a)
    return clf


def run_convert(args: argparse.Namespace) -> int:
    from ..models.io import load_model
    from .hub import save_pretrained
    from .official import CheckpointError, init_classifier_from_official, read_official_checkpoint, save_official

    src, dst = Path(args.source), Path(args.dest)
    try:
        if args.to_official:
            model = load_model(src)
            save_official(model, dst, strict=not args.no_strict)
            print(f"wrote {dst} (official ARM layout) from {src}: {_describe(model)}")
            return 0
        ckpt = read_official_checkpoint(src, ema=_ema(args.ema), global_pool=args.global_pool,
                                        allow_globals=_trusted(args.trust_global))
        provenance: dict[str, Any] = {
            "file": src.name, "sha256": _sha256(src), "kind": ckpt.kind, "state_dict": ckpt.state_dict_key,
            "epoch": ckpt.epoch, **{k: v for k, v in ckpt.extra.items()},
            "args": {k: v for k, v in ckpt.args.items() if isinstance(v, (int, float, str, bool)) or v is None},
        }
        if args.as_classifier:
            if ckpt.kind != "pretraining":
                return _fail("convert", f"{src} is a fine-tuning checkpoint; --as-classifier starts a classifier "
                                        "from a pretraining checkpoint")
            model = _classifier_for(ckpt, args.img_size, args.num_classes,
                                    **({"global_pool": args.global_pool} if args.global_pool else {}))
            init_classifier_from_official(model, ckpt)
            provenance["initialised_classifier"] = True
        else:
            model = ckpt.build()
        save_pretrained(model, dst, extra_config={"converted_from": provenance})
    except (CheckpointError, FileNotFoundError, TypeError, ValueError, KeyError) as e:
        return _fail("convert", str(e).strip("'\""))
    details = [f"weights '{ckpt.state_dict_key}'" if ckpt.state_dict_key else "bare state dict"]
    if ckpt.epoch is not None:
        details.append(f"epoch {ckpt.epoch}")
    print(f"wrote {dst} from the official {ckpt.kind} checkpoint {src} ({', '.join(details)}): {_describe(model)}")
    return 0


# ---------------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------------
def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, case-insensitive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], transform, channels: int):
        self.files, self.transform, self.mode = files, transform, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return i, self.transform(im.convert(self.mode)), None
        except Exception as e:  # unreadable / truncated / not an image
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch):
    ok = [(i, x) for i, x, err in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, bad


def _parse_kwargs(items: list[str]) -> dict[str, Any]:
    import ast

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


def load_any_model(spec: str, weights: str | None = None, as_classifier: bool = False, ema: bool | None = None,
                   dynamic_img_size: bool = True, model_kwargs: dict[str, Any] | None = None,
                   allow_globals: list[Any] = ()) -> nn.Module:
    """A model for feature extraction from: an armvision model directory, an official checkpoint file, or a
    registered model name (with optional ``weights``). Classifiers are built with ``dynamic_img_size``
    and no head; ``as_classifier`` turns pretraining weights into the classifier they initialise."""
    import timm

    from ..models import ARMClassifier, ARMPretrain, init_classifier_from_pretraining
    from ..models.io import load_model
    from .hub import read_config
    from .official import read_official_checkpoint

    path = Path(spec)
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        path = path.parent
    if path.is_dir():
        arch = read_config(path).get("architecture")
        overrides = {"dynamic_img_size": dynamic_img_size} if arch == "ARMClassifier" else {}
        model = load_model(path, **overrides)
    elif path.is_file():
        ckpt = read_official_checkpoint(path, ema=ema, allow_globals=allow_globals)
        model = ckpt.build(**({"dynamic_img_size": dynamic_img_size} if ckpt.kind == "finetuning" else {}))
    elif spec in timm.list_models("arm_*"):
        overlay = dict(file=weights) if weights else None
        if not weights:
            warnings.warn(f"{spec}: no --weights given, the features come from a randomly initialised model",
                          stacklevel=2)
        return timm.create_model(spec, pretrained=bool(weights), pretrained_cfg_overlay=overlay,
                                 **{"num_classes": 0, "dynamic_img_size": dynamic_img_size, **(model_kwargs or {})})
    else:
        raise FileNotFoundError(f"{spec}: not a model directory, a checkpoint file, or a model name "
                                f"({', '.join(timm.list_models('arm_*'))})")
    if isinstance(model, ARMPretrain) and as_classifier:
        cfg = model.config
        clf = ARMClassifier(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                            num_classes=0, embed_dim=cfg["embed_dim"], depth=cfg["depth"], d_state=cfg["d_state"],
                            dynamic_img_size=dynamic_img_size)
        clf.model_name = getattr(model, "model_name", None)
        model = init_classifier_from_pretraining(clf, model)
    elif isinstance(model, ARMClassifier) and model.num_classes:
        model.reset_classifier(0)
    return model


def run_extract(args: argparse.Namespace) -> int:
    import numpy as np
    from safetensors.torch import save_file
    from tqdm import tqdm

    from ..models import ARMPretrain
    from .features import data_config, eval_transform, extract_features
    from .official import CheckpointError

    out = Path(args.output)
    if out.suffix not in (".safetensors", ".npy"):
        return _fail("extract", f"{out}: the output must end in .safetensors or .npy")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        return _fail("extract", f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail("extract", f"--device {args.device} asked for, but no CUDA GPU is available; use --device cpu")
    try:
        files = list_images(args.images)
        if not files:
            return _fail("extract", f"{args.images}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        model = load_any_model(args.model, args.weights, args.as_classifier, _ema(args.ema),
                               model_kwargs=_parse_kwargs(args.model_kwargs),
                               allow_globals=_trusted(args.trust_global))
    except (CheckpointError, FileNotFoundError, RuntimeError, ValueError, TypeError, KeyError) as e:
        return _fail("extract", str(e))
    model = model.to(device).eval()
    inner = getattr(model, "model", model)
    transform = eval_transform(inner, args.img_size)
    root = Path(args.images)
    loader = torch.utils.data.DataLoader(_ImageFiles(files, transform, inner.geometry.in_chans),
                                         batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate)
    dtype = getattr(torch, args.dtype)
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    pooled: list[torch.Tensor] = []
    maps: dict[int, list[torch.Tensor]] = {}
    try:
        with torch.inference_mode():
            for indices, images, bad in tqdm(loader, desc="extract", unit="batch", disable=args.quiet):
                for i, err in bad:
                    rel = files[i].relative_to(root).as_posix()
                    if args.strict_images:
                        return _fail("extract", f"cannot read image {files[i]}: {err}")
                    tqdm.write(f"armvision extract: warning: skipping unreadable image {rel}: {err}", file=sys.stderr)
                    skipped.append((i, err))
                if images is None:
                    continue
                feats = extract_features(inner, images.to(device), layers=args.layers, norm=args.norm_maps)
                kept += indices
                pooled.append(feats.pooled.to("cpu", dtype))
                for k, v in feats.maps.items():
                    maps.setdefault(k, []).append(v.to("cpu", dtype))
    except ValueError as e:  # e.g. a resolution the model cannot take
        return _fail("extract", str(e))
    if not kept:
        return _fail("extract", f"none of the {len(files)} images could be read")
    tensors = {"pooled": torch.cat(pooled)}
    tensors.update({f"layer{k}": torch.cat(v).contiguous() for k, v in sorted(maps.items())})
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    cfg = data_config(inner, args.img_size)
    meta = {"model": str(args.model), "architecture": type(inner).__name__,
            "input_size": json.dumps(list(cfg["input_size"])), "layers": json.dumps(sorted(maps)),
            "norm_maps": str(bool(args.norm_maps)), "images": str(root), "files": stem.name + ".files.txt",
            "pooled": "mean of patch tokens" if isinstance(inner, ARMPretrain) or inner.global_pool == "avg"
            else "class token"}
    if out.suffix == ".safetensors":
        save_file(tensors, str(out), metadata=meta)
        written = [out]
    else:
        np.save(out, tensors["pooled"].numpy())
        written = [out]
        for k in sorted(maps):
            p = Path(f"{stem}.layer{k}.npy")
            np.save(p, tensors[f"layer{k}"].numpy())
            written.append(p)
    Path(f"{stem}.files.txt").write_text("".join(files[i].relative_to(root).as_posix() + "\n" for i in kept))
    skipped_path = Path(f"{stem}.skipped.txt")
    if skipped:
        skipped_path.write_text("".join(f"{files[i].relative_to(root).as_posix()}\t{err}\n" for i, err in skipped))
    elif skipped_path.exists():
        skipped_path.unlink()
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
    print(f"wrote {', '.join(map(str, written))} ({shapes}) and {stem}.files.txt"
          + (f"; skipped {len(skipped)} unreadable image(s), listed in {skipped_path}" if skipped else ""))
    return 0
