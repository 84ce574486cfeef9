"""A batch of real images for the model-only and reference steps, instead of random numbers.

``train_step.py`` and ``reference.py`` time their steps on ``torch.randn`` images; the commands train on JPEGs. A
matrix product's power draw depends on its data, and a card at its power cap lowers its clock, so the two kinds of
input may not run at the same speed (run T, H100: the command's GPU time per step was 1.1 ms above the model
alone's, with the card at its power cap). ``--images DIR`` (both scripts) gives them one batch made from the JPEGs
the commands read: the pretraining crop of the commands (RandomResizedCrop, scale 0.2-1, bicubic, a flip), fixed by
``seed``, then ImageNet's mean and std, as the trainer's feeder does. One batch serves every step: the images' values
are what may matter, not their change from step to step (the CUDA graphs copy each step's input either way).
"""

from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    there are fewer), each cropped as the pretraining command crops, normalised with ImageNet's mean and std. The
    same files, seed and size give the same tensor."""
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms as T

    files = image_files(root)
    crop = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    out = torch.empty(batch, 3, size, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(batch):
            path = files[i % len(files)]
            try:
                with Image.open(path) as im:
                    out[i] = crop(im.convert("RGB"))
            except (OSError, UnidentifiedImageError) as e:
                raise InputsError(f"--images: cannot read {path}: {e}") from None
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
