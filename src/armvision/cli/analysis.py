"""``armvision linprobe | knn | visualize | predict``: frozen-feature evaluation, pictures, predictions; the work
is :mod:`armvision.analysis` (:func:`~armvision.analysis.frozen.probe_checkpoint` for linprobe and knn).

    armvision linprobe CHECKPOINT [--data.dataset fashion_mnist --data.root DIR] [--output probe.json]
    armvision knn CHECKPOINT [--k 20 --temperature 0.07]
    armvision visualize CHECKPOINT IMAGE... --output DIR
    armvision predict CHECKPOINT IMAGE_OR_FOLDER... [--format table|csv|json]

The data keys of the training config (``--data.dataset``, ``--data.root``, ``--data.train_subset``,
``--data.val_subset``, ``--data.stats`` ...) choose the dataset; by default the checkpoint's own.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from ..argtypes import fraction, nonneg_float, nonneg_int, positive_float, positive_int
from ..outputs import check_output_dir, check_output_file

__all__ = ["register"]


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory, checkpoint folder, model directory or official ARM / Vim .pth")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")


def _feature_args(p: argparse.ArgumentParser) -> None:
    from ..analysis.features import FEATURE_KINDS

    _common(p)
    p.add_argument("--train-split", default=None, help="split the classifier learns from (default: data.train_split)")
    p.add_argument("--test-split", default=None,
                   help="split to evaluate on (default: data.val_split, else val; fashion_mnist: test)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch of the feature extraction")
    p.add_argument("--workers", type=nonneg_int, default=0, help="data loading processes (default 0)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--features", choices=FEATURE_KINDS, default="pooled",
                   help="pooled: one vector per image (default); tokens: the last block's normed token map, "
                        "flattened (patches x width values: for small grids)")
    p.set_defaults(config_overrides=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    lp = subparsers.add_parser(
        "linprobe", help="linear probe on frozen features (BatchNorm + Linear, lr sweep)",
        description="Extract features (--features) of the train and test splits once, then train "
                    "BatchNorm1d(affine=False) + Linear on them for each learning rate of a sweep. The lr is chosen on "
                    "a held-out part of the training features (--holdout); every lr's test top-1/top-5 is listed. "
                    "Data keys of the training config (--data.dataset, --data.root, --data.train_subset, "
                    "--data.val_subset ...) pick the data; default: the checkpoint's own training data.")
    _feature_args(lp)
    lp.add_argument("--lrs", type=positive_float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0], help="learning rates")
    lp.add_argument("--epochs", type=positive_int, default=30, help="epochs over the cached features per lr")
    lp.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    lp.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    lp.add_argument("--holdout", type=fraction, default=0.1,
                    help="fraction of the training features held out to choose the lr (0: choose on the test split)")
    lp.set_defaults(func=_features, mode="linprobe")

    kn = subparsers.add_parser(
        "knn", help="weighted k-NN on frozen features (DINO's: cosine, exp(sim/T) votes)",
        description="Extract features (--features) of the train and test splits once and classify each test "
                    "image by the weighted votes of its k nearest training features (cosine similarity, weight "
                    "exp(sim/T)).")
    _feature_args(kn)
    kn.add_argument("--k", type=positive_int, default=20, help="neighbours that vote (default 20)")
    kn.add_argument("--temperature", type=positive_float, default=0.07, help="T of the exp(sim/T) votes")
    kn.set_defaults(func=_features, mode="knn")

    vi = subparsers.add_parser(
        "visualize", help="PNGs of what a pretraining model predicts (one step and autoregressive completion)",
        description="For each image: the input, the per-patch normalised target clusters, the one-step prediction of "
                    "every cluster from the true earlier ones (put back into pixels with each true patch's mean and "
                    "std, then the data mean/std), and a fully autoregressive completion from the first cluster "
                    "(each predicted cluster fed back as input). Writes IMAGE-STEM.png per image and grid.png.")
    _common(vi)
    vi.add_argument("images", nargs="+", help="image files or folders")
    vi.add_argument("--output", required=True, help="output folder")
    vi.add_argument("--stats", choices=["context", "gt"], default="context",
                    help="patch statistics of the completion: 'context' (mean/std of the clusters known so far; "
                         "nothing from the future) or 'gt' (the true patch's own; default context)")
    vi.add_argument("--max-grid", type=positive_int, default=16, help="images in grid.png at most")
    vi.set_defaults(func=_visualize)

    pr = subparsers.add_parser(
        "predict", help="top-5 classes of images from a fine-tuned classifier",
        description="Classify image files (or every image under folders) with a fine-tuned checkpoint and its "
                    "evaluation transform; class names come from the training run.")
    _common(pr)
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--topk", type=positive_int, default=5)
    pr.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pr.add_argument("--batch-size", type=positive_int, default=64)
    pr.set_defaults(func=_predict)


def _features(args: argparse.Namespace) -> int:
    from ..analysis.frozen import KnnSettings, LinearProbeSettings, probe_checkpoint
    from ..train.config import parse_cli_overrides

    overrides = parse_cli_overrides(args.overrides)
    if args.output:  # before the features are extracted, not after
        check_output_file(args.output, "--output", f"{args.mode}.json", "nothing was evaluated")
    bars = sys.stderr.isatty()  # progress bars on a terminal only, never into a log file
    methods = ({"knn": KnnSettings(args.k, args.temperature)} if args.mode == "knn" else
               {"linprobe": LinearProbeSettings(tuple(args.lrs), args.epochs, optimizer=args.optimizer,
                                                weight_decay=args.weight_decay, holdout=args.holdout)})
    out = {"command": args.mode,
           **probe_checkpoint(args.checkpoint, overrides, device=_device(args.device), train_split=args.train_split,
                              test_split=args.test_split, batch_size=args.batch_size, workers=args.workers,
                              seed=args.seed, progress=bars, features=args.features, **methods)}
    for split in ("train", "test"):
        n, names = out[f"{split}_unreadable_files"], out[f"{split}_unreadable_file_names"]
        if n:
            shown = ", ".join(names[:5]) + (f" and {n - 5} more" if n > 5 else "")
            print(f"{split} split: {n} unreadable file(s) left out: {shown}")
    test_split = out["test_split"]
    if args.mode == "knn":
        res = out["knn"]
        if res["k"] < args.k:
            print(f"--k {args.k} is more than the {out['train_images']} training images: every one votes "
                  f"(k={res['k']})", file=sys.stderr)
        print(f"k-NN (k={res['k']}, T={args.temperature}) on {out['test_images']} {test_split} images: "
              f"top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}")
    else:
        res = out["linear_probe"]
        print(f"linear probe on {out['test_images']} {test_split} images (lr chosen on the {res['selection']} split):")
        for e in res["sweep"]:
            held = f"  held-out top-1 {e['heldout_top1']:6.2f}" if "heldout_top1" in e else ""
            star = "  <- best" if e is res["best"] else ""
            print(f"  lr {e['lr']:<8g}{held}  test top-1 {e['test_top1']:6.2f}  top-5 {e['test_top5']:6.2f}{star}")
        best = res["best"]
        print(f"best: lr {best['lr']:g}  top-1 {best['test_top1']:.2f}  top-5 {best['test_top5']:.2f}")
    if args.output:
        from ..models.io import atomic_write

        atomic_write(args.output, lambda p: Path(p).write_text(json.dumps(out, indent=2) + "\n"))
    return 0


def _images_and_model(args: argparse.Namespace, fits, need: str):
    """The image files, the device and the loaded checkpoint of a visualize/predict call; CheckpointError
    saying what the command ``need``s when the model does not fit."""
    from ..errors import CheckpointError
    from ..models import ARMPretrain
    from ..analysis import _load
    from ..analysis.predict import collect_images

    files = collect_images(args.images)
    device = _device(args.device)
    loaded = _load.load_for_analysis(args.checkpoint, device)
    if not fits(loaded.model):
        kind = "a pretraining model (ARMPretrain)" if isinstance(loaded.model, ARMPretrain) else \
            f"a classifier ({type(loaded.model).__name__})"
        raise CheckpointError(f"{args.checkpoint} holds {kind}; {need}")
    return files, device, loaded


def _report_skipped(command: str, skipped: list, none_left: bool) -> None:
    """Name each unreadable image on stderr (they are left out, as eval and extract leave them out); a DataError
    when no image was readable."""
    from ..errors import DataError

    for path, reason in skipped:
        print(f"armvision {command}: warning: skipping unreadable image {path}: {reason}", file=sys.stderr)
    if none_left:
        raise DataError(f"none of the {len(skipped)} image(s) could be read (see the warnings above); pass readable "
                        "image files")
    if skipped:
        print(f"armvision {command}: {len(skipped)} unreadable image(s) skipped", file=sys.stderr)


def _visualize(args: argparse.Namespace) -> int:
    from ..data.transforms import normalization
    from ..models import ARMPretrain
    from ..analysis.features import data_setup, eval_transform_for
    from ..analysis.predict import load_images
    from ..analysis.visualize import render_panels

    check_output_dir(args.output, "--output")
    files, device, loaded = _images_and_model(args, lambda m: isinstance(m, ARMPretrain),
                                              "visualize needs a pretraining checkpoint (ARMPretrain), which "
                                              "predicts clusters of patches")
    model = loaded.model
    cfg = data_setup(loaded.training)
    mean, std = normalization(cfg.data.stats, model.geometry.in_chans, cfg.data.mean, cfg.data.std)
    skipped: list = []
    x, files = load_images(files, eval_transform_for(model, cfg), model.geometry.in_chans, skipped)
    _report_skipped("visualize", skipped, x is None)
    x = x.to(device)
    out = Path(args.output)
    written = []
    for f, xi in zip(files, x):
        written.append(render_panels(model, xi[None], mean, std, out / f"{f.stem}.png", [f.name], args.stats))
    n = min(len(files), args.max_grid)
    written.append(render_panels(model, x[:n], mean, std, out / "grid.png", [f.name for f in files[:n]], args.stats))
    for p in written:
        print(p)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..models import ARMClassifier
    from ..analysis.features import data_setup, eval_transform_for
    from ..analysis.predict import predict_files

    files, device, loaded = _images_and_model(args, lambda m: isinstance(m, ARMClassifier) and m.num_classes,
                                              "predict needs a fine-tuned classifier with a classification head "
                                              "(e.g. the run directory of armvision finetune)")
    model = loaded.model
    if loaded.training:
        transform = eval_transform_for(model, data_setup(loaded.training))
    else:  # an official checkpoint: the reference's ImageNet evaluation transform
        from ..data import model_eval_transform

        transform = model_eval_transform(model)
    skipped: list = []
    rows = predict_files(model, files, transform, loaded.classes, args.topk, args.batch_size, device, skipped)
    _report_skipped("predict", skipped, not rows)
    sys.stdout.write(_format(rows, args.format))
    return 0


def _format(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    k = max(len(r["top"]) for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file"] + [f"{c}{i}" for i in range(1, k + 1) for c in ("class", "prob")])
        for r in rows:
            w.writerow([r["file"]] + [v for t in r["top"] for v in (t["class"], f"{t['prob']:.4f}")])
        return buf.getvalue()
    width = max(len(r["file"]) for r in rows)
    lines = [f"{'image':<{width}}  " + "  ".join(f"top-{i}" for i in range(1, k + 1))]
    for r in rows:
        lines.append(f"{r['file']:<{width}}  " + "  ".join(f"{t['class']} ({100 * t['prob']:.1f}%)" for t in r["top"]))
    return "\n".join(lines) + "\n"
