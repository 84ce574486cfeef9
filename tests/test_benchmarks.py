"""Robustness benchmarks (armvision eval --benchmark): ImageNet-A / -R / -Sketch / -V2 and ImageNet val folder
layouts, labels mapped to a 1000-class head, a table with a row per model.

The classifier here predicts one fixed class (its head's weights zero, its bias one-hot), so every accuracy is
known exactly from the folders: it tests the label mapping, not the network."""

import json
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from armvision.cli import main
from armvision.data.benchmarks import benchmark_folders, benchmark_labels, imagenet_subset_indices, imagenet_synsets
from armvision.errors import DataError
from armvision.models import ARMClassifier
from armvision.models.io import save_model
from armvision.train.evaluate import evaluate_benchmarks

FAST = {"data.workers": 0}


def timm_list(name):  # the installed timm's own files, read here independently of armvision
    return resources.files("timm.data").joinpath("_info", name).read_text().split()


STANDARD = timm_list("imagenet_synsets.txt")
A_SYNSETS, R_SYNSETS = timm_list("imagenet_a_synsets.txt"), timm_list("imagenet_r_synsets.txt")


def make_folders(root, counts: dict[str, int]):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def fixed_classifier(path, predicted: dict[int, float], classes=None):
    """A 1000-class classifier whose logits are the bias ``predicted`` (column -> value, 0 elsewhere)."""
    torch.manual_seed(0)
    model = ARMClassifier(img_size=16, patch_size=8, embed_dim=16, depth=1, d_state=4, num_classes=1000)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        for column, value in predicted.items():
            model.head.bias[column] = value
    save_model(model, path, extra_config={"classes": classes} if classes else None)
    return path


def test_timms_lists_are_read_from_the_installed_timm():
    assert imagenet_synsets() == tuple(STANDARD) and len(STANDARD) == 1000
    assert imagenet_synsets("imagenet_a") == tuple(A_SYNSETS) and len(A_SYNSETS) == 200
    assert imagenet_subset_indices("imagenet_r") == tuple(int(i) for i in timm_list("imagenet_r_indices.txt"))


def test_imagenet_a_scores_only_its_200_classes(tmp_path):
    a0, a1 = A_SYNSETS[0], A_SYNSETS[7]
    root = make_folders(tmp_path / "imagenet-a", {a0: 3, a1: 1})
    folders = benchmark_folders("imagenet-a", root)
    class_map, columns = benchmark_labels("imagenet-a", folders, None, 1000)
    assert class_map == {a0: 0, a1: 7} and columns == [STANDARD.index(w) for w in A_SYNSETS]
    # tench (column 0) is not an ImageNet-A class: its larger logit is not scored, a0's is the best of the 200
    assert STANDARD[0] not in A_SYNSETS
    model = fixed_classifier(tmp_path / "m", {0: 20.0, STANDARD.index(a0): 10.0})
    out = evaluate_benchmarks(model, {"imagenet-a": root}, FAST, batch_size=3)
    r = out["rows"][0]["results"]["imagenet-a"]
    assert (r["top1"], r["images"], r["classes"], r["logits"]) == (75.0, 4, 2, 200)


def test_imagenet_r_and_a_classifier_with_its_own_class_order(tmp_path):
    r0, r1 = R_SYNSETS[3], R_SYNSETS[100]
    root = make_folders(tmp_path / "imagenet-r", {r0: 1, r1: 1})
    own = list(reversed(STANDARD))  # a head whose classes are in another order: columns follow its names
    model = fixed_classifier(tmp_path / "m", {own.index(r1): 5.0}, classes=own)
    class_map, columns = benchmark_labels("imagenet-r", benchmark_folders("imagenet-r", root), own, 1000)
    assert class_map == {r0: 3, r1: 100} and columns[100] == own.index(r1) == 999 - STANDARD.index(r1)
    out = evaluate_benchmarks(model, {"imagenet-r": root}, FAST)
    assert out["rows"][0]["results"]["imagenet-r"]["top1"] == 50.0


def test_imagenet_v2_folders_are_class_indices_not_names_to_sort(tmp_path):
    root = make_folders(tmp_path / "v2", {"0": 2, "2": 3, "10": 1})
    class_map, columns = benchmark_labels("imagenet-v2", benchmark_folders("imagenet-v2", root), None, 1000)
    assert class_map == {"0": 0, "2": 2, "10": 10} and columns is None
    model = fixed_classifier(tmp_path / "m", {10: 1.0})
    out = evaluate_benchmarks(model, {"imagenet-v2": root}, FAST)
    assert out["rows"][0]["results"]["imagenet-v2"]["top1"] == pytest.approx(100 / 6)


def test_sketch_and_imagenet_val_in_one_table_with_a_row_per_model(tmp_path, capsys):
    sketch = make_folders(tmp_path / "sketch", {STANDARD[5]: 3, STANDARD[7]: 1})
    val = make_folders(tmp_path / "val", {STANDARD[7]: 2, STANDARD[9]: 2})
    m1 = fixed_classifier(tmp_path / "m1", {7: 1.0})
    m2 = fixed_classifier(tmp_path / "m2", {5: 1.0})
    code = main(["eval", str(m1), str(m2), "--benchmark", f"imagenet-sketch={sketch}", "--benchmark",
                 f"imagenet={val}", "--data.workers", "0", "--output", str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:4] == ["| model | IN-1k | IN-Sketch |", "|---|---:|---:|", f"| {m1} | 50.00 | 25.00 |",
                         f"| {m2} | 0.00 | 75.00 |"]
    assert "top-1 accuracy (%)" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["benchmarks"]["imagenet-sketch"] == {"title": "ImageNet-Sketch", "root": str(sketch), "classes": 2}
    assert [r["results"]["imagenet"]["top1"] for r in saved["rows"]] == [50.0, 0.0]


@pytest.mark.parametrize("bench,layout,message", [
    ("imagenet-v2", {A_SYNSETS[0]: 1}, r"ImageNet-V2 folder .* has class folders n\d{8} \(these are synset folders: "
                                       r"ImageNet-V2's are class indices\); expected .*/0/<image> \(1000 class folders "
                                       r"named 0 to 999"),
    ("imagenet-a", {R_SYNSETS[0]: 1}, r"has class folders n01443537, not among ImageNet-A's 200 classes; expected "
                                      r".*/n01498041/<image> \(the 200 class folders of ImageNet-A\)"),
    ("imagenet-sketch", {"3": 1}, r"\(these are class-index folders, ImageNet-V2's layout\); expected .*1000 class "
                                  r"folders named by ImageNet synset"),
    ("imagenet-v2", {"1000": 1}, r"has class folders 1000; expected class indices 0 to 999"),
    ("imagenet-r", {}, r"holds no class folders; expected .*/n01443537/<image>"),
])
def test_a_wrong_layout_names_what_was_expected(tmp_path, bench, layout, message):
    root = make_folders(tmp_path / "data", layout)
    root.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        benchmark_folders(bench, root)


def test_a_parent_folder_is_pointed_to_its_child_and_missing_folders_and_images_are_named(tmp_path, capsys):
    make_folders(tmp_path / "downloads" / "imagenet-a", {A_SYNSETS[0]: 1})
    with pytest.raises(DataError, match=r"did you mean .*downloads/imagenet-a\?"):
        benchmark_folders("imagenet-a", tmp_path / "downloads")
    with pytest.raises(DataError, match=r"ImageNet-A folder .*/nowhere does not exist; expected .*/nowhere/n01498041"):
        benchmark_folders("imagenet-a", tmp_path / "nowhere")
    (tmp_path / "empty" / A_SYNSETS[0]).mkdir(parents=True)
    model = fixed_classifier(tmp_path / "m", {0: 1.0})
    code = main(["eval", str(model), "--benchmark", f"imagenet-a={tmp_path / 'empty'}", "--data.workers", "0"])
    last = capsys.readouterr().err.splitlines()[-1]  # after the warning that 1 of the 200 classes is there
    assert code == 2 and last.startswith("armvision eval: error: ImageNet-A folder") and "holds no images in" in last


def test_a_classifier_of_other_classes_and_bad_flags_get_one_line(tmp_path, capsys):
    root = make_folders(tmp_path / "a", {A_SYNSETS[0]: 1})
    model = ARMClassifier(img_size=16, patch_size=8, embed_dim=16, depth=1, d_state=4, num_classes=10)
    save_model(model, tmp_path / "m10")
    cases = [
        (["eval", str(tmp_path / "m10"), "--benchmark", f"imagenet-a={root}"],
         "ImageNet-A needs a classifier of the 1000 ImageNet classes; this one predicts 10 classes"),
        (["eval", str(tmp_path / "m10"), "--benchmark", f"imagenet-b={root}"],
         "unknown benchmark 'imagenet-b'; expected one of imagenet, imagenet-a, imagenet-r, imagenet-sketch, "
         "imagenet-v2"),
        (["eval", str(tmp_path / "m10"), "--benchmark", "imagenet-a"], "--benchmark imagenet-a: no folder"),
        (["eval", str(tmp_path / "m10"), "--benchmark", f"imagenet-a={root}", "--split", "val"],
         "--split and --benchmark exclude each other"),
        (["eval", str(tmp_path / "m10"), str(tmp_path / "m10")], "several are evaluated together only with "
                                                                   "--benchmark"),
    ]
    for argv, message in cases:
        code = main(argv + ["--data.workers", "0"])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("armvision eval: error: ")]
        assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (argv, err)
