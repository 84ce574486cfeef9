"""Vim everywhere an ARM model goes, through the commands (a tiny Vim: 2 blocks, 16 wide, 16px images): ARM
pretraining of a Vim encoder, fine-tuning from it, eval, predict, extract, linprobe, knn, export, convert to the
official Vim layout and back, fine-tuning from that .pth; and the Vim presets against the rules of their sources,
written out here: hustvl/Vim's from-scratch optimizer (timm ``create_optimizer``: no decay on 1-D parameters,
biases and ``no_weight_decay()`` = pos_embed, cls_token, ...), MAE's ``param_groups_lrd`` for the fine-tuning of an
ARM-pretrained Vim, timm's ``add_weight_decay`` with no skip list for its pretraining; and hustvl/Vim's evaluation
(shorter side to size / 0.875, centre crop)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from trainhelpers import make_imagefolder

from armvision.cli import main
from armvision.train import load_config
from armvision.train.optim import build_optimizer, peak_lr
from armvision.train.trainer import build_model_from_config

# hustvl/Vim vim/models_mamba.py VisionMamba.no_weight_decay()
VIM_NO_WEIGHT_DECAY = {"pos_embed", "cls_token", "dist_token", "cls_token_head", "cls_token_tail"}
TINY = {"patch_size": 4, "embed_dim": 16, "depth": 2, "d_state": 4}


def run(*argv):
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vimcmd")
    data = make_imagefolder(root / "data", {"train": 4, "val": 2})
    common = ["--device", "cpu", "--model.name", "vim_tiny_pz16", "--model.img_size", "16", "--data.root", data,
              "--data.workers", "0", "--data.val_split", "val", "--optim.batch_size", "6", "--optim.epochs", "1",
              "--optim.warmup_epochs", "0", "--log.progress", "off", "--log.tensorboard", "false"]
    run("pretrain", "--config", "vim_small_in1k_pretrain", *common, "--output_dir", root / "pre", "--model.args",
        json.dumps({**TINY, "cluster_size": 2, "decoder_dim": 16, "memory_layers": [1, 2]}))
    run("finetune", "--config", "vim_small_in1k_finetune", *common, "--output_dir", root / "ft", "--init",
        root / "pre", "--model.args", json.dumps(TINY))
    return {"root": root, "data": data, "common": common}


def test_pretrain_and_finetune_a_tiny_vim(runs):
    from armvision.weights import load_model

    pre, ft = load_model(runs["root"] / "pre"), load_model(runs["root"] / "ft")
    assert type(pre).__name__ == "ARMPretrain" and pre.block == "vim" and len(pre.layers) == 2
    assert type(ft).__name__ == "ARMClassifier" and ft.block == "vim" and ft.global_pool == "token"
    assert ft.config["directions"] == 2 and ft.num_classes == 3
    summary = json.loads((runs["root"] / "ft" / "summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["eval"]["top1"] <= 100


def test_eval_predict_extract_linprobe_knn(runs, capsys):
    root, data = runs["root"], runs["data"]
    run("eval", root / "ft", "--output", root / "eval.json")
    out = json.loads((root / "eval.json").read_text())
    assert out["results"]["raw"]["images"] == 6 and "ema" in out["results"]
    run("predict", root / "ft", data / "val" / "circle" / "000.png", "--format", "json")
    assert "circle" in capsys.readouterr().out
    run("extract", root / "ft", data / "val", root / "f.safetensors", "--layers", "-1", "--quiet")
    from safetensors.torch import load_file

    t = load_file(root / "f.safetensors")
    assert t["pooled"].shape == (6, 16) and t["layer1"].shape == (6, 4, 4, 16)
    run("extract", root / "pre", data / "val", root / "p.npy", "--as-classifier", "--quiet")
    assert np.load(root / "p.npy").shape == (6, 16)
    with pytest.warns(UserWarning, match="randomly initialised"):  # a registered Vim name, as timm builds it
        run("extract", "vim_tiny_pz16", data / "val", root / "n.npy", "--quiet", "--model-kwargs", "depth=1",
            "img_size=32", "embed_dim=8")
    assert np.load(root / "n.npy").shape == (6, 8)
    for cmd in ("linprobe", "knn"):
        run(cmd, root / "pre", "--test-split", "val", "--output", root / f"{cmd}.json", "--device", "cpu")
        assert (root / f"{cmd}.json").is_file()


def test_export_convert_to_the_official_vim_layout_and_back(runs, capsys):
    from armvision.interop.official import safe_torch_load
    from armvision.weights import load_model

    root = runs["root"]
    run("export", root / "ft", root / "exported")
    # not one of the registered sizes: refused unless --no-strict, and the message names the flag
    assert main(["convert", "--to-official", str(root / "exported"), str(root / "v.pth")]) == 2
    assert "--no-strict" in capsys.readouterr().err
    run("convert", "--to-official", "--no-strict", root / "exported", root / "v.pth")
    assert "official Vim layout" in capsys.readouterr().out
    assert set(safe_torch_load(root / "v.pth")["model"]) == set(load_model(root / "exported")
                                                                               .state_dict())
    run("convert", root / "v.pth", root / "back")
    a, b = load_model(root / "exported"), load_model(root / "back")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    run("finetune", "--config", "vim_small_in1k_finetune", *runs["common"], "--output_dir", root / "ft_pth",
        "--init", root / "v.pth", "--model.args", json.dumps(TINY))


# -- the presets against their sources' rules ---------------------------------------------------------------
def add_weight_decay_table(model, wd, skip=()) -> dict:
    """timm's add_weight_decay (hustvl/Vim's create_optimizer with the model's no_weight_decay() as skip list; ARM's
    pretraining with none): no decay on 1-D parameters, names ending in .bias and the skip list; one lr."""
    return {n: (0.0 if p.ndim == 1 or n.endswith(".bias") or n in skip else wd, 1.0)
            for n, p in model.named_parameters() if p.requires_grad}


def param_groups_lrd_table(model, wd, layer_decay) -> dict:
    """MAE's param_groups_lrd (ARM's fine-tuning): no decay on 1-D parameters and no_weight_decay() names; layer
    id 0 for cls_token, pos_embed, patch_embed, i + 1 for layers.i, num_layers (= blocks + 1) for the rest; lr scale
    layer_decay ** (num_layers - id)."""
    num_layers = len(model.layers) + 1
    table = {}
    for n, p in model.named_parameters():
        if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
            lid = 0
        elif n.startswith("layers."):
            lid = int(n.split(".")[1]) + 1
        else:
            lid = num_layers
        table[n] = (0.0 if p.ndim == 1 or n in VIM_NO_WEIGHT_DECAY else wd, layer_decay ** (num_layers - lid))
    return table


def optimizer_table(model, opt, lr) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for g in opt.param_groups:
        for p in g["params"]:
            assert names[id(p)] not in table
            table[names[id(p)]] = (g["weight_decay"], g["lr"] / lr)
    return table


def preset(name, task):
    cfg = load_config(name, task=task)
    with torch.device("meta"):
        model = build_model_from_config(cfg, num_classes=1000)
    return cfg, model, optimizer_table(model, build_optimizer(model, cfg.optim, device="cpu"), peak_lr(cfg.optim))


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    wrong = {n: (got[n], want[n]) for n in want if got[n][0] != want[n][0] or got[n][1] != pytest.approx(want[n][1])}
    assert not wrong, f"{len(wrong)} differ (got, rule): {dict(list(wrong.items())[:4])}"


def test_vim_finetuning_preset_decays_and_scales_every_parameter_as_the_rules():
    cfg, model, got = preset("vim_small_in1k_finetune", "finetune")
    assert model.block == "vim" and len(model.layers) == 24 and cfg.optim.layer_decay == 0.75
    want = param_groups_lrd_table(model, 0.05, 0.75)
    # per block: norm, in_proj, out_proj and per direction conv1d w/b, x_proj, dt_proj w/b, A_log, D; then
    # cls_token, pos_embed, patch_embed w/b, norm_f, head w/b
    assert len(want) == 24 * 17 + 7
    assert_same(got, want)
    assert got["layers.0.mixer.A_b_log"] == (0.05, pytest.approx(0.75 ** 24))
    assert got["layers.23.mixer.D_b"] == (0.0, pytest.approx(0.75))
    assert got["cls_token"] == (0.0, pytest.approx(0.75 ** 25)) and got["norm_f.weight"] == (0.0, 1.0)
    assert got["head.weight"] == (0.05, 1.0)


@pytest.mark.parametrize("name,wd", [("vim_small_in1k_scratch", 0.05), ("vim_tiny_in1k_scratch", 0.1)])
def test_vim_scratch_presets_decay_every_parameter_as_hustvl_vim(name, wd):
    cfg, model, got = preset(name, "finetune")
    assert cfg.optim.weight_decay == wd and cfg.optim.layer_decay is None and cfg.init is None
    assert_same(got, add_weight_decay_table(model, wd, VIM_NO_WEIGHT_DECAY))
    # hustvl/Vim's lr: --lr * batch / 512 = 1e-3 for both scripts
    assert peak_lr(cfg.optim) == pytest.approx(1e-3)


def test_vim_pretraining_preset_decays_every_parameter_as_arms_pretraining():
    cfg, model, got = preset("vim_small_in1k_pretrain", "pretrain")
    assert model.block == "vim" and cfg.optim.blr == 1.5e-4 and cfg.optim.epochs == 1600
    assert_same(got, add_weight_decay_table(model, 0.05))
    assert got["layers.5.mixer.A_log"][0] == 0.05 and got["ar_token"][0] == 0.05


@pytest.mark.parametrize("name", ["vim_small_in1k_finetune", "vim_small_in1k_scratch", "vim_tiny_in1k_scratch"])
def test_vim_presets_evaluate_as_hustvl_vim(name):
    from armvision.train.data import build_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (173, 301, 3), dtype=np.uint8))
    # vim/datasets.py build_transform(is_train=False): Resize(int(224 / 0.875)) of the shorter side, bicubic,
    # CenterCrop(224), ToTensor, Normalize(ImageNet)
    want = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(224), transforms.ToTensor(),
                               transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)
    got = build_transform(load_config(name, task="finetune"), train=False)(img)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
