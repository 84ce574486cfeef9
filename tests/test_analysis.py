"""armvision.analysis: linear probe, k-NN, visualize, predict (library and command line)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from trainhelpers import make_fake_fmnist

import armvision
from armvision.analysis import autoregressive_completion, knn_classify, linear_probe, one_step_prediction
from armvision.analysis.visualize import figure_size
from armvision.cli import main
from armvision.train import config_to_dict, load_config

TINY = dict(embed_dim=16, depth=2, d_state=4)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_linear_probe_separates_two_obvious_classes(seed):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = torch.arange(400) % 2
    x[:, 3] += 6.0 * (2 * y - 1)  # class 1 far along +e3, class 0 along -e3
    res = linear_probe(x[:300], y[:300], x[300:], y[300:], lrs=(0.01, 0.1), epochs=5, batch_size=64)
    assert res.best["test_top1"] == 100.0 and len(res.sweep) == 2 and res.selection == "held-out"
    assert {e["lr"] for e in res.sweep} == {0.01, 0.1}
    noise = linear_probe(torch.randn(300, 8), y[:300], torch.randn(100, 8), y[300:], lrs=(0.1,), epochs=3)
    assert noise.best["test_top1"] < 75  # nothing to learn from noise: the probe does not leak labels


def test_knn_on_one_hot_labels_is_exact():
    y = torch.arange(200) % 7
    onehot = torch.nn.functional.one_hot(y, 7).float()
    res = knn_classify(onehot[:150], y[:150], onehot[150:], y[150:], k=20, temperature=0.07)
    assert res.top1 == 100.0 and res.top5 == 100.0 and res.k == 20
    shuffled = knn_classify(onehot[:150], y[:150][torch.randperm(150)], onehot[150:], y[150:], k=20)
    assert shuffled.top1 < 60


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny pretraining model and classifier saved as training checkpoints (config with training + classes)."""
    root = tmp_path_factory.mktemp("an")
    data = make_fake_fmnist(root / "fm", n_train=30, n_test=20)
    torch.manual_seed(0)
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=16, patch_size=4, cluster_size=2,
                                 in_chans=1, decoder_dim=32, memory_layers=(1, 2), **TINY)
    pre_cfg = load_config("fmnist_pretrain", {"data.root": str(data), "model.img_size": 16})
    armvision.save_model(pre, root / "pre", extra_config={"training": config_to_dict(pre_cfg), "classes": None})
    clf = armvision.create_model("arm_tiny_pz16", img_size=16, patch_size=4, in_chans=1, num_classes=10, **TINY)
    ft_cfg = load_config("fmnist_finetune", {"data.root": str(data), "model.img_size": 16, "data.train_subset": None})
    armvision.save_model(clf, root / "ft", extra_config={"training": config_to_dict(ft_cfg), "classes": CLASSES})
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(28, 28), (40, 30), (16, 16)]):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(imgs / f"im{i}.png")
    return {"root": root, "pre": root / "pre", "ft": root / "ft", "imgs": imgs, "data": data}


def test_completion_with_an_oracle_reproduces_the_input(setup):
    for order in ("row", "random"):
        m = armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=16, patch_size=4, cluster_size=1,
                                   in_chans=1, decoder_dim=32, memory_layers=(1, 2), cluster_order=order, **TINY)
        x = torch.randn(2, 1, 16, 16)
        seen = []

        def oracle(canvas):
            seen.append(canvas.clone())
            return m.targets(x)

        out = autoregressive_completion(m, x, stats="gt", predictor=oracle)
        assert torch.allclose(out, x, atol=1e-5)
        assert len(seen) == m.geometry.num_clusters - 1
        # the first call sees only the first cluster: everything else of the canvas is zero
        first = m.patchify(seen[0])[:, m.cluster_order[1:]]
        assert first.abs().max() == 0
    raw = armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=16, patch_size=4, cluster_size=2,
                                 in_chans=1, decoder_dim=32, memory_layers=(1, 2), target="pix", **TINY)
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(autoregressive_completion(raw, x, predictor=lambda c: raw.targets(x)), x)
    pred, target = one_step_prediction(raw, x)
    assert pred.shape == target.shape == x.shape


def test_visualize_writes_pngs_of_the_expected_size(setup, capsys, tmp_path):
    code, out, err = run_cli(["visualize", setup["pre"], setup["imgs"], "--output", tmp_path / "vis",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "vis").iterdir())
    assert names == ["grid.png", "im0.png", "im1.png", "im2.png"]
    for name, rows in (("im1.png", 1), ("grid.png", 3)):
        with Image.open(tmp_path / "vis" / name) as im:
            assert im.format == "PNG" and im.size == figure_size(rows)
            assert np.asarray(im.convert("L")).std() > 0  # not blank


def test_predict_prints_class_names(setup, capsys):
    code, out, err = run_cli(["predict", setup["ft"], setup["imgs"], "--device", "cpu"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split()[:2] == ["image", "top-1"]
    assert all(any(c in line for c in CLASSES) for line in lines[1:])
    code, out, _ = run_cli(["predict", setup["ft"], setup["imgs"] / "im0.png", "--format", "json", "--topk", "3"],
                           capsys)
    rows = json.loads(out)
    assert len(rows) == 1 and len(rows[0]["top"]) == 3 and rows[0]["top"][0]["class"] in CLASSES
    assert abs(sum(t["prob"] for t in rows[0]["top"])) <= 1.0 + 1e-6
    code, out, _ = run_cli(["predict", setup["ft"], setup["imgs"], "--format", "csv"], capsys)
    assert out.splitlines()[0].startswith("file,class1,prob1") and len(out.splitlines()) == 4


def test_linprobe_and_knn_commands(setup, capsys, tmp_path):
    code, out, err = run_cli(["knn", setup["pre"], "--output", tmp_path / "knn.json", "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "knn.json").read_text())
    assert res["train_images"] == 30 and res["test_images"] == 20 and res["knn"]["k"] == 20
    assert "k-NN (k=20, T=0.07)" in out
    code, out, err = run_cli(["linprobe", setup["ft"], "--lrs", "0.1", "1.0", "--epochs", "2", "--output",
                              tmp_path / "lp.json", "--data.val_subset", "10"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "lp.json").read_text())
    assert res["architecture"] == "ARMClassifier" and res["test_images"] == 10
    assert [e["lr"] for e in res["linear_probe"]["sweep"]] == [0.1, 1.0] and "best:" in out
    assert "linear probe lr sweep" not in err and "features " not in err and "\r" not in err  # no bars: not a tty


def test_token_features_are_the_normed_token_map_flattened(setup, capsys, tmp_path):
    """--features tokens: the last block's normed tokens, (patches x width) values per image, whose mean over the
    patches is the pooled feature (for a pretraining model both come from the last memory norm)."""
    from armvision.analysis import data_setup, extract_dataset_features, load_for_analysis
    from armvision.analysis.features import open_split

    loaded = load_for_analysis(setup["pre"])
    cfg = data_setup(loaded.training)
    ds = open_split(loaded.model, cfg, "test", 6)
    pooled = extract_dataset_features(loaded.model, ds)
    tokens = extract_dataset_features(loaded.model, ds, features="tokens")
    patches = loaded.model.geometry.num_patches
    assert tokens.features.shape == (6, patches * 16) and torch.equal(tokens.labels, pooled.labels)
    assert torch.allclose(tokens.features.view(6, patches, 16).mean(1), pooled.features, atol=1e-5)
    code, out, err = run_cli(["knn", setup["pre"], "--features", "tokens", "--k", "3", "--output",
                              tmp_path / "k.json", "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "k.json").read_text())
    assert res["features"] == "tokens" and res["feature_dim"] == patches * 16
    code, out, err = run_cli(["linprobe", setup["ft"], "--features", "tokens", "--lrs", "0.1", "--epochs", "1",
                              "--output", tmp_path / "lp.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "lp.json").read_text())["feature_dim"] == (16 // 4) ** 2 * 16
    with pytest.raises(Exception, match="features 'cls': choose pooled or tokens"):
        extract_dataset_features(loaded.model, ds, features="cls")


@pytest.mark.parametrize("args,message", [
    (["linprobe", "{root}/missing"], "does not exist"),
    (["visualize", "{ft}", "{imgs}", "--output", "{root}/v"], "visualize needs a pretraining checkpoint"),
    (["predict", "{pre}", "{imgs}"], "predict needs a fine-tuned classifier"),
    (["predict", "{ft}", "{root}/fm"], "no images found"),
    (["knn", "{pre}", "--optim.lr", "1"], "only data keys"),
    # outputs that cannot be written are refused before any work (a file where a folder should be)
    (["knn", "{pre}", "--output", "{pre}/config.json/k.json"], "is a file, not a directory; nothing was evaluated"),
    (["visualize", "{pre}", "{imgs}", "--output", "{pre}/config.json"], "is an existing file; choose a directory"),
    (["extract", "{pre}", "{imgs}", "{pre}/config.json/f.npy"], "is a file, not a directory; nothing was extracted"),
    (["export", "{pre}", "{pre}/config.json"], "OUT_DIR {pre}/config.json is an existing file"),
])
def test_error_paths_are_one_line(setup, capsys, args, message):
    args = [a.format(**setup) for a in args]
    message = message.format(**setup)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith(f"armvision {args[0]}: error:") and message in err and len(err.strip().splitlines()) == 1


def test_knn_of_an_official_pretraining_checkpoint(setup, capsys, tmp_path):
    """An official .pth (no training config): the data comes from the flags; grayscale images become RGB."""
    from official_reference import make_official_pretrain_state_dict, official_pickle

    sd = make_official_pretrain_state_dict(embed_dim=32, depth=12, d_state=8, dec_dim=64, patch=2, grid=12, seed=8)
    path = tmp_path / "arm_pre.pth"
    torch.save(official_pickle(sd, "pretraining"), path)
    code, out, err = run_cli(["knn", path, "--data.dataset", "fashion_mnist", "--data.root", setup["data"],
                              "--k", "5", "--output", tmp_path / "k.json"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "k.json").read_text())
    assert res["architecture"] == "ARMPretrain" and res["feature_dim"] == 32 and res["knn"]["k"] == 5
    assert res["train_images"] == 30 and res["test_images"] == 20


@pytest.mark.parametrize("args, message", [
    (["knn", "x", "--k", "0"], "argument --k: must be at least 1, got 0"),
    (["knn", "x", "--temperature", "-1"], "argument --temperature: must be greater than 0"),
    (["linprobe", "x", "--holdout", "1.5"], "argument --holdout: must be at least 0 and below 1"),
    (["linprobe", "x", "--lrs", "0.1", "zero"], "argument --lrs: expected a number"),
    (["knn", "x", "--features", "cls"], "argument --features: invalid choice: 'cls'"),
])
def test_bad_numbers_are_refused_before_any_work(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["linprobe", "x", "--weight-decay", "-1"], "argument --weight-decay: must be at least 0, got -1"),
    (["linprobe", "x", "--lrs", "inf"], "argument --lrs: must be a finite number, got inf"),
    (["linprobe", "x", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["knn", "x", "--workers", "-2"], "argument --workers: must be at least 0, got -2"),
    (["visualize", "x", "y", "--output", "o", "--max-grid", "0"], "argument --max-grid: must be at least 1, got 0"),
    (["predict", "x", "y", "--topk", "-1"], "argument --topk: must be at least 1, got -1"),
    (["predict", "x", "y", "--topk", "0"], "argument --topk: must be at least 1, got 0"),
    (["predict", "x", "y", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["predict", "x", "y", "--batch-size", "-5"], "argument --batch-size: must be at least 1, got -5"),
    (["convert", "--as-classifier", "a", "b", "--num-classes", "-3"], "argument --num-classes: must be at least 1"),
    (["convert", "--as-classifier", "a", "b", "--img-size", "0"], "argument --img-size: must be at least 1, got 0"),
    (["extract", "m", "i", "o.npy", "--img-size", "0"], "argument --img-size: must be at least 1, got 0"),
    (["extract", "m", "i", "o.npy", "--img-size", "-7"], "argument --img-size: must be at least 1, got -7"),
    (["extract", "m", "i", "o.npy", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["eval", "c", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["demo", "--workers", "-1"], "argument --workers: must be at least 0, got -1"),
])
def test_every_commands_numbers_are_range_checked_by_the_parser(capsys, args, message):
    """Refused by argparse before anything is loaded: the arguments name files that do not exist."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([x for x in err.splitlines() if ": error: " in x]) == 1


@pytest.mark.parametrize("where, message", [
    ("under_file", "DEST {dest}: {pre}/config.json is a file, not a directory"),
    ("at_file", "DEST {dest} is an existing file; choose a directory"),
    ("read_only", "cannot write in the output directory {dest}: permission denied"),
])
def test_convert_checks_its_destination_before_any_work(setup, capsys, tmp_path, where, message, monkeypatch):
    from pathlib import Path

    dest = {"under_file": setup["pre"] / "config.json" / "out", "at_file": setup["pre"] / "config.json",
            "read_only": tmp_path / "ro" / "out"}[where]
    if where == "read_only":
        import errno

        real = Path.write_bytes

        def denied(self, data):
            if self.name.startswith(".write-test"):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", denied)
    # the source does not exist: a check made after the work began would say so instead
    code, _, err = run_cli(["convert", "--as-classifier", tmp_path / "missing.pth", dest], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("armvision convert: error: ") and message.format(dest=dest, **setup) in err, err


def test_knn_with_k_above_the_training_images_says_the_k_it_used(setup, capsys, tmp_path):
    code, out, err = run_cli(["knn", setup["pre"], "--k", "100000", "--output", tmp_path / "k.json"], capsys)
    assert code == 0, err
    assert "--k 100000 is more than the 30 training images: every one votes (k=30)" in err
    assert "features " not in err and "\r" not in err  # stderr is not a terminal: no progress bars
    assert "k-NN (k=30, T=0.07)" in out and json.loads((tmp_path / "k.json").read_text())["knn"]["k"] == 30


@pytest.mark.parametrize("command", ["predict", "visualize"])
def test_predict_and_visualize_skip_and_name_unreadable_files(setup, capsys, tmp_path, command):
    import shutil

    imgs = tmp_path / "imgs"
    shutil.copytree(setup["imgs"], imgs)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (imgs / "empty.jpg").write_bytes(b"")
    args = ([command, setup["ft"], imgs] if command == "predict"
            else [command, setup["pre"], imgs, "--output", tmp_path / "vis"])
    code, out, err = run_cli(args + ["--device", "cpu"], capsys)
    assert code == 0, err
    assert f"armvision {command}: warning: skipping unreadable image {imgs / 'broken.png'}: " in err
    assert f"armvision {command}: warning: skipping unreadable image {imgs / 'empty.jpg'}: " in err
    assert f"armvision {command}: 2 unreadable image(s) skipped" in err
    if command == "predict":
        assert [line.split()[0] for line in out.strip().splitlines()[1:]] == [str(imgs / f"im{i}.png") for i in range(3)]
    else:
        assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["grid.png", "im0.png", "im1.png", "im2.png"]
    # nothing readable: one line
    code, _, err = run_cli(args[:2] + [imgs / "broken.png"] + args[3:], capsys)
    assert code == 2 and err.splitlines()[-1] == (f"armvision {command}: error: none of the 1 image(s) could be read (see the "
                                                  "warnings above); pass readable image files")
