"""save_pretrained / from_pretrained: the Hub layout, offline."""

import json

import pytest
import torch
from timm.data import resolve_data_config

import armvision
from armvision import ARMClassifier, ARMPretrain
from armvision.weights import read_config

SMALL = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, d_state=8)


def _randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", ["classifier", "pretraining"])
def test_save_and_load_pretrained_is_exact(tmp_path, kind, seed):
    if kind == "classifier":
        model = _randomize(armvision.create_model("arm_tiny_pz16", num_classes=5, global_pool="token", **SMALL))
    else:
        model = _randomize(armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=32, patch_size=4,
                                                  embed_dim=32, depth=6, cluster_size=2, decoder_dim=64))
    out = armvision.save_pretrained(model, tmp_path / "m", training_config={"epochs": 3, "lr": 1e-3},
                                    results={"top1": 12.5})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = armvision.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config and loaded.model_name == "arm_tiny_pz16"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    config = read_config(tmp_path / "m")
    assert config["training_config"] == {"epochs": 3, "lr": 1e-3} and config["results"] == {"top1": 12.5}
    assert config["armvision_version"] == armvision.__version__
    assert config["data_config"]["input_size"] == [3, 32, 32]


def test_model_card(tmp_path):
    model = armvision.create_model("arm_base_pz16", img_size=384, num_classes=10)
    armvision.save_pretrained(model, tmp_path / "m", training_config={"recipe": "paper", "epochs": 100},
                              results={"imagenet-1k top-1": 85.5}, repo_id="someone/arm-b-384")
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: armvision\n")
    assert "pipeline_tag: image-classification" in card
    assert "| parameters | 84.6M |" in card and "| input | 384x384 px, patch 16, 3 channels |" in card
    assert '"recipe": "paper"' in card and "| imagenet-1k top-1 | 85.5 |" in card
    assert 'armvision.from_pretrained("someone/arm-b-384")' in card
    assert ('timm.create_model("arm_base_pz16", pretrained=True, img_size=384,' in card
            and 'hf_hub_id="someone/arm-b-384", hf_hub_filename="model.safetensors"' in card)
    assert "arXiv:2406.07537" in card
    bare = armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=32, patch_size=4, embed_dim=32, depth=6,
                                  cluster_size=2, decoder_dim=64)
    armvision.save_pretrained(bare, tmp_path / "p")
    card = (tmp_path / "p" / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and card.count("Not recorded.") == 2


def test_loaded_model_carries_its_preprocessing(tmp_path):
    armvision.save_pretrained(armvision.create_model("arm_tiny_pz16", **SMALL), tmp_path / "m")
    loaded = armvision.from_pretrained(tmp_path / "m", dynamic_img_size=True)
    cfg = resolve_data_config({}, model=loaded)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert loaded.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 145, 32)  # the override applied


def test_from_pretrained_with_a_hub_id_uses_the_hub_cache(tmp_path, monkeypatch):
    model = armvision.create_model("arm_tiny_pz16", **SMALL)
    snapshot = armvision.save_pretrained(model, tmp_path / "cache" / "snapshots" / "abc123")
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None, local_files_only=False, **kw):
        calls.append((repo_id, filename, revision, cache_dir, local_files_only))
        return str(snapshot / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    loaded = armvision.from_pretrained("someone/arm-tiny", revision="v1", cache_dir=tmp_path / "cache")
    assert [c[1] for c in calls] == ["config.json", "model.safetensors"]
    assert calls[0][0] == "someone/arm-tiny" and calls[0][2] == "v1" and calls[0][3] == tmp_path / "cache"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(OSError, match=r"'nobody/no-such-arm-model' is not a local directory, and config.json could "
                                      r"not be fetched .* \(local cache only\)"):
        armvision.from_pretrained("nobody/no-such-arm-model", local_files_only=True, cache_dir=tmp_path / "hub")
    with pytest.raises(FileNotFoundError, match=r"no/such/dir/here: no such directory, and not a Hugging Face Hub"):
        armvision.from_pretrained("no/such/dir/here")
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a file; .* armvision\.load_official"):
        armvision.from_pretrained(tmp_path / "w.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="an armvision model directory holds config.json"):
        armvision.from_pretrained(tmp_path / "empty")
    with pytest.raises(TypeError, match="save_pretrained writes armvision ARM models"):
        armvision.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_saving_ema_weights_and_extra_config(tmp_path):
    model = armvision.create_model("arm_tiny_pz16", **SMALL)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    armvision.save_pretrained(model, tmp_path / "m", state_dict=ema, extra_config={"license": "apache-2.0"},
                              write_model_card=False)
    assert not (tmp_path / "m" / "README.md").exists()
    loaded = armvision.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.head.bias, ema["head.bias"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["license"] == "apache-2.0"
    assert isinstance(loaded, ARMClassifier) and not isinstance(loaded, ARMPretrain)
