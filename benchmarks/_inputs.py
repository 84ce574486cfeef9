"""A batch of real images for the model-only and reference steps, instead of random numbers.

``train_step.py`` and ``reference.py`` time their steps on ``torch.randn`` images; the commands train on JPEGs. A
matrix product's power draw depends on its data, and a card at its power cap lowers its clock, so the two kinds of
input may not run at the same speed (run T, H100: the command's GPU time per step was 1.1 ms above the model
alone's, with the card at its power cap). ``--images DIR`` (both scripts) gives them one batch made from the JPEGs
the commands read, through the pretraining command's own transform (``armvision.data.pretrain_transform`` with its
defaults, the ARM presets': RandomResizedCrop at scale 0.2-1, bicubic, a flip, ImageNet's mean and std), its random
draws fixed by ``seed``. One batch serves every step: the images' values
are what may matter, not their change from step to step (the CUDA graphs copy each step's input either way).
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = (".jpg", ".jpeg", ".png")


class InputsError(ValueError):
    """The image folder cannot give a batch (missing, no images, an unreadable file): the message says which."""


def image_files(root: Path) -> list[Path]:
    """The images under ``root`` (any depth: an ImageFolder tree or a flat folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputsError(f"--images {root}: no such folder (give the folder of JPEGs the commands read, e.g. "
                          f"compare.py's WORKDIR/jpegs)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise InputsError(f"--images {root}: no .jpg, .jpeg or .png files in it")
    return files


def image_batch(root: Path, batch: int, size: int, seed: int = 0):
    """(batch, 3, size, size) float32 on the CPU: the first ``batch`` images under ``root`` (repeated in order when
    there are fewer), each through the pretraining transform (ImageNet's mean and std). The same files, seed and
    size give the same tensor; the caller's random states are left as they were."""
    import random

    import torch
    from PIL import Image, UnidentifiedImageError

    from armvision.data.transforms import NORMALIZATION, pretrain_transform

    files = image_files(root)
    crop = pretrain_transform(size, *NORMALIZATION["imagenet"])
    out = torch.empty(batch, 3, size, size)
    state = random.getstate()  # timm's crop draws from Python's random, the flip from torch's
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            for i in range(batch):
                path = files[i % len(files)]
                try:
                    with Image.open(path) as im:
                        out[i] = crop(im.convert("RGB"))
                except (OSError, UnidentifiedImageError) as e:
                    raise InputsError(f"--images: cannot read {path}: {e}") from None
    finally:
        random.setstate(state)
    return out


def add_images_option(ap) -> None:
    """The ``--images DIR`` option of train_step.py and reference.py."""
    ap.add_argument("--images", type=Path, metavar="DIR",
                    help="a folder of JPEGs: one batch of them (cropped and normalised as armvision's pretraining "
                         "command does) as every step's input, instead of random numbers (benchmarks/_inputs.py)")


def check_images_option(ap, images: Path | None) -> None:
    """``ap.error`` (one line, exit status 2) when ``--images`` names a folder that cannot give a batch."""
    if images is not None:
        try:
            image_files(images)
        except InputsError as e:
            ap.error(str(e))
