"""The typed model configs (armvision.models.config): in step with the constructors, the source of the checks of
``model.args``, of the weights mappings' keys and of the classifier an encoder initialises."""

import dataclasses
import inspect

import pytest

from armvision.errors import ConfigError
from armvision.models import ARMClassifier, ARMPretrain, build_model, create_model, save_model
from armvision.models.config import (
    ClassifierConfig,
    PretrainConfig,
    VimClassifierConfig,
    check_model_args,
    classifier_args_for,
    encoder_keys,
    family_classifier_args,
    free_keys,
)
from armvision.models.vim import VIM_CLASSIFIER_ARGS
from armvision.train.config import describe_keys, list_presets, load_config
from armvision.weights import ENCODER_KEYS, read_config


@pytest.mark.parametrize("cls, config", [(ARMPretrain, PretrainConfig), (ARMClassifier, ClassifierConfig)])
def test_config_fields_are_the_constructor_arguments(cls, config):
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    fields = dataclasses.fields(config)
    assert [p.name for p in params] == [f.name for f in fields]
    assert {p.name: p.default for p in params} == {f.name: f.default for f in fields}


def test_model_config_dict_is_the_saved_fields_in_order():
    m = create_model("arm_tiny_pz16", pretraining=True, img_size=32, patch_size=8, depth=2, d_state=2,
                     cluster_size=2, decoder_dim=16, memory_layers=[1, 2], backend="torch")
    assert list(m.config) == [f.name for f in dataclasses.fields(PretrainConfig) if f.name != "backend"]
    assert m.config["memory_layers"] == (1, 2) and m.config["expand"] == 1 and m.config["target"] == "norm_pix"


def test_derived_keys():
    assert set(ENCODER_KEYS) == {"embed_dim", "depth", "patch_size", "in_chans", "d_state", "block", "expand"}
    assert ENCODER_KEYS == encoder_keys()
    assert free_keys(False) == {"backend", "drop_path_rate", "drop_rate", "dynamic_img_size", "global_pool",
                                "head_init_std"}
    assert free_keys(True) == {"backend", "drop_path_rate", "norm_pix_loss", "target"}
    assert VIM_CLASSIFIER_ARGS == family_classifier_args("vim") == dict(directions=2, global_pool="token",
                                                                        head_init_std=0.02)
    assert family_classifier_args("mambamlp") == {}
    assert VimClassifierConfig().block == "vim" and ClassifierConfig().block == "mambamlp"


def test_classifier_args_for_an_encoder():
    pre = create_model("vim_tiny_pz16", pretraining=True, img_size=32, patch_size=8, embed_dim=16, depth=2,
                       d_state=2, cluster_size=2, decoder_dim=16, memory_layers=[1, 2]).config
    args = classifier_args_for(pre, img_size=48, num_classes=3)
    assert args == dict(patch_size=8, in_chans=3, embed_dim=16, depth=2, d_state=2, block="vim", expand=2,
                        directions=2, global_pool="token", head_init_std=0.02, img_size=48, num_classes=3)
    clf = ARMClassifier(**args, backend="torch")
    assert all(clf.config[k] == pre[k] for k in ENCODER_KEYS)
    mamba = dict(pre, block="mambamlp", expand=1)
    assert "directions" not in classifier_args_for(mamba)  # ARM's classifier: the constructor's four directions


@pytest.mark.parametrize("args, message", [
    ({"dept": 3}, r"^unknown config key 'dept' in model args \(did you mean depth\?\); allowed keys: img_size, "),
    ({"depth": "x"}, r"^bad value for 'depth' in model args: 'x'; expected an integer$"),
    ({"depth": True}, r"^bad value for 'depth' in model args: True; expected an integer$"),
    ({"depth": 0}, r"^bad value for 'depth' in model args: 0; expected a positive integer$"),
    ({"drop_path_rate": 1.0}, r"^bad value for 'drop_path_rate' in model args: 1.0; expected a rate in \[0, 1\)$"),
    ({"directions": 3}, r"^bad value for 'directions' in model args: 3; allowed: 1, 2, 4$"),
    ({"block": "vit"}, r"^bad value for 'block' in model args: 'vit'; allowed: 'mambamlp', 'vim'$"),
    ({"expand": -1}, r"^bad value for 'expand' in model args: -1; expected a positive integer or null$"),
    ({"cluster_size": 2}, r"^unknown config key 'cluster_size' in model args; allowed keys: "),
])
def test_bad_classifier_args_give_one_line(args, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_model_args(args, pretraining=False)
    assert "\n" not in str(info.value)


def test_good_args_are_read_as_the_config_types():
    assert check_model_args({"memory_layers": [1, 2], "decoder_mlp_ratio": 2, "depth": 4.0}, pretraining=True) == \
        {"memory_layers": (1, 2), "decoder_mlp_ratio": 2.0, "depth": 4}


@pytest.mark.parametrize("over, message", [
    ({"model.args.d_conv": 4}, "unknown config key 'd_conv' in model.args (pretrain)"),
    ({"model.args.decoder_depth": 2}, "unknown config key 'decoder_depth' in model.args (pretrain)"),
    ({"model.args.embed_dim": -5}, "bad value for 'embed_dim' in model.args (pretrain): -5; expected a positive"),
    ({"model.args.decoder_mlp_ratio": float("inf")}, "'decoder_mlp_ratio' in model.args (pretrain): inf; expected"),
    ({"model.args.img_size": 64}, "bad value for 'model.args.img_size': 64; expected to be set with model.img_size"),
    ({"model.args.cluster_order": "spiral"}, "bad value for 'cluster_order' in model.args (pretrain): 'spiral'"),
])
def test_run_config_model_args_are_checked(over, message):
    with pytest.raises(ConfigError) as info:
        load_config("fmnist_pretrain", over, task="pretrain")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_expand_is_a_model_argument_of_both_tasks():
    assert load_config("fmnist_pretrain", {"model.args.expand": 2}, task="pretrain").model.args == \
        {**load_config("fmnist_pretrain").model.args, "expand": 2}
    load_config("fmnist_finetune", {"model.args.expand": 2}, task="finetune")


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_validates(preset):
    cfg = load_config(preset)
    check_model_args(cfg.model.args, cfg.task == "pretrain")


def test_help_lists_the_model_args():
    keys = {k: (d, h) for k, d, h in describe_keys()}
    assert keys["model.args.cluster_size"] == ("4", "side of a cluster in patches (the prediction unit) (pretraining)")
    assert keys["model.args.depth"][0] == "from model.name"
    assert "model.args.img_size" not in keys and "model.args.num_classes" not in keys


@pytest.mark.parametrize("name, pretraining", [("arm_tiny_pz16", True), ("vim_tiny_pz16", False)])
def test_config_json_round_trip(tmp_path, name, pretraining):
    extra = dict(cluster_size=2, decoder_dim=16, memory_layers=[1, 2]) if pretraining else dict(num_classes=5)
    model = create_model(name, pretraining=pretraining, img_size=32, patch_size=8, embed_dim=16, depth=2,
                         d_state=2, backend="torch", **extra)
    save_model(model, tmp_path / "m")
    config = read_config(tmp_path / "m")
    check_model_args(config["args"], pretraining)
    again = build_model(config, backend="torch")
    assert again.config == model.config and type(again) is type(model)
    save_model(again, tmp_path / "n")
    assert read_config(tmp_path / "n") == config
