"""Models in the Hugging Face Hub layout: ``save_pretrained(model, dir)`` / ``from_pretrained(dir_or_repo)``.

A directory holds ``config.json`` (architecture, registry name, constructor arguments -- the format of
:mod:`armvision.models.io` -- plus the preprocessing, the training configuration and the results when
known), ``model.safetensors`` and a model card ``README.md``. Such a directory uploaded as a Hub
repository (``huggingface-cli upload USER/NAME DIR``) loads back with ``from_pretrained("USER/NAME")``.
Local directories never touch the network. Reading the directory back is :mod:`armvision.weights`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .. import __version__
from ..models import CLASSIFIER_ARGS, ARMClassifier, ARMPretrain
from ..data import data_config
from ..models.io import CONFIG_NAME, WEIGHTS_NAME, atomic_write, save_model
from ..weights import read_config, read_weights

__all__ = ["MODEL_CARD_NAME", "save_pretrained", "from_pretrained", "model_card"]

MODEL_CARD_NAME = "README.md"

_CITATION = """@inproceedings{ren2025arm,
  title     = {Autoregressive Pretraining with Mamba in Vision},
  author    = {Ren, Sucheng and Li, Xianhang and Tu, Haoqin and Wang, Feng and Shu, Fangxun and Zhang, Lei and
               Mei, Jieru and Yang, Linjie and Wang, Peng and Wang, Heng and Yuille, Alan and Xie, Cihang},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  note      = {arXiv:2406.07537}
}"""


def _json_safe(obj: Any) -> Any:
    """JSON-able copy of a config: tuples -> lists, paths and other objects -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)


def _count(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def model_card(model: nn.Module, config: Mapping[str, Any], repo_id: str | None = None) -> str:
    """The README.md of a saved model: YAML metadata, what the model is, how to load it, its training
    configuration and results (when recorded in ``config``), its provenance, the citation."""
    arch = config["architecture"]
    name = config.get("model_name") or arch
    args = config["args"]
    where = repo_id or "PATH/TO/THIS/DIRECTORY"
    pretraining = isinstance(model, ARMPretrain)
    lines = [
        "---",
        "library_name: armvision",
        "tags:",
        "- arm",
        "- mamba",
        "- state-space-model",
        "- image-classification" if not pretraining else "- image-feature-extraction",
        "- armvision",
        f"pipeline_tag: {'image-feature-extraction' if pretraining else 'image-classification'}",
    ]
    if config.get("license"):
        lines.append(f"license: {config['license']}")
    lines += ["---", "", f"# {name}", ""]
    vim = args.get("block") == "vim"
    if pretraining:
        lines.append(f"An ARM **pretraining** model ({'Vim encoder, scanning forward' if vim else 'MambaMLP encoder'} "
                     "+ cross-attention decoder) from *Autoregressive "
                     "Pretraining with Mamba in Vision* (Ren et al., ICLR 2025): it predicts the next cluster of "
                     "image patches from the previous ones. Use it to initialise a classifier "
                     "(`armvision.init_classifier_from_pretraining`) or to extract encoder features.")
    elif vim:
        lines.append("A **Vim** classifier (Vision Mamba, Zhu et al., ICML 2024: bidirectional Mamba blocks, class "
                     "token in the middle and pooled) as armvision builds it, the second backbone of "
                     "*Autoregressive Pretraining with Mamba in Vision* (Ren et al., ICLR 2025).")
    else:
        lines.append("An ARM **classifier** (MambaMLP encoder with four-direction Mamba scans, class token in the "
                     "middle, mean-pooled patch tokens) from *Autoregressive Pretraining with Mamba in Vision* "
                     "(Ren et al., ICLR 2025).")
    img = args.get("img_size")
    rows = [("architecture", f"`{arch}`"), ("registry name", f"`{config.get('model_name')}`"),
            ("parameters", _count(model)), ("width / depth", f"{args.get('embed_dim')} / {args.get('depth')}"),
            ("input", f"{img[0]}x{img[1]} px, patch {args.get('patch_size')}, {args.get('in_chans')} channels")]
    if pretraining:
        rows.append(("prediction unit", f"clusters of {args['cluster_size']}x{args['cluster_size']} patches"))
    else:
        rows += [("classes", str(args.get("num_classes"))), ("pooling", str(args.get("global_pool")))]
    data = config.get("data_config") or {}
    if data:
        mean, std = tuple(data.get("mean", ())), tuple(data.get("std", ()))
        how = "both sides (squash)" if data.get("crop_mode") == "squash" else "shorter side"
        rows.append(("preprocessing", f"resize {how} (crop_pct {data.get('crop_pct')}, {data.get('interpolation')}), "
                                      f"center crop, mean {mean}, std {std}"))
    rows.append(("armvision version", str(config.get("armvision_version"))))
    lines += ["", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += ["## How to use", "", "```python", "import armvision", "",
              f'model = armvision.from_pretrained("{where}")']
    if not pretraining:
        lines += ["model.eval()", "features = armvision.extract_features(model, images)  # pooled + token maps"]
    lines += ["```", ""]
    if not pretraining and config.get("model_name"):
        extra = {k: v for k, v in (("img_size", img[0] if img[0] == img[1] else tuple(img)),
                                   ("in_chans", args.get("in_chans")), ("global_pool", args.get("global_pool")),
                                   ("d_state", args.get("d_state")), ("directions", args.get("directions")))
                 if v != {"img_size": 224, "in_chans": 3, "global_pool": "avg", "d_state": 16, "directions": 4,
                          **CLASSIFIER_ARGS.get(config["model_name"], {})}[k]}
        kwargs = "".join(f", {k}={v!r}" for k, v in extra.items())
        lines += ["With timm (after `import armvision`):", "", "```python", "import timm, armvision", "",
                  f'model = timm.create_model("{config["model_name"]}", pretrained=True{kwargs},',
                  "                          pretrained_cfg_overlay="
                  + (f'dict(hf_hub_id="{repo_id}", hf_hub_filename="{WEIGHTS_NAME}"))' if repo_id
                     else f'dict(file="{where}"))'), "```", ""]
    lines += ["## Training configuration", ""]
    training = config.get("training_config")
    lines += (["```json", json.dumps(training, indent=2, sort_keys=True), "```"] if training else ["Not recorded."])
    lines += ["", "## Results", ""]
    results = config.get("results")
    if results:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in results.items()]]
    else:
        lines.append("Not recorded.")
    source = config.get("converted_from")
    if source:
        lines += ["", "## Provenance", "", "Converted by `armvision convert` from an official ARM checkpoint "
                  "(OliverRensu/ARM):", "", "```json", json.dumps(source, indent=2, sort_keys=True), "```"]
    lines += ["", "## Citation", "", "```bibtex", _CITATION, "```", ""]
    return "\n".join(lines)


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    training_config: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    write_model_card: bool = True,
    repo_id: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (by default) a model card ``README.md`` into
    ``directory``, each atomically; returns the directory.

    Args:
        model: an :class:`~armvision.ARMClassifier` or :class:`~armvision.ARMPretrain`.
        training_config: how it was trained (any JSON-able mapping; e.g. the run's config).
        results: what it scored (e.g. ``{"imagenet-1k top-1": 83.2}``).
        state_dict: weights to write instead of the model's own (e.g. EMA weights).
        extra_config: more keys for config.json (e.g. ``converted_from``, ``license``).
        write_model_card: also write README.md.
        repo_id: the Hub id the card's examples should name.
    """
    if not isinstance(model, (ARMClassifier, ARMPretrain)):
        raise TypeError(f"save_pretrained writes armvision ARM models, got {type(model).__name__}")
    directory = Path(directory)
    extra: dict[str, Any] = {"armvision_version": __version__, "data_config": data_config(model)}
    if training_config is not None:
        extra["training_config"] = training_config
    if results is not None:
        extra["results"] = results
    extra.update(extra_config or {})
    extra = _json_safe(extra)
    save_model(model, directory, state_dict=dict(state_dict) if state_dict is not None else None, extra_config=extra)
    if write_model_card:
        config = read_config(directory)
        card = model_card(model, config, repo_id)
        atomic_write(directory / MODEL_CARD_NAME, lambda p: Path(p).write_text(card))
    return directory


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) in (1, 2) and all(parts) and not name.startswith((".", "~"))
            and os.sep not in name.replace("/", "") and "\\" not in name)


def _fetch(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None,
           local_files_only: bool) -> Path:
    """Download (or find in the Hub cache) a repository's config.json and model.safetensors; returns the
    snapshot directory holding both."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with timm
        raise ImportError("loading from the Hugging Face Hub needs huggingface_hub "
                          "(pip install huggingface_hub)") from e
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                              local_files_only=local_files_only)))
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(
                f"{repo_id!r} is not a local directory, and {filename} could not be fetched from the Hugging Face "
                f"Hub repository {repo_id!r}{' (local cache only)' if local_files_only else ''}: "
                f"{type(e).__name__}: {reason}. Pass the path of a directory written by save_pretrained, or check "
                "the repository id and the network") from e
    if paths[0].parent != paths[1].parent:  # pragma: no cover - the Hub cache keeps one snapshot per revision
        raise OSError(f"{repo_id}: config.json and model.safetensors came from different snapshots")
    return paths[0].parent


def from_pretrained(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    **overrides,
) -> nn.Module:
    """Load a model saved by :func:`save_pretrained`: from a local directory (no network), or from a
    Hugging Face Hub repository id ``"user/name"`` (downloaded into the Hub cache; ``revision``,
    ``cache_dir`` and ``local_files_only`` as in ``huggingface_hub``).

    ``overrides`` replace constructor arguments (e.g. ``dynamic_img_size=True``, ``backend="torch"``).
    The returned model carries ``pretrained_cfg`` (input size, mean/std, crop, interpolation) so that
    ``timm.data.resolve_data_config(model=model)`` gives its preprocessing.
    """
    path = Path(name_or_path)
    if path.is_dir():
        directory = path
    elif path.exists():
        raise ValueError(f"{path} is a file; from_pretrained takes a model directory or a Hub repository id "
                         "(official .pth checkpoints: armvision.load_official)")
    elif _looks_like_repo_id(str(name_or_path)):
        directory = _fetch(str(name_or_path), revision, cache_dir, local_files_only)
    else:
        raise FileNotFoundError(f"{name_or_path}: no such directory, and not a Hugging Face Hub repository id "
                                "('user/name')")
    weights = read_weights(directory, map_location=map_location)
    model = weights.build(map_location, strict, **overrides)
    config = weights.config
    data = config.get("data_config")
    if data:
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        model.pretrained_cfg = dict(data, architecture=config.get("model_name"),
                                    num_classes=config["args"].get("num_classes", 0))
    return model
