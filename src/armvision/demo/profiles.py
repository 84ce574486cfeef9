"""The demo's budgets as data: ``profiles.yaml`` beside this module, read into :class:`DemoProfile`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..analysis.features import FEATURE_KINDS
from ..analysis.frozen import KnnSettings, LinearProbeSettings
from ..configtree import read_yaml
from ..errors import ConfigError

__all__ = ["DemoProfile", "ProbeSettings", "PROFILES", "EVALUATIONS", "load_profiles"]


EVALUATIONS = ("probe", "finetune")
SEED_NOISE_KEYS = ("linear_probe", "knn", "finetune")


@dataclass(frozen=True)
class ProbeSettings:
    """The demo's frozen-feature evaluation (:func:`armvision.analysis.probe_model`): which features, how many
    training (labelled) and test images (None: all), the linear probe's learning rates and epochs, the k-NN's k
    (defaults: those of :class:`~armvision.analysis.LinearProbeSettings` and
    :class:`~armvision.analysis.KnnSettings`)."""

    features: str = "tokens"
    train_subset: int | None = None
    test_subset: int | None = None
    lrs: tuple[float, ...] = tuple(LinearProbeSettings.lrs)
    epochs: int = LinearProbeSettings.epochs
    k: int = KnnSettings.k


@dataclass(frozen=True)
class DemoProfile:
    """Budget of the demo: overrides applied to the fmnist_pretrain / fmnist_finetune presets, which evaluations of
    the pretrained encoder run (``probe``: frozen features; ``finetune``: fine-tuning beside training from scratch),
    the probe's settings, and the seed noise each comparison must exceed ({"linear_probe" | "knn" | "finetune":
    top-1 points}; a comparison left out was not measured)."""

    description: str
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    evaluate: tuple[str, ...] = ("finetune",)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    seed_noise: dict[str, float] = field(default_factory=dict)


_KEYS = ("description", "pretrain", "finetune", "evaluate", "probe", "seed_noise")


def _count(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _number(value: Any, low: float = 0.0, strict: bool = False) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and (value > low if strict else value >= low)


def _probe_settings(data: Any, where: str) -> ProbeSettings:
    if data is None:
        return ProbeSettings()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: probe must be a mapping (features, train_subset, test_subset, lrs, epochs, k), "
                          f"got {data!r}")
    fields = {f.name for f in dataclasses.fields(ProbeSettings)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown probe key {unknown[0]!r}; allowed: {', '.join(sorted(fields))}")
    values = dict(data)
    if values.get("features", "tokens") not in FEATURE_KINDS:
        raise ConfigError(f"{where}: probe features must be {' or '.join(FEATURE_KINDS)}, got {values['features']!r}")
    for key in ("train_subset", "test_subset"):
        if not _count(values.get(key)):
            raise ConfigError(f"{where}: probe {key} must be a number of images > 0 (or null: all), "
                              f"got {values[key]!r}")
    for key in ("epochs", "k"):
        if key in values and (values[key] is None or not _count(values[key])):
            raise ConfigError(f"{where}: probe {key} must be an integer > 0, got {values[key]!r}")
    if "lrs" in values:
        lrs = values["lrs"]
        if not isinstance(lrs, list) or not lrs or not all(_number(v, strict=True) for v in lrs):
            raise ConfigError(f"{where}: probe lrs must be a list of learning rates > 0, got {lrs!r}")
        values["lrs"] = tuple(float(v) for v in lrs)
    return ProbeSettings(**values)


def _profile(name: str, data: Any, source: str) -> DemoProfile:
    from ..train.config import RunConfig, apply_overrides

    where = f"{source}, profile {name!r}"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping with the keys {', '.join(_KEYS)}, got {data!r}")
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_KEYS)}")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{where} needs a description (one line of text), got {description!r}")
    stages = {}
    for stage in ("pretrain", "finetune"):
        over = data.get(stage) or {}
        if not isinstance(over, Mapping):
            raise ConfigError(f"{where}: {stage} must be a mapping of config keys to values "
                              f"(e.g. {{optim.epochs: 2}}), got {over!r}")
        apply_overrides(RunConfig(), over, f"{where} ({stage})")  # unknown keys and bad values, before any run
        stages[stage] = dict(over)
    evaluate = data.get("evaluate", ["finetune"])
    if (not isinstance(evaluate, list) or not evaluate or any(e not in EVALUATIONS for e in evaluate)
            or len(set(evaluate)) != len(evaluate)):
        raise ConfigError(f"{where}: evaluate must be a list of {' and/or '.join(EVALUATIONS)} (each once), "
                          f"got {evaluate!r}")
    noise = data.get("seed_noise") or {}
    if not isinstance(noise, Mapping):
        raise ConfigError(f"{where}: seed_noise must be a mapping of {', '.join(SEED_NOISE_KEYS)} to top-1 points "
                          f"(e.g. {{linear_probe: 0.8}}), got {noise!r}")
    for key, value in noise.items():
        if key not in SEED_NOISE_KEYS:
            raise ConfigError(f"{where}: unknown seed_noise key {key!r}; allowed: {', '.join(SEED_NOISE_KEYS)}")
        if not _number(value):
            raise ConfigError(f"{where}: seed_noise {key} must be a number of top-1 points >= 0, got {value!r}")
    return DemoProfile(description.strip(), stages["pretrain"], stages["finetune"], tuple(evaluate),
                       _probe_settings(data.get("probe"), where), {k: float(v) for k, v in noise.items()})


def load_profiles(path: str | Path | None = None) -> dict[str, DemoProfile]:
    """The profiles of a YAML file ({name: {description, pretrain, finetune, evaluate, probe, seed_noise}}); None: the
    packaged ``profiles.yaml``. A bad file is a one-line :class:`~armvision.errors.ConfigError`."""
    if path is None:
        text, source = resources.files("armvision.demo").joinpath("profiles.yaml").read_text(), "demo profiles.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read demo profiles {path}: {e.strerror or e}") from None
        source = f"demo profiles {path}"
    data = read_yaml(text, source)
    if not data:
        raise ConfigError(f"{source} holds no profile; it maps profile names to their settings")
    if "auto" in data:
        raise ConfigError(f"{source}: 'auto' is not a profile name (it picks gpu or cpu)")
    return {str(name): _profile(str(name), value, source) for name, value in data.items()}


PROFILES: dict[str, DemoProfile] = load_profiles()
