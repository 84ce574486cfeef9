"""Where armvision reads model weights: every source, one result, and the mappings between the two models.

Every command and API that loads ARM weights comes through here: ``armvision.load_model``,
``from_pretrained``, ``finetune --init`` (:func:`init_classifier`), ``armvision convert``, ``extract``
and ``eval``, and timm's ``pretrained=True`` (``checkpoint_filter_fn``).

Sources :func:`read_weights` accepts, all read into one :class:`Weights` (kind, state dict, config, source):

* an armvision model directory (``config.json`` + ``model.safetensors``: :func:`armvision.save_model`,
  ``save_pretrained``, every training checkpoint), a training checkpoint folder ``checkpoints/step_*``
  or a run directory (its ``best`` checkpoint, else its latest): :func:`resolve_model_dir`;
* a ``.safetensors`` file (with a ``config.json`` beside it: that model directory; alone: bare weights);
* a PyTorch pickle (``.pth``, ``.pt``, ...): an official ARM checkpoint, read without unpickling arbitrary
  objects and checked key by key (:func:`armvision.interop.official.read_official_checkpoint`);
* a state dict, or a checkpoint dict holding one (``{'model': ..., 'model_ema': ...}``), in memory.

``kind`` is :data:`PRETRAINING` (weights of :class:`~armvision.ARMPretrain`) or :data:`CLASSIFIER`
(weights of :class:`~armvision.ARMClassifier`, i.e. a fine-tuning or fine-tuned model).

Mappings onto a classifier (:func:`classifier_state_dict`, :func:`init_classifier`):

* pretraining -> classifier (the reference's fine-tuning start): patch embedding and blocks copied, each
  mixer's forward direction copied into every scan direction, the 2-D position embedding resized
  bicubically to the classifier's grid with a zero class-token slot inserted in the middle; the decoder
  is dropped; cls_token keeps its init, norm_f and the head are re-initialised;
* classifier -> classifier: every weight copied, the position embedding resized when the grids differ,
  the head kept from the target classifier when its shape differs (another class count).

Errors are :class:`armvision.errors.CheckpointError` (with ``missing`` / ``unexpected`` / ``mismatched``
lists where a key check failed); the mapping functions keep their KeyError / ValueError.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .errors import CheckpointError
from .interop.official import (
    FINETUNING,
    check_keys,
    OfficialCheckpoint,
    _square_side,
    clean_state_dict,
    detect_kind,
    is_state_dict,
    read_official_checkpoint,
    registry_name,
    select_state_dict,
)
from .layers import DIRECTIONS, insert_token_slot, resize_classifier_pos_embed, resize_pos_embed
from .models import ARMClassifier, ARMPretrain
from .models.io import CONFIG_NAME, WEIGHTS_NAME, build_model

__all__ = [
    "PRETRAINING",
    "CLASSIFIER",
    "Weights",
    "is_model_dir",
    "is_pickle_file",
    "resolve_model_dir",
    "read_config",
    "read_weights",
    "load_model",
    "encoder_mismatch",
    "classifier_state_dict_from_pretraining",
    "classifier_state_dict_from_classifier",
    "classifier_state_dict",
    "init_classifier",
    "init_classifier_from_pretraining",
    "init_classifier_from_official",
    "classifier_for",
]

_log = logging.getLogger(__name__)

PRETRAINING = "pretraining"
CLASSIFIER = "classifier"
_KIND_OF_ARCHITECTURE = {"ARMPretrain": PRETRAINING, "ARMClassifier": CLASSIFIER}
_STEP_RE = re.compile(r"^step_(\d+)$")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl")
# constructor arguments that must agree between an encoder's weights and the classifier they initialise
ENCODER_KEYS = ("embed_dim", "depth", "patch_size", "in_chans", "d_state")


@dataclass
class Weights:
    """ARM weights read from any source.

    Attributes:
        kind: :data:`PRETRAINING` or :data:`CLASSIFIER`.
        state_dict: parameter name -> tensor (armvision's names, which are the reference's; the official
            pretraining ``mask`` buffer is dropped).
        config: what to build: ``{"architecture", "model_name", "args", ...}`` (a model directory's
            config.json, or derived from an official checkpoint's shapes); None for a bare state dict.
        source: where the weights came from (a path, or "state dict").
        official: the official checkpoint they were read from (provenance: epoch, args, ...), if any.
    """

    kind: str
    state_dict: dict[str, Tensor]
    config: dict[str, Any] | None = None
    source: str = "state dict"
    official: OfficialCheckpoint | None = field(default=None, repr=False)

    @property
    def args(self) -> dict[str, Any]:
        """The constructor arguments of the model these weights belong to ({} when not known)."""
        return dict((self.config or {}).get("args", {}))

    @property
    def grid(self) -> tuple[int, int] | None:
        """The patch grid (rows, columns) of these weights when the config says it; None: infer from shapes."""
        args = self.args
        if "img_size" not in args or "patch_size" not in args:
            return None
        size = args["img_size"]
        h, w = (size, size) if isinstance(size, int) else size
        return h // args["patch_size"], w // args["patch_size"]

    @property
    def description(self) -> str:
        """'ARMPretrain' / 'ARMClassifier' for armvision weights, 'official ARM ... checkpoint' for official ones."""
        if self.official is not None:
            return f"official ARM {self.official.kind} checkpoint"
        return (self.config or {}).get("architecture") or f"{self.kind} weights"

    def build(self, map_location: str | torch.device = "cpu", strict: bool = True, **overrides) -> nn.Module:
        """The model these weights belong to, holding them (``overrides`` replace constructor arguments)."""
        if self.official is not None:
            return self.official.build(**overrides).to(map_location)
        if self.config is None:
            raise CheckpointError(f"{self.source}: bare weights without a config.json: build the model yourself "
                                  "and load them (or use init_classifier)")
        model = build_model(self.config, **overrides)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        if strict and (missing or unexpected):
            raise KeyError(f"{self.source} does not fit {self.config.get('architecture')}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        return model.to(map_location)


# ---------------------------------------------------------------------------------------------
# finding weights on disk
# ---------------------------------------------------------------------------------------------
def is_model_dir(path: Path) -> bool:
    """``path`` holds config.json and model.safetensors."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def is_pickle_file(path: Path) -> bool:
    """A PyTorch pickle such as an official ARM ``.pth`` checkpoint (by its name)."""
    path = Path(path)
    return path.is_file() and (path.suffix in _PICKLE_SUFFIXES or path.name.endswith(".pth.tar"))


def pickle_message(path: Path) -> str:
    return (f"{path} is a PyTorch pickle (such as an official ARM .pth checkpoint); here armvision reads only its "
            f"own model directories (config.json + model.safetensors). Convert it first with "
            f"`armvision convert {path} OUT_DIR` and pass OUT_DIR (`--init` takes the .pth directly)")


def step_dirs(ckpt_dir: Path) -> list[Path]:
    """The ``step_*`` folders of a checkpoints folder, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    dirs = [p for p in ckpt_dir.iterdir() if p.is_dir() and not p.is_symlink() and _STEP_RE.match(p.name)]
    return sorted(dirs, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def link_target(link: Path) -> Path | None:
    """The model directory a ``latest`` / ``best`` link points at, if it does."""
    if link.is_symlink():
        target = link.resolve()
        if target.is_dir() and is_model_dir(target):
            return target
    return None


def resolve_model_dir(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A model directory from a model directory, a checkpoint folder or a run directory.

    A run directory gives its ``best`` checkpoint (``prefer="best"``), else its latest.
    """
    p = Path(path)
    if p.is_file():
        if is_pickle_file(p):
            raise CheckpointError(pickle_message(p))
        raise CheckpointError(f"{p} is a file; expected an armvision model directory (config.json + "
                              "model.safetensors) or a run directory (with checkpoints/)")
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; expected an armvision model directory (config.json + "
                              "model.safetensors), a checkpoint folder or a run directory")
    if is_model_dir(p):
        return p
    ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    order = ("best", "latest") if prefer == "best" else ("latest", "best")
    for name in order:
        target = link_target(ckpt_dir / name)
        if target is not None:
            return target
    steps = [d for d in step_dirs(ckpt_dir) if is_model_dir(d)]
    if steps:
        return steps[-1]
    raise CheckpointError(f"no model found in {p}: expected config.json + model.safetensors there, or a run "
                          "directory with checkpoints/step_*/ (is the run finished or did it save anything?)")


def _model_file(path: Path) -> Path:
    """``path``, a file of a model directory; FileNotFoundError saying what a model directory holds if absent."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an armvision model directory holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (written by save_model / save_pretrained / training runs)")
    return path


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a model directory (the one place armvision parses it).

    Raises FileNotFoundError when the directory has no model, CheckpointError when it cannot be read.
    """
    path = _model_file(Path(directory) / CONFIG_NAME)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _read_safetensors(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    _model_file(path)
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _model_dir(path: Path) -> Path:
    """``path`` when it is a model directory, else the checkpoint a checkpoint folder or run directory
    points at; a directory with neither raises FileNotFoundError naming what a model directory holds."""
    if is_model_dir(path):
        return path
    try:
        return resolve_model_dir(path)
    except CheckpointError:
        read_config(path)
        _read_safetensors(path / WEIGHTS_NAME)
        raise


def _kind_of_state_dict(sd: Mapping[str, Tensor], source: str) -> str:
    return CLASSIFIER if detect_kind(sd, source) == FINETUNING else PRETRAINING


def _from_model_dir(directory: Path, map_location: str | torch.device = "cpu") -> Weights:
    config = read_config(directory)
    arch = config.get("architecture")
    if arch not in _KIND_OF_ARCHITECTURE:
        raise CheckpointError(f"{directory / CONFIG_NAME} names architecture {arch!r}; expected ARMPretrain or "
                              "ARMClassifier")
    sd = _read_safetensors(directory / WEIGHTS_NAME, map_location)
    return Weights(_KIND_OF_ARCHITECTURE[arch], sd, config, str(directory))


def read_weights(source: str | os.PathLike | Mapping[str, Any] | Weights, ema: bool | None = None,
                 global_pool: str | None = None, allow_globals: Iterable[Any] = (),
                 map_location: str | torch.device = "cpu") -> Weights:
    """Read ARM weights from any source (see the module docstring) into a :class:`Weights`.

    Args:
        source: a model / checkpoint / run directory, a ``.safetensors`` file, an official ``.pth``
            checkpoint, or a (checkpoint or state) dict in memory.
        ema: pickles and checkpoint dicts: None takes the EMA weights when present, True requires them,
            False takes the plain ones (:func:`armvision.interop.official.select_state_dict`).
        global_pool: official classifier checkpoints: "avg" / "token" (None: from the checkpoint's args).
        allow_globals: official checkpoints: classes beyond ``argparse.Namespace`` trusted in the pickle.
        map_location: where safetensors weights are loaded.
    """
    if isinstance(source, Weights):
        return source
    if isinstance(source, Mapping):
        raw = dict(source) if is_state_dict(source) else select_state_dict(source, ema)[0]
        sd = clean_state_dict(raw)
        return Weights(_kind_of_state_dict(sd, "state dict"), sd)
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        if path.name == WEIGHTS_NAME and is_model_dir(path.parent):
            return _from_model_dir(path.parent, map_location)
        sd = _read_safetensors(path, map_location)
        return Weights(_kind_of_state_dict(sd, str(path)), sd, None, str(path))
    if path.is_dir():
        return _from_model_dir(_model_dir(path), map_location)
    if not path.exists():
        if path.suffix in (*_PICKLE_SUFFIXES, ".safetensors"):
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        read_config(path)  # raises FileNotFoundError: what a model directory holds
    return _weights_of_official(read_official_checkpoint(path, ema, global_pool, allow_globals))


def load_model(source: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True,
               **overrides) -> nn.Module:
    """The model held by ``source`` -- a model directory (config.json + model.safetensors), a checkpoint
    folder or run directory, or an official ``.pth`` -- with its weights; ``overrides`` replace constructor
    arguments (e.g. ``dynamic_img_size=True``, ``backend="torch"``)."""
    return read_weights(source, map_location=map_location).build(map_location, strict, **overrides)


# ---------------------------------------------------------------------------------------------
# mappings onto a classifier
# ---------------------------------------------------------------------------------------------
_MIXER_DIRECTION_KEYS = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias")


def encoder_mismatch(args: Mapping[str, Any], classifier: ARMClassifier) -> list[tuple[str, Any, Any]]:
    """``(key, weights' value, classifier's value)`` for each encoder argument (:data:`ENCODER_KEYS`) that differs."""
    mine = classifier.config
    return [(k, args[k], mine.get(k)) for k in ENCODER_KEYS if k in args and args[k] != mine.get(k)]


def classifier_state_dict_from_pretraining(
    pretrained: Mapping[str, Tensor], classifier: ARMClassifier, pretrain_grid: tuple[int, int] | None = None
) -> dict[str, Tensor]:
    """Map a pretraining state dict onto ``classifier``'s parameters.

    Copies the patch embedding and the encoder blocks; copies each mixer's forward direction
    (conv1d, x_proj, dt_proj, A_log, D) into all of the classifier's directions; resizes the
    position embedding from ``pretrain_grid`` (default: square, from its length) to the
    classifier's grid and inserts a zero class-token slot in the middle. Decoder weights are
    dropped. Returns only the keys it fills (cls_token, norm_f and head keep their init).
    """
    sd = dict(pretrained)
    if "pos_embed" not in sd or not any(k.startswith("layers.") for k in sd):
        raise KeyError("not an ARM pretraining state dict: expected 'pos_embed' and 'layers.*' keys")
    target = classifier.state_dict()
    out: dict[str, Tensor] = {}
    suffixes = [s for _, s in DIRECTIONS[: classifier.layers[0].mixer.num_directions]]
    for k, v in sd.items():
        if k.startswith("patch_embed.") or (k.startswith("layers.") and ".mixer." not in k):
            out[k] = v
        elif k.startswith("layers.") and ".mixer." in k:
            prefix, name = k.split(".mixer.")
            if name in ("in_proj.weight", "out_proj.weight"):
                out[k] = v
                continue
            for s in suffixes:
                if name == "A_log":
                    out[f"{prefix}.mixer.A{s}_log"] = v
                elif name == "D":
                    out[f"{prefix}.mixer.D{s}"] = v
                elif name in _MIXER_DIRECTION_KEYS:
                    mod, param = name.split(".")
                    out[f"{prefix}.mixer.{mod}{s}.{param}"] = v
    pos = sd["pos_embed"]
    n = pos.shape[1]
    if pretrain_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"pretrained pos_embed has {n} tokens, not a square grid; pass pretrain_grid")
        pretrain_grid = (side, side)
    grid = classifier.geometry.grid
    out["pos_embed"] = insert_token_slot(resize_pos_embed(pos.float(), pretrain_grid, grid), (grid[0] * grid[1]) // 2)
    unknown = [k for k in out if k not in target]
    if unknown:
        raise KeyError(f"pretrained weights do not fit this classifier (depth or directions differ): {unknown[:5]}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in out.items() if v.shape != target[k].shape]
    if bad:
        raise ValueError("pretrained weights have other shapes than this classifier: " + "; ".join(bad[:5]))
    return out


def classifier_state_dict_from_classifier(state_dict: Mapping[str, Tensor], classifier: ARMClassifier,
                                          source: str = "state dict",
                                          source_grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """A classifier state dict made to fit ``classifier``: the position embedding resized to its grid
    (from ``source_grid``; default square), the head taken from ``classifier`` when the source's does not
    fit (other class count, or no head). Everything else must match; a CheckpointError lists what does not."""
    sd = dict(state_dict)
    target = classifier.state_dict()
    if "pos_embed" in sd and sd["pos_embed"].shape != target["pos_embed"].shape:
        if source_grid is None:
            side = _square_side(sd["pos_embed"].shape[1] - 1, "pos_embed (class token slot excluded)", source)
            source_grid = (side, side)
        sd["pos_embed"] = resize_classifier_pos_embed(sd["pos_embed"], source_grid, classifier.geometry.grid)
    head_keys = [k for k in target if k.startswith("head.")]
    fits = all(k in sd and sd[k].shape == target[k].shape for k in head_keys)
    extra_head = [k for k in sd if k.startswith("head.") and k not in target]
    if not fits or extra_head:
        if any(k.startswith("head.") for k in sd):
            _log.info("%s: head of another shape than the classifier's (%d classes): keeping the classifier's head",
                      source, classifier.num_classes)
        for k in [k for k in sd if k.startswith("head.")]:
            del sd[k]
        sd.update({k: target[k] for k in head_keys})
    check_keys(sd, {k: tuple(v.shape) for k, v in target.items()},
               f"{source}: classifier weights do not fit this classifier")
    return sd


def classifier_state_dict(weights: Weights, classifier: ARMClassifier) -> dict[str, Tensor]:
    """A complete state dict for ``classifier`` from any ARM weights: the mapping of their kind, and the
    classifier's own tensors where the mapping leaves its initialisation (cls_token, norm_f, head)."""
    if weights.kind == PRETRAINING:
        out = classifier_state_dict_from_pretraining(weights.state_dict, classifier, weights.grid)
        out.update({k: v for k, v in classifier.state_dict().items() if k not in out})
        return out
    return classifier_state_dict_from_classifier(weights.state_dict, classifier, weights.source, weights.grid)


def init_classifier_from_pretraining(
    classifier: ARMClassifier,
    source: ARMPretrain | Mapping[str, Tensor],
    pretrain_grid: tuple[int, int] | None = None,
) -> ARMClassifier:
    """Initialise ``classifier`` from a pretraining model or its state dict (in place; returned).

    See :func:`classifier_state_dict_from_pretraining`. The head is re-drawn (trunc-normal,
    ``head_init_std``) and norm_f reset, as the reference's fine-tuning does.
    """
    if isinstance(source, ARMPretrain):
        pretrain_grid = source.geometry.grid
        source = source.state_dict()
    sd = classifier_state_dict_from_pretraining(source, classifier, pretrain_grid)
    missing = set(classifier.state_dict()) - set(sd)
    expected_missing = {k for k in missing if k in ("cls_token",) or k.startswith(("norm_f.", "head."))}
    if missing - expected_missing:
        raise KeyError(f"pretrained weights lack parameters of the classifier: {sorted(missing - expected_missing)[:5]}")
    with torch.no_grad():
        params = dict(classifier.named_parameters())
        for k, v in sd.items():
            params[k].copy_(v)
    classifier.norm_f.reset_parameters()
    classifier._init_head()
    return classifier


def init_classifier(classifier: ARMClassifier, source: Any, ema: bool | None = None,
                    allow_globals: Iterable[Any] = ()) -> dict[str, Any]:
    """Initialise ``classifier`` (in place) from any ARM weights (:func:`read_weights` sources, or an
    :class:`~armvision.ARMPretrain`); what ``finetune --init`` does. Returns ``{"source", "architecture",
    "step", "not_loaded"}`` (not_loaded: the source's head tensors left out for another class count).

    Pretraining weights: :func:`init_classifier_from_pretraining`. Classifier weights:
    :func:`classifier_state_dict_from_classifier` (position embedding resized, head kept when it differs).
    The encoder (width, depth, patch, channels, state size) must be the weights' (CheckpointError).
    """
    if isinstance(source, ARMPretrain):
        w = Weights(PRETRAINING, source.state_dict(), {"architecture": "ARMPretrain", "args": dict(source.config)},
                    "ARMPretrain")
    elif isinstance(source, OfficialCheckpoint):
        w = _weights_of_official(source)
    else:
        w = read_weights(source, ema=ema, allow_globals=allow_globals)
    diff = encoder_mismatch(w.args, classifier)
    if diff:
        what = w.description if w.official is not None else f"{w.kind} model"
        raise CheckpointError(f"{w.source}: the {what} does not fit this classifier: "
                              + "; ".join(f"{k}: checkpoint {a}, classifier {b}" for k, a, b in diff))
    own = classifier.state_dict()
    if w.kind == PRETRAINING:
        try:
            init_classifier_from_pretraining(classifier, w.state_dict, pretrain_grid=w.grid)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"cannot initialise the classifier from {w.source}: {str(e).strip(chr(39))}") \
                from None
        not_loaded: list[str] = []
    else:
        not_loaded = [k for k, v in w.state_dict.items()
                      if k.startswith("head.") and (k not in own or own[k].shape != v.shape)]
        classifier.load_state_dict(classifier_state_dict(w, classifier), strict=True)
        if not_loaded:
            _log.info("init: kept the fresh %s (shapes differ from %s)", ", ".join(not_loaded), w.source)
    return {"source": w.source, "architecture": w.description, "step": (w.config or {}).get("step"),
            "not_loaded": not_loaded}


def _weights_of_official(ckpt: OfficialCheckpoint) -> Weights:
    config = {"architecture": ckpt.architecture.__name__, "model_name": registry_name(ckpt.model_args),
              "args": dict(ckpt.model_args)}
    sd = {k: v for k, v in ckpt.state_dict.items() if k != "mask"}
    return Weights(CLASSIFIER if ckpt.kind == FINETUNING else PRETRAINING, sd, config, ckpt.source, ckpt)


def init_classifier_from_official(
    classifier: ARMClassifier,
    checkpoint: str | os.PathLike | Mapping[str, Any] | OfficialCheckpoint,
    ema: bool | None = None,
    allow_globals: Iterable[Any] = (),
) -> ARMClassifier:
    """Initialise ``classifier`` (in place; returned) from an official checkpoint, as the reference's
    ``main_finetune.py --finetune`` does (see :func:`init_classifier`; a pretraining checkpoint's encoder
    goes into every direction, a fine-tuning checkpoint's weights are copied with the position embedding
    resized and the head kept when its shape differs). The classifier's width and depth must be the
    checkpoint's; a CheckpointError says what differs."""
    ckpt = checkpoint if isinstance(checkpoint, OfficialCheckpoint) else read_official_checkpoint(
        checkpoint, ema, allow_globals=allow_globals)
    init_classifier(classifier, ckpt)
    return classifier


def classifier_for(weights: Weights, img_size: int | None = None, num_classes: int = 0, **overrides) -> ARMClassifier:
    """A fresh four-direction classifier with the encoder of ``weights`` (pretraining or classifier), at
    ``img_size`` (default: 224 when the patch divides it -- the paper's fine-tuning size -- for official
    pretraining weights, else the weights' own size). Not initialised from them: see :func:`init_classifier`."""
    a = weights.args
    if img_size is None:
        img_size = 224 if weights.official is not None and 224 % a["patch_size"] == 0 else a["img_size"]
    clf = ARMClassifier(img_size=img_size, patch_size=a["patch_size"], in_chans=a["in_chans"], num_classes=num_classes,
                        embed_dim=a["embed_dim"], depth=a["depth"], d_state=a["d_state"], **overrides)
    clf.model_name = (weights.config or {}).get("model_name")
    return clf
