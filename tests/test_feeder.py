"""Training batches on the device ahead of the step (armvision.data.DeviceFeeder), and 8-bit batches
normalised on the device (data.normalize): the same batches, in the same order, as the plain path."""

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from trainhelpers import make_imagefolder, tiny_overrides

from armvision.data import DeviceFeeder, finetune_transform, normalization, normalize_batch, pretrain_transform
from armvision.errors import ConfigError, DataError
from armvision.train import load_config, train
from armvision.train.trainer import seed_everything


def _prepare(batch, index):
    return torch.tensor([batch]), index


@pytest.mark.parametrize("thread", [False, True])
def test_feeder_yields_prepared_batches_in_order_with_their_index(thread):
    feeder = DeviceFeeder(iter(range(10, 17)), _prepare, torch.device("cpu"), first_index=40, thread=thread)
    got = [(int(x), i) for x, i in feeder]
    assert got == [(10 + k, 40 + k) for k in range(7)]
    with pytest.raises(StopIteration):
        next(feeder)
    feeder.close()


@pytest.mark.parametrize("thread", [False, True])
def test_feeder_raises_errors_at_the_batch_where_they_happened(thread):
    def batches():
        yield 1
        yield 2
        raise DataError("16 unreadable images in a row")

    feeder = DeviceFeeder(batches(), _prepare, torch.device("cpu"), thread=thread)
    assert [int(next(feeder)[0]) for _ in range(2)] == [1, 2]
    with pytest.raises(DataError, match="unreadable images in a row"):
        next(feeder)
    with pytest.raises(StopIteration):  # finished after the error
        next(feeder)

    def failing(batch, index):
        if index == 1:
            raise ValueError("cannot prepare batch 1")
        return batch

    feeder = DeviceFeeder(iter(range(5)), failing, torch.device("cpu"), thread=thread)
    assert next(feeder) == 0
    with pytest.raises(ValueError, match="cannot prepare batch 1"):
        next(feeder)
    feeder.close()


def test_feeder_runs_ahead_by_a_bounded_amount_and_close_stops_its_thread():
    pulled = []

    def endless():
        k = 0
        while True:
            pulled.append(k)
            yield k
            k += 1

    before = set(threading.enumerate())
    feeder = DeviceFeeder(endless(), _prepare, torch.device("cpu"), ahead=1, thread=True)
    assert int(next(feeder)[0]) == 0
    time.sleep(0.3)
    assert 2 <= len(pulled) <= 3  # the one taken, one waiting in the queue, at most one being prepared
    thread = next(t for t in set(threading.enumerate()) - before if t.name == "armvision-feeder")
    feeder.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(feeder)


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (37 + 3 * k, 45, 3), dtype=np.uint8)) for k in range(n)]


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_8bit_transform_then_normalize_batch_equals_the_float_transform(stage):
    mean, std = normalization("imagenet", 3)
    if stage == "pretrain":
        make = lambda normalize: pretrain_transform(24, mean, std, normalize=normalize)  # noqa: E731
    else:
        make = lambda normalize: finetune_transform(24, mean, std, auto_augment="rand-m9-mstd0.5-inc1",  # noqa: E731
                                                     normalize=normalize)
    images = _images()
    seed_everything(3)  # timm's crops draw from Python's random, torchvision's flips from torch's
    want = torch.stack([make(True)(im) for im in images])
    seed_everything(3)
    raw = torch.stack([make(False)(im) for im in images])
    assert raw.dtype == torch.uint8 and raw.shape == want.shape == (6, 3, 24, 24)
    got = normalize_batch(raw, mean, std)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)  # the same crops, flips and RandAugment draws
    with pytest.raises(ValueError, match="random erasing"):
        finetune_transform(24, mean, std, reprob=0.25, normalize=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data") / "shapes")


def test_normalising_on_the_device_trains_as_in_the_workers(tmp_path, data):
    """data.normalize device (8-bit batches from the loader) gives the losses of data.normalize workers."""
    common = {"optim.epochs": 2, "data.val_split": None, "eval_every_epochs": 0, "data.workers": 1}
    runs = {}
    for where in ("workers", "device"):
        over = tiny_overrides(data, tmp_path / where, "pretrain", **common, **{"data.normalize": where})
        runs[where] = train(load_config("fmnist_pretrain", over, task="pretrain"))
    assert runs["device"]["steps"] == runs["workers"]["steps"] == 6
    assert [v for _, v in runs["device"]["loss_curve"]] == pytest.approx(
        [v for _, v in runs["workers"]["loss_curve"]], rel=1e-4, abs=1e-6)


def test_normalize_device_refuses_random_erasing_in_the_workers(tmp_path, data):
    over = tiny_overrides(data, tmp_path / "ft", "finetune", **{"data.normalize": "device"})
    with pytest.raises(ConfigError, match="data.normalize"):
        load_config("fmnist_finetune", over, task="finetune")


def test_trainer_with_the_feeder_thread_trains_resumes_and_leaves_no_thread(tmp_path, data, monkeypatch):
    """The threaded feeder (what a GPU run uses; forced here on the CPU, with a loader worker) gives the losses
    of the plain iterator, stops and resumes to the end of the schedule, and its thread is gone when fit()
    returns. (With loader workers a resumed run's augmentations differ from an uninterrupted one's: the
    workers' random streams are not checkpointed, docs/training.md; so only the steps before the stop compare.)"""
    from armvision.train.trainer import Trainer

    common = {"optim.epochs": 2, "data.val_split": None, "eval_every_epochs": 0, "data.workers": 1,
              "checkpoint.every_steps": 2}

    def cfg(out, **extra):
        return load_config("fmnist_pretrain", tiny_overrides(data, tmp_path / out, "pretrain", **common, **extra),
                           task="pretrain")

    plain = Trainer(cfg("plain")).fit()

    def threaded(self, epoch, start_micro):
        first = epoch * self.steps_per_epoch * self.accum_steps + start_micro
        return DeviceFeeder(iter(self.train_loader), self._prepare_batch, self.device, first_index=first, thread=True)

    monkeypatch.setattr(Trainer, "_feeder", threaded)
    whole = Trainer(cfg("threaded")).fit()
    assert [v for _, v in whole["loss_curve"]] == pytest.approx([v for _, v in plain["loss_curve"]], rel=1e-5)
    stopped = Trainer(cfg("stopped", max_steps=3)).fit()  # stops mid-epoch 1 (3 steps of 6)
    assert [v for _, v in stopped["loss_curve"]] == pytest.approx([v for _, v in plain["loss_curve"]][:3], rel=1e-5)
    resumed = Trainer(cfg("stopped", resume="auto")).fit()
    assert resumed["steps"] == 6 and resumed["images_seen"] == plain["images_seen"]
    assert not [t for t in threading.enumerate() if t.name == "armvision-feeder" and t.is_alive()]


def test_data_workers_auto(monkeypatch, tmp_path, data):
    """data.workers auto: the cores of this process's affinity per local training process, minus one."""
    import os

    from armvision.data.loader import MAX_AUTO_WORKERS, auto_workers
    from armvision.train.data import build_pipeline

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert auto_workers() == 1  # 2 cores per process: one worker, the other core for the process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(512)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert auto_workers() == MAX_AUTO_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cfg = load_config("arm_base_in1k_pretrain", {"data.root": str(data), "data.val_split": None})
    assert cfg.data.workers == "auto"  # the ImageNet presets
    pipe = build_pipeline(cfg, "train", True, 4)
    assert pipe.loader.num_workers == 1
    with pytest.raises(ConfigError, match="data.workers"):
        load_config("arm_base_in1k_pretrain", {"data.root": str(data), "data.workers": "many"})
    with pytest.raises(ConfigError, match="data.workers"):
        load_config("arm_base_in1k_pretrain", {"data.root": str(data), "data.workers": -1})
