"""The trainer on CUDA (skipped without it): compiled by default (inductor, the Triton scan through its
custom ops), no fallback, fused AdamW, the eager run's losses; data.decode gpu through the trainer."""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainhelpers import make_imagefolder, tiny_overrides  # noqa: E402

from armvision.train import load_config  # noqa: E402
from armvision.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(root, out, **extra):
    over = tiny_overrides(root, out, "pretrain", **{"device": "cuda", "precision": "fp32", "optim.epochs": 2,
                                                    "data.val_split": None, "eval_every_epochs": 0, **extra})
    return load_config("fmnist_pretrain", over, task="pretrain")


def test_compiled_by_default_on_cuda_matches_eager(tmp_path):
    root = make_imagefolder(tmp_path / "data")
    compiled = Trainer(_cfg(root, tmp_path / "c"))
    assert compiled.train_module.is_compiled and compiled.optimizer.defaults["fused"]
    assert compiled.train_module.cudagraphs  # compile_mode auto: CUDA graphs for one process on a GPU
    a = compiled.fit()
    assert compiled.train_module.is_compiled and compiled.train_module.verified  # no fallback to eager
    b = Trainer(_cfg(root, tmp_path / "e", compile=False)).fit()
    assert [v for _, v in a["loss_curve"]] == pytest.approx([v for _, v in b["loss_curve"]], rel=2e-3)
    # the eager run's log: the GPU span per step positive and within the step's wall time (batch / images/s)
    import csv

    with open(tmp_path / "e" / "metrics_train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["gpu_ms"]) > 0 and float(r["data_wait_ms"]) >= 0 for r in rows)
    assert all(float(r["gpu_ms"]) <= 8 / float(r["images_per_s"]) * 1e3 * 1.05 for r in rows[1:])


def test_gpu_decoding_through_the_trainer(tmp_path):
    root = make_imagefolder(tmp_path / "data", {"train": 8})
    for p in sorted(root.rglob("*.png")):
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=90)
        p.unlink()
    trainer = Trainer(_cfg(root, tmp_path / "g", **{"data.decode": "gpu", "compile": False}))
    tf = trainer.train_pipeline.batch_transform
    assert tf is not None and tf.device.type == "cuda"
    summary = trainer.fit()
    assert summary["steps"] == 6 and summary["skipped_images"] == summary["unreadable_files"] == 0


@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_cuda_graphs_with_accumulation_match_eager(tmp_path, task):
    """compile_mode reduce-overhead with two micro-batches per step (gradients of the first stay alive
    while the second replays) and, for fine-tuning, the four-direction scans, drop path, mixup and EMA."""
    root = make_imagefolder(tmp_path / "data")

    def cfg(out, **extra):
        over = tiny_overrides(root, out, task, **{"device": "cuda", "precision": "fp32", "optim.epochs": 2,
                                                  "data.val_split": None, "eval_every_epochs": 0,
                                                  "optim.batch_size": 8, "optim.micro_batch": 4, **extra})
        if task == "finetune":
            over["model.drop_path"] = 0.0  # drop path draws inside the graph: the eager run draws differently
        return load_config("fmnist_pretrain" if task == "pretrain" else "fmnist_finetune", over, task=task)

    graphs = Trainer(cfg(tmp_path / "g", compile_mode="reduce-overhead"))
    assert graphs.train_module.cudagraphs and graphs.accum_steps == 2
    a = graphs.fit()
    assert graphs.train_module.verified
    b = Trainer(cfg(tmp_path / "e", compile=False)).fit()
    assert a["steps"] == b["steps"] == 6
    assert [v for _, v in a["loss_curve"]] == pytest.approx([v for _, v in b["loss_curve"]], rel=2e-3)
