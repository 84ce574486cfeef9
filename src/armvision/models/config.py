"""The models' constructor arguments as typed configs: one dataclass per model and encoder family.

:class:`PretrainConfig` holds the arguments of :class:`~armvision.ARMPretrain`, :class:`ClassifierConfig` those of
:class:`~armvision.ARMClassifier`, field for field, in the constructors' order and with their defaults; the Vim
family (:mod:`armvision.models.vim`) is the same pair with Vim's defaults (:class:`VimPretrainConfig`,
:class:`VimClassifierConfig`). Each field says, besides its type, default and help text:

* its ``role``: ``"encoder"`` (it fixes the encoder's weights: pretraining weights and the classifier they
  initialise must agree on it), ``"weights"`` (it fixes other weights' shapes or what they mean), or ``"free"``
  (regularisation, pooling, backend: any value fits the same weights);
* its range (``check``, ``allowed``), checked by :func:`check_model_args` with a one-line message;
* whether the model records it in ``model.config`` (config.json): everything but the ops ``backend``.

What the rest of the package derives from here: the keys a pretraining encoder and a classifier must share
(:func:`encoder_keys`, :data:`armvision.weights.ENCODER_KEYS`), the arguments that may be overridden when
loading weights (:func:`free_keys`), the classifier an encoder initialises (:func:`classifier_args_for`), the
family's classifier defaults (:func:`family_classifier_args`), the checks of a run config's ``model.args`` and
its ``--help`` rows (:func:`describe_model_args`). Adding a model argument is a field here and the argument in
the model's constructor (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union

from ..configtree import from_dict
from ..errors import ConfigError

__all__ = [
    "PretrainConfig",
    "ClassifierConfig",
    "VimPretrainConfig",
    "VimClassifierConfig",
    "ENCODER",
    "WEIGHTS",
    "FREE",
    "config_class",
    "arg_names",
    "encoder_keys",
    "free_keys",
    "family_classifier_args",
    "check_model_args",
    "saved_config",
    "classifier_args_for",
    "describe_model_args",
]

ENCODER, WEIGHTS, FREE = "encoder", "weights", "free"


def _arg(default: Any, help: str, role: str = WEIGHTS, check: Callable[[Any], bool] | None = None,  # noqa: A002
         allowed: str = "", saved: bool = True):
    return field(default=default, metadata={"help": help, "role": role, "check": check, "allowed": allowed,
                                            "saved": saved})


def _positive(v) -> bool:
    return v >= 1


def _positive_or_none(v) -> bool:
    return v is None or v >= 1


def _rate(v) -> bool:
    return 0 <= v < 1


def _positive_number(v) -> bool:
    return 0 < v < float("inf")


def _sizes(v) -> bool:
    return all(s >= 1 for s in ((v, v) if isinstance(v, int) else v))


# shared fields, one definition each (a dataclass field object cannot be shared between classes)
def _img_size(default: int):
    return _arg(default, "input resolution in pixels: an int (square) or [height, width]", WEIGHTS, _sizes,
                "positive sizes")


def _patch_size():
    return _arg(16, "patch side in pixels", ENCODER, _positive, "a positive integer")


def _in_chans():
    return _arg(3, "image channels", ENCODER, _positive, "a positive integer")


def _embed_dim():
    return _arg(768, "encoder width", ENCODER, _positive, "a positive integer")


def _depth():
    return _arg(12, "encoder blocks", ENCODER, _positive, "a positive integer")


def _d_state():
    return _arg(16, "SSM state size of each Mamba mixer", ENCODER, _positive, "a positive integer")


def _drop_path_rate():
    return _arg(0.0, "stochastic depth rate of the encoder", FREE, _rate, "a rate in [0, 1)")


def _backend():
    return _arg("auto", "ops backend of the Mamba mixers ('auto', 'torch', 'triton', ...)", FREE, saved=False)


def _block(default: str):
    return _arg(default, "encoder blocks: 'mambamlp' (ARM's) or 'vim' (Vim's)", ENCODER)


def _expand():
    return _arg(None, "the Mamba mixer's inner width, expand * embed_dim (null: 1 for mambamlp, 2 for vim)", ENCODER,
                _positive_or_none, "a positive integer or null")


@dataclass
class PretrainConfig:
    """The arguments of :class:`~armvision.ARMPretrain` (see its docstring for what each does)."""

    img_size: Union[int, tuple[int, int]] = _img_size(192)
    patch_size: int = _patch_size()
    in_chans: int = _in_chans()
    cluster_size: int = _arg(4, "side of a cluster in patches (the prediction unit)", WEIGHTS, _positive,
                             "a positive integer")
    embed_dim: int = _embed_dim()
    depth: int = _depth()
    d_state: int = _d_state()
    decoder_dim: int = _arg(512, "decoder width", WEIGHTS, _positive, "a positive integer")
    decoder_mlp_ratio: float = _arg(4.0, "decoder MLP ratio", WEIGHTS, _positive_number,
                                    "a positive number")
    decoder_heads: Union[int, None] = _arg(None, "decoder attention heads (null: decoder_dim // 64)", WEIGHTS,
                                           _positive_or_none, "a positive integer or null")
    memory_layers: Union[tuple[int, ...], None] = _arg(
        None, "1-based encoder blocks feeding the decoder, ending at depth (null: every depth/6 blocks, 4 levels)",
        WEIGHTS, lambda v: v is None or (len(v) > 0 and min(v) >= 1), "positive block indices or null")
    norm_pix_loss: Union[bool, None] = _arg(None, "the older spelling of target (true: norm_pix, false: pix)", FREE)
    drop_path_rate: float = _drop_path_rate()
    backend: str = _backend()
    cluster_order: Literal["row", "column", "random"] = _arg("row", "order in which clusters are read and predicted")
    order_seed: int = _arg(0, "seed of the 'random' cluster order")
    target: Union[Literal["norm_pix", "pix"], None] = _arg(
        None, "prediction target: 'norm_pix' (per-patch normalised, the paper's) or 'pix' (null: norm_pix)", FREE)
    block: Literal["mambamlp", "vim"] = _block("mambamlp")
    expand: Union[int, None] = _expand()


@dataclass
class ClassifierConfig:
    """The arguments of :class:`~armvision.ARMClassifier` (see its docstring for what each does)."""

    img_size: Union[int, tuple[int, int]] = _img_size(224)
    patch_size: int = _patch_size()
    in_chans: int = _in_chans()
    num_classes: int = _arg(1000, "classes of the head (0: no head)", WEIGHTS, lambda v: v >= 0, "0 or more")
    embed_dim: int = _embed_dim()
    depth: int = _depth()
    d_state: int = _d_state()
    global_pool: Literal["avg", "token"] = _arg("avg", "feature: 'avg' (mean of patch tokens) or 'token' (class "
                                                       "token)", FREE)
    drop_rate: float = _arg(0.0, "dropout after the position embedding", FREE, _rate, "a rate in [0, 1)")
    drop_path_rate: float = _drop_path_rate()
    directions: Literal[1, 2, 4] = _arg(4, "scan directions of each mixer: 4 (ARM fine-tuning), 2 (Vim), 1 (causal)")
    dynamic_img_size: bool = _arg(False, "accept other input sizes (position embedding resized on the fly)", FREE)
    head_init_std: float = _arg(2e-5, "std of the head's truncated-normal init", FREE, _positive_number,
                                "a positive number")
    backend: str = _backend()
    block: Literal["mambamlp", "vim"] = _block("mambamlp")
    expand: Union[int, None] = _expand()


@dataclass
class VimPretrainConfig(PretrainConfig):
    """ARM pretraining of a Vim encoder: :class:`PretrainConfig` with Vim blocks."""

    block: Literal["mambamlp", "vim"] = _block("vim")


@dataclass
class VimClassifierConfig(ClassifierConfig):
    """A Vim classifier: :class:`ClassifierConfig` with Vim blocks and Vim's defaults (two directions, the class
    token as the feature, the head initialised with std 0.02)."""

    block: Literal["mambamlp", "vim"] = _block("vim")
    directions: Literal[1, 2, 4] = _arg(2, "scan directions of each mixer: 4 (ARM fine-tuning), 2 (Vim), 1 (causal)")
    global_pool: Literal["avg", "token"] = _arg("token", "feature: 'avg' (mean of patch tokens) or 'token' (class "
                                                         "token)", FREE)
    head_init_std: float = _arg(0.02, "std of the head's truncated-normal init", FREE, _positive_number,
                                "a positive number")


_CONFIGS = {("mambamlp", True): PretrainConfig, ("mambamlp", False): ClassifierConfig,
            ("vim", True): VimPretrainConfig, ("vim", False): VimClassifierConfig}


def config_class(pretraining: bool, block: str = "mambamlp") -> type:
    """The config dataclass of the pretraining model or the classifier with ``block`` encoder blocks."""
    try:
        return _CONFIGS[(block, bool(pretraining))]
    except KeyError:
        raise ConfigError(f"block {block!r}: expected one of {', '.join(sorted({b for b, _ in _CONFIGS}))}") from None


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def arg_names(pretraining: bool) -> list[str]:
    """The constructor arguments of the pretraining model / the classifier, in order."""
    return list(_fields(config_class(pretraining)))


def encoder_keys() -> tuple[str, ...]:
    """Arguments that fix the encoder's weights: pretraining weights and the classifier they initialise agree
    on them (the same in both configs)."""
    return tuple(n for n, f in _fields(ClassifierConfig).items() if f.metadata["role"] == ENCODER)


def free_keys(pretraining: bool) -> set[str]:
    """Arguments that change no weight's shape or meaning: any value fits the same weights."""
    return {n for n, f in _fields(config_class(pretraining)).items() if f.metadata["role"] == FREE}


def family_classifier_args(block: str) -> dict[str, Any]:
    """What makes a classifier of the family ``block`` beyond its blocks: the defaults in which its classifier
    config differs from ARM's (Vim: two directions, the class token, head init std 0.02)."""
    mine, base = config_class(False, block)(), ClassifierConfig()
    return {n: getattr(mine, n) for n in _fields(ClassifierConfig)
            if n != "block" and getattr(mine, n) != getattr(base, n)}


def check_model_args(args: Mapping[str, Any], pretraining: bool, source: str = "model args") -> dict[str, Any]:
    """Check constructor arguments against the config: an unknown key, a value of the wrong type or out of
    range raises a one-line :class:`~armvision.errors.ConfigError` naming the key and what is allowed. Returns the
    values as the config reads them (lists as tuples, ``3.0`` as 3). Checks between keys (an image size that the
    patch divides, memory layers ending at the depth) are the model's."""
    cls = config_class(pretraining, args.get("block", "mambamlp") if args.get("block") in ("mambamlp", "vim")
                       else "mambamlp")
    cfg = from_dict(cls, args, source)
    fields = _fields(cls)
    for k in args:
        meta, v = fields[k].metadata, getattr(cfg, k)
        check = meta["check"]
        if check is not None and not check(v):
            raise ConfigError(f"bad value for {k!r} in {source}: {v!r}; expected {meta['allowed']}")
    return {k: getattr(cfg, k) for k in args}


def saved_config(pretraining: bool, values: Mapping[str, Any]) -> dict[str, Any]:
    """``model.config``: the recorded arguments (all but ``backend``) from ``values``, in the config's order."""
    return {n: values[n] for n, f in _fields(config_class(pretraining)).items() if f.metadata["saved"]}


def classifier_args_for(encoder_args: Mapping[str, Any], **overrides) -> dict[str, Any]:
    """The classifier arguments for the encoder ``encoder_args`` describes (a pretraining or classifier config):
    its encoder keys (:func:`encoder_keys`), the family's classifier defaults (:func:`family_classifier_args`),
    then ``overrides``."""
    enc = {k: encoder_args[k] for k in encoder_keys() if k in encoder_args}
    return {**enc, **family_classifier_args(enc.get("block", "mambamlp")), **overrides}


def describe_model_args(prefix: str = "model.args.") -> list[tuple[str, str, str]]:
    """(key, default, help) of every model argument, for ``--help``; keys of one model only say so."""
    pre, clf = _fields(PretrainConfig), _fields(ClassifierConfig)
    rows = []
    for name in dict.fromkeys([*pre, *clf]):
        f = pre.get(name) or clf[name]
        only = "" if name in pre and name in clf else (" (pretraining)" if name in pre else " (classifier)")
        default = f.default
        text = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        if name in pre and name in clf and pre[name].default != clf[name].default:
            text = f"{pre[name].default} pretraining, {clf[name].default} classifier"
        rows.append((f"{prefix}{name}", text, f.metadata["help"] + only))
    return rows
