"""timm: registration, pretrained cfgs, loading any ARM weights through timm, timm's model API."""

import pytest
import timm
import torch
from official_reference import make_official_finetune_state_dict, make_official_pretrain_state_dict, official_pickle
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config

import armvision
from armvision import ARMClassifier
from armvision.interop.timm_models import checkpoint_filter_fn

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=3, d_state=8)


@pytest.fixture(scope="module")
def ft_file(tmp_path_factory):
    sd = make_official_finetune_state_dict(embed_dim=32, depth=3, d_state=8, patch=4, grid=8, num_classes=10, seed=5)
    path = tmp_path_factory.mktemp("ckpt") / "official_finetune.pth"
    torch.save(official_pickle(sd, "finetuning"), path)
    return path


def test_models_registered_on_import():
    assert timm.list_models("arm_*") == ["arm_base_pz16", "arm_huge_pz16", "arm_large_pz16", "arm_small_pz16",
                                         "arm_tiny_pz16"]
    assert timm.list_pretrained("arm_*") == ["arm_base_pz16.arm_in1k", "arm_huge_pz16.arm_in1k",
                                             "arm_huge_pz16.arm_in1k_384", "arm_large_pz16.arm_in1k"]


def test_pretrained_cfg_metadata():
    with torch.device("meta"):
        base = timm.create_model("arm_base_pz16")
        huge384 = timm.create_model("arm_huge_pz16.arm_in1k_384")
    cfg = base.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["crop_mode"] == "squash"
    assert cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
    assert cfg["classifier"] == "head" and cfg["first_conv"] == "patch_embed.proj" and cfg["num_classes"] == 1000
    assert cfg["hf_hub_id"] == "OliverRen/ARM" and cfg["tag"] == "arm_in1k"
    assert "not verified" in cfg["notes"][0]
    assert isinstance(base, ARMClassifier) and base.config["embed_dim"] == 768 and base.config["img_size"] == (224, 224)
    assert huge384.config["img_size"] == (384, 384) and huge384.config["embed_dim"] == 1536
    assert huge384.pretrained_cfg["input_size"] == (3, 384, 384) and huge384.pretrained_cfg["crop_pct"] == 1.0
    for m in (base, huge384):
        assert m.get_classifier() is m.head


def test_data_config_gives_the_reference_eval_transform():
    with torch.device("meta"):
        model = timm.create_model("arm_base_pz16")
    cfg = resolve_data_config({}, model=model)
    assert cfg == dict(input_size=(3, 224, 224), interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN,
                       std=IMAGENET_DEFAULT_STD, crop_pct=0.875, crop_mode="squash")
    text = str(create_transform(**cfg))
    assert "Resize(size=(256, 256), interpolation=bicubic" in text and "CenterCrop(size=(224, 224))" in text
    small = timm.create_model("arm_tiny_pz16", **TINY)  # another input size: the data config follows it
    assert resolve_data_config({}, model=small)["input_size"] == (3, 32, 32)


def test_official_finetuning_weights_through_timm(ft_file, seed):
    model = timm.create_model("arm_tiny_pz16", pretrained=True, pretrained_cfg_overlay=dict(file=str(ft_file)), **TINY)
    direct = armvision.load_official(ft_file)
    assert model.num_classes == 10 and model.pretrained_cfg["num_classes"] == 10  # from the weights
    assert "state_dict" not in model.pretrained_cfg
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), direct(x))
    # timm's API on it
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 65, 32)
    assert torch.equal(model.forward_head(tokens), model(x))
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)


def test_new_head_when_the_class_count_differs(ft_file):
    model = timm.create_model("arm_tiny_pz16", pretrained=True, pretrained_cfg_overlay=dict(file=str(ft_file)),
                              num_classes=5, **TINY)
    ref = armvision.load_official(ft_file).state_dict()
    sd = model.state_dict()
    assert sd["head.weight"].shape == (5, 32) and sd["head.weight"].std() < 1e-4
    assert all(torch.equal(sd[k], v) for k, v in ref.items() if not k.startswith("head."))


def test_pretraining_weights_initialise_a_classifier_through_timm(tmp_path):
    psd = make_official_pretrain_state_dict(embed_dim=32, depth=12, d_state=8, dec_dim=64, patch=2, grid=12, seed=6)
    path = tmp_path / "official_pretrain.pth"
    torch.save(official_pickle(psd, "pretraining"), path)
    model = timm.create_model("arm_tiny_pz16", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=32, patch_size=2, embed_dim=32, depth=12, d_state=8, num_classes=7)
    expected = armvision.init_classifier_from_official(
        ARMClassifier(img_size=32, patch_size=2, embed_dim=32, depth=12, d_state=8, num_classes=7), path).state_dict()
    sd = model.state_dict()
    fresh = {"cls_token", "norm_f.weight", "norm_f.bias", "head.weight", "head.bias"}
    assert all(torch.equal(sd[k], v) for k, v in expected.items() if k not in fresh)
    assert torch.equal(sd["layers.11.mixer.dt_proj_c.bias"], psd["layers.11.mixer.dt_proj.bias"])
    assert model.num_classes == 7


def test_armvision_model_dir_and_safetensors_through_timm(tmp_path, ft_file):
    model = armvision.load_official(ft_file)
    armvision.save_pretrained(model, tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    for file in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):
        again = timm.create_model("arm_tiny_pz16", pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
                                  **TINY)
        assert torch.equal(again(x), model(x))


def test_filter_resizes_the_position_embedding(ft_file):
    sd = armvision.load_official(ft_file).state_dict()
    model = ARMClassifier(**dict(TINY, img_size=48), num_classes=10)
    out = checkpoint_filter_fn({"model": {f"module.{k}": v for k, v in sd.items()}}, model)
    assert out["pos_embed"].shape == (1, 145, 32) and torch.equal(out["pos_embed"][0, 72], sd["pos_embed"][0, 32])
    model.load_state_dict(out)


def test_pretrained_without_a_file_says_what_to_pass():
    with pytest.raises(RuntimeError, match=r"no verified download location .*pretrained_cfg_overlay=dict\(file=PATH\)"):
        timm.create_model("arm_base_pz16", pretrained=True)
    with pytest.raises(FileNotFoundError, match="missing.pth: no such checkpoint file"):
        timm.create_model("arm_tiny_pz16", pretrained=True, pretrained_cfg_overlay=dict(file="missing.pth"), **TINY)


def test_hub_filename_is_downloaded_then_read_safely(monkeypatch, ft_file):
    calls = []

    def fake_download(repo_id, filename, cache_dir=None, **kw):
        calls.append((repo_id, filename))
        return str(ft_file)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    model = timm.create_model("arm_tiny_pz16", pretrained=True,
                              pretrained_cfg_overlay=dict(hf_hub_filename="arm_tiny_ft.pth"), **TINY)
    assert calls == [("OliverRen/ARM", "arm_tiny_ft.pth")] and model.num_classes == 10


def test_forward_intermediates_follows_timm(seed):
    model = timm.create_model("arm_tiny_pz16", num_classes=3, dynamic_img_size=True, **TINY).eval()
    x = torch.randn(2, 3, 32, 48)
    final, maps = model.forward_intermediates(x)
    assert len(maps) == 3 and all(m.shape == (2, 32, 8, 12) for m in maps)
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)
    nhwc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NHWC", intermediates_only=True)
    assert [m.shape for m in nhwc] == [(2, 8, 12, 32)] * 2
    assert torch.equal(nhwc[1].permute(0, 3, 1, 2), maps[2]) and torch.equal(nhwc[0].permute(0, 3, 1, 2), maps[0])
    # the last block's normed map is the normed final sequence without the class token (index 48 of 97)
    normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)[0]
    assert torch.allclose(normed, torch.cat([final[:, :48], final[:, 49:]], dim=1), atol=1e-6)
    with_prefix = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, intermediates_only=True)
    assert with_prefix[0][1].shape == (2, 1, 32)
    early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert torch.equal(early[0], maps[1])
    with pytest.raises(ValueError, match="block index 3 is out of range for 3 blocks"):
        model.forward_intermediates(x, indices=[3])
    with pytest.raises(ValueError, match="output_fmt must be"):
        model.forward_intermediates(x, output_fmt="NCL")


def test_features_only_and_pruning(seed):
    feats = timm.create_model("arm_tiny_pz16", features_only=True, out_indices=(0, -1), **TINY)
    assert feats.feature_info.channels() == [32, 32] and feats.feature_info.reduction() == [4, 4]
    out = feats(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in out] == [(2, 32, 8, 8)] * 2
    model = timm.create_model("arm_tiny_pz16", **TINY)
    kept = model.prune_intermediate_layers([0, 1], prune_norm=True)
    assert kept == [0, 1] and len(model.layers) == 2 and model.num_classes == 0
    assert isinstance(model.norm_f, torch.nn.Identity)


def test_timm_training_helpers_work(seed):
    model = timm.create_model("arm_tiny_pz16", num_classes=4, **TINY)
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    assert len({g["lr_scale"] for g in opt.param_groups}) == 5  # stem, 3 blocks, final norm + head
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    mixer = model.layers[0].mixer
    # the model's no_weight_decay() is the reference's: timm's optimizer groups are its fine-tuning groups
    assert {id(mixer.D), id(mixer.D_c_b), id(model.pos_embed), id(model.cls_token)} <= no_decay
    assert not {id(mixer.in_proj.weight), id(mixer.A_log), id(mixer.A_c_b_log)} & no_decay
    # gradient checkpointing recomputes the same gradients
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).logsumexp(-1).mean().backward()
        grads.append(mixer.A_c_log.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0
