"""The demo's profiles are data (armvision/demo/profiles.yaml): each one resolves to the two presets'
configs, and a broken profiles file is one line naming the file, the profile and what is wrong."""

from __future__ import annotations

from importlib import resources

import pytest

from armvision.demo import PROFILES, DemoProfile, ProbeSettings, load_profiles
from armvision.errors import ConfigError
from armvision.train import load_config


def test_packaged_profiles_load_and_resolve_to_configs(tmp_path):
    assert set(PROFILES) == {"cpu", "gpu", "smoke"}  # run_demo's auto picks gpu or cpu
    assert load_profiles() == PROFILES
    cpu = PROFILES["cpu"]  # 2 pretraining epochs, then the frozen-feature probes only, on all training labels
    assert cpu.pretrain == {"optim.epochs": 2} and cpu.evaluate == ("probe",) and cpu.finetune == {}
    assert cpu.probe == ProbeSettings(features="tokens", train_subset=None, test_subset=None,
                                      lrs=(0.003, 0.01, 0.03, 0.1), epochs=10)
    assert set(cpu.seed_noise) == {"linear_probe", "knn"}  # measured over seeds (docs/analysis.md)
    assert PROFILES["gpu"].evaluate == PROFILES["smoke"].evaluate == ("probe", "finetune")
    assert PROFILES["smoke"].pretrain["data.train_subset"] == 512
    assert PROFILES["gpu"].finetune["optim.epochs"] == 10
    for name, prof in PROFILES.items():
        assert prof.description and "\n" not in prof.description, name
        pre = load_config("fmnist_pretrain", {**prof.pretrain, "output_dir": str(tmp_path / name)}, task="pretrain")
        ft = load_config("fmnist_finetune", {**prof.finetune, "output_dir": str(tmp_path / name)}, task="finetune")
        for cfg, over in ((pre, prof.pretrain), (ft, prof.finetune)):
            for key, value in over.items():
                section, field = key.split(".")
                assert getattr(getattr(cfg, section), field) == value, (name, key)


def test_profiles_file_ships_inside_the_package():
    assert resources.files("armvision.demo").joinpath("profiles.yaml").is_file()


def test_a_file_of_profiles_is_read_into_dataclasses(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("quick:\n  description: two steps\n  pretrain: {optim.epochs: 2}\n  seed_noise: {finetune: 1}\n")
    expected = DemoProfile("two steps", {"optim.epochs": 2}, {}, seed_noise={"finetune": 1.0})
    assert load_profiles(f) == {"quick": expected}
    f.write_text("p:\n  description: probes\n  evaluate: [probe]\n  probe: {features: pooled, train_subset: 100, "
                 "lrs: [0.1, 1], epochs: 3, k: 5}\n  seed_noise: {linear_probe: 0.5, knn: 1}\n")
    assert load_profiles(f)["p"] == DemoProfile("probes", evaluate=("probe",),
                                                seed_noise={"linear_probe": 0.5, "knn": 1.0},
                                                probe=ProbeSettings("pooled", 100, None, (0.1, 1.0), 3, 5))


@pytest.mark.parametrize("text, message", [
    ("cpu: [1, 2\n", "is not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("- cpu\n", "must hold a mapping of config keys, got list"),
    ("", "holds no profile"),
    ("cpu: 3\n", "profile 'cpu' must be a mapping with the keys description, pretrain, finetune, evaluate, probe, "
                "seed_noise, got 3"),
    ("cpu: {pretrain: {}}\n", "profile 'cpu' needs a description (one line of text), got None"),
    ("cpu: {description: x, extra: 1}\n", "profile 'cpu': unknown key 'extra'; allowed: description, pretrain"),
    ("cpu: {description: x, finetune: [1]}\n", "profile 'cpu': finetune must be a mapping of config keys"),
    ("cpu: {description: x, pretrain: {optim.epoch: 2}}\n", "unknown config key 'optim.epoch' in demo profiles"),
    ("cpu: {description: x, pretrain: {optim.epochs: two}}\n", "(pretrain): 'two'; expected an integer"),
    ("cpu: {description: x, seed_noise: -1}\n", "seed_noise must be a mapping of linear_probe, knn, finetune"),
    ("cpu: {description: x, seed_noise: {knn: -1}}\n", "seed_noise knn must be a number of top-1 points >= 0"),
    ("cpu: {description: x, seed_noise: {probe: 1}}\n", "unknown seed_noise key 'probe'"),
    ("cpu: {description: x, evaluate: probe}\n", "evaluate must be a list of probe and/or finetune (each once)"),
    ("cpu: {description: x, evaluate: [probe, probe]}\n", "evaluate must be a list of probe and/or finetune"),
    ("cpu: {description: x, evaluate: [lineval]}\n", "evaluate must be a list of probe and/or finetune"),
    ("cpu: {description: x, probe: {features: cls}}\n", "probe features must be pooled or tokens, got 'cls'"),
    ("cpu: {description: x, probe: {train_subset: 0}}\n", "probe train_subset must be a number of images > 0"),
    ("cpu: {description: x, probe: {epochs: 1.5}}\n", "probe epochs must be an integer > 0, got 1.5"),
    ("cpu: {description: x, probe: {lrs: [0.1, -1]}}\n", "probe lrs must be a list of learning rates > 0"),
    ("cpu: {description: x, probe: {knn: 20}}\n", "unknown probe key 'knn'; allowed: epochs, features, k"),
    ("cpu: {description: x, probe: [1]}\n", "probe must be a mapping (features, train_subset"),
    ("auto: {description: x}\n", "'auto' is not a profile name"),
])
def test_a_broken_profiles_file_is_one_line(tmp_path, text, message):
    f = tmp_path / "profiles.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_profiles(f)
    assert "\n" not in str(e.value)
    assert f"demo profiles {f}" in str(e.value)  # names the file
    assert message in str(e.value)


def test_a_missing_profiles_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^cannot read demo profiles .*none\.yaml: No such file or directory$"):
        load_profiles(tmp_path / "none.yaml")
