"""The demo's budgets as data: ``profiles.yaml`` beside this module, read into :class:`DemoProfile`."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..configtree import read_yaml
from ..errors import ConfigError

__all__ = ["DemoProfile", "PROFILES", "load_profiles"]


@dataclass(frozen=True)
class DemoProfile:
    """Budget of the demo: overrides applied to the fmnist_pretrain / fmnist_finetune presets."""

    description: str
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    seed_noise: float | None = None  # test top-1 points a difference must exceed (docs/analysis.md); None: unmeasured


_KEYS = ("description", "pretrain", "finetune", "seed_noise")


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
    noise = data.get("seed_noise")
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0):
        raise ConfigError(f"{where}: seed_noise must be a number of top-1 points >= 0 (or left out), got {noise!r}")
    return DemoProfile(description.strip(), stages["pretrain"], stages["finetune"],
                       None if noise is None else float(noise))


def load_profiles(path: str | Path | None = None) -> dict[str, DemoProfile]:
    """The profiles of a YAML file ({name: {description, pretrain, finetune, seed_noise}}); None: the packaged
    ``profiles.yaml``. A bad file is a one-line :class:`~armvision.errors.ConfigError`."""
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
