"""Run by test_train_distributed.py under torchrun: one tiny fine-tuning run per process (gloo on
CPU), then each rank writes the weights it ends with, so the test can compare the ranks."""

import faulthandler
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from armvision.train import Trainer, distributed, load_config


def main() -> None:
    faulthandler.enable(all_threads=True)  # a fatal signal (SIGABRT, SIGSEGV) prints every thread's stack
    overrides, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    trainer = Trainer(load_config("fmnist_finetune", overrides, task="finetune"))
    summary = trainer.fit()
    rank = trainer.dist.rank
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, out / f"rank{rank}.safetensors")
    save_file({k: v.contiguous() for k, v in trainer.ema.module.state_dict().items()}, out / f"ema{rank}.safetensors")
    (out / f"summary{rank}.json").write_text(json.dumps(summary))
    distributed.teardown()


if __name__ == "__main__":
    main()
