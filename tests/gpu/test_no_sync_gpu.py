"""No host synchronisation inside a training step, on CUDA (skipped without it).

torch.cuda's sync debug mode is set to "error" from the end of the third optimizer step to the end of the
eighth, in a pretraining and a fine-tuning run as the commands run them: compiled with CUDA graphs, loader
workers, the feeder thread, fused AdamW with the non-finite check on the device; fine-tuning adds mixup/cutmix,
random erasing (float batches), layer decay and EMA. No log line falls in that window, so any ``.item()``,
blocking host-to-device copy, ``nonzero`` or stream synchronisation there raises and fails the test.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainhelpers import make_imagefolder, tiny_overrides  # noqa: E402

from armvision.train import load_config  # noqa: E402
from armvision.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CHECK_FROM, CHECK_TO = 3, 8  # optimizer steps: checked from the end of the 3rd to the end of the 8th


@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_no_host_sync_between_log_steps(tmp_path, task):
    root = make_imagefolder(tmp_path / "data", {"train": 24})  # 72 images: 9 steps of 8 in the epoch
    over = tiny_overrides(root, tmp_path / "run", task, **{
        "device": "cuda", "optim.epochs": 1, "data.val_split": None, "eval_every_epochs": 0,
        "log.every_steps": 1000, "data.workers": 2, "checkpoint.every_epochs": 0})
    trainer = Trainer(load_config("fmnist_pretrain" if task == "pretrain" else "fmnist_finetune", over, task=task))
    assert trainer.train_module.cudagraphs and trainer.optimizer.defaults["fused"]
    assert trainer.steps_per_epoch == 9
    seen = []

    def window(*_):
        seen.append(len(seen) + 1)
        if seen[-1] == CHECK_FROM:
            torch.cuda.set_sync_debug_mode("error")
        elif seen[-1] == CHECK_TO:
            torch.cuda.set_sync_debug_mode("default")

    trainer.optimizer.register_step_post_hook(window)
    try:
        summary = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert summary["steps"] == 9 and len(seen) == 9  # the window opened and closed inside the run
    assert trainer.train_module.verified  # compiled steps, no fallback to eager


def test_the_detector_catches_a_blocking_copy():
    """What the test above relies on: under "error", a blocking host-to-device copy (as the trainer made one per
    step until 2026-12-01, for the step number) raises."""
    torch.zeros(1, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.tensor(1.0).to("cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
