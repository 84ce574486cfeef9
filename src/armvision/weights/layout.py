"""Where checkpoints live on disk: the names of a run's checkpoint files and the one function that finds one.

A run directory::

    run/checkpoints/step_00001234/     one checkpoint (STEP_PREFIX + the step, 8 digits)
        config.json, model.safetensors   a model directory (CONFIG_NAME, WEIGHTS_NAME): armvision.load_model reads it
        ema/                             the EMA weights, a second model directory (EMA_DIR)
        sharded/, sharded.json           instead of model.safetensors in runs with parallel fsdp: a DCP checkpoint
                                         (SHARDED_DIR) and its marker (MARKER_NAME)
        training_state.pt                optimizer, scheduler, loop position, RNG states (STATE_NAME)
        metrics.json                     the evaluation at that step (METRICS_NAME)
        manifest.json                    size and SHA-256 of the files above, written last (MANIFEST_NAME)
        health.json                      whether the step after it proved the weights good (HEALTH_NAME)
    run/checkpoints/latest, best       symbolic links to step folders (LATEST, BEST)
    run/checkpoints/diverged-step_*    checkpoints saved after the last good one of a diverged run

:func:`find_checkpoint` resolves any path a user passes (a checkpoint folder, a ``checkpoints`` folder, a run
directory) to the checkpoint a command needs; every command and the trainer go through it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError
from ..models.io import CONFIG_NAME, WEIGHTS_NAME
from ..models.manifest import MANIFEST_NAME

__all__ = ["CHECKPOINTS_DIR", "STEP_PREFIX", "LATEST", "BEST", "STATE_NAME", "HEALTH_NAME", "METRICS_NAME", "EMA_DIR",
           "SHARDED_DIR", "MARKER_NAME", "CONFIG_NAME", "WEIGHTS_NAME", "MANIFEST_NAME", "step_name", "step_of",
           "step_dirs", "link_target", "is_model_dir", "is_sharded_checkpoint", "is_training_checkpoint",
           "is_pickle_file", "pickle_message", "find_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
LATEST, BEST = "latest", "best"
STATE_NAME = "training_state.pt"
HEALTH_NAME = "health.json"
METRICS_NAME = "metrics.json"
EMA_DIR = "ema"
SHARDED_DIR = "sharded"
MARKER_NAME = "sharded.json"

_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl")


def step_name(step: int) -> str:
    """The folder name of the checkpoint of ``step`` (``step_00001234``)."""
    return f"{STEP_PREFIX}{step:08d}"


def step_of(ckpt: Path) -> int:
    """The step of a checkpoint folder, from its name."""
    return int(Path(ckpt).name[len(STEP_PREFIX):])


def step_dirs(ckpt_dir: Path) -> list[Path]:
    """The ``step_*`` folders of a checkpoints folder, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    dirs = [p for p in ckpt_dir.iterdir() if p.is_dir() and not p.is_symlink() and _STEP_RE.match(p.name)]
    return sorted(dirs, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def is_model_dir(path: Path) -> bool:
    """``path`` holds config.json and model.safetensors."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """``path`` is a complete sharded checkpoint folder (marker, config.json and the DCP metadata)."""
    p = Path(path)
    return (p / MARKER_NAME).is_file() and (p / CONFIG_NAME).is_file() and (p / SHARDED_DIR / ".metadata").is_file()


def _is_weights_checkpoint(path: Path) -> bool:
    """A model directory or a sharded checkpoint folder."""
    return Path(path).is_dir() and (is_model_dir(path) or is_sharded_checkpoint(path))


def is_training_checkpoint(path: Path) -> bool:
    """A complete checkpoint a run can resume from: a training state and the model (a model directory, or sharded)."""
    return (Path(path) / STATE_NAME).is_file() and _is_weights_checkpoint(path)


def link_target(link: Path) -> Path | None:
    """The model directory a ``latest`` / ``best`` link points at, if it does."""
    if link.is_symlink():
        target = link.resolve()
        if target.is_dir() and is_model_dir(target):
            return target
    return None


def is_pickle_file(path: Path) -> bool:
    """A PyTorch pickle such as an official ARM ``.pth`` checkpoint (by its name)."""
    path = Path(path)
    return path.is_file() and (path.suffix in _PICKLE_SUFFIXES or path.name.endswith(".pth.tar"))


def pickle_message(path: Path) -> str:
    return (f"{path} is a PyTorch pickle (such as an official ARM .pth checkpoint); here armvision reads only its "
            f"own model directories (config.json + model.safetensors). Convert it first with "
            f"`armvision convert {path} OUT_DIR` and pass OUT_DIR (`--init` takes the .pth directly)")


# ------------------------------------------------------------------------------------------------
# finding a checkpoint
# ------------------------------------------------------------------------------------------------
_MODEL_KINDS = "an armvision model directory (config.json + model.safetensors)"


def _no_model(p: Path) -> str:
    ckpt_dir = p / CHECKPOINTS_DIR if (p / CHECKPOINTS_DIR).is_dir() else p
    if (p / MARKER_NAME).is_file() or any((d / MARKER_NAME).is_file() for d in step_dirs(ckpt_dir)):
        return (f"{p} holds sharded checkpoints (a parallel fsdp run); write one as a model directory first: "
                f"armvision export {p} MODEL_DIR")
    return (f"no model found in {p}: expected config.json + model.safetensors there, or a run directory with "
            "checkpoints/step_*/ (is the run finished or did it save anything?)")


# need -> (what is accepted, the links tried in order, and the one-line errors: a pickle file, another file,
# a missing path, nothing found). None: that case falls through to the search.
_NEEDS: dict[str, tuple[Callable[[Path], bool], tuple[str, ...], Callable | None, Callable | None, Callable,
                        Callable]] = {
    # a model directory (load_model, eval, extract, --init): the run's best, else its latest
    "model": (
        is_model_dir, (BEST, LATEST),
        pickle_message,
        lambda p: (f"{p} is a file; expected an armvision model directory (config.json + model.safetensors) or a run "
                   "directory (with checkpoints/)"),
        lambda p: (f"{p} does not exist; expected {_MODEL_KINDS}, a checkpoint folder or a run directory"),
        _no_model),
    # a checkpoint to resume from (a training state and the model, sharded or not): the run's latest
    "resume": (
        is_training_checkpoint, (LATEST,),
        lambda p: f"cannot resume from {p}: " + pickle_message(p),
        None,
        lambda p: (f"cannot resume from {p}: it does not exist; pass a checkpoint folder (run/checkpoints/step_*), "
                   "a run directory, or --resume auto"),
        lambda p: f"cannot resume from {p}: no checkpoint with a {STATE_NAME} in it"),
    # any weights, sharded or not (export): the run's best, else its latest
    "any": (
        _is_weights_checkpoint, (BEST, LATEST),
        None, None,
        lambda p: (f"{p} does not exist; pass a run directory, a checkpoint folder (run/checkpoints/step_*) or a "
                   "model directory"),
        lambda p: (f"{p} holds no checkpoint: expected a model directory (config.json + model.safetensors), a "
                   f"sharded checkpoint ({MARKER_NAME} + {SHARDED_DIR}/) or a run directory")),
}


def find_checkpoint(path: str | os.PathLike, need: str = "model", prefer: str | None = None,
                    required: bool = True) -> Path | None:
    """The checkpoint ``path`` stands for: ``path`` itself when it is one, else -- ``path`` being a run directory
    or its ``checkpoints`` folder -- the target of its links (in order), else its newest ``step_*`` folder that is
    one.

    Args:
        need: ``"model"``: a model directory (config.json + model.safetensors), links ``best`` then ``latest``;
            ``"resume"``: a checkpoint with a training state (sharded or not), the ``latest`` link;
            ``"any"``: a model directory or a sharded checkpoint, ``best`` then ``latest``.
        prefer: ``"latest"`` tries that link first (``"best"``: the default order).
        required: False returns None where a CheckpointError would say that there is none.

    Raises CheckpointError, one line saying what was expected.
    """
    if need not in _NEEDS:
        raise ValueError(f"need must be one of {', '.join(_NEEDS)}, got {need!r}")
    accept, links, pickled, a_file, missing, nothing = _NEEDS[need]
    p = Path(path)
    if p.is_dir() and accept(p):
        return p
    if not required and not p.is_dir():
        return None
    if pickled is not None and is_pickle_file(p):
        raise CheckpointError(pickled(p))
    if a_file is not None and p.is_file():
        raise CheckpointError(a_file(p))
    if not p.exists():
        raise CheckpointError(missing(p))
    ckpt_dir = p / CHECKPOINTS_DIR if (p / CHECKPOINTS_DIR).is_dir() else p
    if prefer == LATEST:
        links = (LATEST, *[n for n in links if n != LATEST])
    for name in links:
        link = ckpt_dir / name
        if link.is_symlink() and accept(link.resolve()):
            return link.resolve()
    steps = [d for d in step_dirs(ckpt_dir) if accept(d)]
    if steps:
        return steps[-1]
    if not required:
        return None
    raise CheckpointError(nothing(p))
