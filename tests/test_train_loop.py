"""The training loop's arithmetic: gradient accumulation is the same step as one big batch; the
bf16 autocast path runs; the learning rate logged is the schedule's."""

import json
import math

import pytest
from safetensors.torch import load_file
from trainhelpers import make_imagefolder, tiny_overrides

from armvision.train import load_config, train
from armvision.train.optim import WarmupCosine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data") / "shapes")


def _weights(run):
    return load_file(run / "checkpoints" / "latest" / "model.safetensors")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data):
    common = {"optim.epochs": 1, "optim.warmup_epochs": 0, "optim.blr": 0.05, "optim.clip_grad": 1.0,
              "eval_every_epochs": 0, "data.val_split": None}
    big = train(load_config("fmnist_pretrain", tiny_overrides(data, tmp_path / "big", "pretrain", **common),
                            task="pretrain"))
    acc = train(load_config("fmnist_pretrain", tiny_overrides(data, tmp_path / "acc", "pretrain", **common,
                                                              **{"optim.micro_batch": 2}), task="pretrain"))
    assert big["steps"] == acc["steps"] == 3 and acc["images_seen"] == big["images_seen"] == 24
    # step 1 starts from the same weights on the same images: the accumulated gradient is the batch's
    norms = [[json.loads(x)["grad_norm"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "train"] for run in ("big", "acc")]
    assert norms[1][0] == pytest.approx(norms[0][0], rel=1e-5) and norms[0][0] > 1.0  # clipped: scale matters
    assert [v for _, v in acc["loss_curve"]] == pytest.approx([v for _, v in big["loss_curve"]], rel=1e-4)
    a, b = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3  # Adam amplifies rounding of tiny gradients


def test_bf16_autocast_path_and_logged_lr(tmp_path, data):
    over = tiny_overrides(data, tmp_path / "bf16", "finetune", **{"precision": "bf16", "optim.epochs": 2,
                                                                  "optim.warmup_epochs": 1, "optim.lr": 1e-3,
                                                                  "optim.min_lr": 1e-5})
    summary = train(load_config("fmnist_finetune", over, task="finetune"))
    assert summary["steps"] == 6 and math.isfinite(summary["loss_last"]) and math.isfinite(summary["eval"]["loss"])
    rows = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    schedule = WarmupCosine(total_steps=6, warmup_steps=3, peak_lr=1e-3, min_lr=1e-5)
    assert lrs == pytest.approx([1e-3 * schedule(s) for s in range(6)])  # the head's group (scale 1)


def test_one_loader_iterator_runs_through_the_epochs(tmp_path, data, monkeypatch):
    """The training batches of all epochs come from one loader iterator (no refill stall at the epoch
    boundaries), the same batches, in the same order, as a fresh iterator per epoch."""
    from armvision.train.trainer import Trainer

    over = {"optim.epochs": 3, "data.val_split": None, "eval_every_epochs": 0, "checkpoint.every_steps": 2}

    def run(out):
        trainer = Trainer(load_config("fmnist_pretrain", tiny_overrides(data, tmp_path / out, "pretrain", **over),
                                      task="pretrain"))
        made = []
        loader = trainer.train_loader

        class Counting:
            def __iter__(self):
                made.append(trainer.epoch)
                return iter(loader)

        trainer.train_loader = Counting()
        return trainer.fit(), made

    spanning, made = run("spanning")
    assert spanning["steps"] == 9 and made == [0]
    monkeypatch.setattr(Trainer, "_train_epoch", _per_epoch_iterators(Trainer._train_epoch))
    fresh, made = run("fresh")
    assert made == [0, 1, 2]
    assert [v for _, v in fresh["loss_curve"]] == [v for _, v in spanning["loss_curve"]]


def _per_epoch_iterators(train_epoch):
    def wrapped(self, *args, **kwargs):
        self._batches_next = None  # as before: a new iterator each epoch
        return train_epoch(self, *args, **kwargs)
    return wrapped


def test_log_records_the_loader_wait_per_step(tmp_path, data):
    """metrics_train.csv's data_wait_ms is the host's wait for the step's batches: a loader that sleeps 40 ms per
    batch shows at least that, per step; gpu_ms stays empty off a GPU."""
    import csv
    import time

    from armvision.train.trainer import Trainer

    over = {"optim.epochs": 1, "data.val_split": None, "eval_every_epochs": 0, "log.every_steps": 1}

    def run(out, pause):
        trainer = Trainer(load_config("fmnist_pretrain", tiny_overrides(data, tmp_path / out, "pretrain", **over),
                                      task="pretrain"))
        loader = trainer.train_loader

        class Slow:
            def __iter__(self):
                for batch in loader:
                    time.sleep(pause)
                    yield batch

        trainer.train_loader = Slow()
        trainer.fit()
        with open(tmp_path / out / "metrics_train.csv", newline="") as f:
            return list(csv.DictReader(f))

    slow, quick = run("slow", 0.04), run("quick", 0.0)
    assert len(slow) == len(quick) == 3
    assert all(float(r["data_wait_ms"]) >= 40 for r in slow)
    assert all(float(r["data_wait_ms"]) < 40 for r in quick)
    assert all(r["gpu_ms"] == "" for r in slow + quick)


def test_window_gpu_ms_is_the_mean_span_of_its_steps():
    """The log window's gpu_ms averages its steps' event spans; data_wait_ms its host waits."""
    import torch

    from armvision.train.trainer import _Step, _Window

    class Event:
        def __init__(self, t):
            self.t = t

        def elapsed_time(self, other):
            return other.t - self.t

    window = _Window(torch.device("cpu"))
    for wait, (a, b) in ((0.002, (0.0, 70.0)), (0.004, (71.0, 139.0))):
        step = _Step(bad=torch.tensor(False), loss=torch.tensor(1.0, dtype=torch.float64), grad_norm=torch.tensor(1.0),
                     flags=torch.zeros(3), stop_here=0.0, data_wait=wait, span=(Event(a), Event(b)))
        window.add(step, 8)
    assert window.timings() == pytest.approx({"data_wait_ms": 3.0, "gpu_ms": 69.0})
    window.reset()
    assert window.timings() == {"data_wait_ms": 0.0}
