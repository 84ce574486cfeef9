"""The ARM presets against the reference code's recipe (OliverRensu/ARM), with the reference's rules written
out here, independently of armvision's code:

- weight decay and lr scale of every parameter of ARM-B, pretraining (main_pretrain.py: timm's
  ``add_weight_decay(model, 0.05)``, no skip list) and fine-tuning (main_finetune.py: MAE's
  ``param_groups_lrd(model, 0.05, model.no_weight_decay(), layer_decay)``);
- the evaluation transform (Finetuning/util/datasets.py: ``Resize((s, s))`` bicubic with
  s = int(size / crop_pct), crop_pct = 224/256 up to 224 px and 1.0 above, ``CenterCrop(size)``, ``ToTensor``,
  ``Normalize`` with ImageNet's statistics).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from trainhelpers import make_imagefolder, tiny_overrides

import armvision
from armvision.data import data_config, eval_transform, model_eval_transform
from armvision.errors import CheckpointError
from armvision.train import load_config, train
from armvision.train.optim import build_optimizer, peak_lr
from armvision.train.trainer import build_model_from_config

WD = 0.05
# Finetuning/models_mamba.py and models_pretrain.py: VisionMamba.no_weight_decay()
REFERENCE_NO_WEIGHT_DECAY = {"pos_embed", "cls_token", "dist_token", "cls_token_head", "cls_token_tail"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_pretrain_table(model) -> dict[str, tuple[float, float]]:
    """timm's add_weight_decay with an empty skip list: frozen parameters left out, no decay on 1-D
    parameters and on names ending in .bias, decay on everything else; one lr (scale 1)."""
    table = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        table[name] = (0.0 if len(p.shape) == 1 or name.endswith(".bias") else WD, 1.0)
    return table


def reference_layer_id(name: str, num_layers: int) -> int:
    """MAE's get_layer_id_for_vit as the ARM fine-tuning code uses it (num_layers = blocks + 1)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("layers"):
        return int(name.split(".")[1]) + 1
    return num_layers


def reference_finetune_table(model, layer_decay: float) -> dict[str, tuple[float, float]]:
    """MAE's param_groups_lrd: no decay on 1-D parameters and the model's no_weight_decay() names; lr scale
    layer_decay ** (num_layers - layer id)."""
    num_layers = len(model.layers) + 1
    table = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim == 1 or name in REFERENCE_NO_WEIGHT_DECAY else WD
        table[name] = (wd, layer_decay ** (num_layers - reference_layer_id(name, num_layers)))
    return table


def optimizer_table(model, optimizer, lr: float) -> dict[str, tuple[float, float]]:
    """(weight decay, lr / peak lr) of every parameter in the optimizer; each in one group only."""
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            assert n not in table, f"{n} is in two parameter groups"
            table[n] = (g["weight_decay"], g["lr"] / lr)
    return table


def build_preset(preset: str, task: str, **overrides):
    cfg = load_config(preset, overrides, task=task)
    with torch.device("meta"):  # ARM-B's shapes and names, no memory or init time
        model = build_model_from_config(cfg, num_classes=1000)
    return cfg, model, build_optimizer(model, cfg.optim, device="cpu")


def assert_tables_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    wrong = {n: (got[n], want[n]) for n in want
             if got[n][0] != want[n][0] or got[n][1] != pytest.approx(want[n][1], rel=1e-12)}
    assert not wrong, f"{len(wrong)} parameters differ (got, reference): {dict(list(wrong.items())[:5])}"


def test_arm_b_pretraining_preset_decays_every_parameter_as_the_reference():
    cfg, model, opt = build_preset("arm_base_in1k_pretrain", "pretrain")
    assert cfg.optim.no_decay == "reference" and cfg.optim.weight_decay == WD
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "dec_pos_embed"}  # fixed sin-cos, requires_grad=False in the reference too
    got = optimizer_table(model, opt, peak_lr(cfg.optim))
    want = reference_pretrain_table(model)
    assert len(want) == 309
    assert_tables_equal(got, want)
    decayed = {n for n, (wd, _) in got.items() if wd}
    assert {"layers.0.mixer.A_log", "layers.11.mixer.A_log", "ar_token", "patch_embed.proj.weight"} <= decayed
    assert "layers.0.mixer.D" not in decayed and "enc2dec.bias" not in decayed


def test_arm_b_finetuning_preset_decays_and_scales_every_parameter_as_the_reference():
    cfg, model, opt = build_preset("arm_base_in1k_finetune", "finetune")
    assert cfg.optim.no_decay == "reference" and cfg.optim.layer_decay == 0.65
    got = optimizer_table(model, opt, peak_lr(cfg.optim))
    want = reference_finetune_table(model, 0.65)
    assert len(want) == 488 and all(p.requires_grad for p in model.parameters())
    assert_tables_equal(got, want)
    assert got["layers.3.mixer.A_c_b_log"] == (WD, pytest.approx(0.65 ** 9))
    assert got["pos_embed"] == (0.0, pytest.approx(0.65 ** 13)) and got["head.weight"] == (WD, 1.0)


@pytest.mark.parametrize("preset,task,differ", [
    ("arm_base_in1k_pretrain", "pretrain", {f"layers.{i}.mixer.A_log" for i in range(12)} | {"ar_token"}),
    ("arm_base_in1k_finetune", "finetune", {f"layers.{i}.mixer.A{s}_log" for i in range(12)
                                            for s in ("", "_b", "_c", "_c_b")}),
])
def test_the_mamba_rule_also_exempts_A_log_and_the_tokens(preset, task, differ):
    cfg, model, ref = build_preset(preset, task)
    mamba = build_optimizer(model, load_config(preset, {"optim.no_decay": "mamba"}, task=task).optim, device="cpu")
    a, b = optimizer_table(model, ref, peak_lr(cfg.optim)), optimizer_table(model, mamba, peak_lr(cfg.optim))
    assert sorted(a) == sorted(b)
    assert {n for n in a if a[n] != b[n]} == differ  # 13 pretraining and 48 fine-tuning parameters
    assert all(a[n][0] == WD and b[n][0] == 0.0 and a[n][1] == b[n][1] for n in differ)


def test_every_arm_preset_uses_the_reference_rule_and_the_schema_default_is_the_old_one():
    from armvision.train import list_presets

    for name in list_presets():
        task = "pretrain" if "pretrain" in name else "finetune"
        want = "mamba" if name.startswith("fmnist") else "reference"
        assert load_config(name, task=task).optim.no_decay == want, name
    assert load_config(None, task="finetune").optim.no_decay == "mamba"  # a config without the key: as before


def test_a_checkpoint_resumes_only_under_its_own_weight_decay_rule(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    over = tiny_overrides(data, tmp_path / "run", "pretrain", max_steps=1, **{"eval_every_epochs": 0,
                                                                              "checkpoint.every_steps": 1})
    train(load_config("fmnist_pretrain", over, task="pretrain"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    assert state["no_decay"] == "mamba"
    again = dict(over, resume="auto", max_steps=2, **{"optim.no_decay": "reference"})
    with pytest.raises(CheckpointError, match="was trained with optim.no_decay mamba .*resume it with "
                                              "--optim.no_decay mamba"):
        train(load_config("fmnist_pretrain", again, task="pretrain"))
    assert train(load_config("fmnist_pretrain", dict(again, **{"optim.no_decay": "mamba"}),
                             task="pretrain"))["steps"] == 2


# ------------------------------------------------------------------------------------------------------
# evaluation transform
# ------------------------------------------------------------------------------------------------------
def reference_eval_transform(input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Finetuning/util/datasets.py build_transform(is_train=False)."""
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    size = int(input_size / crop_pct)
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop((input_size, input_size)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def non_square_image(w: int = 301, h: int = 173) -> Image.Image:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
    return Image.fromarray(a)


@pytest.mark.parametrize("size", [224, 384, 64])
def test_the_eval_transform_is_the_references_squash_on_a_non_square_image(size):
    img = non_square_image()
    want = reference_eval_transform(size)(img)
    assert torch.equal(eval_transform(size, IMAGENET_MEAN, IMAGENET_STD)(img), want)
    # resizing the shorter side instead gives another picture of a non-square image
    assert not torch.allclose(eval_transform(size, IMAGENET_MEAN, IMAGENET_STD, resize="shorter")(img), want,
                              atol=0.1)


def test_model_eval_transform_and_data_config_follow_the_reference():
    img = non_square_image()
    model = armvision.create_model("arm_tiny_pz16", img_size=64, patch_size=16, depth=1, embed_dim=32, d_state=4,
                                   num_classes=3)
    cfg = data_config(model)
    assert cfg["crop_mode"] == "squash" and cfg["crop_pct"] == 0.875
    assert torch.equal(model_eval_transform(model)(img), reference_eval_transform(64)(img))
    assert torch.equal(model_eval_transform(model, 384)(img), reference_eval_transform(384)(img))


def test_timm_pretrained_cfg_is_the_references_eval_transform():
    import timm
    from timm.data import create_transform, resolve_data_config

    img = non_square_image()
    for name, size in (("arm_base_pz16.arm_in1k", 224), ("arm_huge_pz16.arm_in1k_384", 384)):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        tf = create_transform(**resolve_data_config({}, model=model))
        assert torch.equal(tf(img), reference_eval_transform(size)(img)), name


def test_the_run_configs_eval_transform_is_the_references():
    from armvision.train.data import build_transform

    img = non_square_image()
    for preset, size in (("arm_base_in1k_finetune", 224), ("arm_huge_in1k_finetune_384", 384)):
        cfg = load_config(preset, task="finetune")
        assert torch.equal(build_transform(cfg, train=False)(img), reference_eval_transform(size)(img)), preset
    # the reference's crop follows the size when data.eval_crop_pct is not set
    cfg = load_config("arm_base_in1k_finetune", {"model.img_size": 384}, task="finetune")
    assert torch.equal(build_transform(cfg, train=False)(img), reference_eval_transform(384)(img))
