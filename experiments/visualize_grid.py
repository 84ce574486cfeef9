"""The picture for the README: what study 1's seed-0 ARM predicts on test images (one per class), drawn by
``armvision visualize``'s library code into OUT/visualize_grid.png (and the test images as PNGs beside it)."""

from __future__ import annotations

import sys

import common


def main(argv=None) -> int:
    args = common.parse_args(__doc__, argv)
    ctx = common.Context(args)
    job = ctx.jobs / f"{ctx.pretrain_key(common.BASE, ctx.scale.seeds[0])}.json"
    if not job.is_file():
        print(f"visualize_grid: {job.name} not finished yet; run study 1 first", file=sys.stderr)
        return 1
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from armvision.analysis import load_for_analysis
    from armvision.analysis.features import data_setup, eval_transform_for
    from armvision.analysis.predict import load_images
    from armvision.analysis.visualize import render_panels
    from armvision.data.fashion_mnist import FashionMNIST
    from armvision.data.transforms import normalization

    ckpt = Path(json.loads(job.read_text())["checkpoints"]["1"])
    if not ckpt.is_dir():
        print(f"visualize_grid: the checkpoint {ckpt} is gone (another machine?); rerun study 1", file=sys.stderr)
        return 1
    loaded = load_for_analysis(ckpt, ctx.device)
    test = FashionMNIST(args.data_root, "test")
    picks = [int(np.flatnonzero(test.targets == c)[0]) for c in range(10)]
    folder = ctx.out / "visualize_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for c, i in enumerate(picks):
        f = folder / f"{c}_{test.classes[c].replace('/', '-').replace(' ', '_')}.png"
        Image.fromarray(test.images[i]).save(f)
        files.append(f)
    cfg = data_setup(loaded.training)
    model = loaded.model
    mean, std = normalization(cfg.data.stats, model.geometry.in_chans, cfg.data.mean, cfg.data.std)
    x, _ = load_images(files, eval_transform_for(model, cfg), model.geometry.in_chans)  # every file is readable
    x = x.to(ctx.device)
    out = render_panels(model, x, mean, std, ctx.out / "visualize_grid.png", [test.classes[c] for c in range(10)])
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
