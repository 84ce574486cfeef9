"""Every study script end to end at --scale tiny (CPU, a fake Fashion-MNIST), sharing one state folder as the
studies share jobs; a second invocation runs nothing again."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from trainhelpers import make_fake_fmnist

EXP = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    data = make_fake_fmnist(root / "fm", n_train=48, n_test=32)
    sys.path.insert(0, str(EXP))
    yield {"state": root / "state", "data": data}
    sys.path.remove(str(EXP))


def run_study(name, env):
    mod = importlib.import_module(name)
    study = mod.main(["--scale", "tiny", "--state", str(env["state"]), "--data-root", str(env["data"])])
    out = env["state"] / "results"
    assert json.loads((out / f"{name}.json").read_text())["rows"] == json.loads(json.dumps(study["rows"]))
    with Image.open(out / f"{name}.png") as im:
        assert im.format == "PNG"
    return study


def test_study1(env):
    study = run_study("study1_pretraining", env)
    assert [r["condition"] for r in study["rows"]] == [
        "ARM pretrained, Mamba-style wd", "ARM pretrained, reference wd", "random init (scratch), Mamba-style wd",
        "random init (scratch), reference wd", "raw pixels, no network"]
    for row in study["rows"]:
        for m in ("ft_top1", "linprobe", "knn"):
            assert row[m]["n"] == 1 and 0 <= row[m]["mean"] <= 100
    jobs = sorted((env["state"] / "results" / "jobs").glob("*.json"))
    # the Mamba-style rule's keys are those of the jobs run before the rule was a choice; the reference's are tagged
    assert [p.stem for p in jobs] == ["baseline-pixels-s0", "ft-cs2-row-norm_pix-s0-f1",
                                      "ft-cs2-row-norm_pix-wdref-s0-f1", "ft-scratch-s0", "ft-scratch-wdref-s0",
                                      "pre-cs2-row-norm_pix-s0",
                                      "pre-cs2-row-norm_pix-wdref-s0", "probe-cs2-row-norm_pix-s0-f1",
                                      "probe-cs2-row-norm_pix-wdref-s0-f1", "probe-random-cs2-row-norm_pix-s0"]
    runs = env["state"] / "runs"
    for key, rule in (("pre-cs2-row-norm_pix-s0", "mamba"), ("pre-cs2-row-norm_pix-wdref-s0", "reference"),
                      ("ft-scratch-s0", "mamba"), ("ft-cs2-row-norm_pix-wdref-s0-f1", "reference")):
        assert yaml.safe_load((runs / key / "config.yaml").read_text())["optim"]["no_decay"] == rule
        assert json.loads((env["state"] / "results" / "jobs" / f"{key}.json").read_text())["no_decay"] == rule
    before = {p: p.stat().st_mtime_ns for p in jobs}
    run_study("study1_pretraining", env)  # resumable: everything is done, nothing runs again
    assert {p: p.stat().st_mtime_ns for p in jobs} == before


def test_study6_vim(env):
    study = run_study("study6_vim", env)
    assert [r["condition"] for r in study["rows"]] == [
        "Vim: ARM pretrained", "Vim: random init (scratch)", "MambaMLP (study 1): ARM pretrained",
        "MambaMLP (study 1): random init (scratch)", "raw pixels, no network"]
    for row in study["rows"]:
        for m in ("ft_top1", "linprobe", "knn"):
            assert row[m]["n"] == 1 and 0 <= row[m]["mean"] <= 100
    jobs = env["state"] / "results" / "jobs"
    runs = env["state"] / "runs"
    vim = sorted(p.stem for p in jobs.glob("*vim*.json"))
    assert vim == ["ft-vim-cs2-row-norm_pix-wdref-s0-f1", "ft-vim-scratch-wdref-s0", "pre-vim-cs2-row-norm_pix-wdref-s0",
                   "probe-random-vim-cs2-row-norm_pix-s0", "probe-vim-cs2-row-norm_pix-wdref-s0-f1"]
    for key in ("pre-vim-cs2-row-norm_pix-wdref-s0", "ft-vim-scratch-wdref-s0", "ft-vim-cs2-row-norm_pix-wdref-s0-f1"):
        cfg = yaml.safe_load((runs / key / "config.yaml").read_text())
        assert cfg["model"]["name"] == "vim_tiny_pz16" and cfg["optim"]["no_decay"] == "reference"
    # the MambaMLP rows are study 1's reference-rule jobs, not run again
    ref = study["jobs"]["arm-ft0"]
    assert ref["key"] == "ft-cs2-row-norm_pix-wdref-s0-f1" and ref["family"] == "arm"
    assert study["jobs"]["vim-pre0"]["family"] == "vim"
    before = {p: p.stat().st_mtime_ns for p in jobs.glob("*.json")}
    run_study("study6_vim", env)  # resumable: nothing runs again
    assert {p: p.stat().st_mtime_ns for p in jobs.glob("*.json")} == before


def test_study2(env):
    study = run_study("study2_unit", env)
    rows = {r["condition"]: r for r in study["rows"]}
    assert rows["1 patch"]["linprobe"]["n"] == 1 and rows["2x2 patches"]["knn"]["n"] == 1
    assert "does not fit the 4x4 patch grid" in rows["4x4 patches"]["skipped"]


@pytest.mark.parametrize("name,conditions", [("study3_order", ["row-major", "column-major", "random"]),
                                             ("study4_target", ["normalised pixels", "raw pixels"])])
def test_study3_and_4(env, name, conditions):
    study = run_study(name, env)
    assert [r["condition"] for r in study["rows"]] == conditions
    assert all(r["linprobe"]["n"] == 1 and r["loss"]["n"] == 1 for r in study["rows"])


def test_study5_and_results_md(env, tmp_path):
    study = run_study("study5_length", env)
    assert [r["fraction"] for r in study["rows"]] == [0.25, 0.5, 1.0]
    assert all(r["ft_top1"]["n"] == 1 for r in study["rows"])
    assert importlib.import_module("visualize_grid").main(
        ["--scale", "tiny", "--state", str(env["state"]), "--data-root", str(env["data"])]) == 0
    with Image.open(env["state"] / "results" / "visualize_grid.png") as im:
        assert im.size == (512, 1520)  # 4 panels of 128 px; 10 rows (one test image per class) of 152 px
    mod = importlib.import_module("make_results_md")
    out = mod.main(["--results", str(env["state"] / "results"), "--output", str(tmp_path / "results.md")])
    text = out.read_text()
    assert text.count("| condition |") == 6 and "to be filled by the GPU run" not in text
    assert "![Study 6" in text and "Vim: ARM pretrained" in text
    assert "![what ARM predicts](results/visualize_grid.png)" in text
    assert "Against raw pixels (no network" in text


def _row(cond, mean, std, n):
    return {"condition": cond, "linprobe": {"mean": mean, "std": std, "n": n}}


def test_results_md_judges_a_difference_against_the_noise_of_a_difference():
    sys.path.insert(0, str(EXP))
    try:
        mod = importlib.import_module("make_results_md")
    finally:
        sys.path.remove(str(EXP))
    # 3 seeds each, std 0.35: the noise of the difference is 0.35 * sqrt(2/3) = 0.29; 0.76 > 2 x 0.29
    study = {"rows": [_row("a", 86.59, 0.35, 3), _row("b", 87.35, 0.14, 3)]}
    text = mod.compare(study, "a", "b", "linprobe", "linear probe")
    assert "noise of the difference is about 0.29" in text and "beyond twice the noise" in text
    assert "disagrees with" in text
    study = {"rows": [_row("a", 86.92, 0.28, 3), _row("b", 86.60, 0.37, 3)]}
    assert "neither confirms nor contradicts" in mod.compare(study, "a", "b", "linprobe", "linear probe")
    # one seed each: study 1's std is the yardstick; without one, no conclusion
    study = {"rows": [_row("a", 87.0, 0.0, 1), _row("b", 85.0, 0.0, 1)]}
    assert "beyond twice the noise and its direction agrees" in mod.compare(study, "a", "b", "linprobe", "lp", 0.35)
    assert "no conclusion" in mod.compare(study, "a", "b", "linprobe", "lp", None)
