"""Reading the official ARM checkpoints (OliverRensu/ARM) safely: detection, checks, the model they describe.

The reference code saves PyTorch pickles ``{'model': state_dict, 'optimizer': ..., 'epoch': int,
'scaler': ..., 'args': argparse.Namespace, ...}``; fine-tuning runs add ``'model_ema'``,
``'max_accuracy'`` and ``'ema_max_accuracy'``. armvision's parameter names are the reference's, so reading
one is: load the pickle without unpickling arbitrary objects, pick the state dict, strip wrapper prefixes,
infer the architecture from the tensor shapes, check every key and shape.

What the official layout has that armvision models do not: the pretraining model's ``mask`` buffer
(the decoder's additive attention mask, (tokens, tokens), 0 where a query may look and -inf
elsewhere). It is checked against the mask armvision derives from the geometry and then dropped;
writing it back is :mod:`armvision.interop.official`.

A checkpoint's kind is one of the weights package's two: :data:`PRETRAINING` or :data:`CLASSIFIER` (the
reference's fine-tuning checkpoints; :data:`FINETUNING` is the same value under its older name).

Reference behaviour a conversion reproduces (see docs/method.md and docs/fidelity.md):

* pretraining: the target is always the per-patch normalized image (the reference's loss ignores
  ``--norm_pix_loss``); the decoder reads blocks 6, 8, 10, 12 (depth 12) or 12, 16, 20, 24 (depth 24),
  which is :func:`~armvision.models.default_memory_layers`.
* fine-tuning: ``args.global_pool`` truthy -> mean of the patch tokens ("avg"), otherwise the class
  token ("token"), exactly as the reference's ``forward_features``; the class token sits at index
  patches // 2, which the reference's four-direction mixer agrees with only for an even patch count.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..models import MODEL_SIZES, ARMClassifier, ARMPretrain, Geometry, default_memory_layers
from ..models.config import free_keys

__all__ = [
    "PRETRAINING",
    "CLASSIFIER",
    "FINETUNING",
    "reference_kind",
    "CheckpointError",
    "OfficialCheckpoint",
    "safe_torch_load",
    "read_official_checkpoint",
    "is_official_checkpoint",
    "detect_kind",
    "infer_model_args",
    "check_official_state_dict",
    "check_keys",
    "load_official",
    "clean_state_dict",
    "select_state_dict",
    "is_state_dict",
    "is_vim_state_dict",
    "ALLOWED_GLOBALS",
    "registry_name",
    "square_side",
]

# the kinds of ARM weights, for every source the weights package reads
PRETRAINING = "pretraining"
CLASSIFIER = "classifier"
FINETUNING = CLASSIFIER  # the older name: the reference's fine-tuning checkpoints hold classifier weights
_ARCHITECTURE = {PRETRAINING: ARMPretrain, CLASSIFIER: ARMClassifier}
# what the reference calls its checkpoints of each kind (its main_pretrain.py / main_finetune.py): the word in
# messages and in the provenance a converted model records
_REFERENCE_KIND = {PRETRAINING: "pretraining", CLASSIFIER: "finetuning"}


def reference_kind(kind: str) -> str:
    """The reference's word for a checkpoint of ``kind``: "pretraining" or "finetuning"."""
    return _REFERENCE_KIND[_kind(kind)]


def _kind(kind: str) -> str:
    """``kind`` in the one vocabulary (the reference's "finetuning" read as :data:`CLASSIFIER`)."""
    if kind == "finetuning":
        return CLASSIFIER
    if kind not in _ARCHITECTURE:
        raise ValueError(f"kind {kind!r}: expected {PRETRAINING!r} or {CLASSIFIER!r}")
    return kind

# What an official checkpoint may hold besides tensors and plain Python values: the training
# arguments. Nothing else is unpickled unless a caller names it in ``allow_globals``.
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
# prefixes added by DistributedDataParallel / DataParallel and torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# keys that only a pretraining / only a fine-tuning state dict has
_PRETRAINING_MARKERS = ("ar_pred.weight", "enc2dec.weight", "ar_token", "dec_pos_embed")
_FINETUNING_MARKERS = ("cls_token", "norm_f.weight", "head.weight")
# constructor arguments that do not change any tensor shape: allowed as overrides of a conversion
_SAFE_OVERRIDES = {PRETRAINING: free_keys(True), CLASSIFIER: free_keys(False)}
_LIST_LIMIT = 8


def _some(items: list, limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _block_prefix(key: str) -> str | None:
    m = re.match(r"((?:layers|dec_block)\.\d+\.)", key)
    return m.group(1) if m else None


def _summarize(keys: list[str], universe: Iterable[str]) -> str:
    """``keys`` listed with every block (``layers.i.`` / ``dec_block.k.``) whose keys in ``universe`` are all in
    ``keys`` collapsed to ``layers.i.* (n keys)``."""
    universe = list(universe)
    chosen = set(keys)
    whole = []
    for prefix in dict.fromkeys(p for k in keys if (p := _block_prefix(k))):
        members = [k for k in universe if k.startswith(prefix)]
        if len(members) > 1 and all(k in chosen for k in members):
            whole.append(prefix)
    items, done = [], set()
    for k in keys:
        p = _block_prefix(k)
        if p in whole:
            if p not in done:
                done.add(p)
                items.append(f"{p}* ({sum(1 for m in keys if m.startswith(p))} keys)")
        else:
            items.append(k)
    return _some(items)


# ---------------------------------------------------------------------------------------------
# safe loading
# ---------------------------------------------------------------------------------------------
@contextmanager
def _allowed(globals_: Iterable[Any]):
    globals_ = list(globals_)
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: scoped allow-list
        with torch.serialization.safe_globals(globals_):
            yield
    else:  # torch 2.4: only a process-wide allow-list exists
        torch.serialization.add_safe_globals(globals_)
        yield


def _unsafe_globals(path: Path) -> list[str] | None:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint, or torch < 2.5
        return None


def safe_torch_load(path: str | os.PathLike, allow_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with the allow-list :data:`ALLOWED_GLOBALS` (the
    reference's ``argparse.Namespace``) plus ``allow_globals``: tensors and plain Python values load,
    arbitrary objects are refused. Raises :class:`CheckpointError` naming the file when it cannot
    be read (truncated, corrupt, not a PyTorch file) or holds objects outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    allowed = [*ALLOWED_GLOBALS, *allow_globals]
    try:
        with _allowed(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        unsafe = _unsafe_globals(path)
        names = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
        refused = [g for g in (unsafe or []) if g not in names]
        if refused:
            raise CheckpointError(
                f"{path}: the pickle holds objects outside armvision's allow-list: {_some(refused)}. "
                "armvision loads checkpoints with torch.load(weights_only=True) and never unpickles arbitrary "
                "objects; if you trust this file and these classes, pass them as allow_globals"
            ) from e
        first_line = _cause(e)
        raise CheckpointError(
            f"{path}: cannot read a PyTorch checkpoint from this file (truncated, corrupt, or not a "
            f"checkpoint written by torch.save): {first_line}"
        ) from e


def _cause(e: Exception) -> str:
    """The informative line of torch.load's error: torch's weights-only failure wraps the unpickler's
    reason in advice to load with weights_only=False, which armvision must not pass on."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Weights only load failed"):
        for i, line in enumerate(lines):
            if "WeightsUnpickler error" in line:
                reason = line.split("WeightsUnpickler error:", 1)[-1].strip() or (lines[i + 1] if i + 1 < len(lines)
                                                                                    else "")
                return f"unpickler error: {reason}" if reason else "the unpickler refused it"
        return "torch.load(weights_only=True) refused it"
    return lines[0]


# ---------------------------------------------------------------------------------------------
# what is in a checkpoint
# ---------------------------------------------------------------------------------------------
def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Strip ``module.`` (DDP / DataParallel) and ``_orig_mod.`` (torch.compile) prefixes."""
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def is_vim_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """A state dict in Vim's layout (hustvl/Vim): Vim blocks (one norm ``layers.{i}.norm``, no MLP) and ``norm_f``."""
    return "layers.0.norm.weight" in state_dict and "layers.0.mlp.w1.weight" not in state_dict \
        and "norm_f.weight" in state_dict


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of str -> Tensor."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def select_state_dict(obj: Any, ema: bool | None = None,
                      source: str = "checkpoint") -> tuple[dict[str, Tensor], str | None]:
    """The state dict of a loaded checkpoint and the key it came from (None: ``obj`` is the state dict).

    ``ema``: None prefers ``model_ema`` / ``state_dict_ema`` over ``model`` / ``state_dict``; True
    requires the EMA weights; False takes the plain ones.
    """
    if is_state_dict(obj):
        if ema:
            raise CheckpointError(f"{source}: EMA weights were asked for, but the file is a bare state dict")
        return dict(obj), None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a checkpoint dict ({{'model': state_dict, ...}}) or a state "
                              f"dict, found a {type(obj).__name__}")
    ema_keys = [k for k in ("model_ema", "state_dict_ema") if is_state_dict(obj.get(k))]
    plain_keys = [k for k in ("model", "state_dict") if is_state_dict(obj.get(k))]
    if ema is True:
        if not ema_keys:
            raise CheckpointError(f"{source}: EMA weights were asked for, but the checkpoint has no 'model_ema' "
                                  f"state dict (top-level keys: {_some(sorted(map(str, obj)))})")
        key = ema_keys[0]
    elif ema is False:
        if not plain_keys:
            raise CheckpointError(f"{source}: no 'model' state dict in the checkpoint "
                                  f"(top-level keys: {_some(sorted(map(str, obj)))})")
        key = plain_keys[0]
    else:  # as the reference's evaluation and timm: EMA weights when the checkpoint has them
        keys = ema_keys + plain_keys
        if not keys:
            raise CheckpointError(f"{source}: no state dict found: expected a 'model' (or 'model_ema') entry "
                                  f"holding tensors; top-level keys: {_some(sorted(map(str, obj)))}")
        key = keys[0]
    return dict(obj[key]), key


def detect_kind(state_dict: Mapping[str, Any], source: str = "state dict") -> str:
    """:data:`PRETRAINING` or :data:`CLASSIFIER`, from the keys only one of the two models has."""
    pre = [k for k in _PRETRAINING_MARKERS if k in state_dict]
    fin = [k for k in _FINETUNING_MARKERS if k in state_dict]
    if pre and fin:
        raise CheckpointError(f"{source}: has keys of both the pretraining model ({', '.join(pre)}) and the "
                              f"fine-tuning model ({', '.join(fin)}); not an ARM checkpoint")
    if pre:
        return PRETRAINING
    if fin:
        return CLASSIFIER
    needed = ["patch_embed.proj.weight", "pos_embed", "layers.0.mixer.in_proj.weight"]
    absent = [k for k in needed if k not in state_dict]
    raise CheckpointError(
        f"{source}: not an ARM checkpoint: none of the pretraining keys ({', '.join(_PRETRAINING_MARKERS)}) "
        f"or fine-tuning keys ({', '.join(_FINETUNING_MARKERS)}) is present"
        + (f"; missing also {', '.join(absent)}" if absent else "")
        + f" (found: {_some(sorted(state_dict))})",
        missing=absent,
    )


def _require(sd: Mapping[str, Tensor], keys: Iterable[str], source: str, kind: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: not an ARM {kind} checkpoint: missing keys {_some(missing)}",
                              missing=missing)


def square_side(n: int, what: str, source: str) -> int:
    """The side of the square patch grid of ``n`` positions; CheckpointError naming ``what`` when not square."""
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{source}: {what} has {n} patch positions, not a square grid; the reference "
                              "code only builds square grids")
    return side


def infer_model_args(state_dict: Mapping[str, Tensor], kind: str, args: Mapping[str, Any] | None = None,
                     global_pool: str | None = None, source: str = "state dict") -> dict[str, Any]:
    """Constructor arguments of the armvision model (:class:`ARMPretrain` for :data:`PRETRAINING`,
    :class:`ARMClassifier` for :data:`CLASSIFIER`, also spelled "finetuning") that an official state dict describes.

    Widths, depth, patch size, channels, state size and image size come from the tensor shapes;
    the pretraining cluster size from the ``mask`` buffer (4, the reference's, when absent); the
    classifier's pooling from ``global_pool``, else ``args['global_pool']`` as the reference reads it,
    else "avg" (the paper's).
    """
    sd, args = state_dict, dict(args or {})
    kind = _kind(kind)
    _require(sd, ["patch_embed.proj.weight", "pos_embed", "layers.0.mixer.A_log"], source, reference_kind(kind))
    w = sd["patch_embed.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight has shape {tuple(w.shape)}; expected "
                              "(width, channels, patch, patch)")
    embed_dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    depth = max(layer_ids) + 1
    d_state = int(sd["layers.0.mixer.A_log"].shape[-1])
    pos = sd["pos_embed"]
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source}: pos_embed has shape {tuple(pos.shape)}; expected (1, tokens, width)")
    n = int(pos.shape[1])
    common = dict(embed_dim=embed_dim, depth=depth, patch_size=patch, in_chans=in_chans, d_state=d_state)

    if kind == PRETRAINING:
        _require(sd, ["ar_token"], source, reference_kind(kind))
        side = square_side(n, "pos_embed", source)
        decoder_dim = int(sd["ar_token"].shape[-1])
        levels = len({int(m.group(1)) for k in sd if (m := re.match(r"dec_block\.(\d+)\.", k))}) or 4
        cluster = 4  # the reference's
        if "mask" in sd:
            tokens = int(sd["mask"].shape[0])
            per_cluster = n - tokens
            cluster = math.isqrt(per_cluster) if per_cluster > 0 else 0
            if cluster < 1 or cluster * cluster != per_cluster:
                raise CheckpointError(f"{source}: the decoder mask covers {tokens} of {n} patches, which is not "
                                      "all but one square cluster")
        fc1 = sd.get("dec_block.0.mlp.fc1.weight")
        mlp_ratio = float(fc1.shape[0]) / decoder_dim if fc1 is not None else 4.0
        try:
            memory_layers = default_memory_layers(depth, levels)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e
        return dict(common, img_size=side * patch, cluster_size=cluster, decoder_dim=decoder_dim,
                    decoder_mlp_ratio=mlp_ratio, memory_layers=memory_layers, norm_pix_loss=True)

    side = square_side(n - 1, "pos_embed (class token slot excluded)", source)
    if (side * side) % 2:
        raise CheckpointError(
            f"{source}: a {side}x{side} patch grid has an odd number of patches; the reference's four-direction "
            "mixer then puts the class token one position away from where its model inserted it, which "
            "armvision does not reproduce")
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    directions = 4 if any(".mixer.conv1d_b." in k for k in sd) else 1
    if global_pool is None:
        if "global_pool" in args:
            global_pool = "avg" if args["global_pool"] else "token"
        else:
            global_pool = "avg"
    return dict(common, img_size=side * patch, num_classes=num_classes, directions=directions,
                global_pool=global_pool)


def _expected_shapes(architecture: type[nn.Module], model_args: Mapping[str, Any], source: str) -> dict[str, tuple]:
    try:
        with torch.device("meta"):
            model = architecture(**model_args)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: describes an ARM model armvision cannot build: {e}") from e
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if architecture is ARMPretrain:
        t = model.num_input_tokens
        shapes["mask"] = (t, t)
    return shapes


def _compare_keys(state_dict: Mapping[str, Tensor], expected: Mapping[str, tuple], optional: Iterable[str] = ()):
    """(missing, unexpected, mismatched) of a state dict against expected shapes; keys in
    ``optional`` may be absent. mismatched: (key, shape in the state dict, expected shape)."""
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(v.shape), tuple(expected[k])) for k, v in state_dict.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k])]
    return missing, unexpected, mismatched


def check_keys(state_dict: Mapping[str, Tensor], expected: Mapping[str, tuple], what: str,
               optional: Iterable[str] = ()) -> None:
    """Raise ``CheckpointError("{what}: N missing key(s): ...; N unexpected key(s): ...; N shape mismatch(es): ...")``
    (with the lists as attributes) when ``state_dict`` does not have exactly the ``expected`` keys and shapes."""
    missing, unexpected, mismatched = _compare_keys(state_dict, expected, optional)
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_summarize(missing, expected)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_summarize(unexpected, state_dict)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): " + _some(
            [f"{k} is {tuple(a)} in the checkpoint, expected {tuple(b)}" for k, a, b in mismatched]))
    raise CheckpointError(f"{what}: " + "; ".join(parts), missing, unexpected, mismatched)


def check_official_state_dict(state_dict: Mapping[str, Tensor], kind: str, model_args: Mapping[str, Any],
                              source: str = "state dict") -> None:
    """Raise :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches of an
    official state dict against the model ``model_args`` describes (the pretraining ``mask`` may be absent)."""
    kind = _kind(kind)
    expected = _expected_shapes(_ARCHITECTURE[kind], model_args, source)
    desc = ", ".join(f"{k}={v}" for k, v in model_args.items() if k not in ("memory_layers",))
    check_keys(state_dict, expected,
               f"{source}: does not match the ARM {reference_kind(kind)} model it describes ({desc})",
               optional=("mask",))
    if "mask" in state_dict:
        _check_mask(state_dict["mask"], model_args, source)


def _official_mask(decoder_mask: Tensor) -> Tensor:
    """The reference's additive decoder mask: 0 where a query may look, -inf elsewhere (float32)."""
    zeros = torch.zeros(decoder_mask.shape, dtype=torch.float32)
    return zeros.masked_fill(~decoder_mask.cpu(), float("-inf"))


def _check_mask(mask: Tensor, model_args: Mapping[str, Any], source: str) -> None:
    geo = Geometry((model_args["img_size"],) * 2, model_args["patch_size"], model_args["cluster_size"],
                   model_args["in_chans"])
    s = geo.patches_per_cluster
    pos = torch.arange(geo.num_patches - s) // s
    expected = _official_mask(pos[None, :] <= pos[:, None])
    if not torch.equal(mask.float().cpu(), expected):
        raise CheckpointError(f"{source}: the decoder 'mask' is not the block-causal mask of clusters of {s} tokens "
                              "that ARM uses; armvision cannot reproduce this model")


# ---------------------------------------------------------------------------------------------
# reading and converting
# ---------------------------------------------------------------------------------------------
@dataclass
class OfficialCheckpoint:
    """An official checkpoint, read and checked.

    Attributes:
        kind: :data:`PRETRAINING` or :data:`CLASSIFIER` (:func:`reference_kind`: the reference's word for it).
        state_dict: official names (wrapper prefixes stripped), the pretraining ``mask`` included.
        architecture: the armvision class that holds it.
        model_args: that class's constructor arguments.
        source: the file (or "state dict").
        state_dict_key: the checkpoint entry the weights came from ("model", "model_ema"; None: bare).
        args: the training arguments (``vars(checkpoint['args'])``), {} if absent.
        epoch: the checkpoint's epoch, if recorded.
        extra: other plain values of the checkpoint (max_accuracy, ...).
        family: whose checkpoint: "ARM" (OliverRensu/ARM) or "Vim" (hustvl/Vim, :mod:`.official_vim`).
    """

    kind: str
    state_dict: dict[str, Tensor]
    architecture: type[nn.Module]
    model_args: dict[str, Any]
    source: str = "state dict"
    state_dict_key: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    family: str = "ARM"

    def build(self, **overrides) -> nn.Module:
        """The armvision model with these weights (``overrides``: shape-neutral constructor args)."""
        bad = sorted(set(overrides) - _SAFE_OVERRIDES[self.kind])
        if bad:
            raise TypeError(f"cannot override {bad} when loading an official {reference_kind(self.kind)} checkpoint: "
                            f"they would change the weights' shapes or meaning; allowed: {sorted(_SAFE_OVERRIDES[self.kind])}"
                            + ("; to fine-tune at another size or class count use init_classifier_from_official"
                               if self.kind == CLASSIFIER else ""))
        model = self.architecture(**{**self.model_args, **overrides})
        sd = {k: v for k, v in self.state_dict.items() if k != "mask"}
        model.load_state_dict(sd, strict=True)
        model.model_name = registry_name(self.model_args)
        return model


def registry_name(model_args: Mapping[str, Any]) -> str | None:
    for name, size in MODEL_SIZES.items():
        if (size["embed_dim"], size["depth"], 16, size.get("block", "mambamlp")) == (
                model_args["embed_dim"], model_args["depth"], model_args["patch_size"],
                model_args.get("block", "mambamlp")):
            return name
    return None


def _namespace_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def read_official_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    ema: bool | None = None,
    global_pool: str | None = None,
    allow_globals: Iterable[Any] = (),
) -> OfficialCheckpoint:
    """Read an official ARM checkpoint (a file, a loaded checkpoint dict, or a state dict) and check it; an
    official Vim checkpoint (hustvl/Vim) goes to :func:`~armvision.weights.official_vim.read_vim_checkpoint`.

    Args:
        checkpoint: path to the ``.pth`` pickle, or what ``torch.load`` returned.
        ema: None (default): the EMA weights when the file has them (as the reference's evaluation
            and timm), else ``'model'``; True: require ``'model_ema'``; False: use ``'model'``.
        global_pool: fine-tuning checkpoints: "avg" or "token"; None reads ``args.global_pool``.
        allow_globals: classes beyond ``argparse.Namespace`` the caller trusts the pickle to hold.

    Raises:
        FileNotFoundError, CheckpointError (unreadable file, no state dict, unknown or malformed keys).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        obj = safe_torch_load(checkpoint, allow_globals)
    else:
        source, obj = "checkpoint", checkpoint
    raw, key = select_state_dict(obj, ema, source)
    sd = clean_state_dict(raw)
    if is_vim_state_dict(sd):  # a hustvl/Vim checkpoint: the Vim family's reader
        from .official_vim import read_vim_checkpoint

        return read_vim_checkpoint(obj, ema, source)
    kind = detect_kind(sd, source)
    meta = obj if isinstance(obj, Mapping) and key is not None else {}
    args = _namespace_dict(meta.get("args"))
    model_args = infer_model_args(sd, kind, args, global_pool, source)
    check_official_state_dict(sd, kind, model_args, source)
    epoch = meta.get("epoch")
    extra = {k: v for k, v in meta.items()
             if k not in ("model", "model_ema", "state_dict", "state_dict_ema", "optimizer", "scaler", "args", "epoch")
             and isinstance(v, (int, float, str, bool))}
    return OfficialCheckpoint(kind, sd, _ARCHITECTURE[kind], model_args, source, key, args,
                              epoch if isinstance(epoch, int) else None, extra)


def is_official_checkpoint(path: str | os.PathLike, allow_globals: Iterable[Any] = ()) -> bool:
    """True when ``path`` reads as an official ARM checkpoint (pretraining or fine-tuning) whose keys and
    shapes all check out; False for anything else (other files, other models, unreadable files)."""
    try:
        read_official_checkpoint(path, allow_globals=allow_globals)
    except (CheckpointError, FileNotFoundError, IsADirectoryError):
        return False
    return True


def load_official(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    ema: bool | None = None,
    global_pool: str | None = None,
    allow_globals: Iterable[Any] = (),
    **overrides,
) -> ARMPretrain | ARMClassifier:
    """The armvision model holding an official ARM checkpoint's weights, computing what the reference
    code computes from them.

    A pretraining checkpoint gives an :class:`~armvision.ARMPretrain` (``model(images)`` is the
    reference's loss, ``model.predict`` its prediction and target); a fine-tuning checkpoint gives an
    :class:`~armvision.ARMClassifier` (``model(images)`` its logits). Architecture, image size,
    widths and class count come from the weights themselves; the model is returned in training mode,
    on the CPU, in float32 (or the checkpoint's dtype promoted to the parameters' float32).

    To start fine-tuning from a *pretraining* checkpoint (``finetune --init official.pth``), build the
    classifier you want and call :func:`init_classifier_from_official` on it instead.

    Args:
        checkpoint, ema, global_pool, allow_globals: see :func:`read_official_checkpoint`.
        overrides: constructor arguments that leave every shape unchanged (backend, drop_path_rate,
            dynamic_img_size, ...).
    """
    return read_official_checkpoint(checkpoint, ema, global_pool, allow_globals).build(**overrides)
