"""End to end through the command line: pretrain -> finetune -> eval on tiny data the tests make,
resume, a diverging loss, bad inputs (message, non-zero exit, nothing half-written), Fashion-MNIST."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from official_reference import make_official_pretrain_state_dict, official_pickle, reference_finetune_init
from trainhelpers import HAS_FMNIST, as_flags, make_imagefolder, tiny_overrides

import armvision
from armvision.cli import main
from armvision.train import load_config, load_init_weights, train

SRC = str(Path(armvision.__file__).resolve().parents[1])


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data") / "shapes", corrupt=1)


def test_pretrain_finetune_eval_through_the_cli(tmp_path, data, capsys):
    pre = tmp_path / "pre"
    flags = as_flags(tiny_overrides(data, pre, "pretrain"))
    code, out, err = run_cli(["pretrain", "--config", "fmnist_pretrain", *flags], capsys)
    assert code == 0, err
    assert "pretrain finished: 6 steps, 48 images" in out  # 25 images (1 unreadable) -> 3 batches of 8, 2 epochs
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["epochs_completed"] == 2 and summary["skipped_images"] >= 1
    assert "val loss" in err and "unreadable image(s) skipped" in err
    assert (pre / "config.yaml").is_file() and load_config(str(pre / "config.yaml")).task == "pretrain"
    ckpts = sorted(p.name for p in (pre / "checkpoints").iterdir())
    assert ckpts == ["best", "latest", "step_00000003", "step_00000006"]
    lines = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    csv_lines = (pre / "metrics_train.csv").read_text().splitlines()
    assert csv_lines[0] == "kind,step,time,epoch,loss,lr,images_per_s,grad_norm,data_wait_ms,gpu_ms"
    rows = [dict(zip(csv_lines[0].split(","), line.split(","))) for line in csv_lines[1:]]
    assert all(r["grad_norm"] for r in rows)  # every record has its step's gradient norm
    assert all(float(r["data_wait_ms"]) >= 0 and r["gpu_ms"] == "" for r in rows)  # no GPU span off a GPU

    ft = tmp_path / "ft"
    # loader worker processes this time (persistent across epochs); skipped images still counted
    flags = as_flags(tiny_overrides(data, ft, "finetune", **{"log.tensorboard": True, "data.workers": 1,
                                                             "data.persistent_workers": True}))
    code, out, err = run_cli(["finetune", "--config", "fmnist_finetune", "--init", pre, *flags], capsys)
    assert code == 0, err
    assert f"initialised from {pre}/checkpoints/step_00000006 (ARMPretrain)" in err
    summary = json.loads((ft / "summary.json").read_text())
    assert summary["skipped_images"] == 2  # the unreadable file, once per epoch, counted from the worker
    assert summary["unreadable_files"] == 1  # ... and one file, named
    assert summary["unreadable_file_names"] == [str(data / "train" / "circle" / "broken_0.png")]
    ev = summary["eval"]
    assert ev["images"] == ev["ema_images"] == 12 and 0 <= ev["top1"] <= 100 and ev["top5"] == 100.0  # 3 classes
    assert list((ft / "tensorboard").iterdir())
    best = ft / "checkpoints" / "best"
    assert (best / "ema" / "model.safetensors").is_file() and (best / "training_state.pt").is_file()
    cfg = json.loads((best / "config.json").read_text())
    assert cfg["architecture"] == "ARMClassifier" and cfg["classes"] == ["circle", "square", "stripes"]

    code, out, err = run_cli(["eval", ft / "checkpoints" / "latest", "--output", tmp_path / "eval.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["split"] == "val" and set(result["results"]) == {"raw", "ema"}
    # the final weights on the same images give what the run measured at its end
    assert result["results"]["raw"]["loss"] == pytest.approx(ev["loss"], rel=1e-6)
    assert result["results"]["ema"]["loss"] == pytest.approx(ev["ema_loss"], rel=1e-6)
    assert "raw" in out and "ema" in out and "top-1 %" in out
    code, out, err = run_cli(["eval", ft, "--weights", "raw"], capsys)  # a run directory: its best checkpoint
    assert code == 0 and f"{ft}/checkpoints/step_" in out
    code, out, err = run_cli(["eval", pre / "checkpoints" / "latest", "--data.val_split", "val"], capsys)
    assert code == 0 and "raw" in out  # a pretraining checkpoint reports its loss


def test_resume_continues_from_the_saved_step_with_the_same_lr(tmp_path, data, capsys):
    over = tiny_overrides(data, tmp_path / "full", "finetune", **{"optim.epochs": 3, "eval_every_epochs": 0,
                                                                  "checkpoint.every_steps": 2})
    full = train(load_config("fmnist_finetune", over, task="finetune"))
    # the same run, stopped at step 4 (mid-epoch: 3 steps per epoch), then resumed
    part = dict(over, output_dir=str(tmp_path / "part"), max_steps=4)
    first = train(load_config("fmnist_finetune", part, task="finetune"))
    assert first["steps"] == 4 and first["status"] == "stopped at step 4 (max_steps)"
    state = torch.load(tmp_path / "part" / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 1)
    # resumed through the command line with nothing but the folder: the run's own config.yaml is used
    code, out, err = run_cli(["finetune", "--output_dir", tmp_path / "part", "--resume", "auto", "--max_steps", "null"],
                             capsys)
    assert code == 0, err
    assert f"config: {tmp_path}/part/config.yaml (the run's own" in err
    assert f"resumed from {tmp_path}/part/checkpoints/step_00000004 at step 4 (epoch 1)" in err
    resumed = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert resumed["steps"] == 9 == full["steps"]

    def records(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if r["kind"] == "train"}

    a, b = records("full"), records("part")
    assert [b[s]["lr"] for s in range(1, 10)] == [a[s]["lr"] for s in range(1, 10)]
    assert b[5]["loss"] == a[5]["loss"]  # the RNG states came back: the same augmentations, mixup and drop path
    wa = load_file(tmp_path / "full" / "checkpoints" / "latest" / "model.safetensors")
    wb = load_file(tmp_path / "part" / "checkpoints" / "latest" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_stopped_by_max_steps_resumes_to_its_end_through_the_cli(tmp_path, data, capsys):
    out = tmp_path / "pre"
    flags = as_flags(tiny_overrides(data, out, "pretrain", **{"max_steps": 2}))
    code, out_text, err = run_cli(["pretrain", "--config", "fmnist_pretrain", *flags], capsys)
    assert code == 0 and "stopped at step 2 (max_steps)" in out_text, err
    code, out_text, err = run_cli(["pretrain", "--output_dir", out, "--resume", "auto"], capsys)
    assert code == 0 and "pretrain finished: 6 steps" in out_text, err
    assert "(the run's own; pass --config to use another)" in err


@pytest.mark.parametrize("what", ["training loss", "gradient norm"])
def test_divergence_stops_with_a_message_and_keeps_the_last_checkpoint(what, tmp_path, data, capsys, monkeypatch):
    """A NaN loss, or a finite loss with NaN gradients (clipping on), stops the run before the
    weights change; the last checkpoint stays as it was, and finite."""
    from armvision.models import ARMClassifier

    out = tmp_path / "nan"
    flags = as_flags(tiny_overrides(data, out, "finetune", **{"eval_every_epochs": 0, "optim.clip_grad": 1.0}))
    forward = ARMClassifier.forward
    calls = {"n": 0}

    def poisoned(self, x):
        calls["n"] += 1 if self.training else 0
        y = forward(self, x)
        if self.training and calls["n"] == 5:
            if what == "training loss":
                return y * float("nan")
            y.register_hook(lambda g: g * float("nan"))
        return y

    monkeypatch.setattr(ARMClassifier, "forward", poisoned)
    code, _, err = run_cli(["finetune", "--config", "fmnist_finetune", *flags], capsys)
    assert code == 2
    assert f"armvision finetune: error: the {what} became nan at step 5 (epoch 2); the weights were not updated" in err
    assert f"the last good checkpoint, {out}/checkpoints/step_00000003, is intact" in err
    assert "set optim.clip_grad" not in err and "precision fp32" not in err  # clipping is on, the CPU runs fp32
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000003"]
    weights = load_file(out / "checkpoints" / "step_00000003" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "diverged"


@pytest.mark.parametrize("case", ["missing", "empty", "bad_value", "unknown_key", "preset", "init_pth", "exists",
                                  "strict_image", "batch"])
def test_bad_inputs_give_a_message_a_nonzero_exit_and_write_nothing(case, tmp_path, data, capsys):
    out = tmp_path / "run"
    over = tiny_overrides(data, out, "finetune")
    extra: list = []
    if case == "missing":
        over["data.root"] = str(tmp_path / "nowhere")
        expect = f"dataset root {tmp_path}/nowhere does not exist; expected {tmp_path}/nowhere/train/<class>/<image>"
    elif case == "empty":
        (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
        over["data.root"] = str(tmp_path / "empty")
        expect = f"no images found in {tmp_path}/empty/train"
    elif case == "bad_value":
        extra = ["--optim.epochs", "two"]
        expect = "bad value for 'optim.epochs' in the command line: 'two'; expected an integer"
    elif case == "unknown_key":
        extra = ["--optim.warmup", "3"]
        expect = "unknown config key 'optim.warmup' in the command line (did you mean warmup_epochs?)"
    elif case == "preset":
        extra = ["--config", "arm_base_in1k_pretrian"]
        expect = "unknown preset 'arm_base_in1k_pretrian' (did you mean arm_base_in1k_pretrain"
    elif case == "init_pth":
        (tmp_path / "official.pth").write_bytes(b"not really")
        extra = ["--init", str(tmp_path / "official.pth")]
        expect = (f"{tmp_path}/official.pth: cannot read a PyTorch checkpoint from this file (truncated, corrupt, "
                  "or not a checkpoint written by torch.save)")
    elif case == "exists":
        (out / "checkpoints" / "step_00000001").mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "training_state.pt"):
            (out / "checkpoints" / "step_00000001" / name).write_text("x")
        expect = "already holds a run (checkpoint step_00000001); pass --resume auto to continue it"
    elif case == "strict_image":  # raised in a loader worker: the message still arrives alone
        over.update({"data.strict_images": True, "data.workers": 1})
        expect = f"armvision finetune: error: cannot read image {data}/train/circle/broken_0.png: cannot identify image file"
    elif case == "batch":
        over["optim.micro_batch"] = 3
        expect = "optim.batch_size 8 is not a multiple of optim.micro_batch (3)"
    before = files_under(tmp_path)
    code, _, err = run_cli(["finetune", *as_flags(over), *extra], capsys)
    assert code == 2 and expect in err and "Traceback" not in err, err
    if case != "strict_image":  # the others stop before anything is written
        assert files_under(tmp_path) == before
    else:  # stopped in the first epoch: nothing but logs, no checkpoint
        assert not (out / "checkpoints").exists()


def test_finetune_starts_from_an_official_pretraining_pth(tmp_path, data, capsys):
    # an official pretraining checkpoint (reference key layout, random values): 12x12 patch grid of patch 2,
    # clusters of 4x4 patches; the classifier fine-tunes at 16px (8x8 patches)
    sd = make_official_pretrain_state_dict(embed_dim=32, depth=12, d_state=8, dec_dim=64, patch=2, grid=12, seed=3)
    pth = tmp_path / "arm_official_pretrain.pth"
    torch.save(official_pickle(sd, "pretraining"), pth)
    args = {"patch_size": 2, "embed_dim": 32, "depth": 12, "d_state": 8}

    # the initialisation the run starts from is the reference fine-tuning's
    clf = armvision.create_model("arm_tiny_pz16", num_classes=3, img_size=16, **args)
    info = load_init_weights(clf, pth)
    assert info["architecture"] == "official ARM pretraining checkpoint"
    expected = reference_finetune_init(sd, 64)
    for k in ("layers.3.mixer.x_proj_c_b.weight", "layers.11.mixer.A_b_log", "layers.0.mixer.conv1d_c.weight",
              "patch_embed.proj.weight"):
        assert torch.equal(clf.state_dict()[k], expected[k]), k
    assert torch.allclose(clf.pos_embed, expected["pos_embed"], atol=1e-6)

    out = tmp_path / "ft"
    over = tiny_overrides(data, out, "finetune", **{"model.args": args, "optim.epochs": 1})
    code, _, err = run_cli(["finetune", "--config", "fmnist_finetune", "--init", pth, *as_flags(over)], capsys)
    assert code == 0, err
    assert f"initialised from {pth} (official ARM pretraining checkpoint)" in err
    assert json.loads((out / "summary.json").read_text())["steps"] == 3

    # a width that does not fit is refused before anything is written
    before = files_under(tmp_path)
    over = tiny_overrides(data, tmp_path / "wide", "finetune", **{"model.args": {**args, "embed_dim": 64}})
    code, _, err = run_cli(["finetune", "--config", "fmnist_finetune", "--init", pth, *as_flags(over)], capsys)
    assert code == 2 and "does not fit this classifier: embed_dim: checkpoint 32, classifier 64" in err, err
    assert files_under(tmp_path) == before


def test_the_command_exits_nonzero_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    res = subprocess.run([sys.executable, "-m", "armvision", "eval", str(tmp_path / "nothing")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"armvision eval: error: {tmp_path}/nothing does not exist; expected an armvision model "
                                  "directory (config.json + model.safetensors), a checkpoint folder or a run directory")


@pytest.mark.skipif(not HAS_FMNIST, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_slice_pretrain_finetune_eval(tmp_path, capsys):
    model = {"model.args.embed_dim": 32, "model.args.d_state": 4, "optim.batch_size": 32, "optim.epochs": 1,
             "optim.warmup_epochs": 0.5, "log.progress": "off", "log.tensorboard": False, "device": "cpu"}
    pre = tmp_path / "pre"
    code, out, err = run_cli(["pretrain", "--config", "fmnist_pretrain", "--output_dir", pre, "--data.train_subset",
                              "128", *as_flags({**model, "model.args.decoder_dim": 32})], capsys)
    assert code == 0, err
    assert "pretrain finished: 4 steps, 128 images" in out
    ft = tmp_path / "ft"
    code, out, err = run_cli(["finetune", "--config", "fmnist_finetune", "--init", pre, "--output_dir", ft,
                              "--data.train_subset", "128", "--data.val_subset", "64", *as_flags(model)], capsys)
    assert code == 0, err
    code, out, err = run_cli(["eval", ft, "--data.val_subset", "64", "--weights", "raw"], capsys)
    assert code == 0, err
    assert "on fashion_mnist split 'test'" in out and "raw           64" in out


def test_demo_smoke_profile_runs_end_to_end(tmp_path, capsys):
    if not HAS_FMNIST:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    code, out, err = run_cli(["demo", "--profile", "smoke", "--output-dir", tmp_path / "demo", "--device", "cpu"],
                             capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(results["runs"]) == {"pretrain", "finetune", "scratch"}
    assert results["runs"]["finetune"]["steps"] == results["runs"]["scratch"]["steps"] > 0  # the same budget
    assert results["runs"]["finetune"]["eval"]["images"] == 256
    assert "| fine-tune from ARM |" in out and "| from scratch |" in out
    base = results["baseline"]  # the linear classifier on the same labelled pixels, on the same test images
    assert base["labels"] == 256 and base["test_images"] == 256 and 0 <= base["top1"] <= 100
    assert "| linear classifier on raw pixels | 256 |" in out and "a linear classifier on the raw pixels" in out
    probe = results["probe"]  # the frozen-feature probes: pretrained, random init and pixels on the same images
    assert probe["train_images"] == 512 and probe["test_images"] == 256 and probe["features"] == "tokens"
    assert [probe["rows"][k]["feature_dim"] for k in ("arm", "random_init", "pixels")] == [16 * 128, 16 * 128, 784]
    assert "| ARM-pretrained encoder (frozen) | 2048 |" in out and "| raw pixels, no network | 784 |" in out
    assert sum(line.startswith("verdict") for line in out.splitlines()) == 3  # linear probe, k-NN, fine-tuning
    assert (tmp_path / "demo" / "demo_results.md").read_text().strip() == results["table"]
    # running it again replaces the earlier demo; a folder with other files is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = run_cli(["demo", "--profile", "smoke", "--output-dir", tmp_path / "other"], capsys)
    assert code == 2 and "holds other files (notes.txt)" in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
