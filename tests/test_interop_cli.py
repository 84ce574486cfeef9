"""``armvision convert`` and ``armvision extract`` end to end (in process)."""

import datetime
import hashlib
import json

import numpy as np
import pytest
import torch
from official_reference import make_official_finetune_state_dict, make_official_pretrain_state_dict, official_pickle
from PIL import Image
from safetensors import safe_open

import armvision
from armvision.cli import main
from armvision.data import model_eval_transform
from armvision.interop.official import safe_torch_load
from armvision.weights import read_config


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    sd = make_official_finetune_state_dict(embed_dim=32, depth=2, d_state=8, patch=4, grid=8, num_classes=10, seed=7)
    path = tmp_path_factory.mktemp("ft") / "arm_ft.pth"
    torch.save(official_pickle(sd, "finetuning"), path)
    return sd, path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of small images, nested, with an unreadable one and a non-image file."""
    root = tmp_path_factory.mktemp("imgs")
    (root / "b").mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"b/cat.png": (40, 60), "a.jpg": (50, 50), "b/dog.JPEG": (64, 48), "c.bmp": (33, 70)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def test_convert_official_to_model_dir(tmp_path, ft, capsys):
    sd, path = ft
    assert main(["convert", str(path), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    model = armvision.from_pretrained(tmp_path / "out")
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    provenance = read_config(tmp_path / "out")["converted_from"]
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["state_dict"] == "model_ema" and provenance["epoch"] == 99 and provenance["kind"] == "finetuning"
    assert provenance["args"]["global_pool"] is True
    assert "## Provenance" in (tmp_path / "out" / "README.md").read_text()


def test_convert_back_to_official_is_bit_exact(tmp_path, ft):
    sd, path = ft
    assert main(["convert", str(path), str(tmp_path / "out")]) == 0
    assert main(["convert", "--to-official", str(tmp_path / "out"), str(tmp_path / "back.pth")]) == 0
    back = safe_torch_load(tmp_path / "back.pth")["model"]
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def test_convert_pretraining_checkpoint_as_classifier(tmp_path, capsys):
    psd = make_official_pretrain_state_dict(embed_dim=32, depth=12, d_state=8, dec_dim=64, patch=2, grid=12, seed=8)
    path = tmp_path / "pre.pth"
    torch.save(official_pickle(psd, "pretraining"), path)
    assert main(["convert", str(path), str(tmp_path / "pre")]) == 0
    assert isinstance(armvision.from_pretrained(tmp_path / "pre"), armvision.ARMPretrain)
    assert main(["convert", "--as-classifier", "--num-classes", "3", "--img-size", "32", str(path),
                 str(tmp_path / "clf")]) == 0
    clf = armvision.from_pretrained(tmp_path / "clf")
    assert isinstance(clf, armvision.ARMClassifier) and clf.num_classes == 3 and clf.config["img_size"] == (32, 32)
    assert torch.equal(clf.layers[5].mixer.x_proj_c_b.weight, psd["layers.5.mixer.x_proj.weight"])
    assert read_config(tmp_path / "clf")["converted_from"]["initialised_classifier"] is True
    # the official layout refuses this small geometry unless asked
    capsys.readouterr()
    assert main(["convert", "--to-official", str(tmp_path / "pre"), str(tmp_path / "p.pth")]) == 2
    assert "clusters of 4x4" not in capsys.readouterr().err  # 9 clusters of 4x4 is fine; the patch values are not
    assert main(["convert", "--to-official", "--no-strict", str(tmp_path / "pre"), str(tmp_path / "p.pth")]) == 0
    assert torch.equal(safe_torch_load(tmp_path / "p.pth")["model"]["mask"], psd["mask"])


def test_convert_errors(tmp_path, ft, capsys):
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    assert main(["convert", str(tmp_path / "bad.pth"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("armvision convert: error: ") and "bad.pth: cannot read a PyTorch checkpoint" in err
    assert main(["convert", "--as-classifier", str(ft[1]), str(tmp_path / "o")]) == 2
    assert "is a fine-tuning checkpoint; --as-classifier starts a classifier" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "o")]) == 2
    assert "none.pth: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a pickle holding an object outside the allow-list: refused, unless the user trusts that class
    torch.save(official_pickle(ft[0], "finetuning", saved_at=datetime.date(2024, 6, 1)), tmp_path / "dated.pth")
    assert main(["convert", str(tmp_path / "dated.pth"), str(tmp_path / "o")]) == 2
    assert "outside armvision's allow-list: datetime.date" in capsys.readouterr().err
    assert main(["convert", "--trust-global", "datetime.date", str(tmp_path / "dated.pth"), str(tmp_path / "o")]) == 0
    assert main(["convert", "--trust-global", "datetime.nothing", str(tmp_path / "dated.pth"), str(tmp_path / "o")]) == 2
    assert "--trust-global datetime.nothing: no such class" in capsys.readouterr().err


def test_extract_writes_features_file_list_and_skipped(tmp_path, ft, images, capsys):
    out = tmp_path / "feats.safetensors"
    assert main(["extract", str(ft[1]), str(images), str(out), "--layers", "0", "-1", "--img-size", "48",
                 "--batch-size", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "skipping unreadable image b/broken.png" in captured.err
    files = (tmp_path / "feats.files.txt").read_text().splitlines()
    assert files == ["a.jpg", "b/cat.png", "b/dog.JPEG", "c.bmp"]
    assert (tmp_path / "feats.skipped.txt").read_text().startswith("b/broken.png\t")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert tensors["pooled"].shape == (4, 32)
    assert tensors["layer0"].shape == tensors["layer1"].shape == (4, 12, 12, 32)
    assert json.loads(meta["input_size"]) == [3, 48, 48] and meta["files"] == "feats.files.txt"
    # row i is the features of files[i], as the library computes them
    model = armvision.load_official(ft[1], dynamic_img_size=True).eval()
    model.reset_classifier(0)
    with Image.open(images / "b" / "dog.JPEG") as im:
        x = model_eval_transform(model, 48)(im.convert("RGB"))[None]
    with torch.no_grad():
        expected = armvision.extract_features(model, x, layers=[0, 1])
    assert torch.allclose(tensors["pooled"][2], expected.pooled[0], atol=1e-5)
    assert torch.allclose(tensors["layer1"][2], expected.maps[1][0], atol=1e-5)


def test_extract_npy_and_model_by_name(tmp_path, ft, images, capsys):
    out = tmp_path / "f.npy"
    assert main(["extract", "arm_tiny_pz16", str(images), str(out), "--weights", str(ft[1]), "--layers", "1",
                 "--quiet", "--dtype", "float16", "--model-kwargs", "img_size=32", "patch_size=4", "embed_dim=32",
                 "depth=2", "d_state=8"]) == 0
    pooled, maps = np.load(out), np.load(tmp_path / "f.layer1.npy")
    assert pooled.shape == (4, 32) and pooled.dtype == np.float16 and maps.shape == (4, 8, 8, 32)
    model = armvision.load_official(ft[1]).eval()
    with Image.open(images / "a.jpg") as im:
        x = model_eval_transform(model)(im.convert("RGB"))[None]
    with torch.no_grad():
        expected = armvision.extract_features(model, x).pooled[0]
    assert torch.allclose(torch.from_numpy(pooled[0]).float(), expected, atol=2e-3)
    capsys.readouterr()
    assert main(["extract", "arm_tiny_pz16", str(images), str(out), "--model-kwargs", "img_size"]) == 2
    assert "--model-kwargs takes KEY=VALUE items, got 'img_size'" in capsys.readouterr().err


def test_extract_pretraining_model(tmp_path, images):
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=32, patch_size=4, cluster_size=2,
                                 embed_dim=32, depth=6, decoder_dim=64)
    armvision.save_pretrained(pre, tmp_path / "pre")
    out = tmp_path / "p.safetensors"
    assert main(["extract", str(tmp_path / "pre"), str(images), str(out), "--layers", "-1", "--quiet"]) == 0
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("layer5").shape == (4, 8, 8, 32) and f.metadata()["pooled"] == "mean of patch tokens"
    assert main(["extract", str(tmp_path / "pre"), str(images), str(out), "--as-classifier", "--quiet",
                 "--img-size", "48"]) == 0
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("pooled").shape == (4, 32)


def test_extract_errors(tmp_path, ft, images, capsys):
    assert main(["extract", str(ft[1]), str(images), str(tmp_path / "x.safetensors"), "--strict-images",
                 "--quiet"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["extract", str(ft[1]), str(images), str(tmp_path / "x.csv")]) == 2
    assert "must end in .safetensors or .npy" in capsys.readouterr().err
    assert main(["extract", str(ft[1]), str(tmp_path / "nothing"), str(tmp_path / "x.npy")]) == 2
    assert "no such image folder" in capsys.readouterr().err
    assert main(["extract", "arm_nonexistent", str(images), str(tmp_path / "x.npy")]) == 2
    assert "not a model directory, a checkpoint file, or a model name" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["extract", str(ft[1]), str(tmp_path / "empty"), str(tmp_path / "x.npy")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["extract", str(ft[1]), str(images), str(tmp_path / "x.npy"), "--device", "gpu7"]) == 2
    assert capsys.readouterr().err.startswith("armvision extract: error: --device gpu7: ")
    if not torch.cuda.is_available():
        assert main(["extract", str(ft[1]), str(images), str(tmp_path / "x.npy"), "--device", "cuda"]) == 2
        assert "no CUDA GPU is available; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()
