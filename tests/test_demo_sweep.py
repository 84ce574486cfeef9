"""experiments/demo_sweep.py: the demo's schedule sweep. --smoke end to end on a fake Fashion-MNIST (CPU, about
15 s), the run order, the budget, a failing run, and that its configs are the demo's own."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import yaml
from trainhelpers import make_fake_fmnist

from armvision.train import config_to_dict

EXP = Path(__file__).resolve().parents[1] / "experiments"

FIELDS = {"run", "stage", "pretrain_epochs", "finetune_epochs", "steps", "top1", "ema_top1", "linear_top1",
          "knn_top1", "loss_last", "train_images", "test_images", "wall_seconds", "device", "gpu", "output_dir",
          "error", "detail"}


@pytest.fixture(scope="module")
def ds():
    sys.path.insert(0, str(EXP))
    yield importlib.import_module("demo_sweep")
    sys.path.remove(str(EXP))


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    # enough images for the smoke profile's draws: 512 to pretrain, 256 labelled, 256 test
    return make_fake_fmnist(tmp_path_factory.mktemp("fm"), n_train=600, n_test=300)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "demo_sweep.jsonl").read_text().splitlines()]


def test_smoke_writes_a_row_per_run_and_the_table(ds, fmnist, tmp_path):
    out = tmp_path / "sweep"
    code = ds.main(["--smoke", "--out", str(out), "--data-root", str(fmnist), "--device", "cpu", "--workers", "0",
                    "--cpu-step-seconds", "0.27", "0.98"])
    assert code == 0
    rows = read_rows(out)
    assert [(r["run"], r["stage"], r["pretrain_epochs"], r["finetune_epochs"]) for r in rows] == [
        ("pixels", "pixels", None, None), ("pretrain-e1", "pretrain", 1, None), ("probe-e1", "probe", 1, None),
        ("finetune-e1-f1", "finetune", 1, 1), ("scratch-f1", "scratch", None, 1)]
    by = {r["run"]: r for r in rows}
    for r in rows:
        assert set(r) == FIELDS
        assert r["error"] is None and r["wall_seconds"] > 0 and r["device"] == "cpu"
        assert r["output_dir"] == str(out / "runs" / r["run"]) and Path(r["output_dir"]).is_dir()
    # the smoke profile: 512 images to pretrain, 256 labelled, 256 test images, batch 64, one epoch each
    assert by["pretrain-e1"]["steps"] == 8 and by["pretrain-e1"]["loss_last"] > 0
    for name in ("finetune-e1-f1", "scratch-f1"):
        r = by[name]
        assert r["steps"] == 4 and r["train_images"] == 256 and r["test_images"] == 256
        assert 0 <= r["top1"] <= 100 and 0 <= r["ema_top1"] <= 100
        assert r["linear_top1"] is None and r["knn_top1"] is None
    for name in ("pixels", "probe-e1"):
        r = by[name]
        assert r["train_images"] == 256 and r["test_images"] == 256 and r["steps"] is None
        assert 0 <= r["linear_top1"] <= 100 and 0 <= r["knn_top1"] <= 100 and r["top1"] is None
        assert json.loads((out / "runs" / name / "result.json").read_text()) == r
    # fine-tuning starts from the pretraining run with the preset's layer decay; from scratch has none
    ft = yaml.safe_load((out / "runs" / "finetune-e1-f1" / "config.yaml").read_text())
    sc = yaml.safe_load((out / "runs" / "scratch-f1" / "config.yaml").read_text())
    assert ft["init"] == str(out / "runs" / "pretrain-e1") and ft["optim"]["layer_decay"] == 0.75
    assert sc["init"] is None and sc["optim"]["layer_decay"] is None
    assert ft["optim"]["epochs"] == sc["optim"]["epochs"] == 1
    table = (out / "demo_sweep.md").read_text()
    f, s = by["finetune-e1-f1"], by["scratch-f1"]
    assert (f"| finetune-e1-f1 | finetune | 1 | 1 | 4 | {f['top1']:.2f} | {f['ema_top1']:.2f} | - | - "
            f"| {f['loss_last']:.4f} |") in table
    assert f"| probe-e1 | probe | 1 | - | - | - | - | {by['probe-e1']['linear_top1']:.2f} " in table
    assert table.count("| done |") == 5
    # 8 pretraining steps at 0.27 s and two runs of 4 fine-tuning steps at 0.98 s: 10 s, 0.2 min
    assert (f"| 1 | 1 | 8 | 4 | 0.2 | {f['top1']:.2f} / {f['ema_top1']:.2f} | {s['top1']:.2f} / {s['ema_top1']:.2f} "
            f"| {f['top1'] - s['top1']:+.2f} | {by['probe-e1']['linear_top1']:.2f} / "
            f"{by['probe-e1']['knn_top1']:.2f} |") in table
    assert "0.27 s per pretraining step and 0.98 s per fine-tuning step" in table
    assert f"linear classifier {by['pixels']['linear_top1']:.2f}, k-NN {by['pixels']['knn_top1']:.2f}" in table
    # a second sweep into the same folder is refused, the first one left as it was
    assert ds.main(["--smoke", "--out", str(out), "--data-root", str(fmnist), "--device", "cpu"]) == 2
    assert read_rows(out) == rows


def test_the_grid_grows_as_a_square_most_informative_runs_first(ds):
    assert [r.name for r in ds.plan(ds.PRETRAIN_EPOCHS, ds.FINETUNE_EPOCHS)] == [
        "pixels", "pretrain-e1", "probe-e1", "finetune-e1-f2", "scratch-f2",
        "pretrain-e2", "probe-e2", "finetune-e2-f2", "finetune-e1-f3", "scratch-f3", "finetune-e2-f3",
        "pretrain-e3", "probe-e3", "finetune-e3-f2", "finetune-e1-f4", "scratch-f4",
        "finetune-e3-f3", "finetune-e2-f4", "finetune-e3-f4"]


def test_budget_zero_starts_nothing_and_lists_every_run(ds, fmnist, tmp_path):
    out = tmp_path / "sweep"
    assert ds.main(["--out", str(out), "--data-root", str(fmnist), "--device", "cpu", "--budget", "0"]) == 0
    assert read_rows(out) == []
    table = (out / "demo_sweep.md").read_text()
    names = [r.name for r in ds.plan(ds.PRETRAIN_EPOCHS, ds.FINETUNE_EPOCHS)]
    assert sum(f"| {n} |" in table for n in names) == len(names) == 19
    # pretraining-dependent runs name what they miss, the others the budget
    assert "| pretrain-e1 | pretrain | 1 | - | - | - | - | - | - | - | - | skipped: budget" in table
    assert "| finetune-e1-f2 | finetune | 1 | 2 | - | - | - | - | - | - | - | skipped: pretrain-e1 did not finish |" \
        in table
    assert not any((out / "runs").iterdir())


def test_a_failed_run_is_a_row_and_its_dependents_are_skipped(ds, fmnist, tmp_path, monkeypatch):
    def broken(cfg):
        raise RuntimeError(f"no {cfg.task} today\nsecond line")

    monkeypatch.setattr(ds, "train", broken)
    out, runs_dir = tmp_path / "sweep", tmp_path / "elsewhere"
    assert ds.main(["--smoke", "--out", str(out), "--runs-dir", str(runs_dir), "--data-root", str(fmnist),
                    "--device", "cpu"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["demo_sweep.jsonl", "demo_sweep.md"]
    rows = {r["run"]: r for r in read_rows(out)}
    assert rows["pixels"]["output_dir"] == str(runs_dir / "pixels") and (runs_dir / "pixels" / "result.json").is_file()
    assert list(rows) == ["pixels", "pretrain-e1", "scratch-f1"]
    assert rows["pixels"]["error"] is None
    assert rows["pretrain-e1"]["error"] == "RuntimeError: no pretrain today"
    assert rows["scratch-f1"]["error"] == "RuntimeError: no finetune today" and rows["scratch-f1"]["top1"] is None
    table = (out / "demo_sweep.md").read_text()
    assert "| probe-e1 | probe | 1 | - | - | - | - | - | - | - | - | skipped: pretrain-e1 did not finish |" in table
    assert "failed: RuntimeError: no pretrain today |" in table


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.epochs=5"], "--set optim.epochs: the sweep sets this key itself"),
    (["--set", "optim.nonsense=1"], "optim.nonsense"),
])
def test_bad_overrides_are_one_line_errors_before_anything_is_written(ds, fmnist, tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert ds.main(["--out", str(out), "--data-root", str(fmnist), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("demo_sweep: error: ") and message in err
    assert not out.exists()


def test_the_configs_are_the_demos_own(ds, fmnist, tmp_path, monkeypatch):
    """The sweep's (E=1, F=2) smoke runs get exactly the configs `armvision demo --profile smoke` trains with,
    apart from their folders (captured from run_demo with the training, the probes and the pixel baseline stubbed
    out)."""
    import armvision.demo.run as demo_run

    seen = {}

    def capture(cfg):
        seen[Path(cfg.output_dir).name] = cfg
        return {"steps": 0, "images_seen": 0, "wall_seconds": 0.0, "loss_first": None, "eval": {}, "device": "cpu"}

    monkeypatch.setattr(demo_run, "train", capture)
    monkeypatch.setattr(demo_run, "_probe_stage", lambda *a, **k: None)  # nothing was pretrained to probe
    monkeypatch.setattr(demo_run, "pixel_linear_baseline",
                        lambda *a, **k: {"labels": 256, "seconds": 0.0, "top1": 10.0, "test_images": 256})
    demo_run.run_demo(tmp_path / "demo", profile="smoke", data_root=str(fmnist), device="cpu", workers=3)
    runs = ds.plan((1,), (2,))
    cfgs = ds.build_configs(runs, tmp_path / "runs", "smoke", 0, "cpu", str(fmnist), 3, {})

    def norm(cfg):
        d = config_to_dict(cfg)
        d["output_dir"] = Path(d["output_dir"]).name
        d["init"] = d["init"] and Path(d["init"]).name
        return d

    for demo_name, sweep_name in (("pretrain", "pretrain-e1"), ("finetune", "finetune-e1-f2"),
                                  ("scratch", "scratch-f2")):
        want, got = norm(seen[demo_name]), norm(cfgs[sweep_name])
        want["output_dir"] = sweep_name
        if want["init"]:
            want["init"] = "pretrain-e1"
        assert got == want, sweep_name


def test_a_stop_signal_ends_the_sweep_with_the_finished_rows_kept(ds, fmnist, tmp_path, monkeypatch):
    from armvision.errors import Preempted

    def stopped(cfg):
        raise Preempted("received SIGTERM", signal="SIGTERM")

    monkeypatch.setattr(ds, "train", stopped)
    out = tmp_path / "sweep"
    assert ds.main(["--smoke", "--out", str(out), "--data-root", str(fmnist), "--device", "cpu"]) == 75
    assert [r["run"] for r in read_rows(out)] == ["pixels"]  # finished before the signal; nothing after it
    table = (out / "demo_sweep.md").read_text()
    assert "| pretrain-e1 | pretrain | 1 | - | - | - | - | - | - | - | - | stopped by a signal |" in table
    assert "| scratch-f1 | scratch | - | 1 | - | - | - | - | - | - | - | not reached |" in table
