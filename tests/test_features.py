"""Feature extraction: pooled features and per-block token maps at any resolution."""

import pytest
import torch

import armvision
from armvision import ARMClassifier, ARMPretrain, extract_features
from armvision.data import data_config, model_eval_transform
from armvision.features import pretraining_encoder_intermediates


@pytest.fixture(scope="module")
def clf():
    torch.manual_seed(0)
    return ARMClassifier(img_size=224, patch_size=16, embed_dim=32, depth=2, d_state=8, num_classes=0,
                         dynamic_img_size=True).eval()


@torch.no_grad()
@pytest.mark.parametrize("size", [224, 384])
def test_classifier_features_at_224_and_384(clf, size, seed):
    x = torch.randn(1, 3, size, size)
    f = extract_features(clf, x, layers=[0, -1])
    g = size // 16
    assert f.pooled.shape == (1, 32)
    assert sorted(f.maps) == [0, 1] and all(m.shape == (1, g, g, 32) for m in f.maps.values())
    # pooled: the head's input; a map: the block output with the class token (the middle one) removed,
    # in row-major order
    final, (m1,) = clf.forward_intermediates(x, indices=[1], output_fmt="NLC")
    assert torch.allclose(f.pooled, clf.forward_head(final, pre_logits=True), atol=1e-6)
    assert torch.equal(f.maps[1].reshape(1, g * g, 32), m1)
    if size == 224:
        assert extract_features(clf, x, layers=()).maps == {}


@torch.no_grad()
def test_layer_selection(clf, seed):
    x = torch.randn(1, 3, 224, 224)
    every = extract_features(clf, x, layers=None)
    assert sorted(every.maps) == [0, 1]
    reversed_order = extract_features(clf, x, layers=[1, 0])
    assert all(torch.equal(reversed_order.maps[k], every.maps[k]) for k in (0, 1))
    last = extract_features(clf, x, layers=1)
    assert sorted(last.maps) == [1] and torch.equal(last.maps[1], every.maps[1])
    normed = extract_features(clf, x, layers=[1], norm=True).maps[1]
    assert torch.allclose(normed, clf.norm_f(every.maps[1]), atol=1e-6)


def test_fixed_size_classifier_refuses_other_sizes():
    model = ARMClassifier(img_size=32, patch_size=4, embed_dim=16, depth=1)
    with pytest.raises(ValueError, match="model expects 32x32 images, got 48x48; .* dynamic_img_size=True"):
        extract_features(model, torch.randn(1, 3, 48, 48))


@torch.no_grad()
def test_pretraining_encoder_features(seed):
    model = ARMPretrain(img_size=32, patch_size=4, cluster_size=2, embed_dim=32, depth=6, d_state=8, decoder_dim=64)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    # the encoder's own block outputs over clusters 1..K-1, as pretraining computes them
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(o)) for layer in model.layers]
    model.forward_encoder(x)
    for h in hooks:
        h.remove()
    final, maps = pretraining_encoder_intermediates(model, x, indices=None)
    assert final.shape == (2, 64, 32) and [m.shape for m in maps] == [(2, 8, 8, 32)] * 6
    order = model.cluster_order[: model.num_input_tokens]  # row-major index of each encoder token
    for own, m in zip(seen, maps):
        assert torch.allclose(m.reshape(2, 64, 32)[:, order], own, atol=1e-5)  # causal: the same values
    f = extract_features(model, x, layers=[-1])
    assert torch.allclose(f.pooled, model.norm_4(maps[-1]).mean(dim=(1, 2)), atol=1e-5)
    pooled_only = extract_features(model, x)  # the default: pooled features, no maps
    assert pooled_only.maps == {} and torch.allclose(pooled_only.pooled, f.pooled, atol=1e-6)
    assert list(extract_features(model, x, layers=2).maps) == [2]  # an int is one block
    # a larger image: 12x12 patches, still whole clusters; the position embedding is resized
    big = extract_features(model, torch.randn(1, 3, 48, 48), layers=[0])
    assert big.pooled.shape == (1, 32) and big.maps[0].shape == (1, 12, 12, 32)
    with pytest.raises(ValueError, match="reads whole clusters of 2x2 patches: .*not divisible into clusters"):
        extract_features(model, torch.randn(1, 3, 36, 36))


def test_data_config_and_transform():
    model = armvision.create_model("arm_tiny_pz16", embed_dim=32, depth=1)
    assert data_config(model) == dict(input_size=(3, 224, 224), interpolation="bicubic",
                                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875,
                                      crop_mode="squash")
    assert data_config(model, 384)["crop_pct"] == 1.0 and data_config(model, 384)["input_size"] == (3, 384, 384)
    text = str(model_eval_transform(model, 384))
    assert "Resize(size=(384, 384), interpolation=bicubic" in text and "CenterCrop(size=(384, 384))" in text
    gray = ARMClassifier(img_size=32, patch_size=4, in_chans=1, embed_dim=16, depth=1)
    assert "Normalize(mean=tensor([0.4" in str(model_eval_transform(gray)).replace("\n", "")


def test_extract_folder_is_a_library_call(tmp_path):
    from PIL import Image

    from armvision.data import IMAGE_EXTENSIONS, list_images
    from armvision.errors import DataError
    from armvision.features import extract_folder, write_features

    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 24), (10, 20, 30)).save(tmp_path / "in" / "sub" / "x.PNG")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "bad.png").write_bytes(b"no")
    (tmp_path / "in" / "notes.txt").write_text("-")
    assert ".png" in IMAGE_EXTENSIONS and ".txt" not in IMAGE_EXTENSIONS
    assert [p.name for p in list_images(tmp_path / "in")] == ["a.jpg", "bad.png", "x.PNG"]
    model = ARMClassifier(img_size=16, patch_size=4, embed_dim=32, depth=2, d_state=4, num_classes=0)
    seen = []
    result = extract_folder(model, tmp_path / "in", layers=[-1], batch_size=2, on_skip=lambda f, e: seen.append(f))
    assert result.files == ["a.jpg", "sub/x.PNG"] and [f for f, _ in result.skipped] == ["bad.png"] == seen
    assert result.tensors["pooled"].shape == (2, 32) and result.tensors["layer1"].shape == (2, 4, 4, 32)
    written = write_features(result, tmp_path / "out.npy")
    assert [p.name for p in written] == ["out.npy", "out.layer1.npy"]
    assert (tmp_path / "out.files.txt").read_text() == "a.jpg\nsub/x.PNG\n"
    assert (tmp_path / "out.skipped.txt").read_text().startswith("bad.png\t")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        extract_folder(model, tmp_path / "in", strict_images=True)


def test_pretraining_forward_intermediates_is_the_encoder_of_pretraining():
    """At the model's own size, the encoder over every cluster gives, on the clusters pretraining reads, what
    pretraining's forward_encoder gives (the encoder is causal); the formats are timm's."""
    from armvision.models import ARMPretrain

    torch.manual_seed(0)
    m = ARMPretrain(img_size=16, patch_size=4, cluster_size=2, embed_dim=16, depth=2, d_state=2, decoder_dim=16,
                    memory_layers=(1, 2), backend="torch").eval()
    x = torch.randn(2, 3, 16, 16)
    seen = {}
    hook = m.norm_2.register_forward_hook(lambda mod, inp, out: seen.update(last=out))
    with torch.no_grad():
        m.forward_encoder(x)
        hook.remove()
        final, maps = m.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC")
        nchw = m.forward_intermediates(x, indices=2, output_fmt="NCHW", intermediates_only=True)
        early = m.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NHWC", intermediates_only=True)
    order = m.cluster_order[: m.num_input_tokens]
    assert torch.allclose(final[:, order], seen["last"], atol=1e-5)
    assert torch.equal(maps[0], final) and final.shape == (2, 16, 16)
    assert len(nchw) == 2 and nchw[0].shape == (2, 16, 4, 4)
    assert torch.allclose(early[0], nchw[0].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(x, output_fmt="NCL")
