"""ARM pretraining model and classifier: sizes, geometry, no information leak, fine-tuning init."""

import math

import pytest
import torch
import torch.nn.functional as F

import armvision
from armvision.models import ARMClassifier, ARMPretrain, Geometry, default_memory_layers

SMALL = dict(embed_dim=32, depth=6, d_state=4)
SMALL_PRE = dict(SMALL, img_size=32, patch_size=4, cluster_size=2, decoder_dim=32)


def count(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.mark.parametrize(
    "name,pretraining,params_m,trainable_m",
    [
        ("arm_base_pz16", False, 85.0, 85.0),
        ("arm_large_pz16", False, 297.0, 297.0),
        ("arm_huge_pz16", False, 662.7, 662.7),
        ("arm_base_pz16", True, 99.4, 99.2),
        ("arm_large_pz16", True, 303.9, 303.7),
    ],
)
def test_parameter_counts_match_reference(name, pretraining, params_m, trainable_m):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = armvision.create_model(name, pretraining=pretraining)
    assert abs(count(model) / 1e6 - params_m) <= 0.1
    assert abs(count(model, trainable_only=True) / 1e6 - trainable_m) <= 0.1


def test_reference_defaults():
    with torch.device("meta"):
        pre = armvision.create_model("arm_base_pz16", pretraining=True)
        cls = armvision.create_model("arm_base_pz16")
    assert pre.geometry == Geometry((192, 192), 16, 4, 3)
    assert pre.num_input_tokens == 128 and pre.memory_layers == (6, 8, 10, 12)
    assert pre.dec_block[0].attn2.num_heads == 8 and pre.ar_pred.out_features == 768
    assert cls.geometry.img_size == (224, 224) and cls.num_classes == 1000 and cls.cls_index == 98
    assert cls.pos_embed.shape == (1, 197, 768)
    assert default_memory_layers(24) == (12, 16, 20, 24)
    assert [m.mixer.dt_rank for m in pre.layers][:1] == [48]


def test_cluster_order():
    geo = Geometry((8, 8), patch_size=2, cluster_size=2)  # 4x4 patches, 2x2 clusters of 2x2 patches
    assert geo.cluster_order().tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


def test_pretraining_forward_and_predict_shapes(seed):
    model = ARMPretrain(**SMALL_PRE)
    x = torch.randn(3, 3, 32, 32)
    pred, target = model.predict(x)
    assert pred.shape == target.shape == (3, 16 * 4 - 4, 4 * 4 * 3)  # 8x8 patches, clusters 2..16
    loss = model(x)
    assert loss.dim() == 0 and torch.isclose(loss, F.mse_loss(pred, target), rtol=1e-5)
    loss.backward()
    assert model.pos_embed.grad is None and model.dec_pos_embed.grad is None  # fixed embeddings
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_targets_are_normalized_patches_in_cluster_order(seed):
    model = ARMPretrain(**SMALL_PRE)
    x = torch.randn(2, 3, 32, 32)
    t = model.targets(x)
    # first predicted token: cluster 2 = patch grid rows 0-1, cols 2-3 -> its first patch is (0, 2)
    patch = x[0, :, 0:4, 8:12].permute(1, 2, 0).reshape(-1)  # pixel order (row, column, channel)
    expected = (patch - patch.mean()) / (patch.var() + 1e-6) ** 0.5
    assert torch.allclose(t[0, 0], expected, atol=1e-5)
    raw = ARMPretrain(**SMALL_PRE, norm_pix_loss=False).targets(x)
    assert torch.allclose(raw[0, 0], patch)
    assert torch.equal(model.unpatchify(model.patchify(x)), x)


@pytest.mark.parametrize("cluster_size", [1, 2])
def test_no_information_leak(seed, cluster_size):
    """Perturbing cluster k's pixels changes no prediction of clusters 2..k, and changes every
    prediction of clusters k+1..K."""
    model = ARMPretrain(**dict(SMALL_PRE, img_size=(16, 24), cluster_size=cluster_size)).double().eval()
    geo = model.geometry
    s = geo.patches_per_cluster
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    base, _ = model.predict(x)
    (ch, cw), cp = geo.cluster_grid, cluster_size * geo.patch_size
    for k in range(geo.num_clusters):  # 0-based cluster index in cluster order
        r, c = divmod(k, cw)
        x2 = x.clone()
        x2[..., r * cp:(r + 1) * cp, c * cp:(c + 1) * cp] += torch.randn(3, cp, cp, dtype=torch.float64)
        pred, _ = model.predict(x2)
        # prediction row i is for cluster i // s + 1 (0-based), i.e. it may see clusters 0..i // s
        diff = (pred - base).abs().amax(-1)[0].view(-1, s).amax(-1)  # per predicted cluster
        predicted = torch.arange(1, geo.num_clusters)
        assert (diff[predicted <= k] == 0).all(), f"cluster {k} leaks into earlier predictions"
        assert (diff[predicted > k] > 1e-9).all(), f"cluster {k} does not reach later predictions"


def test_classifier_timm_conventions(seed):
    model = ARMClassifier(img_size=32, patch_size=8, num_classes=7, **SMALL)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 17, 32)
    pooled = model.forward_head(tokens, pre_logits=True)
    patches = torch.cat([tokens[:, :8], tokens[:, 9:]], dim=1)
    assert torch.allclose(pooled, patches.mean(1), atol=1e-6)  # class token (index 8) excluded
    assert torch.allclose(model(x), model.head(pooled), atol=1e-6)
    model.reset_classifier(3, global_pool="token")
    assert model(x).shape == (2, 3) and torch.equal(model.forward_head(tokens, pre_logits=True), tokens[:, 8])
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)


def test_classifier_dynamic_img_size(seed):
    model = ARMClassifier(img_size=32, patch_size=8, num_classes=5, dynamic_img_size=True, **SMALL)
    assert model.forward_features(torch.randn(1, 3, 48, 40)).shape == (1, 31, 32)
    strict = ARMClassifier(img_size=32, patch_size=8, num_classes=5, **SMALL)
    with pytest.raises(ValueError, match="model expects 32x32 images, got 48x40"):
        strict(torch.randn(1, 3, 48, 40))


def test_drop_path_schedule_is_shifted():
    model = ARMClassifier(img_size=32, patch_size=8, depth=5, embed_dim=32, drop_path_rate=0.4)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.layers]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])


def test_init_statistics(seed):
    depth = 6
    pre = ARMPretrain(img_size=64, patch_size=8, cluster_size=2, embed_dim=256, depth=depth, decoder_dim=128)
    w = pre.layers[0].mixer.out_proj.weight
    expected_std = (1 / math.sqrt(256)) / math.sqrt(3) / math.sqrt(depth)  # kaiming-uniform(a=sqrt 5) / sqrt(depth)
    assert abs(w.std().item() / expected_std - 1) < 0.05
    for name, mod in pre.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod.bias is not None and "dt_proj" not in name:
            assert torch.all(mod.bias == 0), name
    q = pre.dec_block[0].attn2.q.weight
    assert abs(q.std().item() / math.sqrt(2 / (128 + 128)) - 1) < 0.05  # xavier-uniform
    assert abs(pre.ar_token.std().item() / 0.02 - 1) < 0.3
    pw = pre.patch_embed.proj.weight  # lecun normal: std sqrt(1 / fan_in), truncated
    assert abs(pw.std().item() / math.sqrt(1 / (3 * 64)) - 1) < 0.1
    cls = ARMClassifier(img_size=64, patch_size=8, embed_dim=256, depth=depth, num_classes=100)
    assert abs(cls.head.weight.std().item() / 2e-5 - 1) < 0.1  # timm's trunc_normal_ cuts at +-2 (absolute)
    assert abs(cls.pos_embed.std().item() / 0.02 - 1) < 0.1


@pytest.mark.parametrize("cls_img", [32, 48])
def test_classifier_from_pretraining(seed, cls_img):
    pre = ARMPretrain(**SMALL_PRE)  # 8x8 patch grid
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p))  # every tensor distinct from a fresh init
    cls = ARMClassifier(img_size=cls_img, patch_size=4, num_classes=10, **SMALL)
    armvision.init_classifier_from_pretraining(cls, pre)
    psd, csd = pre.state_dict(), cls.state_dict()
    assert torch.equal(csd["patch_embed.proj.weight"], psd["patch_embed.proj.weight"])
    for i in range(SMALL["depth"]):
        for k in ("norm1.weight", "mlp.w3.bias", "mixer.in_proj.weight", "mixer.out_proj.weight"):
            assert torch.equal(csd[f"layers.{i}.{k}"], psd[f"layers.{i}.{k}"])
        for s in ("", "_b", "_c", "_c_b"):
            for mod in ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias"):
                m, p = mod.split(".")
                assert torch.equal(csd[f"layers.{i}.mixer.{m}{s}.{p}"], psd[f"layers.{i}.mixer.{mod}"])
            assert torch.equal(csd[f"layers.{i}.mixer.A{s}_log"], psd[f"layers.{i}.mixer.A_log"])
            assert torch.equal(csd[f"layers.{i}.mixer.D{s}"], psd[f"layers.{i}.mixer.D"])
    g = cls_img // 4
    mid = g * g // 2
    pos = csd["pos_embed"][0]
    assert pos.shape == (g * g + 1, 32) and torch.equal(pos[mid], torch.zeros(32))
    patches = torch.cat([pos[:mid], pos[mid + 1:]])
    expected = F.interpolate(psd["pos_embed"].reshape(1, 8, 8, 32).permute(0, 3, 1, 2), size=(g, g),
                             mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(g * g, 32)
    assert torch.allclose(patches, expected, atol=1e-6)
    if g == 8:
        assert torch.equal(patches, psd["pos_embed"][0])
    assert cls.head.weight.std() < 1e-4  # fresh head
    # from a state dict as well
    cls2 = armvision.init_classifier_from_pretraining(
        ARMClassifier(img_size=cls_img, patch_size=4, num_classes=10, **SMALL), psd)
    assert torch.equal(cls2.state_dict()["pos_embed"], csd["pos_embed"])
    cls(torch.randn(1, 3, cls_img, cls_img))


def test_classifier_from_pretraining_rejects_mismatch():
    pre = ARMPretrain(**SMALL_PRE)
    with pytest.raises(KeyError, match="depth or directions differ"):
        armvision.init_classifier_from_pretraining(ARMClassifier(img_size=32, patch_size=4, embed_dim=32, depth=4), pre)
    with pytest.raises(ValueError, match="other shapes"):
        armvision.init_classifier_from_pretraining(ARMClassifier(img_size=32, patch_size=4, embed_dim=48, depth=6), pre)
    with pytest.raises(KeyError, match="not an ARM pretraining state dict"):
        armvision.init_classifier_from_pretraining(ARMClassifier(img_size=32, patch_size=4, **SMALL), {"foo": 1})


def test_geometry_errors():
    with pytest.raises(ValueError, match="image size 100x100 is not divisible by the patch size 16"):
        armvision.create_model("arm_tiny_pz16", img_size=100)
    with pytest.raises(ValueError, match="not divisible into clusters of 5x5 patches"):
        armvision.create_model("arm_tiny_pz16", pretraining=True, cluster_size=5)
    with pytest.raises(ValueError, match="only one cluster"):
        armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=64)
    with pytest.raises(ValueError, match="memory_layers must be increasing"):
        ARMPretrain(**dict(SMALL_PRE, memory_layers=(2, 4)))
    with pytest.raises(ValueError, match="cannot space 4 decoder memory levels over 2"):
        default_memory_layers(2)
    model = ARMPretrain(**SMALL_PRE)
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 3, 32, 32\), got \(1, 3, 16, 16\)"):
        model(torch.randn(1, 3, 16, 16))


def test_create_model_errors_and_names():
    assert armvision.list_models() == ["arm_tiny_pz16", "arm_small_pz16", "arm_base_pz16", "arm_large_pz16",
                                       "arm_huge_pz16", "vim_tiny_pz16", "vim_small_pz16", "vim_base_pz16"]
    with pytest.raises(ValueError, match="unknown model 'arm_giant_pz16'; valid names: arm_tiny_pz16, arm_small"):
        armvision.create_model("arm_giant_pz16")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['cluster_size'\] for the classifier"):
        armvision.create_model("arm_tiny_pz16", cluster_size=2)
    with pytest.raises(ValueError, match="unknown ops backend"):
        armvision.create_model("arm_tiny_pz16", backend="cuda")
    with pytest.raises(ValueError, match="global_pool must be"):
        armvision.create_model("arm_tiny_pz16", global_pool="max")
    with torch.device("meta"):
        m = armvision.create_model("arm_small_pz16", pretraining=True, img_size=256, cluster_size=2, in_chans=1)
    assert m.geometry.grid == (16, 16) and m.ar_pred.out_features == 256 and m.num_input_tokens == 252


def test_save_and_load_model_directory(tmp_path, seed):
    model = armvision.create_model("arm_tiny_pz16", pretraining=True, **SMALL_PRE)
    armvision.save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = armvision.load_model(tmp_path / "m")
    assert type(loaded) is ARMPretrain and loaded.model_name == "arm_tiny_pz16"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="an armvision model directory holds config.json"):
        armvision.load_model(tmp_path / "nothing")
