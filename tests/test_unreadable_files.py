"""Unreadable images are reported as files, not skip events, by training (summary.json, the end-of-run
lines) and evaluation (``armvision eval`` printed and --output JSON, the training loop's validation), and
evaluation never scores the stand-ins that take their places."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from trainhelpers import CLASSES, as_flags, make_imagefolder, tiny_overrides

import armvision
from armvision.cli import main
from armvision.data import MAX_LISTED_FILES, build_dataset, eval_transform, make_loader, normalization
from armvision.data import unreadable_report
from armvision.train import config_to_dict, load_config, train
from armvision.train.evaluate import evaluate_classifier, evaluate_pretraining

NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n this is not an image"


def rel(root: Path, names) -> list[str]:
    return [Path(n).relative_to(root).as_posix() for n in names]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train: 6 images + circle/broken_0.png, circle/broken_1.png (8 files: 2 batches of 4, all read every
    epoch); val: 6 images + circle/broken.png, whose stand-in is square/000.png (label 1)."""
    root = make_imagefolder(tmp_path_factory.mktemp("unreadable") / "d", per_class={"train": 2, "val": 2}, corrupt=2)
    (root / "val" / "circle" / "broken.png").write_bytes(NOT_AN_IMAGE)
    return root


def test_unreadable_report_counts_distinct_files_and_caps_the_list():
    names = [f"f{i:03d}.png" for i in range(MAX_LISTED_FILES + 20)]
    report = unreadable_report(names[::-1] + names[:5])  # repeats and any order
    assert report["unreadable_files"] == MAX_LISTED_FILES + 20
    assert report["unreadable_file_names"] == names[:MAX_LISTED_FILES]
    assert unreadable_report([]) == {"unreadable_files": 0, "unreadable_file_names": []}


def test_training_reports_each_unreadable_file_once(tmp_path, data, capsys):
    out = tmp_path / "pre"
    over = tiny_overrides(data, out, "pretrain", **{"optim.batch_size": 4, "optim.epochs": 3})
    code = main(["pretrain", "--config", "fmnist_pretrain", *as_flags(over)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["epochs_completed"] == 3
    # two files, though read in every epoch: broken_0's sample passes over broken_0 and broken_1, broken_1's
    # over broken_1, 3 skip events per epoch
    assert summary["unreadable_files"] == 2
    assert rel(data, summary["unreadable_file_names"]) == ["train/circle/broken_0.png", "train/circle/broken_1.png"]
    assert summary["skipped_images"] == 9
    # the validation loss leaves the stand-in of val/circle/broken.png out: 6 images scored
    ev = summary["eval"]
    assert ev["images"] == 6 and ev["unreadable_files"] == 1
    assert rel(data, ev["unreadable_file_names"]) == ["val/circle/broken.png"]
    assert "ema_unreadable_files" not in ev
    b0, b1 = summary["unreadable_file_names"]
    assert f"training data: 2 unreadable file(s): {b0}, {b1}; other images took their places" in stdout
    assert f"validation data: 1 unreadable file(s): {ev['unreadable_file_names'][0]}; not scored" in stdout
    assert f"2 unreadable training file(s) were skipped (read 9 time(s) in all; other images took their places): " \
           f"{b0}, {b1}; summary.json lists them" in err
    assert "1 unreadable validation file(s) not scored" in err
    # the list survives a resume: it is in the checkpoint
    state = torch.load(out / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    assert state["unreadable_files"] == summary["unreadable_file_names"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and all(r["images"] == 6 and r["unreadable_files"] == 1 for r in evals)
    assert [r["unreadable_files"] for r in records if r["kind"] == "summary"] == [2]

    # armvision eval of the checkpoint: the same 6 images, the same loss as the run's last evaluation
    code = main(["eval", str(out / "checkpoints" / "latest"), "--output", str(tmp_path / "eval.json")])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["results"]["raw"]["images"] == 6
    assert result["results"]["raw"]["loss"] == pytest.approx(ev["loss"], rel=1e-6)
    assert result["unreadable_files"] == 1 and rel(data, result["unreadable_file_names"]) == ["val/circle/broken.png"]
    assert f"1 unreadable file(s): {result['unreadable_file_names'][0]}; not scored, not in the image count" in stdout


def test_a_resumed_run_keeps_the_files_of_its_first_part(tmp_path):
    """The list is in the checkpoint: files found unreadable before a resume stay reported after it, even
    when the second part no longer meets them (here: repaired in between)."""
    root = make_imagefolder(tmp_path / "d", per_class={"train": 2}, corrupt=2)
    over = tiny_overrides(root, tmp_path / "run", "pretrain", **{"optim.batch_size": 4, "optim.epochs": 2,
                                                                "data.val_split": None, "max_steps": 2})
    first = train(load_config("fmnist_pretrain", over, task="pretrain"))
    assert (first["steps"], first["unreadable_files"], first["skipped_images"]) == (2, 2, 3)
    for name in ("broken_0.png", "broken_1.png"):
        Image.new("RGB", (20, 20), (200, 30, 30)).save(root / "train" / "circle" / name)
    over.update({"max_steps": None, "resume": "auto"})
    rest = train(load_config("fmnist_pretrain", over, task="pretrain"))
    assert rest["steps"] == 4 and rest["skipped_images"] == 3
    assert rest["unreadable_files"] == 2 and rel(root, rest["unreadable_file_names"]) == \
        ["train/circle/broken_0.png", "train/circle/broken_1.png"]


def constant_classifier(root: Path, tmp_path: Path) -> Path:
    """A tiny classifier saved as a training checkpoint that predicts class 1 ("square") for every image."""
    torch.manual_seed(0)
    clf = armvision.create_model("arm_tiny_pz16", img_size=16, patch_size=4, in_chans=3, num_classes=3,
                                 embed_dim=32, depth=2, d_state=4)
    with torch.no_grad():
        clf.head.weight.zero_()
        clf.head.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    cfg = load_config("fmnist_finetune", tiny_overrides(root, tmp_path / "unused", "finetune"), task="finetune")
    armvision.save_model(clf, tmp_path / "clf", extra_config={"training": config_to_dict(cfg),
                                                              "classes": list(CLASSES)})
    return tmp_path / "clf"


def test_eval_leaves_the_stand_ins_out_of_accuracy_and_image_count(tmp_path, data, capsys):
    """val: 2 images per class + circle/broken.png, whose stand-in is square/000.png (label 1). A model that
    always says "square" is right on 2 of the 6 readable images (33.33 %); scoring the stand-in would give
    3 of 7 (42.86 %)."""
    model_dir = constant_classifier(data, tmp_path)
    code = main(["eval", str(model_dir), "--split", "val", "--output", str(tmp_path / "eval.json")])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    raw = result["results"]["raw"]
    assert raw["images"] == 6 and raw["top1"] == pytest.approx(100 / 3) and raw["top5"] == 100.0
    assert "unreadable_files" not in raw  # reported once, for the split
    assert result["unreadable_files"] == 1 and rel(data, result["unreadable_file_names"]) == ["val/circle/broken.png"]
    assert "33.33" in stdout and "1 unreadable file(s): " in stdout

    # the library functions, with loader workers (the names come from the worker processes)
    model = armvision.load_model(model_dir)
    ds = build_dataset("imagefolder", str(data), "val", eval_transform(16, *normalization("imagenet", 3)),
                       class_map={c: i for i, c in enumerate(CLASSES)})
    loader, _ = make_loader(ds, 4, train=False, workers=1, persistent_workers=False)
    got = evaluate_classifier(model, loader, torch.device("cpu"), "fp32")
    assert (got["images"], got["unreadable_files"]) == (6, 1) and got["top1"] == pytest.approx(100 / 3)
    assert got["unreadable_file_names"] == result["unreadable_file_names"]


def test_pretraining_eval_scores_only_readable_images(tmp_path, data):
    """The pretraining loss of a batch with a stand-in equals that of the batch without it."""
    torch.manual_seed(0)
    pre = armvision.create_model("arm_tiny_pz16", pretraining=True, img_size=16, patch_size=4, cluster_size=2,
                                 in_chans=3, decoder_dim=32, embed_dim=32, depth=2, d_state=4,
                                 memory_layers=(1, 2))
    ds = build_dataset("imagefolder", str(data), "val", eval_transform(16, *normalization("imagenet", 3)))
    loader, _ = make_loader(ds, len(ds), train=False)
    got = evaluate_pretraining(pre, loader, torch.device("cpu"), "fp32")
    images, _, skips = next(iter(loader))
    assert skips.standin.tolist() == [False, False, True] + [False] * 4  # circle/000, 001, broken, ...
    with torch.no_grad():
        pre.eval()
        expected = pre(images[~skips.standin]).item()
        with_standin = pre(images).item()
    assert got["images"] == 6 and got["loss"] == pytest.approx(expected, rel=1e-6)
    assert with_standin != pytest.approx(expected, rel=1e-6)  # the case can tell the two apart
    assert got["unreadable_files"] == 1


def test_frozen_feature_evaluation_leaves_the_stand_ins_out(data):
    """linprobe / knn extract the features of a split: the stand-in is not among them, the file is named."""
    from armvision.analysis import extract_dataset_features

    torch.manual_seed(0)
    clf = armvision.create_model("arm_tiny_pz16", img_size=16, patch_size=4, in_chans=3, num_classes=3,
                                 embed_dim=32, depth=2, d_state=4)
    ds = build_dataset("imagefolder", str(data), "val", eval_transform(16, *normalization("imagenet", 3)))
    fs = extract_dataset_features(clf, ds, batch_size=4)
    assert fs.features.shape == (6, 32) and fs.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert rel(data, fs.unreadable) == ["val/circle/broken.png"]


def test_gpu_decode_path_reports_files_the_device_cannot_decode(tmp_path):
    """data.decode gpu (run here on the CPU device): a file that starts like a JPEG but does not decode fails
    on the device, a garbage PNG in the worker; both are reported by name, each once."""
    root = make_imagefolder(tmp_path / "d", per_class={"train": 2})
    for p in sorted(root.rglob("*.png")):
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=90)
        p.unlink()
    (root / "train" / "circle" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    (root / "train" / "circle" / "y.png").write_bytes(NOT_AN_IMAGE)
    over = tiny_overrides(root, tmp_path / "run", "pretrain", **{"data.decode": "gpu", "data.val_split": None,
                                                                "eval_every_epochs": 0, "optim.batch_size": 4})
    summary = train(load_config("fmnist_pretrain", over, task="pretrain"))
    assert summary["steps"] == 4
    assert summary["unreadable_files"] == 2
    assert rel(root, summary["unreadable_file_names"]) == ["train/circle/x.jpg", "train/circle/y.png"]
    assert summary["skipped_images"] == 4  # each file once per epoch, 2 epochs
