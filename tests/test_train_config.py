"""Run configs: presets, overrides, and the errors for unknown keys and bad values."""

import pytest
import yaml

from armvision.errors import ConfigError
from armvision.train.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_yaml,
    list_presets,
    load_config,
    parse_cli_overrides,
)


def test_every_preset_loads_and_the_paper_recipes_are_exact():
    names = list_presets()
    for required in ("arm_base_in1k_pretrain", "arm_large_in1k_pretrain", "arm_huge_in1k_pretrain",
                     "arm_base_in1k_finetune", "arm_large_in1k_finetune", "arm_huge_in1k_finetune",
                     "arm_huge_in1k_finetune_384", "fmnist_pretrain", "fmnist_finetune"):
        assert required in names
    for name in names:
        load_config(name)
    pre = load_config("arm_base_in1k_pretrain")
    assert (pre.task, pre.model.img_size, pre.model.args["cluster_size"]) == ("pretrain", 192, 4)
    o = pre.optim
    assert (o.epochs, o.warmup_epochs, o.batch_size, o.blr, o.betas, o.weight_decay, o.clip_grad, o.min_lr) == \
        (1600, 40, 2048, 1.5e-4, (0.9, 0.95), 0.05, 3.0, 0.0)
    assert pre.aug.scale == (0.2, 1.0) and pre.data.interpolation == "bicubic"
    assert load_config("arm_large_in1k_pretrain").optim.batch_size == 1024
    ft = load_config("arm_base_in1k_finetune")
    o, a = ft.optim, ft.aug
    assert (ft.model.img_size, o.epochs, o.warmup_epochs, o.batch_size, o.blr, o.betas, o.layer_decay, o.min_lr) == \
        (224, 100, 5, 1024, 5e-4, (0.9, 0.999), 0.65, 1e-6)
    assert (ft.model.drop_path, a.auto_augment, a.mixup, a.cutmix, a.smoothing, a.reprob, ft.ema.decay) == \
        (0.1, "rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25, 0.99992)
    assert ft.data.eval_crop_pct is None and ft.data.eval_resize == "squash"  # the reference's: 256, crop 224
    large = load_config("arm_large_in1k_finetune")
    assert (large.optim.layer_decay, large.model.drop_path) == (0.75, 0.3)
    assert load_config("arm_huge_in1k_finetune_384").model.img_size == 384


def test_flags_override_any_field_with_typed_values():
    over = parse_cli_overrides(["--optim.lr", "5e-4", "--data.pin_memory", "--seed=3", "--output-dir", "runs/x",
                                "--model.args.embed_dim", "64", "--optim.betas", "0.9,0.95", "--data.val_split",
                                "null", "--aug.scale", "[0.3, 1]", "--data.root", "123"])
    assert over == {"optim.lr": 5e-4, "data.pin_memory": True, "seed": 3, "output_dir": "runs/x",
                    "model.args.embed_dim": 64, "optim.betas": "0.9,0.95", "data.val_split": None,
                    "aug.scale": [0.3, 1], "data.root": "123"}
    cfg = load_config("fmnist_pretrain", over, task="pretrain")
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.aug.scale == (0.3, 1.0)
    assert cfg.model.args == {"patch_size": 7, "cluster_size": 2, "embed_dim": 64, "depth": 6, "d_state": 8,
                              "decoder_dim": 128}
    assert cfg.data.val_split is None and cfg.data.root == "123" and cfg.seed == 3


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config("arm_base_in1k_finetune", {"optim.lr": 1e-3, "model.args.depth": 6})
    again = config_from_dict(yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("source,expected", [
    ({"optim.lrr": 1}, r"unknown config key 'optim.lrr' in overrides \(did you mean lr, blr\?\); "
                       r"allowed keys in 'optim': epochs, warmup_epochs, batch_size"),
    ({"optimizer.lr": 1}, r"unknown config key 'optimizer.lr'.*allowed keys: task, output_dir"),
    ({"optim.epochs": "many"}, r"bad value for 'optim.epochs' in overrides: 'many'; expected an integer"),
    ({"optim.epochs": 2.5}, r"bad value for 'optim.epochs' in overrides: 2.5; expected an integer"),
    ({"precision": "fp8"}, r"bad value for 'precision' in overrides: 'fp8'; allowed: 'auto', 'bf16', 'fp32'"),
    ({"optim.betas": [0.9]}, r"bad value for 'optim.betas'.*expected a list of 2 a number"),
    ({"data.pin_memory": "maybe"}, r"bad value for 'data.pin_memory'.*expected true/false"),
    ({"optim.warmup_epochs": 500}, r"bad value for 'optim.warmup_epochs': 500.0; expected 0 .. optim.epochs \(100\)"),
    ({"aug.reprob": 1.5}, r"bad value for 'aug.reprob': 1.5; expected a probability in \[0, 1\]"),
    ({"model.name": "arm_giant"}, r"bad value for 'model.name': 'arm_giant'; expected one of arm_tiny_pz16"),
    ({"model.in_chans": 2}, r"bad value for 'model.in_chans': 2; expected 1 \(grayscale\) or 3 \(RGB\)"),
    ({"data.mean": [0.5]}, r"bad value for 'data.mean': \(0.5,\); expected 3 value\(s\), one per channel"),
    ({"device": "tpu"}, r"bad value for 'device': 'tpu'; expected auto, cpu, cuda or cuda:N"),
    ({"optim": 3}, r"'optim' is a section; set its keys"),
    ({"task": "pretrain", "init": None, "optim.layer_decay": 0.75},
     r"bad value for 'optim.layer_decay': 0.75; expected null for pretraining"),
    ({"optim.lr.x": 3}, r"config key 'optim.lr' is a value, not a section"),
])
def test_unknown_keys_and_bad_values_are_named(source, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("arm_base_in1k_finetune", source)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: 3\n  lr_typo: 1\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'optim.lr_typo' in {bad}"):
        load_config(str(bad))
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"config file .*missing.yaml not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"unknown preset 'fmnist_pretrian' \(did you mean fmnist_pretrain"):
        load_config("fmnist_pretrian")
    good = tmp_path / "good.yaml"
    good.write_text("optim:\n  blr: 5e-4\n")  # YAML 1.1 reads 5e-4 as a string: still a float here
    assert load_config(str(good)).optim.blr == 5e-4


def test_task_of_a_preset_must_match_the_command():
    with pytest.raises(ConfigError, match=r"preset arm_base_in1k_pretrain is a pretrain config; use "
                                          r"`armvision pretrain` with it"):
        load_config("arm_base_in1k_pretrain", task="finetune")
    with pytest.raises(ConfigError, match=r"the task is set by the command \(armvision pretrain\)"):
        load_config("fmnist_pretrain", {"task": "finetune"}, task="pretrain")
    with pytest.raises(ConfigError, match=r"'init': 'x'; expected null for pretraining"):
        load_config("arm_base_in1k_pretrain", {"init": "x"}, task="pretrain")


def test_cli_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"--optim.lr needs a value \(a number or null\)"):
        parse_cli_overrides(["--optim.lr"])
    with pytest.raises(ConfigError, match=r"unexpected argument 'stray'"):
        parse_cli_overrides(["stray"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'"):
        parse_cli_overrides(["--optim.learning_rate", "1"])


def test_apply_overrides_leaves_the_original_alone():
    cfg = RunConfig()
    new = apply_overrides(cfg, {"optim.epochs": 3, "model.args.depth": 6})
    assert (cfg.optim.epochs, cfg.model.args) == (100, {})
    assert (new.optim.epochs, new.model.args) == (3, {"depth": 6})


def test_one_override_syntax_for_flags_and_python_lists():
    """The command line and load_config's list form go through one parser: --k v, --k=v and k=v."""
    flags = ["--optim.lr", "1e-3", "--seed=3", "output-dir=runs/y", "--data.pin_memory"]
    expected = {"optim.lr": 1e-3, "seed": 3, "output_dir": "runs/y", "data.pin_memory": True}
    assert parse_cli_overrides(flags) == expected
    cfg = load_config("fmnist_pretrain", flags, task="pretrain")
    assert (cfg.optim.lr, cfg.seed, cfg.output_dir, cfg.data.pin_memory) == (1e-3, 3, "runs/y", True)
    assert load_config("fmnist_pretrain", expected, task="pretrain") == cfg
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr' in overrides \(did you mean lr"):
        load_config("fmnist_pretrain", ["optim.lrr=1"])


def test_configtree_is_generic():
    """The machinery works on any dataclass tree, not only RunConfig."""
    from dataclasses import dataclass

    from armvision.configtree import apply_overrides as set_keys
    from armvision.configtree import describe_keys, from_dict, option, parse_overrides, to_dict

    @dataclass
    class Inner:
        size: int = option(4, "a size")

    @dataclass
    class Outer:
        name: str = option("x", "a name")
        inner: Inner = option(factory=Inner)

    obj = from_dict(Outer, {"inner": {"size": "8"}})
    assert obj == Outer("x", Inner(8))
    assert set_keys(obj, parse_overrides(Outer, ["--inner.size=16", "name=7"])) == Outer("7", Inner(16))
    assert to_dict(obj) == {"name": "x", "inner": {"size": 8}}
    assert describe_keys(Outer) == [("name", "x", "a name"), ("inner.size", "4", "a size")]
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.sise' in flags \(did you mean size"):
        parse_overrides(Outer, ["--inner.sise", "1"], "flags")
